//! [`CowExport`]: a writable export over a read-only base, for instant recovery.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_disk::{DiskSource, Extent};

use crate::export::{ExportBackend, allocation_status, disk_to_io, push_status};
use crate::proto::{STATE_HOLE, STATE_ZERO};
use crate::{Error, Result, StatusExtent};

/// Cluster states, two bits each, 32 clusters per word.
const BASE: u64 = 0;
const DATA: u64 = 1;
const ZERO: u64 = 2;
const PER_WORD: u64 = 32;

/// A writable export over a read-only base [`DiskSource`] (a restore point):
/// writes go to a scratch file, the base is never written.
///
/// The disk is divided into clusters of a fixed power-of-two size. A cluster
/// is in one of three states: *base* (reads go to the base), *data* (its
/// bytes are in the scratch file, at the same offset as in the disk; the file
/// is sparse) or *zero* (it reads as zeros, after `NBD_CMD_WRITE_ZEROES`). A
/// write that covers only part of a base cluster first copies the cluster
/// from the base (read-modify-write), so the scratch file always holds whole
/// clusters. Reads merge the three sources; block status reports data
/// clusters as data, zero clusters as holes, and base clusters as the base's
/// allocation map says.
///
/// Writes are serialised by a lock, so concurrent partial writes to one
/// cluster never lose each other's bytes. Reads run concurrently with them
/// and read each cluster's state atomically (a cluster's data is in the
/// scratch file before its state says so); as with any disk, a read racing
/// a write of the same bytes may return old or new data. The scratch file is
/// left in place when the export is dropped: the caller owns its path.
pub struct CowExport {
    base: Arc<dyn DiskSource>,
    base_alloc: Vec<Extent>,
    scratch: File,
    path: PathBuf,
    size: u64,
    shift: u32,
    clusters: u64,
    states: Vec<AtomicU64>,
    /// Serialises writes; holds the read-modify-write cluster buffer.
    lock: Mutex<Vec<u8>>,
    /// Clusters no longer in the base state.
    overridden: AtomicU64,
}

impl CowExport {
    /// Creates (or truncates) the scratch file at `scratch` and returns an
    /// export of `base` with `cluster`-byte clusters (a power of two from
    /// 512 bytes to 16 MiB; 64 KiB suits most guests).
    pub fn create(base: Arc<dyn DiskSource>, scratch: &Path, cluster: u32) -> Result<Self> {
        if !cluster.is_power_of_two() || !(512..=16 << 20).contains(&cluster) {
            return Err(Error::Invalid {
                what: format!("cluster size {cluster}"),
                reason: "must be a power of two from 512 bytes to 16 MiB".into(),
            });
        }
        let size = base.virtual_size();
        let io_err = |op: &str, source: io::Error| Error::Io {
            export: String::new(),
            endpoint: scratch.display().to_string(),
            op: op.to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(scratch)
            .map_err(|e| io_err("create scratch file", e))?;
        file.set_len(size).map_err(|e| io_err("size scratch file", e))?;
        let base_alloc = cairn_disk::extent::normalize(base.allocation()?);
        let shift = cluster.trailing_zeros();
        let clusters = size.div_ceil(u64::from(cluster));
        let states = (0..clusters.div_ceil(PER_WORD)).map(|_| AtomicU64::new(0)).collect();
        Ok(CowExport {
            base,
            base_alloc,
            scratch: file,
            path: scratch.to_path_buf(),
            size,
            shift,
            clusters,
            states,
            lock: Mutex::new(Vec::new()),
            overridden: AtomicU64::new(0),
        })
    }

    /// Bytes of the disk that writes have replaced: clusters written or
    /// zeroed since the export was created, times the cluster size (at most
    /// the disk size).
    pub fn written_bytes(&self) -> u64 {
        (self.overridden.load(Ordering::Relaxed) << self.shift).min(self.size)
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u32 {
        1 << self.shift
    }

    /// The scratch file.
    pub fn scratch_path(&self) -> &Path {
        &self.path
    }

    fn cluster(&self) -> u64 {
        1 << self.shift
    }

    fn state(&self, c: u64) -> u64 {
        let w = self.states[(c / PER_WORD) as usize].load(Ordering::Acquire);
        (w >> ((c % PER_WORD) * 2)) & 3
    }

    /// Sets a cluster's state; callers hold the write lock.
    fn set_state(&self, c: u64, s: u64) {
        let word = &self.states[(c / PER_WORD) as usize];
        let sh = (c % PER_WORD) * 2;
        let old = word.load(Ordering::Relaxed);
        if (old >> sh) & 3 == BASE && s != BASE {
            self.overridden.fetch_add(1, Ordering::Relaxed);
        }
        word.store((old & !(3 << sh)) | (s << sh), Ordering::Release);
    }

    /// The state of cluster `c` and the first cluster after it (at most
    /// `limit`) in another state.
    fn run(&self, c: u64, limit: u64) -> (u64, u64) {
        let s = self.state(c);
        let pattern = s * 0x5555_5555_5555_5555;
        let mut n = c + 1;
        while n < limit {
            if n.is_multiple_of(PER_WORD) && self.states[(n / PER_WORD) as usize].load(Ordering::Acquire) == pattern {
                n += PER_WORD;
                continue;
            }
            if self.state(n) != s {
                break;
            }
            n += 1;
        }
        (s, n.min(limit))
    }

    /// Calls `f(state, start, end)` for each run of clusters in one state
    /// over `[offset, end)`, cut to the range.
    fn for_runs(&self, offset: u64, end: u64, mut f: impl FnMut(u64, u64, u64) -> io::Result<()>) -> io::Result<()> {
        let mut pos = offset;
        let limit = (end - 1) >> self.shift;
        while pos < end {
            let (s, next) = self.run(pos >> self.shift, limit + 1);
            let run_end = (next << self.shift).min(end);
            f(s, pos, run_end)?;
            pos = run_end;
        }
        Ok(())
    }

    /// True when the base has no data in `[start, end)`.
    fn base_is_hole(&self, start: u64, end: u64) -> bool {
        let i = self.base_alloc.partition_point(|e| e.end() <= start);
        self.base_alloc.get(i).is_none_or(|e| e.offset >= end)
    }

    /// Writes `part` at `pos` inside cluster `c` (which it covers partly):
    /// straight into the scratch file for data clusters, else read-modify-write.
    fn write_partial(&self, tmp: &mut Vec<u8>, c: u64, pos: u64, part: &[u8]) -> io::Result<()> {
        let cstart = c << self.shift;
        let cend = (cstart + self.cluster()).min(self.size);
        let state = self.state(c);
        if state == DATA {
            return self.scratch.write_all_at(part, pos);
        }
        tmp.resize((cend - cstart) as usize, 0);
        if state == BASE {
            self.base.read_at(tmp, cstart).map_err(disk_to_io)?;
        } else {
            tmp.fill(0);
        }
        let at = (pos - cstart) as usize;
        tmp[at..at + part.len()].copy_from_slice(part);
        self.scratch.write_all_at(tmp, cstart)?;
        self.set_state(c, DATA);
        Ok(())
    }

    /// The clusters from `c` that `[cluster start of c, end)` covers entirely.
    fn full_clusters_until(&self, end: u64) -> u64 {
        if end >= self.size {
            self.clusters
        } else {
            end >> self.shift
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A panic while writing leaves the states consistent (each is stored
        // after its data), so a poisoned lock is still usable.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ExportBackend for CowExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        self.for_runs(offset, end, |s, start, stop| {
            let part = &mut buf[(start - offset) as usize..(stop - offset) as usize];
            match s {
                BASE => self.base.read_at(part, start).map_err(disk_to_io),
                DATA => self.scratch.read_exact_at(part, start),
                _ => {
                    part.fill(0);
                    Ok(())
                }
            }
        })
    }

    fn block_status(&self, offset: u64, length: u64) -> io::Result<Vec<StatusExtent>> {
        let mut out = Vec::new();
        if length == 0 {
            return Ok(out);
        }
        self.for_runs(offset, offset + length, |s, start, stop| {
            match s {
                BASE => allocation_status(&self.base_alloc, start, stop - start, &mut out),
                DATA => push_status(&mut out, start, stop - start, 0),
                _ => push_status(&mut out, start, stop - start, STATE_HOLE | STATE_ZERO),
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn writable(&self) -> bool {
        true
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut tmp = self.lock();
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let c = pos >> self.shift;
            let cstart = c << self.shift;
            let cend = (cstart + self.cluster()).min(self.size);
            if pos == cstart && end >= cend {
                // Whole clusters: one write, no copy from the base.
                let last = self.full_clusters_until(end);
                let wend = (last << self.shift).min(self.size);
                self.scratch
                    .write_all_at(&data[(pos - offset) as usize..(wend - offset) as usize], pos)?;
                for k in c..last {
                    self.set_state(k, DATA);
                }
                pos = wend;
            } else {
                let wend = cend.min(end);
                let part = &data[(pos - offset) as usize..(wend - offset) as usize];
                self.write_partial(&mut tmp, c, pos, part)?;
                pos = wend;
            }
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        let mut tmp = self.lock();
        let end = offset + length;
        let mut pos = offset;
        let mut zeros: Vec<u8> = Vec::new();
        while pos < end {
            let c = pos >> self.shift;
            let cstart = c << self.shift;
            let cend = (cstart + self.cluster()).min(self.size);
            if pos == cstart && end >= cend {
                let last = self.full_clusters_until(end);
                let wend = (last << self.shift).min(self.size);
                for k in c..last {
                    let ks = k << self.shift;
                    let ke = (ks + self.cluster()).min(self.size);
                    let s = self.state(k);
                    if s == ZERO || (s == BASE && self.base_is_hole(ks, ke)) {
                        continue;
                    }
                    self.set_state(k, ZERO);
                }
                // Give the space back; the state already makes the range read as zeros.
                let _ = rustix::fs::fallocate(
                    &self.scratch,
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                    pos,
                    wend - pos,
                );
                pos = wend;
            } else {
                let wend = cend.min(end);
                let s = self.state(c);
                if !(s == ZERO || (s == BASE && self.base_is_hole(cstart, cend))) {
                    zeros.clear();
                    zeros.resize((wend - pos) as usize, 0);
                    self.write_partial(&mut tmp, c, pos, &zeros)?;
                }
                pos = wend;
            }
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.scratch.sync_data()
    }
}

#[cfg(test)]
mod tests;
