//! Backup: one restore point of a VM from its disks.
//!
//! Threads per disk: one reader (source stage), N workers (proxy stage: zero
//! check, keyed hash, comparison with the previous point, dedup lookup,
//! compression, encryption), and the calling thread as writer (target stage).
//! Queues between them are bounded, so memory is about
//! `(2 × workers + 2) × block size` whatever the disk size.
//!
//! A caller that schedules the work (the backup server's job manager) passes
//! [`BackupHooks`] to [`backup_with_hooks`]: it hears when each disk starts
//! (and may hold it back there until a task slot is free) and ends (with the
//! disk's own statistics), paces repository writes, and can stop the backup
//! at the next block. A stopped backup ends with [`EngineError::Stopped`] and,
//! like any failed backup, leaves the repository as it was: nothing is
//! visible before the final commit, and the uncommitted data file is removed
//! when the session is dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_disk::DiskSource;
use cairn_disk::buf::AlignedBuf;
use cairn_disk::extent::{self, Extent};
use cairn_disk::raw::is_zero;
use cairn_format::codec::{Compression, Compressor};
use cairn_format::crypto::Keys;
use cairn_format::index::{BlockRef, DiskMap, PointIndex};
use cairn_format::record::RecordEncoder;
use cairn_repo::chain::{DiskMeta, PointStats};
use cairn_repo::{BackupPlan, BackupSession, PointMeta, Repository, SessionKind};
use crossbeam_channel::bounded;

use crate::stages::{Busy, Progress, bottleneck};
use crate::{EngineError, Result};

/// Tuning of the data path.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// Block compression.
    pub compression: Compression,
    /// Worker threads for the proxy stage (default: all cores).
    pub threads: usize,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            compression: Compression::DEFAULT,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// One disk to back up, with the extents that changed since the previous
/// restore point when the source tracks them (CBT).
pub struct DiskInput {
    /// The disk.
    pub source: Box<dyn DiskSource>,
    /// Changed extents since the previous point; `None` reads all allocated data.
    pub changed: Option<Vec<Extent>>,
    /// When set, `changed` holds what changed since the source with this
    /// identity (a differencing child's parent): it is used only if the
    /// previous point's disk was read from that source, else every allocated
    /// block is read.
    pub changed_since: Option<String>,
}

/// What a backup produced.
#[derive(Clone, Debug)]
pub struct BackupResult {
    /// The new restore point.
    pub point: PointMeta,
    /// What kind of session wrote it.
    pub kind: SessionKind,
    /// Decisions worth telling the user (changed extents not used, and why).
    pub notes: Vec<String>,
}

/// What a worker made of one block.
enum Outcome {
    Zero,
    Unchanged(BlockRef),
    Duplicate(BlockRef),
    Stored {
        record: Vec<u8>,
        stored_len: u32,
        hash: [u8; 32],
        raw_len: u32,
    },
}

#[derive(Default)]
struct Counters {
    read_bytes: AtomicU64,
    read_blocks: AtomicU64,
}

/// What a caller hears from, and how it steers, a running backup
/// ([`backup_with_hooks`]). Every method has a default that does nothing.
///
/// Disks are processed one after the other, in the order given, numbered
/// from 0. For each disk the engine calls [`disk_starting`](Self::disk_starting),
/// moves its blocks (calling [`progress`](Self::progress),
/// [`throttle_write`](Self::throttle_write) and
/// [`stop_requested`](Self::stop_requested) as it goes), then
/// [`disk_finished`](Self::disk_finished). The restore point is committed
/// after the last disk finished; until then nothing is visible in the
/// repository, so a disk that "finished" is only final once the backup
/// returns `Ok`.
pub trait BackupHooks: Sync {
    /// Disk `disk` is about to be read; `total_bytes` is what will be read
    /// from it (the changed or allocated blocks). May block, e.g. until a
    /// task slot is free; time spent here is not counted in the statistics.
    /// An error ends the backup with it (return [`EngineError::Stopped`] to
    /// stop while waiting).
    fn disk_starting(&self, disk: u32, total_bytes: u64) -> Result<()> {
        let _ = (disk, total_bytes);
        Ok(())
    }

    /// Disk `disk` has its slots ([`disk_starting`](Self::disk_starting) returned) and is about
    /// to be read: `blocks` are the block numbers that will be read from it, in the order they
    /// will be read (each block is read at `block × block size`, its length the block size or
    /// what is left of the disk). A caller whose source is fed by another machine (a proxy
    /// sending blocks to the repository's data mover) tells that machine here what to send.
    /// An error ends the backup with it.
    fn disk_reading(&self, disk: u32, blocks: &[u64]) -> Result<()> {
        let _ = (disk, blocks);
        Ok(())
    }

    /// Disk `disk` has been read and written; `stats` are its own numbers
    /// (summed over all disks they give the point's statistics, except the
    /// busy percentages and durations, which are the disk's).
    fn disk_finished(&self, disk: u32, stats: &PointStats) {
        let _ = (disk, stats);
    }

    /// Progress within disk `disk` (bytes of that disk).
    fn progress(&self, disk: u32, progress: Progress) {
        let _ = (disk, progress);
    }

    /// Progress of the whole backup (bytes of all disks).
    fn total_progress(&self, progress: Progress) {
        let _ = progress;
    }

    /// Called after each record of `bytes` bytes was appended to the
    /// repository, on the writing thread: sleep here to keep to a write rate
    /// limit.
    fn throttle_write(&self, bytes: u64) {
        let _ = bytes;
    }

    /// Polled before every block by the reader and the writer: `true` ends
    /// the backup with [`EngineError::Stopped`] at the next block.
    fn stop_requested(&self) -> bool {
        false
    }
}

/// Hooks that only report overall progress (what [`backup`] uses).
struct ProgressOnly<'a>(&'a (dyn Fn(Progress) + Sync));

impl BackupHooks for ProgressOnly<'_> {
    fn total_progress(&self, progress: Progress) {
        (self.0)(progress)
    }
}

/// Backs up `disks` as one new restore point of `plan.vm`, reporting overall
/// progress to `progress`.
pub fn backup(
    repo: &Repository,
    plan: &BackupPlan,
    disks: Vec<DiskInput>,
    opts: &BackupOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<BackupResult> {
    backup_with_hooks(repo, plan, disks, opts, &ProgressOnly(progress))
}

/// Backs up `disks` as one new restore point of `plan.vm`, with `hooks`
/// told about each disk and asked about stops and write pacing (see
/// [`BackupHooks`]).
pub fn backup_with_hooks(
    repo: &Repository,
    plan: &BackupPlan,
    disks: Vec<DiskInput>,
    opts: &BackupOptions,
    hooks: &dyn BackupHooks,
) -> Result<BackupResult> {
    let started = Instant::now();
    let mut session = BackupSession::begin(repo, plan)?;
    let kind = session.kind();
    let bs = u64::from(session.block_size());
    let previous = session.previous().cloned();

    // Decide what to read on every disk first, so progress knows the total.
    let mut notes = Vec::new();
    let mut plans = Vec::new();
    for (no, input) in disks.into_iter().enumerate() {
        plans.push(plan_disk(
            &session,
            previous.as_deref(),
            no as u32,
            input,
            bs,
            &mut notes,
        )?);
    }
    let total_bytes: u64 = plans.iter().map(|p| read_bytes(&p.input, &p.blocks, bs)).sum();

    let mut point = PointWork {
        session: &mut session,
        keys: repo.keys(),
        dedup: Arc::new(dedup_index(previous.as_deref())),
        written: HashMap::new(),
        opts,
        hooks,
        bs,
        done: AtomicU64::new(0),
        total_bytes,
        busy: (Busy::default(), Busy::default(), Busy::default()),
        stats: PointStats::default(),
        waited: Duration::ZERO,
    };
    let mut maps = Vec::new();
    for plan in plans {
        if hooks.stop_requested() {
            return Err(EngineError::Stopped);
        }
        maps.push(point.back_up_disk(plan)?);
    }

    let PointWork {
        mut stats,
        busy: (source_busy, proxy_busy, target_busy),
        waited,
        ..
    } = point;
    let wall = started.elapsed().saturating_sub(waited);
    stats.duration_secs = wall.as_secs_f64();
    stats.busy = busy_percentages((&source_busy, &proxy_busy, &target_busy), wall, opts.threads);
    stats.bottleneck = bottleneck(&stats.busy);
    let point = target_busy.time(|| session.commit(maps, stats))?;
    Ok(BackupResult { point, kind, notes })
}

/// The blocks of the previous point by hash, for dedup against it.
fn dedup_index(previous: Option<&PointIndex>) -> HashMap<[u8; 32], BlockRef> {
    previous
        .iter()
        .flat_map(|p| p.disks.iter().flat_map(|d| d.blocks.iter()))
        .map(|r| (r.hash, *r))
        .collect()
}

/// One disk, with what the backup reads of it.
struct DiskPlan {
    /// The disk's number in the point.
    no: u32,
    /// The disk.
    input: DiskInput,
    /// Its map in the previous point, if it has one.
    prev: Option<Arc<DiskMap>>,
    /// The blocks to read, in order.
    blocks: Vec<u64>,
}

/// Decides what to read of disk `no`: with usable changed extents only the changed blocks,
/// else every allocated one. Explains in `notes` why changed extents were not used.
fn plan_disk(
    session: &BackupSession,
    previous: Option<&PointIndex>,
    no: u32,
    mut input: DiskInput,
    bs: u64,
    notes: &mut Vec<String>,
) -> Result<DiskPlan> {
    let prev = previous.and_then(|p| p.disk(no).cloned()).map(Arc::new);
    if prev.is_some() {
        drop_unusable_changes(session, no, &mut input, notes);
    }
    let to_read = match (&input.changed, &prev) {
        // With CBT, read only changed blocks; unchanged ones come from the previous point.
        (Some(changed), Some(prev)) => changed_extents(changed, &input, prev, bs),
        _ => input.source.allocation()?,
    };
    let blocks: Vec<u64> = extent::touched_blocks(&to_read, bs).collect();
    Ok(DiskPlan {
        no,
        input,
        prev,
        blocks,
    })
}

/// Forgets the changed extents of disk `no` (which has a previous map) when they are not
/// relative to the previous point: a differencing child whose parent is not what the previous
/// point read, or a point tracked since was removed by a repair.
fn drop_unusable_changes(session: &BackupSession, no: u32, input: &mut DiskInput, notes: &mut Vec<String>) {
    if let Some(base) = &input.changed_since
        && input.changed.is_some()
    {
        let prev_source = session
            .previous_point()
            .and_then(|p| p.disks.iter().find(|d| d.disk == no))
            .and_then(|d| d.source_id.as_deref());
        if prev_source != Some(base.as_str()) {
            notes.push(format!(
                "disk {no}: the previous restore point was not read from this child's parent \
                 (or the parent changed since), so every allocated block is read"
            ));
            input.changed = None;
        }
    }
    if input.changed.is_some() && input.changed_since.is_none() && !session.previous_is_newest() {
        notes.push(format!(
            "disk {no}: newer restore points were removed by a repair, so the changed extents given \
             (tracked since a removed point) are not used and every allocated block is read"
        ));
        input.changed = None;
    }
}

/// The extents to read with CBT: the changed ones inside the disk, and a last block whose
/// length the disk's resize changed.
fn changed_extents(changed: &[Extent], input: &DiskInput, prev: &DiskMap, bs: u64) -> Vec<Extent> {
    // Extents past the end of the disk describe nothing to read.
    let size = input.source.virtual_size();
    let mut read: Vec<Extent> = changed
        .iter()
        .filter(|e| e.offset < size)
        .map(|e| Extent {
            offset: e.offset,
            length: e.length.min(size - e.offset),
        })
        .collect();
    read.extend(resized_tail(prev.virtual_size, input.source.virtual_size(), bs));
    extent::normalize(read)
}

/// Bytes a disk will read (a short last block counts its own length).
fn read_bytes(input: &DiskInput, blocks: &[u64], bs: u64) -> u64 {
    let size = input.source.virtual_size();
    blocks.iter().map(|b| (size - (b * bs).min(size)).min(bs)).sum()
}

/// A point being written, disk after disk.
struct PointWork<'a> {
    /// The repository session writing the point.
    session: &'a mut BackupSession,
    /// The repository's keys.
    keys: &'a Arc<Keys>,
    /// The previous point's blocks by hash.
    dedup: Arc<HashMap<[u8; 32], BlockRef>>,
    /// Blocks this backup stored, by hash: dedup across all of the VM's disks.
    written: HashMap<[u8; 32], BlockRef>,
    /// Tuning of the data path.
    opts: &'a BackupOptions,
    /// The caller's hooks.
    hooks: &'a dyn BackupHooks,
    /// Block size in bytes.
    bs: u64,
    /// Bytes read so far, of all disks.
    done: AtomicU64,
    /// Bytes all disks will read.
    total_bytes: u64,
    /// Busy time of the source, proxy and target stages, over all disks.
    busy: (Busy, Busy, Busy),
    /// The point's statistics so far.
    stats: PointStats,
    /// Time spent in `disk_starting` (waiting for the caller), left out of the statistics.
    waited: Duration,
}

impl PointWork<'_> {
    /// Backs up one disk: waits for the caller's go, reads, processes and writes its planned
    /// blocks, reuses the unchanged ones, and returns its map and metadata.
    fn back_up_disk(&mut self, plan: DiskPlan) -> Result<(DiskMap, DiskMeta)> {
        let DiskPlan {
            no,
            input,
            prev,
            blocks,
        } = plan;
        let (hooks, bs) = (self.hooks, self.bs);
        let disk_total = read_bytes(&input, &blocks, bs);
        let wait_start = Instant::now();
        hooks.disk_starting(no, disk_total)?;
        self.waited += wait_start.elapsed();
        hooks.disk_reading(no, &blocks)?;
        let disk_started = Instant::now();
        let counters = Counters::default();
        let busy = (Busy::default(), Busy::default(), Busy::default());
        let mut disk_stats = PointStats::default();
        let disk_done = AtomicU64::new(0);
        let disk = DiskWork {
            source: input.source.as_ref(),
            prev: prev.clone(),
            blocks,
            bs,
        };
        let (done, total_bytes) = (&self.done, self.total_bytes);
        let mut refs = run_disk(
            self.session,
            &disk,
            self.keys,
            &self.dedup,
            self.opts,
            (&busy.0, &busy.1, &busy.2),
            &counters,
            &mut disk_stats,
            &mut self.written,
            hooks,
            &|n| {
                hooks.progress(
                    no,
                    Progress {
                        done_bytes: disk_done.fetch_add(n, Ordering::Relaxed) + n,
                        total_bytes: disk_total,
                    },
                );
                hooks.total_progress(Progress {
                    done_bytes: done.fetch_add(n, Ordering::Relaxed) + n,
                    total_bytes,
                })
            },
        )?;
        let size = input.source.virtual_size();
        if input.changed.is_some()
            && let Some(prev) = &prev
        {
            self.reuse_unchanged(prev, &disk.blocks, size, &busy.2, &mut refs, &mut disk_stats)?;
        }
        let disk_wall = disk_started.elapsed();
        disk_stats.read_bytes = counters.read_bytes.load(Ordering::Relaxed);
        disk_stats.read_blocks = counters.read_blocks.load(Ordering::Relaxed);
        disk_stats.duration_secs = disk_wall.as_secs_f64();
        disk_stats.busy = busy_percentages((&busy.0, &busy.1, &busy.2), disk_wall, self.opts.threads);
        disk_stats.bottleneck = bottleneck(&disk_stats.busy);
        add_counts(&mut self.stats, &disk_stats);
        self.busy.0.add(&busy.0);
        self.busy.1.add(&busy.1);
        self.busy.2.add(&busy.2);
        hooks.disk_finished(no, &disk_stats);
        Ok(disk_records(no, &input, refs, self.session.block_size()))
    }

    /// Adds the previous point's records of the blocks that were not read (outside the changed
    /// extents, so as they were) to `refs`.
    fn reuse_unchanged(
        &mut self,
        prev: &DiskMap,
        read: &[u64],
        size: u64,
        target_busy: &Busy,
        refs: &mut Vec<BlockRef>,
        disk_stats: &mut PointStats,
    ) -> Result<()> {
        let read: std::collections::HashSet<u64> = read.iter().copied().collect();
        let count = size.div_ceil(self.bs);
        for r in prev
            .blocks
            .iter()
            .filter(|r| !read.contains(&r.block) && r.block < count)
        {
            refs.push(target_busy.time(|| self.session.reuse(r.block, r))?);
            disk_stats.unchanged_blocks += 1;
        }
        Ok(())
    }
}

/// The map (records in block order) and metadata of disk `no`.
fn disk_records(no: u32, input: &DiskInput, mut refs: Vec<BlockRef>, block_size: u32) -> (DiskMap, DiskMeta) {
    let size = input.source.virtual_size();
    refs.sort_unstable_by_key(|r| r.block);
    let map = DiskMap {
        disk: no,
        virtual_size: size,
        block_size,
        blocks: refs,
    };
    let meta = DiskMeta {
        disk: no,
        source: input.source.describe(),
        virtual_size: size,
        blocks: map.blocks.len() as u64,
        logical_sector: input.source.sector_sizes().logical,
        physical_sector: input.source.sector_sizes().physical,
        source_id: input.source.identity(),
    };
    (map, meta)
}

/// Busy percentage per stage (source, proxy, network, target) over `wall`.
fn busy_percentages(
    (source, proxy, target): (&Busy, &Busy, &Busy),
    wall: Duration,
    threads: usize,
) -> Vec<(String, f64)> {
    vec![
        ("source".to_string(), source.percent(wall, 1)),
        ("proxy".to_string(), proxy.percent(wall, threads)),
        ("network".to_string(), 0.0),
        ("target".to_string(), target.percent(wall, 1)),
    ]
}

/// Adds the block and byte counts of one disk to the point's.
fn add_counts(total: &mut PointStats, disk: &PointStats) {
    total.read_bytes += disk.read_bytes;
    total.read_blocks += disk.read_blocks;
    total.zero_blocks += disk.zero_blocks;
    total.unchanged_blocks += disk.unchanged_blocks;
    total.dedup_blocks += disk.dedup_blocks;
    total.new_blocks += disk.new_blocks;
    total.new_bytes += disk.new_bytes;
    total.stored_bytes += disk.stored_bytes;
}

/// The blocks a size change alters although no byte in them was written: a
/// short last block, at the old or the new end, whose length is now
/// different. With CBT they must be read again; reusing the previous
/// point's record would give the block its old length.
fn resized_tail(old_size: u64, new_size: u64, bs: u64) -> Vec<Extent> {
    if old_size == new_size {
        return Vec::new();
    }
    [old_size, new_size]
        .into_iter()
        .filter(|end| end % bs != 0)
        .map(|end| end / bs * bs)
        .filter(|&start| start < new_size)
        .map(|start| Extent {
            offset: start,
            length: (new_size - start).min(bs),
        })
        .collect()
}

struct DiskWork<'a> {
    source: &'a dyn DiskSource,
    prev: Option<Arc<DiskMap>>,
    blocks: Vec<u64>,
    bs: u64,
}

#[allow(clippy::too_many_arguments)]
fn run_disk(
    session: &mut BackupSession,
    disk: &DiskWork<'_>,
    keys: &Arc<Keys>,
    dedup: &Arc<HashMap<[u8; 32], BlockRef>>,
    opts: &BackupOptions,
    (source_busy, proxy_busy, target_busy): (&Busy, &Busy, &Busy),
    counters: &Counters,
    stats: &mut PointStats,
    written: &mut HashMap<[u8; 32], BlockRef>,
    hooks: &dyn BackupHooks,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<BlockRef>> {
    let threads = opts.threads.max(1);
    let size = disk.source.virtual_size();
    let mut refs = Vec::with_capacity(disk.blocks.len());

    std::thread::scope(|s| -> Result<()> {
        // The channels live inside the scope: when the writer stops early on an
        // error, dropping them unblocks and ends the other stages before the
        // scope joins them.
        let (read_tx, read_rx) = bounded::<(u64, AlignedBuf)>(threads * 2);
        let (out_tx, out_rx) = bounded::<Result<(u64, Outcome)>>(threads * 2);
        // Workers hand read buffers back, so the reader reuses page-aligned
        // memory instead of allocating (and faulting in) every block anew.
        let (recycle_tx, recycle_rx) = bounded::<AlignedBuf>(threads * 3 + 2);
        // Source stage.
        let reader_out = out_tx.clone();
        s.spawn(move || {
            for &block in &disk.blocks {
                if hooks.stop_requested() {
                    let _ = reader_out.send(Err(EngineError::Stopped));
                    return;
                }
                let offset = block * disk.bs;
                let len = (size - offset).min(disk.bs) as usize;
                let mut buf = recycle_rx.try_recv().unwrap_or_default();
                buf.resize(len);
                if let Err(e) = source_busy.time(|| disk.source.read_at(&mut buf, offset)) {
                    let _ = reader_out.send(Err(e.into()));
                    return;
                }
                counters.read_bytes.fetch_add(len as u64, Ordering::Relaxed);
                counters.read_blocks.fetch_add(1, Ordering::Relaxed);
                if read_tx.send((block, buf)).is_err() {
                    return;
                }
            }
        });
        // Proxy stage.
        for _ in 0..threads {
            let (rx, tx, recycle) = (read_rx.clone(), out_tx.clone(), recycle_tx.clone());
            let (keys, dedup, prev) = (keys.clone(), dedup.clone(), disk.prev.clone());
            s.spawn(move || {
                let mut encoder = match Compressor::new(opts.compression) {
                    Ok(c) => RecordEncoder::new(c),
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                for (block, buf) in rx {
                    let outcome = proxy_busy.time(|| -> Result<Outcome> {
                        if is_zero(&buf) {
                            return Ok(Outcome::Zero);
                        }
                        let hash = keys.hash(&buf);
                        if let Some(r) = prev.as_ref().and_then(|p| p.get(block)).filter(|r| r.hash == hash) {
                            return Ok(Outcome::Unchanged(*r));
                        }
                        if let Some(r) = dedup.get(&hash) {
                            return Ok(Outcome::Duplicate(*r));
                        }
                        let mut record = Vec::new();
                        encoder.encode(&keys, &buf, hash, &mut record)?;
                        let stored_len = cairn_format::record::RecordHeader::decode(&record)?.stored_len;
                        Ok(Outcome::Stored {
                            record,
                            stored_len,
                            hash,
                            raw_len: buf.len() as u32,
                        })
                    });
                    let _ = recycle.try_send(buf);
                    if tx.send(outcome.map(|o| (block, o))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(out_tx);
        drop(read_rx);
        drop(recycle_tx);

        // Target stage, on this thread.
        for msg in &out_rx {
            if hooks.stop_requested() {
                return Err(EngineError::Stopped);
            }
            let (block, outcome) = msg?;
            let len = (size - block * disk.bs).min(disk.bs);
            match outcome {
                Outcome::Zero => stats.zero_blocks += 1,
                Outcome::Unchanged(r) => {
                    refs.push(target_busy.time(|| session.reuse(block, &r))?);
                    stats.unchanged_blocks += 1;
                }
                Outcome::Duplicate(r) => {
                    refs.push(target_busy.time(|| session.reuse(block, &r))?);
                    stats.dedup_blocks += 1;
                }
                Outcome::Stored {
                    record,
                    stored_len,
                    hash,
                    raw_len,
                } => {
                    if let Some(r) = written.get(&hash) {
                        refs.push(BlockRef { block, ..*r });
                        stats.dedup_blocks += 1;
                    } else {
                        let r = target_busy.time(|| session.append(block, &record, stored_len, hash))?;
                        hooks.throttle_write(record.len() as u64);
                        written.insert(hash, r);
                        refs.push(r);
                        stats.new_blocks += 1;
                        stats.new_bytes += u64::from(raw_len);
                        stats.stored_bytes += record.len() as u64;
                    }
                }
            }
            progress(len);
        }
        Ok(())
    })?;
    Ok(refs)
}
