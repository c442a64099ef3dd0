//! Crash safety (DESIGN §4.3): a `kill -9` at any moment of a backup or a
//! retention run, or a full disk, never damages the restore points that
//! existed before the operation, and whatever the interrupted operation left
//! behind is cleaned by the next one.
//!
//! Every test works on sparse raw images made by a seeded generator and keeps
//! a copy of the disk as it was at each restore point; "intact" always means
//! `cairn verify` exits 0 *and* every point restores byte for byte to its
//! copy. Kill times are spread over the whole length of the operation
//! (measured uninterrupted first), so some kills land before cairn has done
//! anything, some while it writes, some around the commit and some after it
//! finished. Set `CAIRN_CRASH_SEED` to replay a run with another seed; run
//! with `--nocapture` to see where the kills landed.
//!
//! What is not simulated: power loss (the kernel's page cache survives a
//! killed process), so these tests check the write order, cleanup and error
//! paths, not the fsyncs.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const VM: &str = "vm1";

/// Counts how the kills of a test landed, for the log and for the checks
/// that the test really interrupted operations midway.
#[derive(Default)]
struct Tally(BTreeMap<&'static str, usize>);

impl Tally {
    fn add(&mut self, what: &'static str) {
        *self.0.entry(what).or_default() += 1;
    }
    fn get(&self, what: &str) -> usize {
        self.0.get(what).copied().unwrap_or(0)
    }
    fn print(&self, title: &str) {
        eprintln!("{title}:");
        for (k, v) in &self.0 {
            eprintln!("  {v:3}  {k}");
        }
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Writes a CBT file (`OFFSET LENGTH` lines) listing `extents`.
fn write_cbt(path: &Path, extents: &[(u64, u64)]) {
    let mut f = File::create(path).unwrap();
    for (o, l) in extents {
        writeln!(f, "{o} {l}").unwrap();
    }
}

// ------------------------------------------------------------ kill -9 during backup

/// 24 backups killed at random moments, on a chain with points to protect:
/// incrementals, incrementals with CBT, active fulls, with every codec.
#[test]
fn kill_during_backup() {
    const TRIALS: usize = 24;
    let test = "kill_during_backup";
    let mut rng = Rng::new(test_seed(test, 0x6b69_6c6c_0001));
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk0.raw");
    create_disk(&disk, 64 * MIB, 0.3, &mut rng);
    let repo = Repo::init(&tmp.path().join("repo"));
    let mut saved = Saved::new(&tmp.path().join("saved"));
    let cbt = tmp.path().join("changed.txt");
    let bs = ["--block-size", "256K"];

    // The two points to protect: a full and an incremental. How long they
    // take is the yardstick for the kill times.
    let (id, full_time) = repo.backup(VM, &disk, &bs);
    saved.save(&id, &disk);
    scribble(&disk, &mut rng, 20, 2 * MIB);
    let (id, inc_time) = repo.backup(VM, &disk, &bs);
    saved.save(&id, &disk);
    // Estimated length of each kind of backup, refined by every backup that
    // runs to its end.
    let mut est: BTreeMap<&str, f64> = [
        ("incremental", inc_time.as_secs_f64()),
        ("incremental with CBT", inc_time.as_secs_f64()),
        ("active full", full_time.as_secs_f64()),
    ]
    .into();
    eprintln!("{test}: uninterrupted full {full_time:?}, incremental {inc_time:?}");

    // Changes since the last committed point: what a CBT file must list.
    let mut pending: Vec<(u64, u64)> = Vec::new();
    let mut tally = Tally::default();
    for (trial, frac) in stratified(&mut rng, TRIALS, 1.3).into_iter().enumerate() {
        let before = repo.ids(VM);
        let count = rng.range(2, 40) as usize;
        pending.extend(scribble(&disk, &mut rng, count, 4 * MIB));
        let mut extra = s(&bs);
        let codec = *rng.pick(&["none", "lz4", "zstd:1", "zstd:3"]);
        extra.extend(s(&["--compression", codec]));
        let kind = match trial % 4 {
            3 => {
                extra.push("--full".into());
                "active full"
            }
            1 => {
                write_cbt(&cbt, &pending);
                extra.extend(["--cbt".to_string(), format!("0={}", cbt.display())]);
                "incremental with CBT"
            }
            _ => "incremental",
        };
        let delay = Duration::from_secs_f64(est[kind] * frac);
        let ctx = format!("{test} trial {trial} ({kind}, killed after {delay:?})");
        let (ending, _, finished) = run_and_kill(repo.backup_cmd(VM, &disk, &strs(&extra)), delay);
        if let Some(took) = finished {
            est.insert(kind, 0.5 * est[kind] + 0.5 * took.as_secs_f64());
        }

        let left = repo.leftovers(VM);
        let now = repo.ids(VM);
        assert!(
            now.starts_with(&before) && now.len() <= before.len() + 1,
            "{ctx}: points before the backup {before:?}, after the kill {now:?}"
        );
        let committed = now.len() == before.len() + 1;
        if ending == Ending::Completed {
            assert!(committed, "{ctx}: backup exited 0 but no new point is listed: {now:?}");
        }
        tally.add(match (ending, committed, left.is_empty()) {
            (Ending::Completed, ..) => "finished before the kill",
            (Ending::Killed, true, _) => "killed after the commit",
            (Ending::Killed, false, false) => "killed while writing (left files behind)",
            (Ending::Killed, false, true) => "killed before writing anything",
        });
        if committed {
            saved.save(now.last().unwrap(), &disk);
            pending.clear();
        }

        repo.verify_ok(&ctx);
        saved.check_all(&repo, VM, &now, tmp.path(), &ctx);

        // The next backup works, cleans up, and restores the current disk.
        pending.extend(scribble(&disk, &mut rng, 3, 512 * KIB));
        let (id, took) = repo.backup(VM, &disk, &bs);
        for kind in ["incremental", "incremental with CBT"] {
            est.insert(kind, 0.7 * est[kind] + 0.3 * took.as_secs_f64());
        }
        saved.save(&id, &disk);
        pending.clear();
        let after = repo.leftovers(VM);
        assert!(
            after.is_empty(),
            "{ctx}: the backup after the kill left files not accounted for: {after:?} (after the kill: {left:?})"
        );
        saved.check_all(&repo, VM, &[id], tmp.path(), &format!("{ctx}, next backup"));

        // Keep the chain short so each trial restores only a few points.
        repo.retain(VM, 2);
        saved.keep_only(&repo.ids(VM));
    }
    tally.print(&format!("{test}: where the kills landed"));
    assert!(
        tally.get("killed while writing (left files behind)") > 0,
        "{test}: no kill interrupted a backup while it wrote; the kill times do not cover the backup"
    );
}

/// The first backup of a VM killed at random moments: the repository's other
/// VM is untouched, the half-made chain is not reported as a damaged one, and
/// the next backup of the new VM works.
#[test]
fn kill_during_first_backup_of_a_vm() {
    const TRIALS: usize = 8;
    let test = "kill_during_first_backup_of_a_vm";
    let mut rng = Rng::new(test_seed(test, 0x6b69_6c6c_0002));
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk0.raw");
    create_disk(&disk, 32 * MIB, 0.2, &mut rng);
    let repo = Repo::init(&tmp.path().join("repo"));
    let mut saved = Saved::new(&tmp.path().join("saved"));
    let (id, full_time) = repo.backup(VM, &disk, &[]);
    saved.save(&id, &disk);

    let mut tally = Tally::default();
    for (trial, frac) in stratified(&mut rng, TRIALS, 1.3).into_iter().enumerate() {
        let vm = format!("new{trial}");
        let delay = full_time.mul_f64(frac);
        let ctx = format!("{test} trial {trial} (killed after {delay:?})");
        let (ending, _, _) = run_and_kill(repo.backup_cmd(&vm, &disk, &[]), delay);

        let mut c = cairn(["points", "--json", "--vm", &vm, "--repo"]);
        c.arg(&repo.root);
        let listed = output(c);
        let committed = listed.status.success();
        if committed {
            assert_eq!(repo.ids(&vm).len(), 1, "{ctx}");
            tally.add(if ending == Ending::Completed {
                "finished before the kill"
            } else {
                "killed after the commit"
            });
        } else {
            assert_eq!(
                ending,
                Ending::Killed,
                "{ctx}: backup exited 0 but its VM has no points:\n{}",
                show(&listed)
            );
            let err = String::from_utf8_lossy(&listed.stderr);
            assert!(
                err.contains("no backups of VM"),
                "{ctx}: points --vm {vm}:\n{}",
                show(&listed)
            );
            tally.add("killed before the commit");
        }

        repo.verify_ok(&ctx);
        saved.check_all(&repo, VM, &repo.ids(VM), tmp.path(), &ctx);
        // A VM whose first backup never committed has no backups; it is not a
        // chain whose points are all lost.
        let mut c = cairn(["verify", "-q", "--vm", &vm, "--repo"]);
        c.arg(&repo.root);
        let v = output(c);
        if committed {
            assert!(v.status.success(), "{ctx}: verify --vm {vm}:\n{}", show(&v));
        } else {
            assert_eq!(
                v.status.code(),
                Some(2),
                "{ctx}: verify --vm {vm} of a VM without backups:\n{}",
                show(&v)
            );
            assert!(
                String::from_utf8_lossy(&v.stderr).contains("no backups of VM"),
                "{ctx}: verify --vm {vm}:\n{}",
                show(&v)
            );
        }

        let (id, _) = repo.backup(&vm, &disk, &[]);
        let left = repo.leftovers(&vm);
        assert!(
            left.is_empty(),
            "{ctx}: the backup after the kill left files not accounted for: {left:?}"
        );
        let ids = repo.ids(&vm);
        assert_eq!(ids.last(), Some(&id), "{ctx}");
        let out = tmp.path().join("restored.raw");
        ok(repo.restore_cmd(&vm, &id, &out));
        assert_same_image(&disk, &out, &format!("{ctx}: next backup"));
        std::fs::remove_file(&out).unwrap();
    }
    tally.print(&format!("{test}: where the kills landed"));
    assert!(
        tally.get("killed before the commit") > 0,
        "{test}: no kill interrupted a first backup"
    );
}

/// Regression: a first backup killed before its commit leaves a chain folder
/// without `chain.meta`; `verify --vm` called that "DAMAGED … every restore
/// point of it is lost" (exit 1) although the VM never had a point, while
/// `verify` and `points --vm` said there were no backups. The folder is made
/// here exactly as such a kill leaves it.
#[test]
fn verify_of_a_vm_whose_first_backup_was_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let disk = tmp.path().join("disk0.raw");
    create_disk(&disk, 8 * MIB, 0.2, &mut Rng::new(7));
    let dir = cairn_repo::Repository::open(&repo.root, None).unwrap().chain_dir("new");
    std::fs::create_dir_all(&dir).unwrap();
    File::create(dir.join("lock")).unwrap();
    std::fs::write(dir.join("00000001.full.tmp"), vec![0u8; 4096]).unwrap();

    let mut c = cairn(["verify", "--vm", "new", "--repo"]);
    c.arg(&repo.root);
    let out = output(c);
    assert_eq!(
        out.status.code(),
        Some(2),
        "verify --vm of a VM without backups:\n{}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no backups of VM \"new\""),
        "{}",
        show(&out)
    );
    repo.verify_ok("a repository with an interrupted first backup");

    // The next backup of the VM removes the leftover.
    repo.backup("new", &disk, &[]);
    assert!(repo.leftovers("new").is_empty(), "{:?}", repo.leftovers("new"));
    let mut c = cairn(["verify", "-q", "--vm", "new", "--repo"]);
    c.arg(&repo.root);
    ok(c);
}

// ------------------------------------------------------------ kill -9 during retention

/// The points an uninterrupted `retain --keep keep` leaves: the newest
/// `keep` for forever forward; for forward, whole segments (a full and its
/// increments) go while the points after them are at least `keep`.
fn after_retention(points: &[Point], keep: usize, forward: bool) -> Vec<String> {
    let start = if forward {
        let mut start = 0;
        while let Some(next) = (start + 1..points.len()).find(|&i| points[i].full) {
            if points.len() - next < keep {
                break;
            }
            start = next;
        }
        start
    } else {
        points.len().saturating_sub(keep)
    };
    points[start..].iter().map(|p| p.id.clone()).collect()
}

/// Copies a folder tree and fsyncs every file, so timing a run on the copy
/// does not include flushing the copy.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
            File::open(&dst).unwrap().sync_all().unwrap();
        }
    }
}

struct Chain<'a> {
    repo: &'a Repo,
    disk: &'a Path,
    args: Vec<String>,
    saved: Saved,
}

/// A new temporary folder with `disk0.raw` (`size` bytes of random data, a tenth of it holes) and an
/// empty repository `repo`.
fn disk_and_repo(size: u64, rng: &mut Rng) -> (tempfile::TempDir, PathBuf, Repo) {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk0.raw");
    create_disk(&disk, size, 0.1, rng);
    let repo = Repo::init(&tmp.path().join("repo"));
    (tmp, disk, repo)
}

impl<'a> Chain<'a> {
    /// Backups of `disk` into `repo` in blocks of `block_size`, uncompressed, with `method`'s
    /// arguments; the points are saved in `dir/saved`.
    fn new(repo: &'a Repo, disk: &'a Path, dir: &Path, block_size: &str, method: &[&str]) -> Chain<'a> {
        let mut args = s(&["--block-size", block_size, "--compression", "none"]);
        args.extend(s(method));
        Chain {
            repo,
            disk,
            args,
            saved: Saved::new(&dir.join("saved")),
        }
    }
}

impl Chain<'_> {
    /// Backs up after rewriting 30–50 % of the disk with random data.
    fn grow(&mut self, rng: &mut Rng) -> String {
        let fraction = 0.3 + 0.2 * rng.unit();
        rewrite(self.disk, rng, fraction);
        let (id, _) = self.repo.backup(VM, self.disk, &strs(&self.args));
        self.saved.save(&id, self.disk);
        id
    }

    fn grow_to(&mut self, n: usize, rng: &mut Rng) {
        while self.repo.points(VM).len() < n {
            self.grow(rng);
        }
    }
}

/// 20 retention runs killed at random moments, each on a chain of 6 points
/// with large increments, keeping 1 to 5 of them.
fn kill_during_retention(test: &str, seed: u64, method: &[&str]) {
    const POINTS: usize = 6;
    const TRIALS: usize = 20;
    let forward = method.contains(&"forward");
    let mut rng = Rng::new(test_seed(test, seed));
    let (tmp, disk, repo) = disk_and_repo(48 * MIB, &mut rng);
    let mut chain = Chain::new(&repo, &disk, tmp.path(), "1M", method);
    chain.grow(&mut rng);
    chain.grow_to(POINTS, &mut rng);

    // How long an uninterrupted retention takes for each `--keep`, timed on
    // copies of the repository; the copies also check the expected outcome.
    let mut took = BTreeMap::new();
    let points = repo.points(VM);
    for keep in 1..POINTS {
        let copy = Repo {
            root: tmp.path().join("calibration"),
        };
        copy_tree(&repo.root, &copy.root);
        let started = Instant::now();
        copy.retain(VM, keep);
        took.insert(keep, started.elapsed());
        assert_eq!(
            copy.ids(VM),
            after_retention(&points, keep, forward),
            "{test}: retain --keep {keep} on a copy"
        );
        std::fs::remove_dir_all(&copy.root).unwrap();
    }
    eprintln!("{test}: uninterrupted retention by --keep: {took:?}");

    let mut tally = Tally::default();
    for (trial, frac) in stratified(&mut rng, TRIALS, 1.3).into_iter().enumerate() {
        chain.grow_to(POINTS, &mut rng);
        let points = repo.points(VM);
        let old: Vec<String> = points.iter().map(|p| p.id.clone()).collect();
        let keep = 1 + trial % (POINTS - 1);
        let expected = after_retention(&points, keep, forward);
        let delay = took[&keep].mul_f64(frac);
        let ctx = format!(
            "{test} trial {trial} (--keep {keep} of {}, killed after {delay:?})",
            old.len()
        );
        let (ending, _, finished) = run_and_kill(repo.retain_cmd(VM, keep), delay);
        if let Some(t) = finished {
            // One timing on a busy machine can be far off; runs that end by
            // themselves pull the estimate back.
            took.insert(keep, (took[&keep] + t) / 2);
        }

        let left = repo.leftovers(VM);
        let now = repo.ids(VM);
        assert!(
            now == old || now == expected,
            "{ctx}: the chain lists {now:?}; expected the points before ({old:?}) or the ones retention keeps ({expected:?})"
        );
        if ending == Ending::Completed {
            assert_eq!(now, expected, "{ctx}: retain exited 0");
        }
        tally.add(match (ending, now == expected && now != old, left.is_empty()) {
            (Ending::Completed, ..) => "finished before the kill",
            (Ending::Killed, true, _) => "killed after the commit",
            (Ending::Killed, false, false) => "killed before the commit, after writing",
            (Ending::Killed, false, true) => "killed before writing anything (or nothing to remove)",
        });

        repo.verify_ok(&ctx);
        chain.saved.check_all(&repo, VM, &now, tmp.path(), &ctx);

        // A backup and a retention run after the kill work and clean up.
        let id = chain.grow(&mut rng);
        let after = repo.leftovers(VM);
        assert!(
            after.is_empty(),
            "{ctx}: the backup after the kill left files not accounted for: {after:?} (after the kill: {left:?})"
        );
        chain
            .saved
            .check_all(&repo, VM, &[id], tmp.path(), &format!("{ctx}, next backup"));
        let expected = after_retention(&repo.points(VM), keep, forward);
        repo.retain(VM, keep);
        let ids = repo.ids(VM);
        assert_eq!(ids, expected, "{ctx}: retain --keep {keep} after the next backup");
        chain.saved.keep_only(&ids);
        let after = repo.leftovers(VM);
        assert!(
            after.is_empty(),
            "{ctx}: the retention after the kill left files not accounted for: {after:?}"
        );
        // Space of removed points is given back, also what an interrupted run left unpunched.
        let (needed, allocated) = repo.space(VM);
        assert!(
            allocated <= needed + 4 * MIB,
            "{ctx}: the chain's data files occupy {allocated} bytes, its points need {needed}"
        );
    }
    tally.print(&format!("{test}: where the kills landed"));
    let ids = repo.ids(VM);
    chain
        .saved
        .check_all(&repo, VM, &ids, tmp.path(), &format!("{test}: at the end"));
    assert!(
        tally.get("killed before the commit, after writing") + tally.get("killed after the commit") > 0,
        "{test}: no kill interrupted a retention run midway; the kill times do not cover it"
    );
}

#[test]
fn kill_during_retention_forever_forward() {
    kill_during_retention("kill_during_retention_forever_forward", 0x6b69_6c6c_0003, &[]);
}

#[test]
fn kill_during_retention_forward() {
    kill_during_retention(
        "kill_during_retention_forward",
        0x6b69_6c6c_0004,
        &["--method", "forward", "--full-every", "2", "--full-kind", "synthetic"],
    );
}

// ------------------------------------------------------------ kill -9 at each step

/// The system calls that change a repository, with how many calls of each
/// to kill at (the first N; the loop also stops once an operation makes
/// fewer calls). Data writes are left to the random kills, which land in
/// them most of the time; these steps are narrow windows random kills
/// rarely hit.
const STEPS: &[(&str, usize)] = &[
    ("fsync,fdatasync", 20),
    ("rename,renameat,renameat2", 10),
    ("unlink,unlinkat", 20),
    ("ftruncate", 5),
    ("fallocate", 4),
    ("copy_file_range", 8),
];

/// Backups killed (with strace) on entering each fsync, rename, unlink,
/// truncate and block copy in turn: an incremental, a synthetic full and an
/// active full. Each kill also lands on the cleanup of what the previous one
/// left.
#[test]
fn kill_at_each_step_of_backup() {
    require_tool("strace", "strace");
    let test = "kill_at_each_step_of_backup";
    let mut rng = Rng::new(test_seed(test, 0x6b69_6c6c_0006));
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk0.raw");
    create_disk(&disk, 16 * MIB, 0.2, &mut rng);
    let repo = Repo::init(&tmp.path().join("repo"));
    let mut saved = Saved::new(&tmp.path().join("saved"));
    let sessions: [(&str, &[&str]); 3] = [
        ("incremental", &["--block-size", "256K"]),
        (
            "synthetic full",
            &["--block-size", "256K", "--method", "forward", "--full-every", "1"],
        ),
        ("active full", &["--block-size", "256K", "--full"]),
    ];
    let (id, _) = repo.backup(VM, &disk, sessions[0].1);
    saved.save(&id, &disk);

    let mut tally = Tally::default();
    for (session, args) in sessions {
        for &(syscalls, max) in STEPS {
            for nth in 1..=max {
                let ctx = format!("{test}: {session} killed on entering call {nth} of {syscalls}");
                let before = repo.ids(VM);
                scribble(&disk, &mut rng, 3, 256 * KIB);
                let (ending, _) = run_killable(kill_at_syscall(&repo.backup_cmd(VM, &disk, args), syscalls, nth));
                let now = repo.ids(VM);
                assert!(
                    now.starts_with(&before) && now.len() <= before.len() + 1,
                    "{ctx}: points before {before:?}, after {now:?}"
                );
                let committed = now.len() > before.len();
                if ending == Ending::Completed {
                    assert!(committed, "{ctx}: backup exited 0 but listed no new point");
                }
                if committed {
                    saved.save(now.last().unwrap(), &disk);
                }
                repo.verify_ok(&ctx);
                saved.check_all(&repo, VM, &now, tmp.path(), &ctx);
                if ending == Ending::Completed {
                    break; // it makes fewer than `nth` such calls
                }
                tally.add(if committed {
                    "killed after the commit"
                } else {
                    "killed before the commit"
                });
            }
            // The next backup works and leaves nothing behind.
            let (id, _) = repo.backup(VM, &disk, args);
            saved.save(&id, &disk);
            let left = repo.leftovers(VM);
            assert!(
                left.is_empty(),
                "{test}: {session}: the backup after kills at {syscalls} left {left:?}"
            );
            saved.check_all(
                &repo,
                VM,
                &[id],
                tmp.path(),
                &format!("{test}: {session}, after kills at {syscalls}"),
            );
            repo.retain(VM, 2);
            saved.keep_only(&repo.ids(VM));
        }
    }
    tally.print(&format!("{test}: kills"));
    assert!(
        tally.get("killed before the commit") > 0 && tally.get("killed after the commit") > 0,
        "{test}: kills missed the commit"
    );
}

/// Retention runs killed (with strace) on entering each fsync, rename,
/// unlink, truncate, hole punch and block copy in turn, for both methods.
#[test]
fn kill_at_each_step_of_retention() {
    require_tool("strace", "strace");
    let test = "kill_at_each_step_of_retention";
    let mut rng = Rng::new(test_seed(test, 0x6b69_6c6c_0007));
    let methods: [(&str, &[&str]); 2] = [
        ("forever forward", &[]),
        ("forward", &["--method", "forward", "--full-every", "2"]),
    ];
    let mut tally = Tally::default();
    for (method, method_args) in methods {
        let forward = !method_args.is_empty();
        let (tmp, disk, repo) = disk_and_repo(16 * MIB, &mut rng);
        let mut chain = Chain::new(&repo, &disk, tmp.path(), "256K", method_args);
        chain.grow(&mut rng);
        for &(syscalls, max) in STEPS {
            for nth in 1..=max {
                let ctx = format!("{test}: {method} retain --keep 1 killed on entering call {nth} of {syscalls}");
                chain.grow_to(4, &mut rng);
                let points = repo.points(VM);
                let old: Vec<String> = points.iter().map(|p| p.id.clone()).collect();
                let expected = after_retention(&points, 1, forward);
                let (ending, _) = run_killable(kill_at_syscall(&repo.retain_cmd(VM, 1), syscalls, nth));
                let now = repo.ids(VM);
                assert!(
                    now == old || now == expected,
                    "{ctx}: the chain lists {now:?}; expected {old:?} or {expected:?}"
                );
                if ending == Ending::Completed {
                    assert_eq!(now, expected, "{ctx}: retain exited 0");
                }
                repo.verify_ok(&ctx);
                chain.saved.check_all(&repo, VM, &now, tmp.path(), &ctx);
                if ending == Ending::Completed {
                    break;
                }
                tally.add(if now == old {
                    "killed before the commit"
                } else {
                    "killed after the commit"
                });
            }
            // A backup and a retention run after the kills work and clean up.
            chain.grow(&mut rng);
            let left = repo.leftovers(VM);
            assert!(
                left.is_empty(),
                "{test}: {method}: the backup after kills at {syscalls} left {left:?}"
            );
            let expected = after_retention(&repo.points(VM), 1, forward);
            repo.retain(VM, 1);
            let ids = repo.ids(VM);
            assert_eq!(ids, expected, "{test}: {method}: retain after kills at {syscalls}");
            chain.saved.keep_only(&ids);
            chain.saved.check_all(
                &repo,
                VM,
                &ids,
                tmp.path(),
                &format!("{test}: {method}, after kills at {syscalls}"),
            );
            let (needed, allocated) = repo.space(VM);
            assert!(
                allocated <= needed + MIB,
                "{test}: {method}: data files occupy {allocated} bytes, the points need {needed}"
            );
        }
    }
    tally.print(&format!("{test}: kills"));
    assert!(
        tally.get("killed before the commit") > 0 && tally.get("killed after the commit") > 0,
        "{test}: kills missed the commit"
    );
}

// ------------------------------------------------------------ full disk

/// A tmpfs mounted for the life of the value (unmounted on drop, also when
/// the test panics).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}. The full-disk test needs root and util-linux's mount"));
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs at {} ({}): {}. The full-disk test needs root (it runs `mount -t tmpfs`); \
             run the tests as root, e.g. with scripts/test.sh",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { dir: dir.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

const PAGE: u64 = 4096;

/// Fills the file system of `path` with one file until it is full, then
/// frees exactly `free` bytes (a multiple of the page size) of it.
fn fill_up(path: &Path, free: u64) {
    let mut f = File::create(path).unwrap();
    let buf = vec![0x5au8; MIB as usize];
    let mut chunk = buf.len();
    loop {
        match f.write(&buf[..chunk]) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) && chunk > PAGE as usize => chunk = PAGE as usize,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let len = f.metadata().unwrap().len().div_ceil(PAGE) * PAGE;
    assert!(len >= free, "only {len} bytes were free, {free} wanted");
    f.set_len(len - free).unwrap();
}

/// Asserts that a failed command reported ENOSPC and named a file of the repository.
fn assert_enospc(out: &std::process::Output, repo: &Repo, ctx: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{ctx}: expected exit code 2:\n{}",
        show(out)
    );
    assert!(
        err.contains("No space left on device"),
        "{ctx}: the error does not say the disk is full:\n{}",
        show(out)
    );
    assert!(
        err.contains(&*repo.root.to_string_lossy()),
        "{ctx}: the error does not name the file that could not be written:\n{}",
        show(out)
    );
    err
}

/// A repository on a 48 MiB tmpfs: a backup that cannot fit fails with a
/// clear error and harms nothing; then the free space is set so that a
/// backup runs out of it at every stage of its commit (data file, index,
/// metadata), and a retention run on a full disk; each time the points
/// before stay intact and the next operation cleans up.
#[test]
fn full_disk() {
    let test = "full_disk";
    let mut rng = Rng::new(test_seed(test, 0x6b69_6c6c_0005));
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    let _tmpfs = Tmpfs::mount(&mnt, "48m");
    let repo = Repo::init(&mnt.join("repo"));
    let filler = mnt.join("filler");
    let disk = tmp.path().join("disk0.raw");
    let mut saved = Saved::new(&tmp.path().join("saved"));
    std::fs::File::create(&disk).unwrap().set_len(64 * MIB).unwrap();
    write_region(&disk, 0, 8 * MIB, Fill::Random, &mut rng);
    write_region(&disk, 8 * MIB, 8 * MIB, Fill::Text, &mut rng);
    write_region(&disk, 40 * MIB, 4 * MIB, Fill::Pattern, &mut rng);

    let (p1, _) = repo.backup(VM, &disk, &[]);
    saved.save(&p1, &disk);

    // 40 MiB of new random data cannot fit next to the first point.
    write_region(&disk, 16 * MIB, 40 * MIB, Fill::Random, &mut rng);
    let out = output(repo.backup_cmd(VM, &disk, &[]));
    let err = assert_enospc(&out, &repo, "backup of 40 MiB new data on a full disk");
    eprintln!("{test}: the backup that does not fit says: {}", err.trim());
    repo.verify_ok("after the failed backup");
    assert_eq!(repo.ids(VM), std::slice::from_ref(&p1), "after the failed backup");
    saved.check_all(
        &repo,
        VM,
        std::slice::from_ref(&p1),
        tmp.path(),
        "after the failed backup",
    );
    // Retention has nothing to remove but must work on the full repository.
    repo.retain(VM, 1);

    // Space allows a small backup: the disk as at the first point, plus two
    // changed blocks.
    std::fs::copy(saved.copy_of(&p1), &disk).unwrap();
    let small = |rng: &mut Rng| {
        write_region(&disk, 20 * MIB, MIB, Fill::Random, rng);
        write_region(&disk, 50 * MIB, MIB, Fill::Random, rng);
    };
    let small_args = ["--compression", "none"];
    small(&mut rng);
    let (p2, _) = repo.backup(VM, &disk, &small_args);
    saved.save(&p2, &disk);
    saved.check_all(
        &repo,
        VM,
        &repo.ids(VM),
        tmp.path(),
        "small backup after the failed one",
    );
    let left = repo.leftovers(VM);
    assert!(left.is_empty(), "leftovers after the small backup: {left:?}");
    assert!(
        tmp_files(&repo.root).is_empty(),
        "*.tmp files after the small backup: {:?}",
        tmp_files(&repo.root)
    );

    // Every backup below changes the same two blocks again, so its data file
    // is as long as this one's.
    let data_len = {
        let r = cairn_repo::Repository::open(&repo.root, None).unwrap();
        let meta = r.read_meta(&r.chain_dir(VM)).unwrap();
        meta.files.last().unwrap().committed_len
    };
    assert!(
        data_len > 2 * MIB && data_len % PAGE == 0,
        "{test}: data file of a two-block backup has {data_len} bytes"
    );
    // Free space from two pages short of the data file to well past the
    // whole commit: the backup fails writing its data file, its index or the
    // metadata, or succeeds.
    let mut stages = Tally::default();
    for pages in -2i64..=5 {
        let free = (data_len as i64 + pages * PAGE as i64) as u64;
        let ctx = format!("{test}: backup with {free} bytes free (data file {data_len} bytes)");
        let before = repo.ids(VM);
        small(&mut rng);
        fill_up(&filler, free);
        let out = output(repo.backup_cmd(VM, &disk, &small_args));
        std::fs::remove_file(&filler).unwrap();
        let now = repo.ids(VM);
        if out.status.success() {
            assert_eq!(now.len(), before.len() + 1, "{ctx}");
            saved.save(now.last().unwrap(), &disk);
            stages.add("succeeded");
        } else {
            let err = assert_enospc(&out, &repo, &ctx);
            assert_eq!(now, before, "{ctx}: a failed backup changed the points");
            // The failed run removed what it wrote; nothing waits for the next one.
            let left = repo.leftovers(VM);
            assert!(left.is_empty(), "{ctx}: the failed backup left {left:?}");
            assert!(tmp_files(&repo.root).is_empty(), "{ctx}: {:?}", tmp_files(&repo.root));
            stages.add(if err.contains("chain.meta") {
                "failed writing the metadata"
            } else if err.contains(".idx") {
                "failed writing the index"
            } else {
                "failed writing the data file"
            });
        }
        repo.verify_ok(&ctx);
        saved.check_all(&repo, VM, &now, tmp.path(), &ctx);
    }
    stages.print(&format!("{test}: how the backups with little free space ended"));
    for stage in ["failed writing the data file", "succeeded"] {
        assert!(
            stages.get(stage) > 0,
            "{test}: no backup {stage}; the free space sweep missed its mark"
        );
    }
    assert!(
        stages.get("failed writing the index") + stages.get("failed writing the metadata") > 0,
        "{test}: no backup failed in its commit; the free space sweep missed its mark"
    );

    // A backup on a disk without a free byte fails at its first write and
    // leaves nothing behind (no empty data file, no index), in the same run.
    let before = repo.ids(VM);
    small(&mut rng);
    fill_up(&filler, 0);
    let out = output(repo.backup_cmd(VM, &disk, &small_args));
    let left = repo.leftovers(VM);
    let tmps = tmp_files(&repo.root);
    std::fs::remove_file(&filler).unwrap();
    assert_enospc(&out, &repo, "backup with 0 bytes free");
    assert!(left.is_empty(), "{test}: a backup with 0 bytes free left {left:?}");
    assert!(tmps.is_empty(), "{test}: a backup with 0 bytes free left {tmps:?}");
    assert_eq!(repo.ids(VM), before, "{test}: a failed backup changed the points");

    // Retention on a disk without a free byte: the chain's space reserve
    // makes room for its commit, so it removes the points and gives their
    // space back (merging increments into the full may wait for space).
    // Dropping the two oldest points frees the second one's data file: the
    // later backups all rewrote its two blocks.
    assert!(before.len() >= 4, "{test}: {before:?}");
    let keep = before.len() - 2;
    fill_up(&filler, 0);
    let free_before = rustix::fs::statvfs(&mnt).map(|s| s.f_bavail * s.f_frsize).unwrap_or(0);
    let out = output(repo.retain_cmd(VM, keep));
    let free_after = rustix::fs::statvfs(&mnt).map(|s| s.f_bavail * s.f_frsize).unwrap_or(0);
    std::fs::remove_file(&filler).unwrap();
    assert!(
        out.status.success(),
        "{test}: retain --keep {keep} with 0 bytes free failed:\n{}",
        show(&out)
    );
    eprintln!("{test}: retain with 0 bytes free gave back {free_before} → {free_after} bytes free");
    assert!(
        free_after >= free_before + MIB,
        "{test}: retain with 0 bytes free gave too little space back ({free_before} → {free_after} bytes free)"
    );
    let now = repo.ids(VM);
    assert_eq!(now, before[2..], "retain --keep {keep} on a full disk");
    repo.verify_ok("after retain on a full disk");
    saved.check_all(&repo, VM, &now, tmp.path(), "after retain on a full disk");
    let left = repo.leftovers(VM);
    assert!(left.is_empty(), "leftovers after retain on a full disk: {left:?}");
    assert!(
        repo.root
            .join("chains")
            .read_dir()
            .unwrap()
            .all(|d| d.unwrap().path().join("reserve").exists()),
        "{test}: the reserve was not allocated again after retention gave space back"
    );

    // Room for metadata but not for merging increments into the full file:
    // retention must still drop the points and give their space back (the
    // merge waits for a later run).
    if now.len() > 1 {
        fill_up(&filler, 256 << 10);
        let free_before = rustix::fs::statvfs(&mnt).map(|s| s.f_bavail * s.f_frsize).unwrap_or(0);
        let out = output(repo.retain_cmd(VM, 1));
        let free_after = rustix::fs::statvfs(&mnt).map(|s| s.f_bavail * s.f_frsize).unwrap_or(0);
        std::fs::remove_file(&filler).unwrap();
        assert!(
            out.status.success(),
            "{test}: retain with little free space failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            repo.ids(VM),
            [before.last().unwrap().clone()],
            "{test}: retain --keep 1 with little free space"
        );
        assert!(
            free_after > free_before,
            "{test}: retain gave no space back ({free_before} → {free_after} bytes free)"
        );
        repo.verify_ok("after retain with little free space");
        saved.check_all(
            &repo,
            VM,
            &repo.ids(VM),
            tmp.path(),
            "after retain with little free space",
        );
    }

    // With space back, retention works and cleans what the failures left.
    repo.retain(VM, 1);
    let ids = repo.ids(VM);
    assert_eq!(ids, [before.last().unwrap().clone()], "retain --keep 1");
    repo.verify_ok("after retain");
    saved.check_all(&repo, VM, &ids, tmp.path(), "after retain");
    let left = repo.leftovers(VM);
    assert!(left.is_empty(), "leftovers after retain: {left:?}");
    assert!(
        tmp_files(&repo.root).is_empty(),
        "*.tmp files after retain: {:?}",
        tmp_files(&repo.root)
    );
}
