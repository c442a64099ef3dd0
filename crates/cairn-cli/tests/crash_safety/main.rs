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

#[path = "../common/mod.rs"]
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

mod full_disk;
mod random_kills;
mod retention;
mod steps;
