//! Hyper-V VHDX images (MS-VHDX): fixed, dynamic and differencing.
//!
//! Layout, as the specification's "Layout" section describes it:
//!
//! - **Header section** (first MiB): the *file type identifier* (`vhdxfile`)
//!   at 0, two copies of the *header* at 64 KiB and 128 KiB (each protected by
//!   a CRC-32C; the valid one with the higher sequence number is current),
//!   and two copies of the *region table* at 192 KiB and 256 KiB listing the
//!   BAT and metadata regions (CRC-32C over 64 KiB).
//! - **Log** (where the current header says): a circular buffer of *log
//!   entries* (`loge`) with *descriptors* (`desc` data / `zero`) and *data
//!   sectors* (`data`). A non-zero LogGuid in the header means the log must be
//!   replayed before the metadata can be trusted; [`Vhdx::open`] replays it in
//!   memory only (see [`log`]), [`replay_log_in_place`] writes it back.
//! - **Metadata region**: a table (`metadata`) of items — file parameters
//!   (block size, LeaveBlocksAllocated, HasParent), virtual disk size, logical
//!   and physical sector size, page 83 data, and for differencing disks the
//!   parent locator (UTF-16LE key/value pairs).
//! - **BAT region**: 64-bit entries, state in bits 0–2 and the file offset in
//!   MiB in bits 20–63. After every *chunk ratio* (2^23 × logical sector size /
//!   block size) payload block entries comes one *sector bitmap* entry, whose
//!   1 MiB block holds a bit per logical sector of the chunk (set = the sector
//!   is in this file) for partially present blocks of differencing disks.
//! - **Payload blocks**: the disk's data, block-size units at 1 MiB-aligned
//!   file offsets.
//!
//! GUIDs are stored with their first three fields little-endian.

mod bat;
mod header;
pub mod log;
mod metadata;
mod regions;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::io::ImageFile;
use crate::layer::{Format, Layer, Mapping, ParentRef, Piece, SectorSizes};
use crate::{DiskError, Result};
use bat::{Bat, PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT, PAYLOAD_ZERO};
use header::{Header, MIB, current_header};
use metadata::{Metadata, parent_ref, read_metadata};
use regions::Layout;

pub use header::format_guid;
pub use log::replay_log_in_place;
pub use writer::VhdxWriter;

/// A VHDX file opened as a layer.
pub struct Vhdx {
    file: ImageFile,
    header: Header,
    header_slot: usize,
    meta: Metadata,
    /// Raw payload block entries (state in bits 0–2, offset in bits 20–63).
    payload: Vec<u64>,
    /// File offset of each chunk's sector bitmap block (0: not present).
    bitmaps: Vec<u64>,
    chunk_ratio: u64,
    parent: Option<ParentRef>,
    /// Sector bitmap bits of partially present blocks, by block number.
    bitmap_cache: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    /// How many log entries were replayed in memory.
    log_entries: usize,
}

impl std::fmt::Debug for Vhdx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vhdx")
            .field("file", &self.file)
            .field("size", &self.meta.disk_size)
            .field("block_size", &self.meta.block_size)
            .finish()
    }
}

/// Sector bitmaps kept in memory; the cache is emptied when it is full.
const BITMAP_CACHE_MAX: usize = 256;

impl Vhdx {
    /// Opens a VHDX file: reads the current header, replays a pending log in
    /// memory (the file is never written), and loads the metadata and BAT.
    pub fn open(file: ImageFile) -> Result<Self> {
        let (header, header_slot) = current_header(&file)?;
        let phys_len = file.len();
        let (file, log_entries) = log::replay_in_memory(file, &header)?;
        Self::open_replayed(file, phys_len, header, header_slot, log_entries)
    }

    /// `phys_len`: the real file's length; the structures read into memory
    /// must lie inside it (a replayed log may extend the file beyond it).
    fn open_replayed(
        file: ImageFile,
        phys_len: u64,
        header: Header,
        header_slot: usize,
        log_entries: usize,
    ) -> Result<Self> {
        let layout = Layout::read(&file, phys_len, &header)?;
        let meta = read_metadata(&file, layout.meta)?;
        let Bat {
            payload,
            bitmaps,
            chunk_ratio,
        } = Bat::load(&file, &meta, &layout)?;
        let parent = if meta.has_parent {
            Some(parent_ref(file.path(), &meta.locator)?)
        } else {
            None
        };
        Ok(Vhdx {
            file,
            header,
            header_slot,
            meta,
            payload,
            bitmaps,
            chunk_ratio,
            parent,
            bitmap_cache: Mutex::new(HashMap::new()),
            log_entries,
        })
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.meta.block_size
    }

    /// This file's DataWriteGuid, formatted like a parent locator's `parent_linkage`.
    pub fn data_write_guid(&self) -> String {
        format_guid(&self.header.data_write_guid)
    }

    /// The parent locator's key/value pairs (empty for a disk without a parent).
    pub fn parent_locator(&self) -> &[(String, String)] {
        &self.meta.locator
    }

    /// Number of log entries replayed in memory when the file was opened.
    pub fn replayed_log_entries(&self) -> usize {
        self.log_entries
    }

    /// The sector bitmap bits of partially present block `block`.
    fn block_bitmap(&self, block: u64) -> Result<Arc<Vec<u8>>> {
        let mut cache = self.bitmap_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = cache.get(&block) {
            return Ok(b.clone());
        }
        let spb = self.meta.block_size / u64::from(self.meta.logical);
        let chunk = block / self.chunk_ratio;
        let within = block % self.chunk_ratio;
        let off = self.bitmaps[chunk as usize] + within * spb / 8;
        let bits = Arc::new(
            self.file
                .read_vec(off, spb / 8, &format!("sector bitmap of block {block}"))?,
        );
        if cache.len() >= BITMAP_CACHE_MAX {
            cache.clear();
        }
        cache.insert(block, bits.clone());
        Ok(bits)
    }

    /// How block `block` stores its bytes from `pos` (an offset inside the
    /// block): the piece at `pos` and how many bytes from `pos` it covers.
    fn classify(&self, block: u64, pos: u64) -> Result<(Piece, u64)> {
        let bs = self.meta.block_size;
        let v = self.payload[block as usize];
        let host = (v >> 20) * MIB;
        let rest = bs - pos;
        Ok(match v & 7 {
            PAYLOAD_FULLY_PRESENT => (Piece::Data { host: host + pos }, rest),
            PAYLOAD_ZERO => (Piece::Zero, rest),
            PAYLOAD_PARTIALLY_PRESENT => {
                let bits = self.block_bitmap(block)?;
                let lss = u64::from(self.meta.logical);
                let spb = bs / lss;
                let first = pos / lss;
                let bit = |s: u64| bits[(s / 8) as usize] >> (s % 8) & 1 == 1;
                let set = bit(first);
                let mut s = first + 1;
                while s < spb {
                    if s.is_multiple_of(8) {
                        let byte = bits[(s / 8) as usize];
                        if byte == if set { 0xFF } else { 0 } {
                            s += 8;
                            continue;
                        }
                    }
                    if bit(s) != set {
                        break;
                    }
                    s += 1;
                }
                let len = s.min(spb) * lss - pos;
                if set {
                    (Piece::Data { host: host + pos }, len)
                } else {
                    (Piece::Parent, len)
                }
            }
            // Not present, undefined, unmapped: from the parent, or zeros.
            _ => (Piece::Parent, rest),
        })
    }
}

impl Layer for Vhdx {
    fn file(&self) -> &ImageFile {
        &self.file
    }

    fn format(&self) -> Format {
        Format::Vhdx
    }

    fn virtual_size(&self) -> u64 {
        self.meta.disk_size
    }

    fn sector_sizes(&self) -> SectorSizes {
        SectorSizes {
            logical: self.meta.logical,
            physical: self.meta.physical,
        }
    }

    fn parent(&self) -> Option<&ParentRef> {
        self.parent.as_ref()
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let size = self.meta.disk_size;
        let end = offset.saturating_add(max_len).min(size);
        if offset >= end {
            return Err(DiskError::format(
                self.file.path(),
                "read",
                format!("offset {offset} (length {max_len}) is outside the {size}-byte disk"),
            ));
        }
        let bs = self.meta.block_size;
        let mut block = offset / bs;
        let (piece, len) = self.classify(block, offset % bs)?;
        let mut run_end = offset + len;
        while run_end < end && run_end.is_multiple_of(bs) {
            block += 1;
            let (next, nlen) = self.classify(block, 0)?;
            let same = match (piece, next) {
                (Piece::Data { host }, Piece::Data { host: h }) => h == host + (run_end - offset),
                (a, b) => a == b,
            };
            if !same {
                break;
            }
            run_end += nlen;
        }
        Ok(Mapping {
            piece,
            length: run_end.min(end) - offset,
        })
    }

    fn read_data(&self, buf: &mut [u8], host: u64) -> Result<()> {
        self.file.read_exact(buf, host, "payload block")
    }

    fn linkage_id(&self) -> Option<String> {
        Some(self.data_write_guid())
    }

    fn content_id(&self) -> Option<String> {
        Some(self.data_write_guid())
    }

    fn details(&self) -> Vec<(String, String)> {
        let sub = if self.meta.has_parent {
            "differencing"
        } else if self.meta.leave_allocated {
            "fixed"
        } else {
            "dynamic"
        };
        let log = if self.header.log_guid == [0; 16] {
            "empty".to_string()
        } else if self.log_entries == 0 {
            "LogGuid set but no valid log entries".to_string()
        } else {
            format!("{} entries replayed in memory (file unchanged)", self.log_entries)
        };
        let mut out = vec![
            ("subformat".to_string(), sub.to_string()),
            ("block size".to_string(), self.meta.block_size.to_string()),
            ("logical sector size".to_string(), self.meta.logical.to_string()),
            ("physical sector size".to_string(), self.meta.physical.to_string()),
            (
                "header".to_string(),
                format!("{} (sequence number {})", self.header_slot + 1, self.header.seq),
            ),
            ("log".to_string(), log),
            ("data write guid".to_string(), self.data_write_guid()),
        ];
        if let Some(p) = &self.meta.page83 {
            out.push(("virtual disk id".to_string(), format_guid(p)));
        }
        for (k, v) in &self.meta.locator {
            out.push((format!("parent locator {k}"), v.clone()));
        }
        out
    }
}
