//! Creating qcow2 version 3 images for restore.
//!
//! Data clusters are appended after the header cluster in the order writes
//! arrive; all-zero clusters are never allocated (with no backing file they
//! read as zeros). The L2 entries live in memory, one table per L1 entry
//! that has data. [`Qcow2Writer::finish`] appends the L2 tables, the L1
//! table, the refcount blocks and the refcount table, then writes the header.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::header::{MAGIC, MAX_L1_BYTES};
use super::{COPIED, OFFSET_MASK};
use crate::io_error as io;
use crate::output::{NewFile, WriteOptions, check_write_range, disk_writer_by_inherent_methods};
use crate::raw::is_zero;
use crate::{DiskError, Result};

/// Refcount width written: 2^4 = 16 bits, qemu's default.
const REFCOUNT_ORDER: u32 = 4;
/// Header length written (the version 3 header plus the compression type byte and padding).
const HEADER_LEN: u32 = 112;

/// Writes a new qcow2 version 3 image (no backing file, no compression).
pub struct Qcow2Writer {
    path: PathBuf,
    file: File,
    size: u64,
    cluster_bits: u32,
    state: Mutex<State>,
}

struct State {
    /// Next free host cluster index (cluster 0 is the header).
    next_cluster: u64,
    /// L2 tables that have entries, by L1 index: host offsets (0 = unallocated).
    l2: BTreeMap<u64, Box<[u64]>>,
}

impl Qcow2Writer {
    /// Creates `path` (which must not exist) for a disk of `size` bytes
    /// rounded up to whole 512-byte sectors (QEMU counts a qcow2 image's size
    /// in sectors and would cut a partial one off), with clusters of
    /// `opts.block_size` bytes (default 64 KiB). The bytes past `size` read
    /// as zeros; [`crate::writer::image_size`] tells the size written.
    pub fn create(path: &Path, size: u64, opts: &WriteOptions) -> Result<Self> {
        crate::output::create_at(path, |out| Self::create_in(out, size, opts))
    }

    /// Like [`Qcow2Writer::create`], into the empty file `out`.
    pub fn create_in(out: NewFile, size: u64, opts: &WriteOptions) -> Result<Self> {
        let path = out.path.as_path();
        let cs = opts.block_size.unwrap_or(64 << 10) as u64;
        if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
            return Err(DiskError::format(
                path,
                "cluster size",
                format!("{cs} must be a power of two from 512 bytes to 2 MiB"),
            ));
        }
        let cluster_bits = cs.trailing_zeros();
        let per_l1 = cs * (cs / 8);
        if size.div_ceil(per_l1) * 8 > MAX_L1_BYTES || size > i64::MAX as u64 {
            return Err(DiskError::format(
                path,
                "size",
                format!("{size} bytes is too large for qcow2 with {cs}-byte clusters"),
            ));
        }
        let size = size.div_ceil(512) * 512;
        Ok(Qcow2Writer {
            path: out.path,
            file: out.file,
            size,
            cluster_bits,
            state: Mutex::new(State {
                next_cluster: 1,
                l2: BTreeMap::new(),
            }),
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Writes `data` at guest `offset`, allocating host clusters for the
    /// clusters that hold non-zero bytes.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        check_write_range(&self.path, self.size, data.len(), offset)?;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        let cs = self.cluster_size();
        let per_table = cs / 8;
        // (guest offset, data range) of every non-zero piece, one per cluster.
        let mut pieces: Vec<(u64, usize, usize)> = Vec::new();
        let mut cur = offset;
        while cur < end {
            let next = ((cur / cs) + 1) * cs;
            let piece_end = next.min(end);
            let (a, b) = ((cur - offset) as usize, (piece_end - offset) as usize);
            if !is_zero(&data[a..b]) {
                pieces.push((cur, a, b));
            }
            cur = piece_end;
        }
        if pieces.is_empty() {
            return Ok(());
        }
        // Allocate (or find) the host cluster of each piece under the lock.
        let mut hosts = Vec::with_capacity(pieces.len());
        {
            let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let st = &mut *guard;
            for &(guest, _, _) in &pieces {
                let cluster = guest / cs;
                let table = st
                    .l2
                    .entry(cluster / per_table)
                    .or_insert_with(|| vec![0u64; per_table as usize].into_boxed_slice());
                let slot = &mut table[(cluster % per_table) as usize];
                if *slot == 0 {
                    *slot = st.next_cluster * cs;
                    st.next_cluster += 1;
                }
                hosts.push(*slot + guest % cs);
            }
        }
        // Write runs that are contiguous both in `data` and in the file at once.
        let mut i = 0;
        while i < pieces.len() {
            let (_, a, mut b) = pieces[i];
            let host = hosts[i];
            let mut j = i + 1;
            while j < pieces.len() && pieces[j].1 == b && hosts[j] == host + (b - a) as u64 {
                b = pieces[j].2;
                j += 1;
            }
            self.file
                .write_all_at(&data[a..b], host)
                .map_err(io(&self.path, "write"))?;
            i = j;
        }
        Ok(())
    }

    /// Writes the L2 tables, L1 table, refcount structures and header, and
    /// flushes the file to stable storage.
    pub fn finish(self) -> Result<()> {
        let st = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        let path = &self.path;
        let cs = 1u64 << self.cluster_bits;
        let per_table = cs / 8;
        let l1_size = self.size.div_ceil(cs * per_table);
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let data_end = st.next_cluster;
        let n_l2 = st.l2.len() as u64;

        // Refcount blocks and table must count themselves: iterate to a fixed point.
        let per_block = cs * 8 / (1 << REFCOUNT_ORDER);
        let base = data_end + n_l2 + l1_clusters;
        let mut total = base;
        let (mut blocks, mut table_clusters);
        loop {
            blocks = total.div_ceil(per_block);
            table_clusters = (blocks * 8).div_ceil(cs);
            let next = base + blocks + table_clusters;
            if next == total {
                break;
            }
            total = next;
        }
        let l2_start = data_end;
        let l1_start = l2_start + n_l2;
        let rb_start = l1_start + l1_clusters;
        let rt_start = rb_start + blocks;

        // L2 tables and the L1 table.
        let mut l1 = vec![0u8; (l1_clusters * cs) as usize];
        let mut buf = vec![0u8; cs as usize];
        for (n, (l1i, table)) in st.l2.iter().enumerate() {
            for (k, &host) in table.iter().enumerate() {
                let e = if host == 0 { 0 } else { (host & OFFSET_MASK) | COPIED };
                buf[k * 8..k * 8 + 8].copy_from_slice(&e.to_be_bytes());
            }
            let at = (l2_start + n as u64) * cs;
            self.file.write_all_at(&buf, at).map_err(io(path, "write L2 table"))?;
            let e = at | COPIED;
            let i = *l1i as usize * 8;
            l1[i..i + 8].copy_from_slice(&e.to_be_bytes());
        }
        self.file
            .write_all_at(&l1, l1_start * cs)
            .map_err(io(path, "write L1 table"))?;

        // Every cluster below `total` is in use exactly once.
        let mut table = vec![0u8; (table_clusters * cs) as usize];
        for b in 0..blocks {
            buf.fill(0);
            let first = b * per_block;
            let used = total.saturating_sub(first).min(per_block);
            for k in 0..used as usize {
                buf[k * 2..k * 2 + 2].copy_from_slice(&1u16.to_be_bytes());
            }
            let at = (rb_start + b) * cs;
            self.file
                .write_all_at(&buf, at)
                .map_err(io(path, "write refcount block"))?;
            table[b as usize * 8..b as usize * 8 + 8].copy_from_slice(&at.to_be_bytes());
        }
        self.file
            .write_all_at(&table, rt_start * cs)
            .map_err(io(path, "write refcount table"))?;
        self.file.set_len(total * cs).map_err(io(path, "set length"))?;
        self.file.sync_data().map_err(io(path, "fsync"))?;

        // The header goes last: until it is written the file is no image.
        let mut h = vec![0u8; HEADER_LEN as usize + 8];
        h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        h[24..32].copy_from_slice(&self.size.to_be_bytes());
        h[36..40].copy_from_slice(&(l1_size as u32).to_be_bytes());
        let l1_offset = if l1_size == 0 { 0 } else { l1_start * cs };
        h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
        h[48..56].copy_from_slice(&(rt_start * cs).to_be_bytes());
        h[56..60].copy_from_slice(&(table_clusters as u32).to_be_bytes());
        h[96..100].copy_from_slice(&REFCOUNT_ORDER.to_be_bytes());
        h[100..104].copy_from_slice(&HEADER_LEN.to_be_bytes());
        // Byte 104: compression type 0 (zlib); the 8 zero bytes after the
        // header are the end-of-extensions marker.
        self.file.write_all_at(&h, 0).map_err(io(path, "write header"))?;
        self.file.sync_all().map_err(io(path, "fsync"))
    }
}

disk_writer_by_inherent_methods!(Qcow2Writer);
