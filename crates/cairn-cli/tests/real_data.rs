//! End-to-end tests on real ext4 file systems holding real files.
//!
//! The big image (3 GiB sparse, more than 1 GiB of files copied from /usr) is
//! built once and cached in `${CAIRN_TEST_CACHE:-/var/tmp/cairn-test-cache}`
//! under a versioned name; later runs reuse it. File systems are changed with
//! `debugfs -w` (new files of seeded random data, removed files, new
//! folders), backed up with and without changed-extent lists (CBT), restored,
//! and checked with `qemu-img compare` and `e2fsck`.

mod e2e_common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use e2e_common::*;
use serde_json::Value;

/// Change this when the way the cached image is built changes.
const IMAGE_VERSION: &str = "ext4-usr-3g-v1";
const IMAGE_SIZE: &str = "3G";

// ------------------------------------------------------------ the cached image

struct BaseImage {
    path: PathBuf,
    /// Regular files in the image: (size, path from the image root, no leading slash).
    files: Vec<(u64, String)>,
}

fn cache_dir() -> PathBuf {
    std::env::var_os("CAIRN_TEST_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/cairn-test-cache"))
}

/// The cached big image, built on first use (once per process, and under a
/// file lock so that concurrent test processes build it only once).
fn base_image() -> &'static BaseImage {
    static IMAGE: OnceLock<BaseImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = cache_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create the test cache {}: {e}", dir.display()));
        let lock = File::create(dir.join(format!("{IMAGE_VERSION}.lock"))).unwrap();
        lock.lock().unwrap();
        remove_stale_runs(&dir);
        let img = dir.join(format!("{IMAGE_VERSION}.img"));
        let manifest = dir.join(format!("{IMAGE_VERSION}.files"));
        // The manifest is written last: with it present the image is complete.
        if !(img.exists() && manifest.exists()) {
            build_base_image(&dir, &img, &manifest);
        }
        let text = std::fs::read_to_string(&manifest).unwrap();
        let files = text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(size, path)| (size.parse().unwrap(), path.to_string()))
            .collect();
        BaseImage { path: img, files }
    })
}

/// Work folders of runs that were killed before they could clean up (a day old).
fn remove_stale_runs(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 86_400);
        if old && e.file_name().to_string_lossy().starts_with("run-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn build_base_image(dir: &Path, img: &Path, manifest: &Path) {
    let mkfs = require_tool("mkfs.ext4", "e2fsprogs");
    let started = std::time::Instant::now();
    // Leftovers of an interrupted build.
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("stage-") {
            std::fs::remove_dir_all(&p).unwrap();
        }
    }
    let stage = dir.join(format!("stage-{}", std::process::id()));
    std::fs::create_dir(&stage).unwrap();
    let lib = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
        .into_iter()
        .find(|p| Path::new(p).is_dir())
        .unwrap_or("/usr/lib");
    let mut sources = vec![("/usr/share", "share"), (lib, "lib")];
    for (src, name) in &sources {
        stage_tree(Path::new(src), &stage.join(name));
    }
    // More real files only if those two are too small on this machine.
    for extra in [
        ("/usr/bin", "bin"),
        ("/usr/libexec", "libexec"),
        ("/usr/sbin", "sbin"),
        ("/usr/lib", "usr-lib"),
    ] {
        let staged: u64 = list_files(&stage).iter().map(|f| f.0).sum();
        if staged >= GIB + 64 * MIB {
            break;
        }
        if Path::new(extra.0).is_dir() && extra.0 != lib {
            stage_tree(Path::new(extra.0), &stage.join(extra.1));
            sources.push(extra);
        }
    }
    let files = list_files(&stage);
    let total: u64 = files.iter().map(|f| f.0).sum();
    assert!(
        total >= GIB,
        "the staged real files hold only {} MiB, the test needs at least 1 GiB ({sources:?})",
        total >> 20
    );

    let tmp_img = dir.join(format!("{IMAGE_VERSION}.img.tmp"));
    let _ = std::fs::remove_file(&tmp_img);
    run_tool(
        Command::new(&mkfs)
            .args(["-q", "-F", "-d"])
            .arg(&stage)
            .arg(&tmp_img)
            .arg(IMAGE_SIZE),
    );
    File::open(&tmp_img).unwrap().sync_all().unwrap();
    std::fs::rename(&tmp_img, img).unwrap();
    let text: String = files.iter().map(|(s, p)| format!("{s}\t{p}\n")).collect();
    let tmp_manifest = dir.join(format!("{IMAGE_VERSION}.files.tmp"));
    std::fs::write(&tmp_manifest, text).unwrap();
    std::fs::rename(&tmp_manifest, manifest).unwrap();
    std::fs::remove_dir_all(&stage).unwrap();
    eprintln!(
        "built {} ({} files, {} MiB) in {:.0} s",
        img.display(),
        files.len(),
        total >> 20,
        started.elapsed().as_secs_f64()
    );
}

/// Copies a tree with hard links (`cp -al`, free on the same file system),
/// falling back to a real copy (`cp -a`).
fn stage_tree(src: &Path, dst: &Path) {
    let linked = Command::new("cp")
        .arg("-al")
        .arg(src)
        .arg(dst)
        .output()
        .expect("run cp");
    if !linked.status.success() {
        let _ = std::fs::remove_dir_all(dst);
        run_tool(Command::new("cp").arg("-a").arg(src).arg(dst));
    }
}

/// Regular files under `root`: (size, path relative to root), sorted by path.
fn list_files(root: &Path) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file()
                && let Some(rel) = e
                    .path()
                    .strip_prefix(root)
                    .ok()
                    .and_then(|r| r.to_str().map(String::from))
            {
                out.push((md.len(), rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

// ------------------------------------------------------------ debugfs

/// Paths debugfs commands can take as they are.
fn plain_path(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
}

/// Runs debugfs commands against `img` in write mode; any complaint fails the test.
#[track_caller]
fn debugfs_write(img: &Path, commands: &[String]) {
    let debugfs = require_tool("debugfs", "e2fsprogs");
    let script = img.with_extension("debugfs");
    std::fs::write(&script, commands.join("\n") + "\n").unwrap();
    let out = run_tool(Command::new(&debugfs).arg("-w").arg("-f").arg(&script).arg(img));
    let complaints: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    assert!(
        complaints.is_empty(),
        "debugfs {commands:?} on {}: {complaints:?}",
        img.display()
    );
    std::fs::remove_file(script).unwrap();
}

/// Whether `path` exists in the file system of `img`.
fn exists_in(img: &Path, path: &str) -> bool {
    let debugfs = require_tool("debugfs", "e2fsprogs");
    let out = run_tool(Command::new(&debugfs).arg("-R").arg(format!("stat {path}")).arg(img));
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("File not found") {
        return false;
    }
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Inode:"),
        "debugfs stat {path}: {err}"
    );
    true
}

/// The contents of file `path` in the file system of `img`.
fn read_from(img: &Path, path: &str, scratch: &Path) -> Vec<u8> {
    let debugfs = require_tool("debugfs", "e2fsprogs");
    let _ = std::fs::remove_file(scratch);
    run_tool(
        Command::new(&debugfs)
            .arg("-R")
            .arg(format!("dump {path} {}", scratch.display()))
            .arg(img),
    );
    let data = std::fs::read(scratch).unwrap_or_else(|e| panic!("debugfs dump {path} from {}: {e}", img.display()));
    std::fs::remove_file(scratch).unwrap();
    data
}

/// `e2fsck -fn` finds no problem in `img`.
#[track_caller]
fn assert_fsck_clean(img: &Path) {
    let e2fsck = require_tool("e2fsck", "e2fsprogs");
    let out = Command::new(e2fsck).arg("-fn").arg(img).output().unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn {} exit {}:\n{}{}",
        img.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A copy of `src` that keeps its holes.
#[track_caller]
fn sparse_copy(src: &Path, dst: &Path) {
    run_tool(Command::new("cp").arg("--sparse=always").arg(src).arg(dst));
    assert!(
        allocated_bytes(dst) <= allocated_bytes(src) + MIB,
        "cp --sparse=always filled holes"
    );
}

/// Writes `len` seeded random bytes to `host_src` and returns the debugfs
/// command that writes them to `path` in an image.
fn new_file(host_src: &Path, path: &str, seed: u64, len: usize) -> (String, Vec<u8>) {
    let data = random_bytes(seed, len);
    std::fs::write(host_src, &data).unwrap();
    (format!("write {} {path}", host_src.display()), data)
}

/// Restores `point` to `out` and checks it is sparse and identical to `expected`.
#[track_caller]
fn restore_and_compare(repo: &Path, vm: &str, point: &Value, block_size: u64, expected: &Path, out: &Path) {
    let id = point["id"].as_str().unwrap();
    let r = restore(repo, vm, id, 0, out);
    let apparent = std::fs::metadata(out).unwrap().len();
    assert_eq!(apparent, std::fs::metadata(expected).unwrap().len());
    assert_eq!(r["virtual_size"].as_u64().unwrap(), apparent);
    qemu_img_identical(expected, out);
    let allocated = allocated_bytes(out);
    let blocks = point["disks"][0]["blocks"].as_u64().unwrap();
    assert!(
        allocated <= blocks * block_size + MIB && allocated < apparent * 6 / 10,
        "restored image {} is not sparse: {allocated} bytes allocated of {apparent}, {blocks} stored blocks",
        out.display()
    );
}

/// Points of a backup output, as `points --json` shows them.
fn point_of(repo: &Path, vm: &str, backup_json: &Value) -> Value {
    let id = point_id(backup_json);
    points(repo, vm)
        .into_iter()
        .find(|p| p["id"] == id.as_str())
        .unwrap_or_else(|| panic!("point {id} not listed"))
}

#[track_caller]
fn assert_block_accounting(b: &Value) {
    let stored = b["point"]["disks"][0]["blocks"].as_u64().unwrap();
    assert_eq!(
        stat(b, "new_blocks") + stat(b, "unchanged_blocks") + stat(b, "dedup_blocks"),
        stored,
        "every block of the point is new, unchanged or a duplicate: {}",
        b["point"]["stats"]
    );
}

// ------------------------------------------------------------ tests

#[test]
fn ext4_full_incremental_and_cbt_backups_restore_identically() {
    require_tool("qemu-img", "qemu-utils");
    require_tool("debugfs", "e2fsprogs");
    require_tool("e2fsck", "e2fsprogs");
    let base = base_image();
    let tmp = tempfile::Builder::new().prefix("run-").tempdir_in(cache_dir()).unwrap();
    let work = tmp.path();
    let repo = work.join("repo");
    init_repo(&repo);
    let vm = "fileserver";

    // Files to remove: real, largish files, in a fixed order.
    let mut victims: Vec<&(u64, String)> = base
        .files
        .iter()
        .filter(|(s, p)| (256 * KIB..8 * MIB).contains(s) && p.starts_with("share/") && plain_path(p))
        .collect();
    victims.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    assert!(victims.len() >= 6, "too few files to remove in the image");
    let victim = |i: usize| format!("/{}", victims[i].1);

    // ---- point 1: full backup of the pristine image
    let v0 = &base.path;
    let full = backup(&repo, vm, &[], &[v0]);
    assert_eq!(session(&full), "full");
    assert!(
        stat(&full, "read_bytes") >= GIB,
        "the full must read the whole file system: {}",
        full["point"]["stats"]
    );
    assert!(stat(&full, "new_blocks") >= 1000, "{}", full["point"]["stats"]);
    assert_eq!(stat(&full, "unchanged_blocks"), 0);
    assert_block_accounting(&full);
    let full_blocks = full["point"]["disks"][0]["blocks"].as_u64().unwrap();

    // ---- point 2: files added and removed, incremental without CBT
    let v1 = work.join("v1.img");
    sparse_copy(v0, &v1);
    let (w1, a) = new_file(&work.join("a.src"), "/cairn-new/a.bin", 1, 4 * MIB as usize);
    let (w2, b) = new_file(&work.join("b.src"), "/cairn-new/b.bin", 2, MIB as usize + 123);
    let (w3, c) = new_file(&work.join("c.src"), "/c-small.bin", 3, 37 * KIB as usize);
    let mut cmds = vec!["mkdir /cairn-new".to_string(), w1, w2, w3];
    cmds.extend((0..3).map(|i| format!("rm {}", victim(i))));
    debugfs_write(&v1, &cmds);
    for i in 0..3 {
        assert!(!exists_in(&v1, &victim(i)), "debugfs did not remove {}", victim(i));
    }
    assert_eq!(read_from(&v1, "/cairn-new/a.bin", &work.join("dump")), a);
    assert_fsck_clean(&v1);

    let inc = backup(&repo, vm, &[], &[&v1]);
    assert_eq!(session(&inc), "incremental");
    assert_block_accounting(&inc);
    let new_blocks = stat(&inc, "new_blocks");
    // 5 MiB of random data take at least 6 new 1 MiB blocks; the rest of the
    // change is file system metadata.
    assert!(
        (6..=full_blocks / 20).contains(&new_blocks),
        "incremental stored {new_blocks} new blocks, the full {full_blocks}: {}",
        inc["point"]["stats"]
    );
    assert!(
        stat(&inc, "unchanged_blocks") >= full_blocks * 9 / 10,
        "{}",
        inc["point"]["stats"]
    );
    assert!(
        stat(&inc, "read_blocks") >= stat(&full, "read_blocks") * 9 / 10,
        "without CBT every allocated block is read"
    );

    // ---- point 3: more changes, incremental with CBT from an image comparison
    let v2 = work.join("v2.img");
    sparse_copy(&v1, &v2);
    let (w4, d) = new_file(
        &work.join("d.src"),
        "/cairn-new/sub/d.bin",
        4,
        2 * MIB as usize + 100 * KIB as usize,
    );
    let (w5, e) = new_file(&work.join("e.src"), "/cairn-new/b.bin", 5, 64 * KIB as usize);
    let cmds = vec![
        "mkdir /cairn-new/sub".to_string(),
        w4,
        "rm /cairn-new/b.bin".to_string(),
        w5,
        format!("rm {}", victim(3)),
        format!("rm {}", victim(4)),
        "mkdir /cairn-empty-dir".to_string(),
    ];
    debugfs_write(&v2, &cmds);
    assert_fsck_clean(&v2);
    let extents = changed_extents(&v1, &v2, 64 * KIB as usize);
    let changed: u64 = extents.iter().map(|e| e.1).sum();
    assert!(changed >= 2 * MIB, "the changes are {changed} bytes");
    let touched = touched_blocks(&extents, MIB);
    let cbt_file = work.join("cbt.txt");
    write_cbt_file(&cbt_file, &extents);
    let cbt_arg = format!("0={}", cbt_file.display());
    let cbt = backup(&repo, vm, &["--cbt", &cbt_arg], &[&v2]);
    assert_eq!(session(&cbt), "incremental");
    assert_block_accounting(&cbt);
    let read = stat(&cbt, "read_bytes");
    assert_eq!(
        stat(&cbt, "read_blocks"),
        touched,
        "CBT reads exactly the blocks the changed extents touch"
    );
    assert!(
        read <= touched * MIB,
        "CBT read {read} bytes for {changed} changed bytes in {touched} blocks"
    );
    assert!(
        read * 20 < stat(&full, "read_bytes"),
        "CBT read {read} bytes, the full {}",
        stat(&full, "read_bytes")
    );
    assert!(
        stat(&cbt, "new_blocks") >= 3 && stat(&cbt, "new_blocks") <= touched,
        "{}",
        cbt["point"]["stats"]
    );
    eprintln!(
        "full: read {} MiB, {full_blocks} blocks; incremental: {new_blocks} new, {} unchanged; \
         CBT: {} changed bytes in {} extents, read {} KiB ({touched} blocks), {} new",
        stat(&full, "read_bytes") >> 20,
        stat(&inc, "unchanged_blocks"),
        changed,
        extents.len(),
        read >> 10,
        stat(&cbt, "new_blocks")
    );

    // ---- every point restores identical, sparse, and as a clean file system
    for (i, (point, expected)) in [(&full, v0.as_path()), (&inc, v1.as_path()), (&cbt, v2.as_path())]
        .into_iter()
        .enumerate()
    {
        let out = work.join(format!("restored-{i}.img"));
        restore_and_compare(&repo, vm, &point_of(&repo, vm, point), MIB, expected, &out);
        match i {
            0 => {
                assert!(exists_in(&out, &victim(0)) && !exists_in(&out, "/cairn-new"));
            }
            1 => {
                assert_eq!(read_from(&out, "/cairn-new/b.bin", &work.join("dump")), b);
                assert_eq!(read_from(&out, "/c-small.bin", &work.join("dump")), c);
                assert!(!exists_in(&out, &victim(0)) && exists_in(&out, &victim(3)));
            }
            _ => {
                assert_fsck_clean(&out);
                assert_eq!(read_from(&out, "/cairn-new/a.bin", &work.join("dump")), a);
                assert_eq!(read_from(&out, "/cairn-new/sub/d.bin", &work.join("dump")), d);
                assert_eq!(read_from(&out, "/cairn-new/b.bin", &work.join("dump")), e);
                assert!(!exists_in(&out, &victim(4)) && exists_in(&out, "/cairn-empty-dir"));
            }
        }
        std::fs::remove_file(&out).unwrap();
    }
    let report = ok_json(verify_cmd(&repo));
    assert_eq!(report["ok"], true, "{report}");
}

/// Stages up to `budget` bytes of real files from /usr/share (hard links
/// where possible), in a fixed order.
fn stage_some_files(stage: &Path, budget: u64) -> Vec<String> {
    let mut all = list_files(Path::new("/usr/share"));
    all.retain(|(s, p)| *s > 0 && plain_path(p));
    let mut used = 0u64;
    let mut staged = Vec::new();
    for (size, rel) in all {
        if used + size > budget {
            continue;
        }
        let src = Path::new("/usr/share").join(&rel);
        let dst = stage.join(&rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        if std::fs::hard_link(&src, &dst).is_err() && std::fs::copy(&src, &dst).is_err() {
            continue; // unreadable: not needed
        }
        used += size;
        staged.push(rel);
        if used >= budget - MIB {
            break;
        }
    }
    assert!(used >= budget / 2, "only {used} bytes of real files staged");
    staged
}

#[test]
fn forward_method_with_retention_restores_every_kept_point() {
    require_tool("qemu-img", "qemu-utils");
    require_tool("debugfs", "e2fsprogs");
    let mkfs = require_tool("mkfs.ext4", "e2fsprogs");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let stage = work.join("stage");
    let staged = stage_some_files(&stage, 40 * MIB);
    let v0 = work.join("v0.img");
    run_tool(
        Command::new(&mkfs)
            .args(["-q", "-F", "-d"])
            .arg(&stage)
            .arg(&v0)
            .arg("128M"),
    );
    let mut removable: Vec<&String> = staged
        .iter()
        .filter(|p| std::fs::metadata(stage.join(p)).unwrap().len() >= 16 * KIB)
        .collect();
    removable.sort();
    assert!(removable.len() >= 4);

    let repo = work.join("repo");
    init_repo(&repo);
    let mut versions = vec![v0.clone()];
    let mut backups = Vec::new();
    for i in 0..5u64 {
        if i > 0 {
            let v = work.join(format!("v{i}.img"));
            sparse_copy(&versions[i as usize - 1], &v);
            let (w, _) = new_file(
                &work.join(format!("{i}.src")),
                &format!("/gen-{i}.bin"),
                10 + i,
                (MIB + i * 4097) as usize,
            );
            debugfs_write(&v, &[w, format!("rm /{}", removable[i as usize - 1])]);
            versions.push(v);
        }
        let mut args = vec!["--method", "forward", "--full-every", "2", "--block-size", "256K"];
        if i == 4 {
            args.extend(["--full-kind", "active"]);
        }
        backups.push(backup(&repo, "vm", &args, &[&versions[i as usize]]));
    }
    let sessions: Vec<String> = backups.iter().map(session).collect();
    assert_eq!(
        sessions,
        ["full", "incremental", "synthetic-full", "incremental", "full"]
    );
    let synthetic = &backups[2];
    assert!(
        stat(synthetic, "new_blocks") < stat(synthetic, "unchanged_blocks") / 4,
        "{}",
        synthetic["point"]["stats"]
    );
    let ids: Vec<String> = backups.iter().map(point_id).collect();
    let kinds: Vec<String> = points(&repo, "vm")
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["full", "incremental", "full", "incremental", "full"]);
    let chain = only_chain_dir(&repo);
    for name in [
        "00000001.full",
        "00000002.inc",
        "00000003.full",
        "00000004.inc",
        "00000005.full",
    ] {
        assert!(chain.join(name).exists(), "{name} missing: {:?}", all_files(&chain));
    }

    // Keep 3: the first segment (full + increment) goes as a whole.
    let mut c = cairn(["retain", "--json", "--keep", "3"]);
    c.arg("--repo").arg(&repo);
    let rep = &ok_json(c)[0];
    assert_eq!(rep["removed"], serde_json::json!([ids[0], ids[1]]));
    assert_eq!(rep["kept"], 3);
    assert_eq!(rep["files_deleted"], 2);
    let first_segment = stat(&backups[0], "stored_bytes") + stat(&backups[1], "stored_bytes");
    assert!(
        rep["reclaimed_bytes"].as_u64().unwrap() >= first_segment * 9 / 10,
        "{rep}, segment stored {first_segment}"
    );
    assert!(!chain.join("00000001.full").exists() && !chain.join("00000002.inc").exists());
    let left: Vec<Value> = points(&repo, "vm");
    assert_eq!(
        left.iter().map(|p| p["id"].as_str().unwrap()).collect::<Vec<_>>(),
        ids[2..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    for (p, expected) in left.iter().zip(&versions[2..]) {
        let out = work.join(format!("out-{}.img", p["id"].as_str().unwrap()));
        restore_and_compare(&repo, "vm", p, 256 * KIB, expected, &out);
        std::fs::remove_file(&out).unwrap();
    }
    let out = work.join("gone.img");
    let (_, err) = fails(restore_cmd(&repo, "vm", &ids[0], 0, &out), 2);
    assert!(err.contains("has no restore point"), "{err}");
    assert!(!out.exists());

    // Keep 1: the second segment goes too; the active full stands alone.
    let mut c = cairn(["retain", "--json", "--keep", "1"]);
    c.arg("--repo").arg(&repo);
    let rep = &ok_json(c)[0];
    assert_eq!(rep["removed"], serde_json::json!([ids[2], ids[3]]));
    let left = points(&repo, "vm");
    assert_eq!(left.len(), 1);
    restore_and_compare(&repo, "vm", &left[0], 256 * KIB, &versions[4], &out);
    assert_eq!(ok_json(verify_cmd(&repo))["ok"], true);
}
