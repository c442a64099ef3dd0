//! Restore: one disk of one restore point to a new image file (raw, qcow2,
//! VHDX or VHD).
//!
//! Reads exactly the point's blocks (from its index), on all cores, each
//! worker reading, checking, decoding and handing its blocks to the image
//! writer. Blocks absent from the index are never written: they stay holes
//! (raw) or unallocated (qcow2, VHDX, VHD).
//!
//! A scheduler drives a restore through [`RestoreHooks`]
//! ([`restore_with_hooks`]): it hears the progress, paces repository reads
//! (a read rate limit) and can stop the restore at the next block
//! ([`EngineError::RestoreStopped`]; the partial image file is removed).

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use cairn_disk::writer::NewFile;
use cairn_disk::{Format, WriteOptions, writer};
use cairn_format::record::RecordDecoder;
use cairn_repo::{RepoError, Repository};
use serde::Serialize;

use crate::stages::Progress;
use crate::{EngineError, Result};

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreStats {
    /// VM name.
    pub vm: String,
    /// Restore point id.
    pub point: String,
    /// Disk number.
    pub disk: u32,
    /// Virtual size written.
    pub virtual_size: u64,
    /// Blocks read from the repository.
    pub blocks: u64,
    /// Bytes written (the rest are holes).
    pub written_bytes: u64,
    /// Image format written.
    pub format: Format,
    /// Wall time in seconds.
    pub duration_secs: f64,
}

/// The image a restore writes.
#[derive(Clone, Copy, Debug)]
pub struct RestoreTarget {
    /// Image format of the new file.
    pub format: Format,
    /// Logical sector size; `None` keeps the source's (VHDX only).
    pub logical_sector: Option<u32>,
    /// Allocation unit (VHDX block size, qcow2 cluster size); `None` takes the format's default.
    pub block_size: Option<u32>,
}

impl Default for RestoreTarget {
    fn default() -> Self {
        RestoreTarget {
            format: Format::Raw,
            logical_sector: None,
            block_size: None,
        }
    }
}

/// The file a restore writes.
pub enum RestoreOutput<'a> {
    /// A new file at this path: it must not exist; it is created with mode
    /// 0600 and removed again when the restore fails.
    Path(&'a Path),
    /// An empty file the caller created (for example beneath a confined
    /// folder); `remove` takes it away again when the restore fails.
    File {
        /// The open file and its name for messages.
        file: NewFile,
        /// Removes the file (called at most once, only on failure).
        remove: Box<dyn FnOnce() + Send + 'a>,
    },
}

impl std::fmt::Debug for RestoreOutput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreOutput::Path(p) => f.debug_tuple("Path").field(p).finish(),
            RestoreOutput::File { file, .. } => f.debug_struct("File").field("path", &file.path).finish(),
        }
    }
}

/// What a caller of [`restore_with_hooks`] hears and decides while a restore
/// runs. Every method has a default that does nothing; the methods are called
/// from the restore's worker threads, concurrently.
pub trait RestoreHooks: Sync {
    /// Progress of the restore (bytes of the disk's blocks that were read and
    /// written so far, of all its blocks).
    fn progress(&self, progress: Progress) {
        let _ = progress;
    }

    /// Called after each block record of `bytes` bytes (header and payload,
    /// as stored) was read from the repository, on the reading thread: sleep
    /// here to keep to a read rate limit.
    fn throttle_read(&self, bytes: u64) {
        let _ = bytes;
    }

    /// Polled before every block by every worker: `true` ends the restore
    /// with [`EngineError::RestoreStopped`] at the next block (the partial
    /// image file is removed).
    fn stop_requested(&self) -> bool {
        false
    }
}

/// Hooks that only report progress (what [`restore`] uses).
struct ProgressOnly<'a>(&'a (dyn Fn(Progress) + Sync));

impl RestoreHooks for ProgressOnly<'_> {
    fn progress(&self, progress: Progress) {
        (self.0)(progress)
    }
}

/// Restores disk `disk` of point `point` (`latest`, an id or an id prefix) of
/// `vm` to a new image file `to` as `target` says. On failure the partial
/// file is removed. Shorthand for [`restore_with_hooks`] with hooks that only
/// report progress.
pub fn restore(
    repo: &Repository,
    vm: &str,
    point: &str,
    disk: u32,
    to: &Path,
    target: &RestoreTarget,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RestoreStats> {
    restore_with_hooks(
        repo,
        vm,
        point,
        disk,
        RestoreOutput::Path(to),
        target,
        &ProgressOnly(progress),
    )
}

/// Restores like [`restore`] into `out`, with `hooks` told of the progress,
/// pacing the repository reads and able to stop the restore. On failure the
/// output file is removed.
pub fn restore_with_hooks(
    repo: &Repository,
    vm: &str,
    point: &str,
    disk: u32,
    out: RestoreOutput<'_>,
    target: &RestoreTarget,
    hooks: &dyn RestoreHooks,
) -> Result<RestoreStats> {
    match out {
        RestoreOutput::Path(to) => {
            let mut created = false;
            let result = restore_into(
                repo,
                vm,
                point,
                disk,
                || {
                    let file = NewFile::create(to)?;
                    created = true;
                    Ok(file)
                },
                target,
                hooks,
            );
            if result.is_err() && created {
                let _ = std::fs::remove_file(to);
            }
            result
        }
        RestoreOutput::File { file, remove } => {
            let result = restore_into(repo, vm, point, disk, || Ok(file), target, hooks);
            if result.is_err() {
                remove();
            }
            result
        }
    }
}

/// The restore itself: reads the point, takes its output file from `open`
/// (only once the point, its index and the disk were found) and fills it.
/// The caller removes the file on failure.
fn restore_into(
    repo: &Repository,
    vm: &str,
    point: &str,
    disk: u32,
    open: impl FnOnce() -> Result<NewFile>,
    target: &RestoreTarget,
    hooks: &dyn RestoreHooks,
) -> Result<RestoreStats> {
    let started = Instant::now();
    let chain = repo.chain(vm)?;
    let p = chain.point(point)?.clone();
    let index = chain.index(&p)?;
    let map = index.disk(disk).ok_or_else(|| RepoError::NoSuchDisk {
        vm: vm.to_string(),
        point: p.id.clone(),
        disk,
    })?;
    let source = p.disks.iter().find(|d| d.disk == disk);
    let logical = target
        .logical_sector
        .or(source.map(|d| d.logical_sector))
        .unwrap_or(512);
    let options = WriteOptions {
        logical_sector: logical,
        physical_sector: source.map_or(4096, |d| d.physical_sector).max(logical),
        block_size: target.block_size,
    };
    let writer = writer::create_in(target.format, open()?, map.virtual_size, &options)?;
    let total_bytes = map.blocks.len() as u64 * u64::from(map.block_size);
    let (next, done, written) = (AtomicUsize::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let failure: Mutex<Option<EngineError>> = Mutex::new(None);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());

    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let run = || -> Result<()> {
                    let mut decoder = RecordDecoder::new()?;
                    let (mut scratch, mut out) = (Vec::new(), Vec::new());
                    loop {
                        if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                            return Ok(());
                        }
                        if hooks.stop_requested() {
                            return Err(EngineError::RestoreStopped);
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(r) = map.blocks.get(i) else { return Ok(()) };
                        chain.read_block(&mut decoder, r, &mut scratch, &mut out)?;
                        hooks.throttle_read(scratch.len() as u64);
                        let expected = map.block_len(r.block) as usize;
                        if out.len() != expected {
                            return Err(RepoError::Damaged {
                                path: chain.dir().to_path_buf(),
                                reason: format!(
                                    "block {} decodes to {} bytes, expected {expected}",
                                    r.block,
                                    out.len()
                                ),
                            }
                            .into());
                        }
                        writer.write_at(&out, r.block * u64::from(map.block_size))?;
                        written.fetch_add(out.len() as u64, Ordering::Relaxed);
                        let d = done.fetch_add(u64::from(map.block_size), Ordering::Relaxed);
                        hooks.progress(Progress {
                            done_bytes: d + u64::from(map.block_size),
                            total_bytes,
                        });
                    }
                };
                if let Err(e) = run()
                    && let Ok(mut f) = failure.lock()
                {
                    f.get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    writer.finish()?;
    Ok(RestoreStats {
        vm: vm.to_string(),
        point: p.id,
        disk,
        virtual_size: map.virtual_size,
        blocks: map.blocks.len() as u64,
        written_bytes: written.load(Ordering::Relaxed),
        format: target.format,
        duration_secs: started.elapsed().as_secs_f64(),
    })
}
