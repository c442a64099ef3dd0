//! The VHDX block allocation table (BAT): entry states, how entries map to
//! payload blocks and sector bitmaps, and the checks made when a file is
//! opened.
//!
//! Entries are 64-bit: the state in bits 0–2 and the file offset in MiB in
//! bits 20–63. After every *chunk ratio* payload block entries comes one
//! sector bitmap entry. Every block a present entry names is read later on
//! demand, so loading refuses entries whose blocks lie outside the file,
//! overlap the fixed structures or each other.

use std::path::Path;

use super::header::MIB;
use super::metadata::Metadata;
use super::regions::Layout;
use crate::io::ImageFile;
use crate::io::bytes::le64;
use crate::{DiskError, Result};

/// BAT payload block states.
pub(crate) const PAYLOAD_NOT_PRESENT: u64 = 0;
pub(crate) const PAYLOAD_UNDEFINED: u64 = 1;
pub(crate) const PAYLOAD_ZERO: u64 = 2;
pub(crate) const PAYLOAD_UNMAPPED: u64 = 3;
/// QEMU's header names 5 "unmapped"; treated like 3.
pub(crate) const PAYLOAD_UNMAPPED_QEMU: u64 = 5;
pub(crate) const PAYLOAD_FULLY_PRESENT: u64 = 6;
pub(crate) const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;
/// Sector bitmap block state: present.
pub(crate) const SB_PRESENT: u64 = 6;

/// The payload block entries and sector bitmap locations of a file.
#[derive(Clone, Debug)]
pub(crate) struct Bat {
    /// Raw payload block entries (state in bits 0–2, offset in bits 20–63).
    pub payload: Vec<u64>,
    /// File offset of each chunk's sector bitmap block (0: not present).
    pub bitmaps: Vec<u64>,
    /// Payload blocks per chunk, the blocks one sector bitmap block covers.
    pub chunk_ratio: u64,
}

/// How many payload blocks, chunks and BAT entries a disk has.
struct Geometry {
    chunk_ratio: u64,
    blocks: u64,
    chunks: u64,
    entries: u64,
}

impl Geometry {
    fn of(meta: &Metadata) -> Geometry {
        let bs = meta.block_size;
        let chunk_ratio = (1u64 << 23) * u64::from(meta.logical) / bs;
        let blocks = meta.disk_size.div_ceil(bs);
        let chunks = blocks.div_ceil(chunk_ratio);
        // Only differencing disks need the sector bitmap entry after the
        // last (partial) chunk.
        let entries = if meta.has_parent {
            chunks * (chunk_ratio + 1)
        } else {
            blocks + (blocks - 1) / chunk_ratio
        };
        Geometry {
            chunk_ratio,
            blocks,
            chunks,
            entries,
        }
    }
}

impl Bat {
    /// Reads the BAT region `layout` names and checks every entry a disk of
    /// `meta`'s size uses.
    pub(crate) fn load(file: &ImageFile, meta: &Metadata, layout: &Layout) -> Result<Bat> {
        let path = file.path();
        let g = Geometry::of(meta);
        if g.entries.saturating_mul(8) > layout.bat.length {
            return Err(DiskError::format(
                path,
                "BAT region",
                format!(
                    "{} bytes hold {} entries but a {}-byte disk with {}-byte blocks needs {}",
                    layout.bat.length,
                    layout.bat.length / 8,
                    meta.disk_size,
                    meta.block_size,
                    g.entries
                ),
            ));
        }
        let raw = file.read_vec(layout.bat.offset, g.entries * 8, "BAT")?;
        let mut bat = Bat {
            payload: Vec::with_capacity(g.blocks as usize),
            bitmaps: vec![0u64; g.chunks as usize],
            chunk_ratio: g.chunk_ratio,
        };
        // Blocks are checked against the file as replayed in memory.
        let check = EntryCheck {
            path,
            meta,
            layout,
            len: file.len(),
        };
        for (i, e) in raw.chunks_exact(8).enumerate() {
            let i = i as u64;
            let v = le64(e, 0);
            if (i + 1).is_multiple_of(g.chunk_ratio + 1) {
                let chunk = i / (g.chunk_ratio + 1);
                if meta.has_parent && chunk < g.chunks {
                    bat.bitmaps[chunk as usize] = check.bitmap_entry(i, v)?;
                }
                continue;
            }
            let block = i - i / (g.chunk_ratio + 1);
            if block < g.blocks {
                check.payload_entry(i, block, v)?;
                bat.payload.push(v);
            }
        }
        bat.check_no_shared_space(path, meta)?;
        bat.check_partial_blocks_have_bitmaps(path)?;
        Ok(bat)
    }

    /// No two blocks may share file space. Present blocks lie inside the
    /// file, so there are at most (file length / 1 MiB) of them.
    fn check_no_shared_space(&self, path: &Path, meta: &Metadata) -> Result<()> {
        let (bs, chunk_ratio) = (meta.block_size, self.chunk_ratio);
        // (file offset, length, BAT entry)
        let mut used: Vec<(u64, u64, u64)> = Vec::new();
        for (b, v) in self.payload.iter().enumerate() {
            if matches!(v & 7, PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT) {
                let b = b as u64;
                let need = bs.min(meta.disk_size - b * bs);
                used.push(((v >> 20) * MIB, need, b + b / chunk_ratio));
            }
        }
        for (c, &off) in self.bitmaps.iter().enumerate() {
            if off != 0 {
                used.push((off, MIB, c as u64 * (chunk_ratio + 1) + chunk_ratio));
            }
        }
        used.sort_unstable();
        for w in used.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                let (a, b) = if w[0].2 < w[1].2 { (w[0], w[1]) } else { (w[1], w[0]) };
                return Err(DiskError::format(
                    path,
                    format!("BAT entry {}", b.2),
                    format!(
                        "its block at file offset {} overlaps BAT entry {}'s at {}",
                        b.0, a.2, a.0
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Partially present blocks need their chunk's sector bitmap.
    fn check_partial_blocks_have_bitmaps(&self, path: &Path) -> Result<()> {
        let chunk_ratio = self.chunk_ratio;
        for (b, v) in self.payload.iter().enumerate() {
            if v & 7 == PAYLOAD_PARTIALLY_PRESENT && self.bitmaps[b / chunk_ratio as usize] == 0 {
                let entry = b as u64 + b as u64 / chunk_ratio;
                return Err(DiskError::format(
                    path,
                    format!("BAT entry {entry}"),
                    format!(
                        "block {b} is partially present but its sector bitmap (BAT entry {}) is not",
                        (b as u64 / chunk_ratio) * (chunk_ratio + 1) + chunk_ratio
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Checks one BAT entry against the file: what it may name and where.
struct EntryCheck<'a> {
    path: &'a Path,
    meta: &'a Metadata,
    layout: &'a Layout,
    /// Length of the file (as replayed in memory).
    len: u64,
}

impl EntryCheck<'_> {
    /// Checks sector bitmap entry `i` (value `v`) and returns the file offset
    /// of its block, 0 if not present.
    fn bitmap_entry(&self, i: u64, v: u64) -> Result<u64> {
        let (path, len) = (self.path, self.len);
        let off = (v >> 20) * MIB;
        let field = || format!("BAT entry {i}");
        match v & 7 {
            0 => Ok(0),
            SB_PRESENT => {
                if off == 0 || off.checked_add(MIB).is_none_or(|end| end > len) {
                    return Err(DiskError::format(
                        path,
                        field(),
                        format!("sector bitmap block at {off} is not inside the file ({len} bytes)"),
                    ));
                }
                if let Some(what) = self.layout.overlapping(off, MIB) {
                    return Err(DiskError::format(
                        path,
                        field(),
                        format!("sector bitmap block at {off} overlaps the {what}"),
                    ));
                }
                Ok(off)
            }
            s => Err(DiskError::format(
                path,
                field(),
                format!("invalid sector bitmap state {s}"),
            )),
        }
    }

    /// Checks payload block entry `i` (value `v`) of block `block`.
    fn payload_entry(&self, i: u64, block: u64, v: u64) -> Result<()> {
        let (path, len, bs) = (self.path, self.len, self.meta.block_size);
        let state = v & 7;
        let off = (v >> 20) * MIB;
        let field = || format!("BAT entry {i}");
        match state {
            PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_ZERO | PAYLOAD_UNMAPPED | PAYLOAD_UNMAPPED_QEMU => Ok(()),
            PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT => {
                if state == PAYLOAD_PARTIALLY_PRESENT && !self.meta.has_parent {
                    return Err(DiskError::format(
                        path,
                        field(),
                        "partially present block in a disk without a parent",
                    ));
                }
                let need = bs.min(self.meta.disk_size - block * bs);
                if off == 0 || off.checked_add(need).is_none_or(|end| end > len) {
                    return Err(DiskError::format(
                        path,
                        field(),
                        format!("payload block {block} at file offset {off} is not inside the file ({len} bytes)"),
                    ));
                }
                if let Some(what) = self.layout.overlapping(off, need) {
                    return Err(DiskError::format(
                        path,
                        field(),
                        format!("payload block {block} at file offset {off} overlaps the {what}"),
                    ));
                }
                Ok(())
            }
            s => Err(DiskError::format(
                path,
                field(),
                format!("invalid payload block state {s}"),
            )),
        }
    }
}
