//! Helpers for the crash-safety tests (`crash_safety.rs`): a seeded random
//! generator, running `cairn` (to completion, or as a child killed with
//! SIGKILL after a delay), sparse disk images with mixed content, byte
//! comparison of images, saved copies of each restore point's disk, and a
//! look into a chain folder for leftovers and unreclaimed space.
//!
//! A test file that uses it says `mod common;`; not every file uses every
//! helper.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

// ------------------------------------------------------------ random numbers

/// xoshiro256** seeded through SplitMix64: the same seed gives the same
/// disks, changes and kill times on every machine.
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The seed of a test: `CAIRN_CRASH_SEED` when set (to replay a failure),
/// else `default`. Printed so a failing run names the seed to replay.
pub fn test_seed(test: &str, default: u64) -> u64 {
    let seed = match std::env::var("CAIRN_CRASH_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("CAIRN_CRASH_SEED={s:?} is not a number")),
        Err(_) => default,
    };
    eprintln!("{test}: seed {seed} (CAIRN_CRASH_SEED={seed} replays this run)");
    seed
}

/// `n` delays spread over `[0, span)`: one random point in each of `n` equal
/// strata, in random order, so kills land at the start, in the middle and
/// past the end of an operation whatever the seed.
pub fn stratified(rng: &mut Rng, n: usize, span: f64) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n).map(|i| (i as f64 + rng.unit()) / n as f64 * span).collect();
    rng.shuffle(&mut v);
    v
}

// ------------------------------------------------------------ disk images

/// What a piece of a disk image holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Incompressible random bytes.
    Random,
    /// Text made of words: compresses about 3:1.
    Text,
    /// Written zeros (allocated, but zero blocks are never stored).
    Zeros,
    /// A short random pattern repeated: compresses very well.
    Pattern,
}

const WORDS: &[&str] = &[
    "the",
    "backup",
    "restore",
    "point",
    "chain",
    "block",
    "disk",
    "virtual",
    "machine",
    "kernel",
    "guest",
    "host",
    "error",
    "warning",
    "info",
    "debug",
    "request",
    "response",
    "session",
    "user",
    "admin",
    "database",
    "table",
    "index",
    "query",
    "commit",
    "rollback",
    "journal",
    "inode",
    "extent",
    "sector",
    "cluster",
    "volume",
    "snapshot",
    "replica",
    "proxy",
    "repository",
    "incremental",
    "full",
    "synthetic",
    "merge",
    "retention",
    "policy",
    "schedule",
    "job",
    "task",
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "2026-11-23",
    "09:00:00",
    "GET",
    "POST",
    "/api/v1/vms",
    "200",
    "404",
    "500",
];

/// Fills `buf` with content of kind `fill`.
pub fn fill_buf(rng: &mut Rng, fill: Fill, buf: &mut [u8]) {
    match fill {
        Fill::Random => rng.fill(buf),
        Fill::Zeros => buf.fill(0),
        Fill::Pattern => {
            let mut pat = [0u8; 24];
            rng.fill(&mut pat);
            for (i, b) in buf.iter_mut().enumerate() {
                *b = pat[i % pat.len()];
            }
        }
        Fill::Text => {
            let mut i = 0;
            while i < buf.len() {
                let w = rng.pick(WORDS).as_bytes();
                let sep: &[u8] = if rng.chance(0.1) { b"\n" } else { b" " };
                for &b in w.iter().chain(sep) {
                    if i == buf.len() {
                        break;
                    }
                    buf[i] = b;
                    i += 1;
                }
            }
        }
    }
}

fn random_fill(rng: &mut Rng) -> Fill {
    match rng.below(10) {
        0..=3 => Fill::Random,
        4..=6 => Fill::Text,
        7 => Fill::Zeros,
        _ => Fill::Pattern,
    }
}

/// Creates a sparse raw image of `size` bytes (a multiple of 64 KiB): each
/// 64 KiB piece is left a hole with probability `holes`, else written with
/// random bytes, text, zeros or a pattern.
pub fn create_disk(path: &Path, size: u64, holes: f64, rng: &mut Rng) {
    assert_eq!(size % (64 * KIB), 0);
    let f = OpenOptions::new().write(true).create_new(true).open(path).unwrap();
    f.set_len(size).unwrap();
    let mut buf = vec![0u8; 64 * KIB as usize];
    for off in (0..size).step_by(buf.len()) {
        if rng.chance(holes) {
            continue;
        }
        let fill = random_fill(rng);
        fill_buf(rng, fill, &mut buf);
        f.write_all_at(&buf, off).unwrap();
    }
    f.sync_all().unwrap();
}

/// Writes `len` bytes of kind `fill` at `offset`.
pub fn write_region(path: &Path, offset: u64, len: u64, fill: Fill, rng: &mut Rng) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    let mut buf = vec![0u8; len.min(4 * MIB) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        fill_buf(rng, fill, &mut buf[..n]);
        f.write_all_at(&buf[..n], offset + done).unwrap();
        done += n as u64;
    }
}

/// Overwrites `count` ranges of the image (4 KiB aligned, 4 KiB to
/// `max_len` long, anywhere, holes included) with content of random kinds.
/// Returns the ranges written, as `(offset, length)`.
pub fn scribble(path: &Path, rng: &mut Rng, count: usize, max_len: u64) -> Vec<(u64, u64)> {
    let size = std::fs::metadata(path).unwrap().len();
    let pages = size / (4 * KIB);
    let mut out = Vec::new();
    for _ in 0..count {
        let len = rng.range(1, max_len / (4 * KIB) + 1) * 4 * KIB;
        let start = rng.below(pages) * 4 * KIB;
        let len = len.min(size - start);
        let fill = random_fill(rng);
        write_region(path, start, len, fill, rng);
        out.push((start, len));
    }
    out
}

/// Rewrites about `fraction` of the image with random (incompressible)
/// bytes, in runs of 1 to 4 MiB at 1 MiB aligned places.
pub fn rewrite(path: &Path, rng: &mut Rng, fraction: f64) {
    let size = std::fs::metadata(path).unwrap().len();
    let target = (size as f64 * fraction) as u64;
    let mut written = 0;
    while written < target {
        let start = rng.below(size / MIB) * MIB;
        let len = (rng.range(1, 5) * MIB).min(size - start);
        write_region(path, start, len, Fill::Random, rng);
        written += len;
    }
}

/// Panics unless `actual` holds exactly the bytes of `expected`, naming the
/// first difference.
pub fn assert_same_image(expected: &Path, actual: &Path, what: &str) {
    let (le, la) = (
        std::fs::metadata(expected).unwrap().len(),
        std::fs::metadata(actual).unwrap().len(),
    );
    assert_eq!(la, le, "{what}: restored image has {la} bytes, expected {le}");
    let (mut fe, mut fa) = (File::open(expected).unwrap(), File::open(actual).unwrap());
    let (mut be, mut ba) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut off = 0u64;
    while off < le {
        let n = (le - off).min(MIB) as usize;
        fe.read_exact(&mut be[..n]).unwrap();
        fa.read_exact(&mut ba[..n]).unwrap();
        if be[..n] != ba[..n] {
            let i = (0..n).find(|&i| be[i] != ba[i]).unwrap();
            panic!(
                "{what}: restored image differs from the disk it was backed up from, first at byte {} (expected {:#04x}, got {:#04x})",
                off + i as u64,
                be[i],
                ba[i]
            );
        }
        off += n as u64;
    }
}

/// Every file under `dir` whose name ends with `.tmp`.
pub fn tmp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().ends_with(".tmp") {
                out.push(e.path());
            }
        }
    }
    out
}

// ------------------------------------------------------------ running cairn

/// A `cairn` command with `args`, inheriting no password or log settings.
pub fn cairn<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("cairn"));
    c.env_remove("CAIRN_PASSWORD").env_remove("CAIRN_LOG").args(args);
    c
}

pub fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    format!("{program} {}", args.join(" "))
}

pub fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` to completion.
pub fn output(mut cmd: Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(&cmd)))
}

/// Runs `cmd` and panics unless it exits 0.
pub fn ok(cmd: Command) -> Output {
    let what = describe(&cmd);
    let out = output(cmd);
    assert!(out.status.success(), "{what} failed:\n{}", show(&out));
    out
}

/// Runs `cmd` (which must print JSON) and panics unless it exits 0.
pub fn ok_json(cmd: Command) -> Value {
    let what = describe(&cmd);
    let out = ok(cmd);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}):\n{}", show(&out)))
}

/// How a process that was sent SIGKILL ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It had finished successfully before the signal.
    Completed,
    /// The signal ended it.
    Killed,
}

/// Starts `cmd`, sends it SIGKILL once `delay` has passed, and waits for it.
/// Returns how it ended, its output, and — when it finished by itself before
/// the delay — how long it ran (observed to about a millisecond), which
/// callers use to refine their estimate of the operation's length. Panics if
/// it ended any other way than by the signal or successfully (a kill cannot
/// explain an error exit).
pub fn run_and_kill(mut cmd: Command, delay: Duration) -> (Ending, Output, Option<Duration>) {
    let what = describe(&cmd);
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut finished = None;
    loop {
        if child.try_wait().unwrap().is_some() {
            finished = Some(started.elapsed());
            break;
        }
        let elapsed = started.elapsed();
        if elapsed >= delay {
            // SIGKILL; a child that exited since try_wait is not reaped yet, so this is harmless.
            child.kill().unwrap();
            break;
        }
        std::thread::sleep((delay - elapsed).min(Duration::from_millis(1)));
    }
    let out = child.wait_with_output().unwrap();
    (ending(&what, &out), out, finished)
}

/// `inner` run under strace, which sends it SIGKILL on entering the `nth`
/// call (counted per thread) of any of `syscalls` (comma-separated): a kill
/// at an exact step, such as just before the second rename.
pub fn kill_at_syscall(inner: &Command, syscalls: &str, nth: usize) -> Command {
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscalls}"))
        .arg("-e")
        .arg(format!("inject={syscalls}:signal=KILL:when={nth}"))
        .arg("--")
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// Panics with a clear message unless `tool` runs.
pub fn require_tool(tool: &str, apt_package: &str) {
    let found = Command::new(tool)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "this test needs `{tool}`: install it (apt-get install {apt_package})"
    );
}

/// Runs `cmd` (which a kill may end) to its end; panics if it failed by itself.
pub fn run_killable(mut cmd: Command) -> (Ending, Output) {
    let what = describe(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    (ending(&what, &out), out)
}

fn ending(what: &str, out: &Output) -> Ending {
    let status: ExitStatus = out.status;
    if status.success() {
        Ending::Completed
    } else if status.signal() == Some(9) {
        Ending::Killed
    } else {
        panic!("{what} failed by itself (not killed):\n{}", show(out))
    }
}

/// A repository driven through the `cairn` binary.
pub struct Repo {
    pub root: PathBuf,
}

/// A restore point as `points --json` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    pub id: String,
    pub full: bool,
}

impl Repo {
    /// `cairn repo init ROOT` (unencrypted).
    pub fn init(root: &Path) -> Repo {
        let mut c = cairn(["repo", "init", "-q", "--encryption", "none"]);
        c.arg(root);
        ok(c);
        Repo {
            root: root.to_path_buf(),
        }
    }

    /// A `cairn backup` command for one disk, with JSON output.
    pub fn backup_cmd(&self, vm: &str, disk: &Path, extra: &[&str]) -> Command {
        let mut c = cairn(["backup", "--json", "-q", "--vm", vm, "--repo"]);
        c.arg(&self.root).args(extra).arg(disk);
        c
    }

    /// Backs up `disk` as a new point of `vm`; returns its id and how long the command took.
    pub fn backup(&self, vm: &str, disk: &Path, extra: &[&str]) -> (String, Duration) {
        let started = Instant::now();
        let v = ok_json(self.backup_cmd(vm, disk, extra));
        let took = started.elapsed();
        let id = v["point"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("backup output has no point id: {v}"))
            .to_string();
        (id, took)
    }

    /// `cairn retain --keep N` for `vm`, with JSON output.
    pub fn retain_cmd(&self, vm: &str, keep: usize) -> Command {
        let mut c = cairn([
            "retain",
            "--json",
            "-q",
            "--vm",
            vm,
            "--keep",
            &keep.to_string(),
            "--repo",
        ]);
        c.arg(&self.root);
        c
    }

    pub fn retain(&self, vm: &str, keep: usize) -> Value {
        ok_json(self.retain_cmd(vm, keep))
    }

    /// The points of `vm`, oldest first.
    pub fn points(&self, vm: &str) -> Vec<Point> {
        let mut c = cairn(["points", "--json", "--vm", vm, "--repo"]);
        c.arg(&self.root);
        let v = ok_json(c);
        let chains = v
            .as_array()
            .unwrap_or_else(|| panic!("points output is not an array: {v}"));
        assert_eq!(chains.len(), 1, "points --vm {vm} lists {} VMs: {v}", chains.len());
        chains[0]["points"]
            .as_array()
            .unwrap_or_else(|| panic!("no points array: {v}"))
            .iter()
            .map(|p| Point {
                id: p["id"].as_str().unwrap().to_string(),
                full: match p["kind"].as_str() {
                    Some("full") => true,
                    Some("incremental") => false,
                    k => panic!("unknown point kind {k:?}"),
                },
            })
            .collect()
    }

    pub fn ids(&self, vm: &str) -> Vec<String> {
        self.points(vm).into_iter().map(|p| p.id).collect()
    }

    pub fn restore_cmd(&self, vm: &str, point: &str, to: &Path) -> Command {
        let mut c = cairn(["restore", "-q", "--vm", vm, "--point", point, "--repo"]);
        c.arg(&self.root).arg("--to").arg(to);
        c
    }

    /// `cairn verify` of the whole repository; panics unless it exits 0.
    pub fn verify_ok(&self, context: &str) {
        let mut c = cairn(["verify", "-q", "--repo"]);
        c.arg(&self.root);
        let out = output(c);
        assert!(
            out.status.success(),
            "{context}: cairn verify does not report a healthy repository:\n{}",
            show(&out)
        );
    }

    /// Names of files in `vm`'s chain folder that `chain.meta` does not
    /// account for: unlisted files (`*.tmp`, data files, indexes), listed
    /// files that are missing, and data files longer than their committed
    /// length. Reads the metadata with cairn's own library.
    pub fn leftovers(&self, vm: &str) -> Vec<String> {
        let repo = cairn_repo::Repository::open(&self.root, None).unwrap();
        let dir = repo.chain_dir(vm);
        let meta = repo
            .read_meta(&dir)
            .unwrap_or_else(|e| panic!("reading the chain metadata of {vm}: {e}"));
        let files: BTreeMap<&str, u64> = meta.files.iter().map(|f| (f.name.as_str(), f.committed_len)).collect();
        let indexes: BTreeSet<&str> = meta.points.iter().map(|p| p.index.as_str()).collect();
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            // The space reserve is no leftover: every backup keeps it.
            if name == "chain.meta" || name == "lock" || name == "reserve" {
                continue;
            }
            if let Some(&committed) = files.get(name.as_str()) {
                let len = e.metadata().unwrap().len();
                if len != committed {
                    out.push(format!("{name} ({len} bytes, {committed} committed)"));
                }
            } else if !indexes.contains(name.as_str()) {
                out.push(name.clone());
            }
            seen.insert(name);
        }
        for name in files.keys().chain(indexes.iter()) {
            if !seen.contains(*name) {
                out.push(format!("{name} (listed but missing)"));
            }
        }
        out.sort();
        out
    }

    /// Bytes the records of `vm`'s remaining points need (data file headers
    /// included) and bytes its data files occupy on disk.
    pub fn space(&self, vm: &str) -> (u64, u64) {
        let repo = cairn_repo::Repository::open(&self.root, None).unwrap();
        let chain = repo.chain(vm).unwrap();
        let meta = chain.meta().clone();
        let mut live: BTreeMap<(u32, u64), u64> = BTreeMap::new();
        for p in &meta.points {
            let index = chain.index(p).unwrap();
            for r in index.disks.iter().flat_map(|d| d.blocks.iter()) {
                let loc = chain.locate(r).unwrap();
                live.insert((loc.file, loc.offset), cairn_format::record::padded_len(r.stored_len));
            }
        }
        let needed = live.values().sum::<u64>() + meta.files.len() as u64 * cairn_format::datafile::DATA_HEADER_LEN;
        let allocated = meta
            .files
            .iter()
            .map(|f| std::fs::metadata(chain.dir().join(&f.name)).unwrap().blocks() * 512)
            .sum();
        (needed, allocated)
    }
}

// ------------------------------------------------------------ saved points

/// A copy of the disk as it was when each restore point was taken: what a
/// restore of that point must give back, byte for byte.
pub struct Saved {
    dir: PathBuf,
    points: BTreeMap<String, PathBuf>,
}

impl Saved {
    pub fn new(dir: &Path) -> Saved {
        std::fs::create_dir_all(dir).unwrap();
        Saved {
            dir: dir.to_path_buf(),
            points: BTreeMap::new(),
        }
    }

    /// Records that point `id` holds the current contents of `disk`.
    pub fn save(&mut self, id: &str, disk: &Path) {
        assert!(!self.points.contains_key(id), "point id {id} appears twice");
        let copy = self.dir.join(format!("{id}.raw"));
        std::fs::copy(disk, &copy).unwrap();
        self.points.insert(id.to_string(), copy);
    }

    /// The saved copy of point `id`.
    pub fn copy_of(&self, id: &str) -> &Path {
        self.points
            .get(id)
            .unwrap_or_else(|| panic!("no saved copy of point {id}"))
    }

    /// Forgets the points not in `ids` (removed by retention).
    pub fn keep_only(&mut self, ids: &[String]) {
        let gone: Vec<String> = self.points.keys().filter(|k| !ids.contains(k)).cloned().collect();
        for id in gone {
            let path = self.points.remove(&id).unwrap();
            std::fs::remove_file(path).unwrap();
        }
    }

    /// Restores every point in `ids` into `scratch` and compares it with its copy.
    pub fn check_all(&self, repo: &Repo, vm: &str, ids: &[String], scratch: &Path, context: &str) {
        for id in ids {
            let out = scratch.join(format!("restored-{id}.raw"));
            let _ = std::fs::remove_file(&out);
            let r = output(repo.restore_cmd(vm, id, &out));
            assert!(r.status.success(), "{context}: restore point {id} fails:\n{}", show(&r));
            assert_same_image(self.copy_of(id), &out, &format!("{context}: point {id}"));
            std::fs::remove_file(&out).unwrap();
        }
    }
}
