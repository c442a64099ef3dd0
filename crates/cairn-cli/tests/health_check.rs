//! End-to-end tests of damage detection: `cairn verify` names exactly the
//! restore points and disks a damaged file hurts, `cairn restore` refuses
//! damaged data without leaving a partial image, and undamaged points still
//! restore. Plus the error messages of common mistakes on the command line.

mod e2e_common;

use std::path::{Path, PathBuf};

use e2e_common::*;
use serde_json::Value;

const BS: u64 = 256 * KIB;

/// A repository with VM "vm" of two 2 MiB disks (256 KiB blocks, stored
/// uncompressed so records can be found by content) and three points:
/// p1 full; p2 rewrites block 3 of disk 1; p3 changes nothing.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    repo: PathBuf,
    ids: Vec<String>,
    /// Expected images: (disk0, disk1) at p1, and disk1 from p2 on.
    d0: PathBuf,
    d1_p1: PathBuf,
    d1_p2: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let repo = dir.join("repo");
    init_repo(&repo);
    let d0 = dir.join("disk0.raw");
    let d1 = dir.join("disk1.raw");
    write_disk(&d0, 8 * BS, &[(0, 8 * BS, Fill::Random(100))]);
    write_disk(&d1, 8 * BS, &[(0, 8 * BS, Fill::Random(200))]);
    let d1_p1 = dir.join("disk1-p1.raw");
    std::fs::copy(&d1, &d1_p1).unwrap();
    let args = ["--block-size", "256K", "--compression", "none"];
    let b1 = backup(&repo, "vm", &args, &[&d0, &d1]);
    assert_eq!(stat(&b1, "new_blocks"), 16);
    patch_disk(&d1, 3 * BS, BS, Fill::Random(300));
    let b2 = backup(&repo, "vm", &args, &[&d0, &d1]);
    assert_eq!(stat(&b2, "new_blocks"), 1);
    let b3 = backup(&repo, "vm", &args, &[&d0, &d1]);
    assert_eq!(stat(&b3, "new_blocks"), 0);
    Fixture {
        _tmp: tmp,
        dir,
        repo,
        ids: vec![point_id(&b1), point_id(&b2), point_id(&b3)],
        d0,
        d1_p1,
        d1_p2: d1,
    }
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, offset)
        .unwrap();
    b
}

/// The record in `data_file` whose (uncompressed) payload starts like `content`.
fn record_holding(data_file: &Path, content: &[u8]) -> Record {
    let found: Vec<Record> = records(data_file)
        .into_iter()
        .filter(|r| r.codec == 0 && read_at(data_file, r.payload_offset(), 4096) == content[..4096])
        .collect();
    assert_eq!(
        found.len(),
        1,
        "records holding the block in {}: {found:?}",
        data_file.display()
    );
    found[0].clone()
}

fn health_of<'a>(report: &'a Value, id: &str) -> &'a Value {
    let chain = &report["chains"][0];
    chain["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("point {id} not in {report}"))
}

#[test]
fn damaged_block_names_only_the_points_and_disk_using_it() {
    let f = fixture();
    let chain = only_chain_dir(&f.repo);
    let full = chain.join("00000001.full");
    assert!(full.exists(), "{:?}", all_files(&chain));
    assert_eq!(records(&full).len(), 16);
    // Block 3 of disk 1 as p1 saw it: only p1 refers to this record.
    let old = read_at(&f.d1_p1, 3 * BS, BS as usize);
    let rec = record_holding(&full, &old);
    assert_eq!(rec.stored_len as u64, BS);
    flip_byte(&full, rec.offset + 100);

    let report = json_with_code(verify_cmd(&f.repo), 1);
    assert_eq!(report["ok"], false);
    let chain_h = &report["chains"][0];
    assert_eq!(chain_h["vm"], "vm");
    assert_eq!(chain_h["ok"], false);
    assert!(
        chain_h["problems"].as_array().unwrap().is_empty(),
        "the file as a whole is fine: {chain_h}"
    );
    let p1 = health_of(&report, &f.ids[0]);
    assert_eq!(p1["ok"], false);
    assert_eq!(p1["damaged_disks"], serde_json::json!([1]));
    assert_eq!(p1["damaged_blocks"], serde_json::json!({"1": 1}));
    let problem = p1["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("disk 1 block 3") && problem.contains("checksum"),
        "{problem}"
    );
    for id in &f.ids[1..] {
        let p = health_of(&report, id);
        assert_eq!(p["ok"], true, "{id} does not use the damaged record: {p}");
    }

    // Human output: exit 1, names the point and disk.
    let mut c = cairn(["verify"]);
    c.arg("--repo").arg(&f.repo);
    let (out, _) = fails(c, 1);
    assert!(out.contains("VM vm: DAMAGED"), "{out}");
    assert!(
        out.contains(&format!("restore point {} (", f.ids[0])) && out.contains("disks: 1 (1 blocks)"),
        "{out}"
    );
    assert!(!out.contains(&format!("restore point {} (", f.ids[1])), "{out}");

    // Restoring the damaged disk of p1 fails and leaves nothing behind.
    let out = f.dir.join("p1-disk1.raw");
    let (_, err) = fails(restore_cmd(&f.repo, "vm", &f.ids[0], 1, &out), 2);
    assert!(
        err.contains("00000001.full") && err.contains("checksum mismatch"),
        "{err}"
    );
    assert!(!out.exists(), "a failed restore must not leave {}", out.display());
    // Every other disk image restores intact.
    for (point, disk, expected) in [
        (&f.ids[0], 0, &f.d0),
        (&f.ids[1], 0, &f.d0),
        (&f.ids[1], 1, &f.d1_p2),
        (&f.ids[2], 0, &f.d0),
        (&f.ids[2], 1, &f.d1_p2),
    ] {
        let out = f.dir.join(format!("{point}-{disk}.raw"));
        restore(&f.repo, "vm", point, disk, &out);
        assert_same_file(expected, &out);
    }
}

#[test]
fn damaged_block_shared_by_every_point() {
    let f = fixture();
    let chain = only_chain_dir(&f.repo);
    let full = chain.join("00000001.full");
    // Block 5 of disk 0 never changes: every point refers to its record.
    let rec = record_holding(&full, &read_at(&f.d0, 5 * BS, BS as usize));
    flip_byte(&full, rec.offset + 20); // in the record header
    let report = json_with_code(verify_cmd(&f.repo), 1);
    for id in &f.ids {
        let p = health_of(&report, id);
        assert_eq!(p["damaged_disks"], serde_json::json!([0]), "{p}");
        assert_eq!(p["damaged_blocks"], serde_json::json!({"0": 1}), "{p}");
    }
    assert_eq!(report["chains"][0]["records_checked"], 17);
    let out = f.dir.join("latest-0.raw");
    let (_, err) = fails(restore_cmd(&f.repo, "vm", "latest", 0, &out), 2);
    assert!(
        err.contains("00000001.full") && err.contains("block record header"),
        "{err}"
    );
    assert!(!out.exists());
    let out = f.dir.join("latest-1.raw");
    restore(&f.repo, "vm", "latest", 1, &out);
    assert_same_file(&f.d1_p2, &out);
}

#[test]
fn damaged_chain_metadata() {
    let f = fixture();
    // A second VM whose chain stays intact.
    let other = f.dir.join("other.raw");
    write_disk(&other, 4 * MIB, &[(0, MIB, Fill::Random(9))]);
    backup(&f.repo, "other", &[], &[&other]);
    let before = ok_json(verify_cmd(&f.repo));
    let vm_dir = before["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["vm"] == "vm")
        .unwrap()["dir"]
        .as_str()
        .unwrap()
        .to_string();
    let meta = Path::new(&vm_dir).join("chain.meta");
    let len = std::fs::metadata(&meta).unwrap().len();
    flip_byte(&meta, len / 2);

    let report = json_with_code(verify_cmd(&f.repo), 1);
    let chains = report["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2);
    let bad = chains.iter().find(|c| c["dir"] == vm_dir.as_str()).unwrap();
    assert_eq!(bad["ok"], false);
    assert!(bad["vm"].is_null());
    let problem = bad["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("chain unreadable") && problem.contains("chain.meta"),
        "{problem}"
    );
    let good = chains.iter().find(|c| c["vm"] == "other").unwrap();
    assert_eq!(good["ok"], true);

    let mut c = cairn(["verify"]);
    c.arg("--repo").arg(&f.repo);
    let (out, _) = fails(c, 1);
    assert!(
        out.contains("unreadable chain") && out.contains("DAMAGED") && out.contains("VM other: ok"),
        "{out}"
    );

    let out = f.dir.join("o.raw");
    let (_, err) = fails(restore_cmd(&f.repo, "vm", "latest", 0, &out), 2);
    assert!(err.contains("chain.meta") && err.contains("chain metadata"), "{err}");
    assert!(!out.exists());
    // A backup must not overwrite the damaged metadata with a fresh chain.
    let (_, err) = fails(
        {
            let mut c = cairn(["backup", "--vm", "vm", "--block-size", "256K"]);
            c.arg("--repo").arg(&f.repo).arg(&f.d0).arg(&f.d1_p2);
            c
        },
        2,
    );
    assert!(err.contains("chain.meta"), "{err}");
    let report = json_with_code(verify_cmd(&f.repo), 1);
    assert!(report["chains"].as_array().unwrap().iter().any(|c| c["vm"].is_null()));
    // The other VM still restores.
    restore(&f.repo, "other", "latest", 0, &out);
    assert_same_file(&other, &out);
}

#[test]
fn damaged_point_index() {
    let f = fixture();
    let chain = only_chain_dir(&f.repo);
    let idx = chain.join(format!("{}.idx", f.ids[1]));
    flip_byte(&idx, std::fs::metadata(&idx).unwrap().len() - 10);

    let report = json_with_code(verify_cmd(&f.repo), 1);
    let p2 = health_of(&report, &f.ids[1]);
    assert_eq!(p2["ok"], false);
    let problem = p2["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("index unreadable") && problem.contains(".idx"),
        "{problem}"
    );
    for id in [&f.ids[0], &f.ids[2]] {
        assert_eq!(health_of(&report, id)["ok"], true);
    }
    let out = f.dir.join("p2.raw");
    let (_, err) = fails(restore_cmd(&f.repo, "vm", &f.ids[1], 0, &out), 2);
    assert!(
        err.contains(&format!("{}.idx", f.ids[1])) && err.contains("checksum"),
        "{err}"
    );
    assert!(!out.exists());
    for (point, expected) in [(&f.ids[0], &f.d1_p1), (&f.ids[2], &f.d1_p2)] {
        let out = f.dir.join(format!("{point}.raw"));
        restore(&f.repo, "vm", point, 1, &out);
        assert_same_file(expected, &out);
    }
}

#[test]
fn truncated_data_file() {
    let f = fixture();
    let chain = only_chain_dir(&f.repo);
    let full = chain.join("00000001.full");
    let len = std::fs::metadata(&full).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&full).unwrap();
    file.set_len(len / 2 + 1000).unwrap();
    drop(file);

    let report = json_with_code(verify_cmd(&f.repo), 1);
    let problem = report["chains"][0]["problems"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        problem.contains("00000001.full") && problem.contains("committed"),
        "{problem}"
    );
    // The records of disk 1 were written after those of disk 0: only they are
    // gone, and each point names disk 1 alone; disk 0 still restores.
    for id in &f.ids {
        let p = health_of(&report, id);
        assert_eq!(p["ok"], false, "every point refers to the cut-off records: {p}");
        assert_eq!(p["damaged_disks"], serde_json::json!([1]), "{p}");
    }
    let d0 = f.dir.join("d0.raw");
    restore(&f.repo, "vm", "latest", 0, &d0);
    assert_same_file(&f.d0, &d0);

    let out = f.dir.join("o.raw");
    let (_, err) = fails(restore_cmd(&f.repo, "vm", "latest", 1, &out), 2);
    assert!(
        err.contains("00000001.full") && err.contains("truncated"),
        "the error must name the data file and say what is wrong: {err}"
    );
    assert!(!out.exists());
    // A backup refuses to build on the damaged chain.
    let mut c = cairn(["backup", "--vm", "vm", "--block-size", "256K"]);
    c.arg("--repo").arg(&f.repo).arg(&f.d0).arg(&f.d1_p2);
    let (_, err) = fails(c, 2);
    assert!(err.contains("00000001.full") && err.contains("committed"), "{err}");
}

#[test]
fn damaged_data_file_header_is_reported_and_loses_no_point() {
    let f = fixture();
    let chain = only_chain_dir(&f.repo);
    let full = chain.join("00000001.full");
    flip_byte(&full, 20); // the repository id: the header's CRC fails
    // No restore reads the header, and every record checks itself: verify
    // names the header, checks the file's records one by one, and loses no
    // point, which is what a restore then finds.
    let report = json_with_code(verify_cmd(&f.repo), 1);
    let chain_h = &report["chains"][0];
    let problem = chain_h["problems"][0].as_str().unwrap_or_else(|| panic!("{report}"));
    assert!(
        problem.contains("00000001.full") && problem.contains("header damaged") && problem.contains("checksum"),
        "{problem}"
    );
    assert_eq!(chain_h["records_checked"], 17, "the file's records are still checked");
    for id in &f.ids {
        let p = health_of(&report, id);
        assert_eq!(p["ok"], true, "{p}");
        assert_eq!(p["lost"], false, "{p}");
    }
    for (point, disk, expected) in [
        (&f.ids[0], 1, &f.d1_p1),
        (&f.ids[2], 0, &f.d0),
        (&f.ids[2], 1, &f.d1_p2),
    ] {
        let out = f.dir.join(format!("h-{point}-{disk}.raw"));
        restore(&f.repo, "vm", point, disk, &out);
        assert_same_file(expected, &out);
    }
    // A repair writes the header again and removes nothing.
    let mut c = cairn(["repo", "repair", "--json"]);
    c.arg("--repo").arg(&f.repo);
    let r = ok_json(c);
    assert_eq!(
        r["chains"][0]["headers_rewritten"],
        serde_json::json!(["00000001.full"])
    );
    assert!(r["chains"][0]["removed"].as_array().unwrap().is_empty());
    assert_eq!(ok_json(verify_cmd(&f.repo))["ok"], true);
}

#[test]
fn damaged_or_missing_config_is_damage_not_usage() {
    let f = fixture();
    let config = f.repo.join("config");
    let saved = std::fs::read(&config).unwrap();
    flip_byte(&config, 40);
    let mut c = cairn(["verify"]);
    c.arg("--repo").arg(&f.repo);
    let (_, err) = fails(c, 1);
    assert!(
        err.contains("config") && err.contains("checksum") && err.contains("damaged"),
        "{err}"
    );

    std::fs::remove_file(&config).unwrap();
    let mut c = cairn(["verify"]);
    c.arg("--repo").arg(&f.repo);
    let (_, err) = fails(c, 1);
    assert!(err.contains("config") && err.contains("missing"), "{err}");
    // Other commands name the damage too (and exit 2, as every error of a local command).
    let out = f.dir.join("o.raw");
    let (_, err) = fails(restore_cmd(&f.repo, "vm", "latest", 0, &out), 2);
    assert!(err.contains("config") && err.contains("missing"), "{err}");

    std::fs::write(&config, saved).unwrap();
    assert_eq!(ok_json(verify_cmd(&f.repo))["ok"], true);
}

// ------------------------------------------------------------ CLI mistakes

#[test]
fn init_refuses_a_non_empty_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("full");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("precious.txt"), "keep me").unwrap();
    let mut c = cairn(["repo", "init", "--encryption", "none"]);
    c.arg(&dir);
    let (_, err) = fails(c, 2);
    assert!(
        err.contains("already exists and is not empty") && err.contains("full"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(dir.join("precious.txt")).unwrap(), "keep me");
    assert!(!dir.join("config").exists() && !dir.join("chains").exists());

    // An existing repository is not re-initialised either.
    let repo = tmp.path().join("repo");
    init_repo(&repo);
    let config = std::fs::read(repo.join("config")).unwrap();
    let mut c = cairn(["repo", "init", "--encryption", "none"]);
    c.arg(&repo);
    fails(c, 2);
    assert_eq!(std::fs::read(repo.join("config")).unwrap(), config);

    // An empty existing folder is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    init_repo(&empty);
}

#[test]
fn backup_errors_name_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_repo(&repo);
    let missing = tmp.path().join("no-such-disk.raw");
    let mut c = cairn(["backup", "--vm", "vm"]);
    c.arg("--repo").arg(&repo).arg(&missing);
    let (_, err) = fails(c, 2);
    assert!(
        err.contains(missing.to_str().unwrap()),
        "the error must name the disk: {err}"
    );
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause once, not repeated: {err}"
    );
    assert!(chain_dirs(&repo).is_empty(), "a failed backup must create no chain");

    let disk = tmp.path().join("d.raw");
    write_disk(&disk, 2 * MIB, &[(0, MIB, Fill::Random(1))]);
    let mut c = cairn(["backup", "--vm", "vm", "--block-size", "3M"]);
    c.arg("--repo").arg(&repo).arg(&disk);
    let (_, err) = fails(c, 2);
    assert!(err.contains("3M") && err.contains("256K, 512K, 1M, 4M"), "{err}");
    assert!(chain_dirs(&repo).is_empty());

    let not_repo = tmp.path().join("not-a-repo");
    std::fs::create_dir(&not_repo).unwrap();
    let mut c = cairn(["backup", "--vm", "vm"]);
    c.arg("--repo").arg(&not_repo).arg(&disk);
    let (_, err) = fails(c, 2);
    assert!(
        err.contains("not a cairn repository") && err.contains("cairn repo init"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&not_repo).unwrap().next().is_none(),
        "nothing written into a non-repository"
    );
}

#[test]
fn restore_errors_name_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_repo(&repo);
    let disk = tmp.path().join("d.raw");
    write_disk(&disk, 2 * MIB, &[(0, MIB, Fill::Random(1))]);
    let id = point_id(&backup(&repo, "web", &[], &[&disk]));
    let out = tmp.path().join("out.raw");

    let (_, err) = fails(restore_cmd(&repo, "no-such-vm", "latest", 0, &out), 2);
    assert!(err.contains("no backups of VM \"no-such-vm\""), "{err}");
    let (_, err) = fails(restore_cmd(&repo, "web", "deadbeef", 0, &out), 2);
    assert!(err.contains("has no restore point \"deadbeef\""), "{err}");
    let (_, err) = fails(restore_cmd(&repo, "web", "latest", 1, &out), 2);
    assert!(
        err.contains(&format!("restore point {id} of VM \"web\" has no disk 1")),
        "{err}"
    );
    assert!(!out.exists());

    // The output must not exist; an existing file is left alone.
    std::fs::write(&out, "do not overwrite").unwrap();
    let (_, err) = fails(restore_cmd(&repo, "web", "latest", 0, &out), 2);
    assert!(err.contains("out.raw") && err.contains("exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "do not overwrite");

    let mut c = cairn(["verify", "--vm", "no-such-vm"]);
    c.arg("--repo").arg(&repo);
    let (_, err) = fails(c, 2);
    assert!(err.contains("no-such-vm"), "{err}");
    let mut c = cairn(["points", "--vm", "no-such-vm"]);
    c.arg("--repo").arg(&repo);
    let (_, err) = fails(c, 2);
    assert!(err.contains("no-such-vm"), "{err}");
}
