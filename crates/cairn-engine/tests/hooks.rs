//! The hooks a scheduler uses to drive a backup: per-disk start/finish with
//! per-disk statistics that add up to the point's, a stop that leaves the
//! repository exactly as it was, and write pacing after every stored record;
//! and the restore's hooks: read pacing after every record read, progress, and
//! a stop that removes the partial image.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cairn_disk::{DiskSource, Extent};
use cairn_engine::{
    BackupHooks, BackupOptions, DiskInput, EngineError, Progress, RestoreHooks, RestoreOutput, backup,
    backup_with_hooks, restore, restore_with_hooks,
};
use cairn_repo::{Encryption, PointStats, Repository};

mod common;
use common::{BS, MemDisk, pattern, plan};

fn opts() -> BackupOptions {
    BackupOptions {
        threads: 2,
        ..BackupOptions::default()
    }
}

fn inputs(disks: &[Vec<u8>], changed: Option<Vec<Option<Vec<Extent>>>>) -> Vec<DiskInput> {
    disks
        .iter()
        .enumerate()
        .map(|(i, d)| DiskInput {
            source: Box::new(MemDisk(d.clone())),
            changed: changed.as_ref().and_then(|c| c[i].clone()),
            changed_since: None,
        })
        .collect()
}

/// Every file of the repository with its content.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Records every call.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    disk_stats: Mutex<Vec<(u32, PointStats)>>,
    totals: Mutex<Vec<(u32, u64)>>,
    last_progress: Mutex<BTreeMap<u32, Progress>>,
    throttled: AtomicU64,
    stop_after_blocks: Option<u64>,
    progress_calls: AtomicU64,
    stop: AtomicBool,
}

impl BackupHooks for Recorder {
    fn disk_starting(&self, disk: u32, total_bytes: u64) -> Result<(), EngineError> {
        self.events.lock().unwrap().push(format!("start {disk}"));
        self.totals.lock().unwrap().push((disk, total_bytes));
        Ok(())
    }
    fn disk_finished(&self, disk: u32, stats: &PointStats) {
        self.events.lock().unwrap().push(format!("end {disk}"));
        self.disk_stats.lock().unwrap().push((disk, stats.clone()));
    }
    fn progress(&self, disk: u32, progress: Progress) {
        self.last_progress.lock().unwrap().insert(disk, progress);
        let n = self.progress_calls.fetch_add(1, Ordering::Relaxed) + 1;
        if self.stop_after_blocks.is_some_and(|limit| n >= limit) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
    fn throttle_write(&self, bytes: u64) {
        self.throttled.fetch_add(bytes, Ordering::Relaxed);
    }
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

fn sum(stats: &[(u32, PointStats)]) -> PointStats {
    let mut t = PointStats::default();
    for (_, s) in stats {
        t.read_bytes += s.read_bytes;
        t.read_blocks += s.read_blocks;
        t.zero_blocks += s.zero_blocks;
        t.unchanged_blocks += s.unchanged_blocks;
        t.dedup_blocks += s.dedup_blocks;
        t.new_blocks += s.new_blocks;
        t.new_bytes += s.new_bytes;
        t.stored_bytes += s.stored_bytes;
    }
    t
}

fn assert_counts_equal(a: &PointStats, b: &PointStats) {
    assert_eq!(
        (
            a.read_bytes,
            a.read_blocks,
            a.zero_blocks,
            a.unchanged_blocks,
            a.dedup_blocks,
            a.new_blocks,
            a.new_bytes,
            a.stored_bytes
        ),
        (
            b.read_bytes,
            b.read_blocks,
            b.zero_blocks,
            b.unchanged_blocks,
            b.dedup_blocks,
            b.new_blocks,
            b.new_bytes,
            b.stored_bytes
        )
    );
}

#[test]
fn per_disk_statistics_add_up_to_the_point() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(&dir.path().join("r"), Encryption::None, None, None).unwrap();
    // Disk 0: random with a zero block; disk 1 repeats a block of disk 0; disk 2 all zeros.
    let mut d0 = pattern(1, 8 * BS as usize);
    d0[2 * BS as usize..3 * BS as usize].fill(0);
    let mut d1 = pattern(2, 5 * BS as usize + 4096);
    d1[..BS as usize].copy_from_slice(&d0[..BS as usize]);
    let d2 = vec![0u8; 3 * BS as usize];
    let mut disks = vec![d0, d1, d2];

    let first = Recorder::default();
    let r = backup_with_hooks(&repo, &plan(), inputs(&disks, None), &opts(), &first).unwrap();
    assert_eq!(
        *first.events.lock().unwrap(),
        ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]
    );
    let per_disk = first.disk_stats.lock().unwrap().clone();
    assert_counts_equal(&sum(&per_disk), &r.point.stats);
    assert_eq!(per_disk[0].1.zero_blocks, 1);
    assert_eq!(per_disk[1].1.dedup_blocks, 1, "disk 1's first block is disk 0's");
    assert_eq!(per_disk[2].1.zero_blocks, 3);
    assert_eq!(per_disk[2].1.new_blocks, 0);
    assert_eq!(first.throttled.load(Ordering::Relaxed), r.point.stats.stored_bytes);
    for (disk, s) in &per_disk {
        assert_eq!(s.busy.len(), 4, "disk {disk}: {:?}", s.busy);
        assert!(!s.bottleneck.is_empty());
        assert!(s.duration_secs <= r.point.stats.duration_secs);
        // Progress of each disk ends at the total announced when it started.
        let total = first.totals.lock().unwrap()[*disk as usize].1;
        let p = first.last_progress.lock().unwrap()[disk];
        assert_eq!((p.done_bytes, p.total_bytes), (total, total), "disk {disk}");
    }

    // An incremental with CBT on disk 0 (one changed block) and none on the others.
    disks[0][5 * BS as usize..5 * BS as usize + 10].fill(0x5A);
    let changed = vec![
        Some(vec![Extent {
            offset: 5 * BS,
            length: 10,
        }]),
        None,
        None,
    ];
    let second = Recorder::default();
    let r = backup_with_hooks(&repo, &plan(), inputs(&disks, Some(changed)), &opts(), &second).unwrap();
    let per_disk = second.disk_stats.lock().unwrap().clone();
    assert_counts_equal(&sum(&per_disk), &r.point.stats);
    assert_eq!(per_disk[0].1.read_blocks, 1);
    assert_eq!(per_disk[0].1.unchanged_blocks, 6, "7 stored blocks, 1 re-read");
    assert_eq!(per_disk[1].1.unchanged_blocks, 6, "read again, all unchanged");
    assert_eq!(second.totals.lock().unwrap()[0], (0, BS));
}

#[test]
fn a_stop_leaves_the_repository_exactly_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let repo = Repository::init(&root, Encryption::None, None, None).unwrap();
    let disks = vec![pattern(1, 40 * BS as usize), pattern(2, 40 * BS as usize)];

    // Stopped during the very first backup: no restore point appears.
    let early = Recorder {
        stop_after_blocks: Some(5),
        ..Recorder::default()
    };
    let err = backup_with_hooks(&repo, &plan(), inputs(&disks, None), &opts(), &early).unwrap_err();
    assert!(matches!(err, EngineError::Stopped), "{err}");
    assert!(repo.list().unwrap().is_empty(), "no chain may appear");
    assert!(cairn_repo::verify::verify(&repo, None, &|_| {}).unwrap().ok);

    backup(&repo, &plan(), inputs(&disks, None), &opts(), &|_| {}).unwrap();
    let before = snapshot(&root);

    // Stopped in the middle of the second disk of an incremental.
    let changed: Vec<Vec<u8>> = vec![pattern(3, 40 * BS as usize), pattern(4, 40 * BS as usize)];
    let mid = Recorder {
        stop_after_blocks: Some(50),
        ..Recorder::default()
    };
    let err = backup_with_hooks(&repo, &plan(), inputs(&changed, None), &opts(), &mid).unwrap_err();
    assert!(matches!(err, EngineError::Stopped), "{err}");
    assert_eq!(
        *mid.events.lock().unwrap(),
        ["start 0", "end 0", "start 1"],
        "disk 1 never finishes"
    );
    assert_eq!(snapshot(&root), before, "the repository must be byte-identical");
    assert!(cairn_repo::verify::verify(&repo, None, &|_| {}).unwrap().ok);

    // Stopping while waiting for a slot (disk_starting) works the same way.
    struct StopWhileWaiting;
    impl BackupHooks for StopWhileWaiting {
        fn disk_starting(&self, disk: u32, _: u64) -> Result<(), EngineError> {
            if disk == 1 { Err(EngineError::Stopped) } else { Ok(()) }
        }
    }
    let err = backup_with_hooks(&repo, &plan(), inputs(&changed, None), &opts(), &StopWhileWaiting).unwrap_err();
    assert!(matches!(err, EngineError::Stopped), "{err}");
    assert_eq!(snapshot(&root), before);

    // The next backup runs normally.
    let r = backup(&repo, &plan(), inputs(&changed, None), &opts(), &|_| {}).unwrap();
    assert_eq!(r.point.stats.new_blocks, 80);
    assert_eq!(repo.chain("vm").unwrap().meta().points.len(), 2);
    assert!(cairn_repo::verify::verify(&repo, None, &|_| {}).unwrap().ok);
}

/// Counts what a restore reports; asks it to stop after `stop_after_reads` reads.
#[derive(Default)]
struct RestoreRecorder {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    last_progress: Mutex<Option<Progress>>,
    stop_after_reads: Option<u64>,
}

impl RestoreHooks for RestoreRecorder {
    fn progress(&self, progress: Progress) {
        let mut last = self.last_progress.lock().unwrap();
        if last.is_none_or(|l| l.done_bytes < progress.done_bytes) {
            *last = Some(progress);
        }
    }

    fn throttle_read(&self, bytes: u64) {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.read_bytes.fetch_add(bytes, Ordering::SeqCst);
    }

    fn stop_requested(&self) -> bool {
        self.stop_after_reads
            .is_some_and(|n| self.reads.load(Ordering::SeqCst) >= n)
    }
}

#[test]
fn restore_paces_every_record_read_and_stops_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(&dir.path().join("r"), Encryption::None, None, None).unwrap();
    let mut data = pattern(7, 24 * BS as usize);
    // Four zero blocks are not stored, so they are neither read nor paced.
    data[(4 * BS) as usize..(8 * BS) as usize].fill(0);
    backup(&repo, &plan(), inputs(&[data.clone()], None), &opts(), &|_| {}).unwrap();
    let chain = repo.chain("vm").unwrap();
    let point = chain.point("latest").unwrap().clone();
    let stored: u64 = chain
        .index(&point)
        .unwrap()
        .disk(0)
        .unwrap()
        .blocks
        .iter()
        .map(|b| u64::from(b.stored_len))
        .sum();

    let out = dir.path().join("restored.raw");
    let hooks = RestoreRecorder::default();
    let stats = restore_with_hooks(
        &repo,
        "vm",
        "latest",
        0,
        RestoreOutput::Path(&out),
        &Default::default(),
        &hooks,
    )
    .unwrap();
    assert_eq!(stats.blocks, 20);
    assert_eq!(
        hooks.reads.load(Ordering::SeqCst),
        20,
        "one throttle_read per block record"
    );
    let paced = hooks.read_bytes.load(Ordering::SeqCst);
    assert!(
        paced > stored && paced < stored + 20 * 4096,
        "paced {paced} bytes for {stored} bytes of payload: records are paced with their headers"
    );
    let last = hooks.last_progress.lock().unwrap().expect("progress was reported");
    assert_eq!((last.done_bytes, last.total_bytes), (20 * BS, 20 * BS));
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // The plain restore gives the same image.
    let plain = dir.path().join("plain.raw");
    restore(&repo, "vm", "latest", 0, &plain, &Default::default(), &|_| {}).unwrap();
    assert_eq!(std::fs::read(&plain).unwrap(), data);

    // A stop ends the restore early and removes the partial file.
    let stopped = dir.path().join("stopped.raw");
    let hooks = RestoreRecorder {
        stop_after_reads: Some(3),
        ..RestoreRecorder::default()
    };
    let err = restore_with_hooks(
        &repo,
        "vm",
        "latest",
        0,
        RestoreOutput::Path(&stopped),
        &Default::default(),
        &hooks,
    )
    .unwrap_err();
    assert!(matches!(err, EngineError::RestoreStopped), "{err}");
    assert!(
        hooks.reads.load(Ordering::SeqCst) < 20,
        "the restore went on after the stop"
    );
    assert!(!stopped.exists(), "the partial image must be removed");
}

/// A disk that records the offsets it is read at.
struct LoggedDisk {
    data: Vec<u8>,
    reads: Mutex<Vec<u64>>,
}

impl DiskSource for LoggedDisk {
    fn describe(&self) -> String {
        "logged".into()
    }
    fn virtual_size(&self) -> u64 {
        self.data.len() as u64
    }
    fn allocation(&self) -> cairn_disk::Result<Vec<Extent>> {
        Ok(vec![Extent {
            offset: 0,
            length: self.data.len() as u64,
        }])
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> cairn_disk::Result<()> {
        self.reads.lock().unwrap().push(offset);
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
}

/// What `disk_reading` announced, per disk.
#[derive(Default)]
struct PlanRecorder(Mutex<Vec<(u32, Vec<u64>)>>);

impl BackupHooks for PlanRecorder {
    fn disk_reading(&self, disk: u32, blocks: &[u64]) -> Result<(), EngineError> {
        self.0.lock().unwrap().push((disk, blocks.to_vec()));
        Ok(())
    }
}

/// The read plan announced before a disk is read is exactly the blocks then read, in that
/// order (a proxy on another machine sends blocks in this order), with CBT as without.
#[test]
fn the_announced_read_plan_is_what_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(&dir.path().join("r"), Encryption::None, None, None).unwrap();
    let len = (5 * BS + 1000) as usize;
    let disk = std::sync::Arc::new(LoggedDisk {
        data: pattern(3, len),
        reads: Mutex::new(Vec::new()),
    });
    struct Shared(std::sync::Arc<LoggedDisk>);
    impl DiskSource for Shared {
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn virtual_size(&self) -> u64 {
            self.0.virtual_size()
        }
        fn allocation(&self) -> cairn_disk::Result<Vec<Extent>> {
            self.0.allocation()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> cairn_disk::Result<()> {
            self.0.read_at(buf, offset)
        }
    }
    let run = |changed: Option<Vec<Extent>>| {
        disk.reads.lock().unwrap().clear();
        let hooks = PlanRecorder::default();
        let input = DiskInput {
            source: Box::new(Shared(disk.clone())),
            changed,
            changed_since: None,
        };
        backup_with_hooks(&repo, &plan(), vec![input], &opts(), &hooks).unwrap();
        let announced = hooks.0.lock().unwrap().clone();
        assert_eq!(announced.len(), 1, "one plan per disk");
        let (no, blocks) = announced[0].clone();
        assert_eq!(no, 0);
        let read: Vec<u64> = disk.reads.lock().unwrap().iter().map(|o| o / BS).collect();
        assert_eq!(read, blocks, "read in the announced order");
        blocks
    };
    assert_eq!(
        run(None),
        vec![0, 1, 2, 3, 4, 5],
        "full: every block, the short last one too"
    );
    let changed = vec![
        Extent {
            offset: BS + 10,
            length: 20,
        },
        Extent {
            offset: 4 * BS,
            length: 2 * BS,
        },
    ];
    assert_eq!(run(Some(changed)), vec![1, 4, 5], "CBT: only the touched blocks");
}
