//! Helpers shared by the image format tests: real fixtures (ext4 and NTFS
//! file systems with real files), qemu-img/qemu-io wrappers, and the
//! byte-for-byte comparison of cairn's reads with qemu's.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cairn_disk::{DiskSource, Image};

pub mod vhdi;

/// Where fixtures are cached between runs.
pub fn cache_dir() -> PathBuf {
    let dir = PathBuf::from("/var/tmp/cairn-test-cache/disk-fixtures");
    std::fs::create_dir_all(&dir).expect("create the fixture cache folder");
    dir
}

/// Panics with an install hint unless `tool` is on PATH.
pub fn require(tool: &str) {
    assert!(
        cairn_testkit::tools::installed(tool, &["/usr/sbin", "/sbin"]),
        "{tool} is needed by this test but is not installed; `bash scripts/test.sh` installs it \
         (packages qemu-utils, e2fsprogs, ntfs-3g, libvhdi-utils)"
    );
}

pub use cairn_testkit::tools::run;

/// Runs `qemu-img ARGS`, asserting success.
pub fn qemu_img(args: &[&str]) -> String {
    require("qemu-img");
    run(Command::new("qemu-img").args(args))
}

/// The `-f` argument qemu needs for `img` (qemu itself takes a fixed VHD,
/// whose only header is at the end, for raw).
pub fn qemu_format(img: &Path) -> &'static str {
    let file = cairn_disk::io::ImageFile::open(img).expect("open image");
    match cairn_disk::image::probe(&file).expect("probe") {
        cairn_disk::Format::Raw => "raw",
        cairn_disk::Format::Qcow2 => "qcow2",
        cairn_disk::Format::Vhdx => "vhdx",
        cairn_disk::Format::Vhd => "vpc",
    }
}

/// Virtual size that `qemu-img info` reports for `img` (the top node's, from
/// the text form's first "virtual size" line).
pub fn qemu_virtual_size(img: &Path) -> u64 {
    let info = qemu_img(&["info", "-U", "-f", qemu_format(img), path_str(img)]);
    let line = info
        .lines()
        .find(|l| l.starts_with("virtual size:"))
        .expect("virtual size in qemu-img info");
    let inner = line.split('(').nth(1).expect("(N bytes)");
    inner
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a byte count in the virtual size line")
}

/// `p` as UTF-8 (test paths always are).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Builds `name` in the cache once (atomically: build to a temporary name, then rename).
fn cached(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let path = cache_dir().join(name);
    if !path.exists() {
        let tmp = cache_dir().join(format!("{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        build(&tmp);
        std::fs::rename(&tmp, &path).expect("rename the fixture into place");
    }
    path
}

/// Copies a sample of real files (documentation, libraries) of at least
/// `min_file` bytes into `dir`, about `budget` bytes in all.
fn copy_real_files(dir: &Path, budget: u64, min_file: u64) {
    let mut used = 0u64;
    let roots = ["/usr/share/doc", "/usr/lib/x86_64-linux-gnu", "/usr/share/man"];
    let mut stack: Vec<PathBuf> = roots.iter().map(PathBuf::from).collect();
    let mut n = 0u32;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() && meta.len() >= min_file && meta.len() < 8 << 20 && used + meta.len() <= budget {
                n += 1;
                let target = dir
                    .join(format!("d{}", n % 16))
                    .join(format!("{n:05}-{}", e.file_name().to_string_lossy()));
                std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
                if std::fs::copy(&p, &target).is_ok() {
                    used += meta.len();
                }
            }
        }
        if used >= budget * 9 / 10 {
            break;
        }
    }
    assert!(used > budget / 2, "found only {used} bytes of real files to copy");
}

/// A 96 MiB raw disk holding an ext4 file system with ~40 MiB of real files.
/// Shared and cached: copy it before changing it.
pub fn ext4_fixture() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        cached("ext4-96m.raw", |tmp| {
            require("mkfs.ext4");
            let src = tempfile::tempdir().expect("tempdir");
            copy_real_files(src.path(), 40 << 20, 0);
            std::fs::File::create(tmp)
                .and_then(|f| f.set_len(96 << 20))
                .expect("create image");
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
                .arg(src.path())
                .arg(tmp));
        })
    })
    .clone()
}

/// A 64 MiB raw disk holding an NTFS file system with real files (copied in with ntfscp).
pub fn ntfs_fixture() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        cached("ntfs-64m.raw", |tmp| {
            require("mkntfs");
            require("ntfscp");
            std::fs::File::create(tmp)
                .and_then(|f| f.set_len(64 << 20))
                .expect("create image");
            run(Command::new("mkntfs").args(["-F", "-Q", "-q"]).arg(tmp));
            let src = tempfile::tempdir().expect("tempdir");
            copy_real_files(src.path(), 24 << 20, 128 << 10);
            let mut files: Vec<PathBuf> = Vec::new();
            let mut stack = vec![src.path().to_path_buf()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else {
                        files.push(p);
                    }
                }
            }
            files.sort();
            for (i, f) in files.iter().enumerate() {
                run(Command::new("ntfscp")
                    .arg("-f")
                    .arg(tmp)
                    .arg(f)
                    .arg(format!("f{i:05}.bin")));
            }
        })
    })
    .clone()
}

/// Converts `img` to a raw file in `dir` with qemu-img; returns its path.
pub fn to_raw(img: &Path, dir: &Path) -> PathBuf {
    let name = img
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = dir.join(format!("{name}.qemu.raw"));
    let _ = std::fs::remove_file(&out);
    qemu_img(&[
        "convert",
        "-U",
        "-f",
        qemu_format(img),
        "-O",
        "raw",
        path_str(img),
        path_str(&out),
    ]);
    out
}

/// Opens `img` with cairn and checks every byte it reads against `expected_raw`,
/// the virtual size, and that bytes outside `allocation()` are zero.
pub fn assert_reads_like(img: &Path, expected_raw: &Path) {
    let image = Image::open(img).unwrap_or_else(|e| panic!("cairn cannot open {}: {e}", img.display()));
    let size = image.virtual_size();
    let expected = std::fs::File::open(expected_raw).expect("open expected raw");
    let expected_len = expected.metadata().expect("metadata").len();
    assert_eq!(size, expected_len, "{}: virtual size", img.display());
    let alloc = image.allocation().expect("allocation map");
    let mut in_alloc = vec![false; size.div_ceil(4096) as usize];
    for e in &alloc {
        assert!(e.end() <= size, "{}: extent {e:?} past the end", img.display());
        let (a, b) = (e.offset / 4096, e.end().div_ceil(4096));
        for i in a..b {
            in_alloc[i as usize] = true;
        }
    }
    let chunk = 1u64 << 20;
    let (mut got, mut want) = (vec![0u8; chunk as usize], vec![0u8; chunk as usize]);
    let mut off = 0u64;
    while off < size {
        let n = chunk.min(size - off) as usize;
        image
            .read_at(&mut got[..n], off)
            .unwrap_or_else(|e| panic!("{}: cairn read at {off}: {e}", img.display()));
        expected.read_exact_at(&mut want[..n], off).expect("read expected");
        if got[..n] != want[..n] {
            let i = got[..n].iter().zip(&want[..n]).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "{}: byte {} differs: cairn {:#04x}, qemu {:#04x}",
                img.display(),
                off + i as u64,
                got[i],
                want[i]
            );
        }
        for (i, page) in want[..n].chunks(4096).enumerate() {
            let p = (off / 4096) as usize + i;
            if !in_alloc[p] && page.iter().any(|&b| b != 0) {
                panic!(
                    "{}: bytes at {} hold data but are outside the allocation map",
                    img.display(),
                    p as u64 * 4096
                );
            }
        }
        off += n as u64;
    }
}

/// Converts `img` with qemu-img and compares with cairn's reads ([`assert_reads_like`]).
pub fn assert_same_as_qemu(img: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = to_raw(img, dir.path());
    assert_reads_like(img, &raw);
    assert_eq!(
        Image::open(img).expect("open").virtual_size(),
        qemu_virtual_size(img),
        "{}: virtual size vs qemu-img info",
        img.display()
    );
}

/// Writes each `(offset, bytes)` into `img` (format `fmt`) through qemu-io.
pub fn write_chunks(img: &Path, fmt: &str, chunks: &[(u64, Vec<u8>)]) {
    require("qemu-io");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", fmt]);
    for (i, (off, bytes)) in chunks.iter().enumerate() {
        let f = dir.path().join(format!("chunk{i}"));
        std::fs::write(&f, bytes).expect("write chunk file");
        cmd.arg("-c")
            .arg(format!("write -q -s {} {off} {}", path_str(&f), bytes.len()));
    }
    cmd.arg(img);
    run(&mut cmd);
}

/// Changes real files inside the ext4 file system of raw image `raw` with
/// debugfs (writes a few new files, removes one); `seed` varies the change.
pub fn mutate_ext4(raw: &Path, seed: u64) {
    require("debugfs");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut script = String::new();
    for i in 0..4u64 {
        let f = dir.path().join(format!("new{i}"));
        let len = 50_000 + ((seed * 7919 + i * 104_729) % 700_000) as usize;
        let data: Vec<u8> = (0..len)
            .map(|j| ((j as u64 * 31 + seed * 17 + i) % 251) as u8)
            .collect();
        std::fs::write(&f, data).expect("write new file");
        script.push_str(&format!("write {} new-{seed}-{i}\n", path_str(&f)));
    }
    script.push_str("rm d1\n");
    let sf = dir.path().join("script");
    std::fs::write(&sf, script).expect("write debugfs script");
    run(Command::new("debugfs").arg("-w").arg("-f").arg(&sf).arg(raw));
}

/// Ranges (offset, length) of `granularity`-byte units where files `a` and `b` differ
/// (a shorter file reads as zeros past its end); touching ranges merged.
pub fn changed_ranges(a: &Path, b: &Path, granularity: u64) -> Vec<(u64, u64)> {
    let fa = std::fs::File::open(a).expect("open a");
    let fb = std::fs::File::open(b).expect("open b");
    let len = fa
        .metadata()
        .expect("meta")
        .len()
        .max(fb.metadata().expect("meta").len());
    let (mut ba, mut bb) = (vec![0u8; granularity as usize], vec![0u8; granularity as usize]);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut off = 0;
    while off < len {
        let n = granularity.min(len - off) as usize;
        ba[..n].fill(0);
        bb[..n].fill(0);
        let _ = fa.read_at(&mut ba[..n], off);
        let _ = fb.read_at(&mut bb[..n], off);
        if ba[..n] != bb[..n] {
            match out.last_mut() {
                Some(last) if last.0 + last.1 == off => last.1 += n as u64,
                _ => out.push((off, n as u64)),
            }
        }
        off += n as u64;
    }
    out
}
