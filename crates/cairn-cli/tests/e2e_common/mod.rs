//! Helpers shared by the end-to-end tests: running the `cairn` binary,
//! making disk images, comparing images, and poking at repository files.
//!
//! Every test file that uses it says `mod e2e_common;`; not every file uses
//! every helper.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Size of a data file header; block records start here, 4 KiB aligned.
pub const DATA_HEADER_LEN: u64 = 4096;
/// Size of a block record header.
pub const RECORD_HEADER_LEN: u64 = 64;

// ---------------------------------------------------------------- running cairn

/// A `cairn` command with `args`, with no password or log settings inherited
/// from the environment of whoever runs the tests.
pub fn cairn<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("cairn"));
    c.env_remove("CAIRN_PASSWORD").env_remove("CAIRN_LOG").args(args);
    c
}

fn describe(cmd: &Command) -> String {
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    format!("cairn {}", args.join(" "))
}

/// Runs `cmd`, which must succeed; returns its output.
#[track_caller]
pub fn ok(mut cmd: Command) -> Output {
    let out = cmd.output().expect("cannot run the cairn binary");
    assert!(
        out.status.success(),
        "`{}` failed with {}\nstdout:\n{}\nstderr:\n{}",
        describe(&cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd`, which must succeed, and returns its stdout.
#[track_caller]
pub fn ok_stdout(cmd: Command) -> String {
    String::from_utf8(ok(cmd).stdout).expect("stdout is not UTF-8")
}

/// Runs `cmd` (which must have `--json`), which must succeed; parses its stdout.
#[track_caller]
pub fn ok_json(cmd: Command) -> Value {
    let text = ok_stdout(cmd);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("output is not JSON ({e}):\n{text}"))
}

/// Runs `cmd`, which must exit with `code`; returns (stdout, stderr).
#[track_caller]
pub fn fails(mut cmd: Command, code: i32) -> (String, String) {
    let out = cmd.output().expect("cannot run the cairn binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "`{}`: expected exit code {code}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        describe(&cmd)
    );
    (stdout, stderr)
}

/// Runs `cmd` (with `--json`), which must exit with `code`; parses its stdout.
#[track_caller]
pub fn json_with_code(cmd: Command, code: i32) -> Value {
    let (stdout, _) = fails(cmd, code);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("output is not JSON ({e}):\n{stdout}"))
}

/// `cairn repo init` of an unencrypted repository at `repo`.
#[track_caller]
pub fn init_repo(repo: &Path) {
    ok(cairn([
        OsStr::new("repo"),
        OsStr::new("init"),
        OsStr::new("--encryption"),
        OsStr::new("none"),
        repo.as_os_str(),
    ]));
}

/// `cairn backup --json --repo REPO --vm VM EXTRA... DISKS...`; returns the JSON.
#[track_caller]
pub fn backup(repo: &Path, vm: &str, extra: &[&str], disks: &[&Path]) -> Value {
    let mut c = cairn(["backup", "--json", "--vm", vm]);
    c.arg("--repo").arg(repo).args(extra).args(disks);
    ok_json(c)
}

/// `cairn restore --json`; returns the JSON.
#[track_caller]
pub fn restore(repo: &Path, vm: &str, point: &str, disk: u32, to: &Path) -> Value {
    let mut c = cairn([
        "restore",
        "--json",
        "--vm",
        vm,
        "--point",
        point,
        "--disk",
        &disk.to_string(),
    ]);
    c.arg("--repo").arg(repo).arg("--to").arg(to);
    ok_json(c)
}

/// A `cairn restore` command (not run).
pub fn restore_cmd(repo: &Path, vm: &str, point: &str, disk: u32, to: &Path) -> Command {
    let mut c = cairn(["restore", "--vm", vm, "--point", point, "--disk", &disk.to_string()]);
    c.arg("--repo").arg(repo).arg("--to").arg(to);
    c
}

/// A `cairn verify --json` command (not run).
pub fn verify_cmd(repo: &Path) -> Command {
    let mut c = cairn(["verify", "--json"]);
    c.arg("--repo").arg(repo);
    c
}

/// `cairn points --json` of one VM: its points array.
#[track_caller]
pub fn points(repo: &Path, vm: &str) -> Vec<Value> {
    let mut c = cairn(["points", "--json", "--vm", vm]);
    c.arg("--repo").arg(repo);
    let v = ok_json(c);
    let arr = v.as_array().expect("points --json is an array");
    assert_eq!(arr.len(), 1, "one VM asked, got {v}");
    arr[0]["points"].as_array().expect("points array").clone()
}

/// The id of the point a `backup --json` made.
#[track_caller]
pub fn point_id(backup_json: &Value) -> String {
    backup_json["point"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no point.id in {backup_json}"))
        .to_string()
}

/// A numeric field of `point.stats` of a `backup --json` output.
#[track_caller]
pub fn stat(backup_json: &Value, field: &str) -> u64 {
    backup_json["point"]["stats"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric point.stats.{field} in {backup_json}"))
}

/// `session` of a `backup --json` output.
#[track_caller]
pub fn session(backup_json: &Value) -> String {
    backup_json["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session in {backup_json}"))
        .to_string()
}

// ---------------------------------------------------------------- tools

/// The path of an external tool, or a loud failure telling what to install.
#[track_caller]
pub fn require_tool(tool: &str, apt_package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(tool);
        if p.metadata().is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0) {
            return p;
        }
    }
    panic!("`{tool}` is needed by this test but is not installed: run `apt-get install {apt_package}`");
}

/// Runs an external command, which must succeed; returns its output.
#[track_caller]
pub fn run_tool(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `qemu-img compare -f raw -F raw a b` must say the images are identical.
#[track_caller]
pub fn qemu_img_identical(a: &Path, b: &Path) {
    let qemu = require_tool("qemu-img", "qemu-utils");
    let out = Command::new(qemu)
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: exit {}\n{}{}",
        a.display(),
        b.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("identical"),
        "qemu-img: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// ---------------------------------------------------------------- data

/// A small deterministic random generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

/// `len` random bytes from `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// `len` bytes of compressible text: numbered lines of prose.
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "virtual", "machine", "disk", "backup", "restore", "point", "chain", "block", "record", "index", "cairn",
        "stone",
    ];
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0u64;
    while out.len() < len {
        line += 1;
        let _ = write!(out, "{line:08} ");
        for _ in 0..8 {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

/// What to put in a region of a disk image.
pub enum Fill {
    Random(u64),
    Text(u64),
    /// Written zeros: allocated on disk, but all zero.
    Zeros,
    Bytes(Vec<u8>),
}

/// Creates a sparse raw image of `size` bytes with `regions` (offset, length, fill) written.
pub fn write_disk(path: &Path, size: u64, regions: &[(u64, u64, Fill)]) {
    let f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.set_len(size).unwrap();
    for (offset, len, fill) in regions {
        patch(&f, *offset, *len, fill);
    }
    f.sync_all().unwrap();
}

/// Overwrites `len` bytes at `offset` of an existing image.
pub fn patch_disk(path: &Path, offset: u64, len: u64, fill: Fill) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    patch(&f, offset, len, &fill);
}

fn patch(f: &File, offset: u64, len: u64, fill: &Fill) {
    let data = match fill {
        Fill::Random(seed) => random_bytes(*seed ^ offset, len as usize),
        Fill::Text(seed) => text_bytes(*seed ^ offset, len as usize),
        Fill::Zeros => vec![0u8; len as usize],
        Fill::Bytes(b) => {
            assert_eq!(b.len() as u64, len);
            b.clone()
        }
    };
    f.write_all_at(&data, offset).unwrap();
}

/// Asserts two files have the same size and bytes (reports the first difference).
#[track_caller]
pub fn assert_same_file(expected: &Path, actual: &Path) {
    let (ma, mb) = (std::fs::metadata(expected).unwrap(), std::fs::metadata(actual).unwrap());
    assert_eq!(
        ma.len(),
        mb.len(),
        "size of {} differs from {}",
        actual.display(),
        expected.display()
    );
    let (mut fa, mut fb) = (File::open(expected).unwrap(), File::open(actual).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut pos = 0u64;
    loop {
        let n = read_full(&mut fa, &mut ba);
        let m = read_full(&mut fb, &mut bb);
        assert_eq!(n, m);
        if n == 0 {
            break;
        }
        if ba[..n] != bb[..n] {
            let i = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y).unwrap();
            panic!(
                "{} differs from {} at byte {}",
                actual.display(),
                expected.display(),
                pos + i as u64
            );
        }
        pos += n as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// Bytes of disk space a file occupies.
pub fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Compares two images of equal size in `chunk`-byte pieces and returns the
/// differing byte ranges as merged (offset, length) extents.
pub fn changed_extents(old: &Path, new: &Path, chunk: usize) -> Vec<(u64, u64)> {
    let size = std::fs::metadata(new).unwrap().len();
    assert_eq!(std::fs::metadata(old).unwrap().len(), size, "images differ in size");
    let (mut fa, mut fb) = (File::open(old).unwrap(), File::open(new).unwrap());
    let buf_len = chunk * 64;
    let (mut ba, mut bb) = (vec![0u8; buf_len], vec![0u8; buf_len]);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    loop {
        let n = read_full(&mut fa, &mut ba);
        let m = read_full(&mut fb, &mut bb);
        assert_eq!(n, m);
        if n == 0 {
            break;
        }
        for start in (0..n).step_by(chunk) {
            let end = (start + chunk).min(n);
            if ba[start..end] != bb[start..end] {
                let (off, len) = (pos + start as u64, (end - start) as u64);
                match out.last_mut() {
                    Some(last) if last.0 + last.1 == off => last.1 += len,
                    _ => out.push((off, len)),
                }
            }
        }
        pos += n as u64;
    }
    out
}

/// Writes extents as a `--cbt` file of `OFFSET LENGTH` lines.
pub fn write_cbt_file(path: &Path, extents: &[(u64, u64)]) {
    let mut text = String::from("# changed extents: offset length\n");
    for (o, l) in extents {
        text.push_str(&format!("{o} {l}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// Distinct blocks of `block_size` that `extents` touch.
pub fn touched_blocks(extents: &[(u64, u64)], block_size: u64) -> u64 {
    let mut blocks = std::collections::BTreeSet::new();
    for &(o, l) in extents {
        for b in o / block_size..(o + l).div_ceil(block_size) {
            blocks.insert(b);
        }
    }
    blocks.len() as u64
}

// ---------------------------------------------------------------- repository files

/// Every chain folder of a repository.
pub fn chain_dirs(repo: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo.join("chains"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// The only chain folder of a repository with one VM.
#[track_caller]
pub fn only_chain_dir(repo: &Path) -> PathBuf {
    let dirs = chain_dirs(repo);
    assert_eq!(dirs.len(), 1, "expected one chain: {dirs:?}");
    dirs.into_iter().next().unwrap()
}

/// Every file under `dir`, recursively, sorted.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// One block record found in a data file.
#[derive(Clone, Debug)]
pub struct Record {
    /// Offset of the record (its 64-byte header) in the file.
    pub offset: u64,
    /// Codec id from the header (0 = stored uncompressed).
    pub codec: u8,
    /// Decoded length.
    pub raw_len: u32,
    /// Payload length.
    pub stored_len: u32,
}

impl Record {
    pub fn payload_offset(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN
    }
}

/// Walks the block records of a data file: a 4096-byte header, then records
/// of a 64-byte header and a payload, each padded to a 4 KiB boundary.
#[track_caller]
pub fn records(path: &Path) -> Vec<Record> {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() as u64 >= DATA_HEADER_LEN && &bytes[..8] == b"CAIRNDAT",
        "{} is not a data file",
        path.display()
    );
    let mut out = Vec::new();
    let mut pos = DATA_HEADER_LEN as usize;
    while pos + RECORD_HEADER_LEN as usize <= bytes.len() {
        let h = &bytes[pos..pos + RECORD_HEADER_LEN as usize];
        if h.iter().all(|&b| b == 0) {
            // A punched hole (retention) reads as zeros: skip a 4 KiB unit.
            pos += 4096;
            continue;
        }
        assert_eq!(&h[..4], b"CBLK", "no record header at {pos} of {}", path.display());
        let raw_len = u32::from_le_bytes(h[8..12].try_into().unwrap());
        let stored_len = u32::from_le_bytes(h[12..16].try_into().unwrap());
        out.push(Record {
            offset: pos as u64,
            codec: h[5],
            raw_len,
            stored_len,
        });
        pos += (RECORD_HEADER_LEN as usize + stored_len as usize).div_ceil(4096) * 4096;
    }
    out
}

/// XORs the byte at `offset` of `path` with 0x5a.
pub fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).unwrap();
    f.sync_all().unwrap();
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
