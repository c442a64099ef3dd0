//! Writing dynamic VHDX files (and, for tests and tools, differencing ones).
//!
//! Layout of a file this writer makes: file type identifier at 0, headers at
//! 64 KiB and 128 KiB, region tables at 192 KiB and 256 KiB, an empty 1 MiB
//! log at 1 MiB, the metadata region (1 MiB) at 2 MiB, the BAT region at
//! 3 MiB (rounded up to whole MiB), then payload blocks in the order they
//! were first written, each 1 MiB aligned. The headers are written last, after
//! everything else is on stable storage, so an interrupted restore never
//! leaves a file that opens as a valid VHDX.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Vhdx;
use super::bat::{PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT, SB_PRESENT};
use super::header::{HEADER_LEN, HEADER_OFFSETS, Header, MIB};
use super::metadata::{
    LOCATOR_TYPE_VHDX, MAX_DISK, META_FILE_PARAMETERS, META_LOGICAL_SECTOR, META_PAGE83, META_PARENT_LOCATOR,
    META_PHYSICAL_SECTOR, META_VIRTUAL_DISK_SIZE,
};
use super::regions::{REGION_BAT, REGION_METADATA, REGION_OFFSETS, TABLE_LEN};
use crate::io::ImageFile;
use crate::io_error as io;
use crate::layer::Layer;
use crate::output::{NewFile, WriteOptions, disk_writer_by_inherent_methods};
use crate::raw::is_zero;
use crate::{DiskError, Result};

const LOG_OFFSET: u64 = MIB;
const LOG_LEN: u64 = MIB;
const META_OFFSET: u64 = 2 * MIB;
const META_LEN: u64 = MIB;
const BAT_OFFSET: u64 = 3 * MIB;
/// Default block size (what Hyper-V uses for dynamic disks).
const DEFAULT_BLOCK: u64 = 32 * MIB;

/// What a differencing child records about its parent.
struct ChildOf {
    linkage: String,
    relative_path: String,
    absolute_path: String,
}

struct State {
    /// File offset of each payload block (0: not allocated).
    offsets: Vec<u64>,
    /// End of the file: where the next block goes.
    next: u64,
    /// Differencing only: bit per logical sector written, per block.
    written: HashMap<u64, Vec<u64>>,
}

/// Writes a dynamic VHDX image: blocks are allocated at the end of the file
/// on their first non-zero write, the BAT and metadata are written by
/// [`VhdxWriter::finish`].
pub struct VhdxWriter {
    path: PathBuf,
    file: File,
    size: u64,
    block_size: u64,
    logical: u32,
    physical: u32,
    chunk_ratio: u64,
    child: Option<ChildOf>,
    state: Mutex<State>,
}

impl std::fmt::Debug for VhdxWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxWriter")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish()
    }
}

impl VhdxWriter {
    /// Creates a dynamic VHDX at `path` (which must not exist) for a disk of
    /// `size` bytes (rounded up to the logical sector), with the block size
    /// `opts.block_size` (default 32 MiB) and the sector sizes of `opts`.
    pub fn create(path: &Path, size: u64, opts: &WriteOptions) -> Result<VhdxWriter> {
        crate::output::create_at(path, |out| Self::create_in(out, size, opts))
    }

    /// Like [`VhdxWriter::create`], into the empty file `out`.
    pub fn create_in(out: NewFile, size: u64, opts: &WriteOptions) -> Result<VhdxWriter> {
        Self::new(
            out,
            size,
            opts.logical_sector,
            opts.physical_sector,
            opts.block_size.map(u64::from),
            None,
        )
    }

    /// Creates a differencing VHDX (`.avhdx`) at `path` on top of the VHDX
    /// `parent`: same virtual size and sector sizes as the parent, block size
    /// `opts.block_size` or the parent's. Its parent locator names the parent
    /// by `relative_path` (from the child's folder), `absolute_win32_path`
    /// (the parent's absolute path with backslashes) and `parent_linkage`
    /// (the parent's DataWriteGuid). Writes must be whole logical sectors and
    /// may cover parts of blocks (stored as partially present blocks with a
    /// sector bitmap); all-zero writes are recorded too, since they hide the
    /// parent's data. Meant for tests and tools: cairn restores full disks
    /// with [`VhdxWriter::create`].
    pub fn create_child(path: &Path, parent: &Path, opts: &WriteOptions) -> Result<VhdxWriter> {
        let p = Vhdx::open(ImageFile::open(parent)?)?;
        let sectors = p.sector_sizes();
        let abs = std::fs::canonicalize(parent).map_err(io(parent, "resolve path"))?;
        let child_dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let child_dir = std::fs::canonicalize(child_dir).map_err(io(child_dir, "resolve path"))?;
        let child = ChildOf {
            linkage: p.data_write_guid(),
            relative_path: crate::layer::windows_relative(&child_dir, &abs),
            absolute_path: abs.to_string_lossy().replace('/', "\\"),
        };
        let block = opts.block_size.map(u64::from).unwrap_or(p.block_size());
        crate::output::create_at(path, |out| {
            Self::new(
                out,
                p.virtual_size(),
                sectors.logical,
                sectors.physical,
                Some(block),
                Some(child),
            )
        })
    }

    fn new(
        out: NewFile,
        size: u64,
        logical: u32,
        physical: u32,
        block_size: Option<u64>,
        child: Option<ChildOf>,
    ) -> Result<VhdxWriter> {
        let path = out.path.as_path();
        let block_size = block_size.unwrap_or(DEFAULT_BLOCK);
        if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
            return Err(DiskError::format(
                path,
                "block size",
                format!("{block_size} (must be a power of two from 1 MiB to 256 MiB)"),
            ));
        }
        if ![512, 4096].contains(&logical) || ![512, 4096].contains(&physical) {
            return Err(DiskError::format(
                path,
                "sector size",
                format!("logical {logical} / physical {physical}: each must be 512 or 4096"),
            ));
        }
        let size = size.div_ceil(u64::from(logical)) * u64::from(logical);
        if size == 0 || size > MAX_DISK {
            return Err(DiskError::format(
                path,
                "virtual size",
                format!("{size} bytes (must be 1 byte to 64 TiB)"),
            ));
        }
        let chunk_ratio = (1u64 << 23) * u64::from(logical) / block_size;
        let blocks = size.div_ceil(block_size);
        let w = VhdxWriter {
            path: out.path.clone(),
            file: out.file,
            size,
            block_size,
            logical,
            physical,
            chunk_ratio,
            child,
            state: Mutex::new(State {
                offsets: vec![0; blocks as usize],
                next: 0,
                written: HashMap::new(),
            }),
        };
        let data_start = BAT_OFFSET + w.bat_len();
        w.file.set_len(data_start).map_err(io(path, "set length"))?;
        w.state.lock().unwrap_or_else(|e| e.into_inner()).next = data_start;
        Ok(w)
    }

    /// Virtual size in bytes (the requested size rounded up to the logical sector).
    pub fn virtual_size(&self) -> u64 {
        self.size
    }

    fn blocks(&self) -> u64 {
        self.size.div_ceil(self.block_size)
    }

    fn bat_entries(&self) -> u64 {
        let blocks = self.blocks();
        if self.child.is_some() {
            blocks.div_ceil(self.chunk_ratio) * (self.chunk_ratio + 1)
        } else {
            blocks + (blocks - 1) / self.chunk_ratio
        }
    }

    fn bat_len(&self) -> u64 {
        (self.bat_entries() * 8).div_ceil(MIB) * MIB
    }

    /// Writes `data` at guest `offset`. All-zero data is skipped (except in a
    /// differencing child); the first write into a block allocates it at the
    /// end of the file. Writes are whole logical sectors, except that a
    /// dynamic disk takes a last write ending inside the last sector (a
    /// source whose size was not whole sectors): the rest of it reads as zeros.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        let lss = u64::from(self.logical);
        let end = offset.checked_add(data.len() as u64).filter(|&e| e <= self.size);
        let Some(end) = end else {
            return Err(DiskError::format(
                &self.path,
                "write",
                format!(
                    "{} bytes at {offset} reach past the {}-byte disk",
                    data.len(),
                    self.size
                ),
            ));
        };
        let ends_in_last_sector = self.child.is_none() && end > self.size - lss;
        if !offset.is_multiple_of(lss) || (end % lss != 0 && !ends_in_last_sector) {
            return Err(DiskError::format(
                &self.path,
                "write",
                format!("{} bytes at {offset} are not whole {lss}-byte sectors", data.len()),
            ));
        }
        let bs = self.block_size;
        let mut pos = offset;
        while pos < end {
            let block = pos / bs;
            let within = pos % bs;
            let n = (bs - within).min(end - pos);
            let piece = &data[(pos - offset) as usize..(pos - offset + n) as usize];
            pos += n;
            if self.child.is_none() && is_zero(piece) {
                continue;
            }
            let host = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.offsets[block as usize] == 0 {
                    let at = st.next;
                    self.file.set_len(at + bs).map_err(io(&self.path, "extend"))?;
                    st.offsets[block as usize] = at;
                    st.next = at + bs;
                }
                if self.child.is_some() {
                    let spb = (bs / lss) as usize;
                    let bits = st.written.entry(block).or_insert_with(|| vec![0u64; spb.div_ceil(64)]);
                    let first = (within / lss) as usize;
                    let last = (within + n).div_ceil(lss) as usize;
                    for s in first..last {
                        bits[s / 64] |= 1 << (s % 64);
                    }
                }
                st.offsets[block as usize]
            };
            self.file
                .write_all_at(piece, host + within)
                .map_err(io(&self.path, "write"))?;
        }
        Ok(())
    }

    /// Writes the BAT, sector bitmaps, metadata, region tables and headers,
    /// and flushes the file to stable storage.
    pub fn finish(self) -> Result<()> {
        let path = self.path.clone();
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        let bs = self.block_size;
        let lss = u64::from(self.logical);
        let spb = bs / lss;
        let ratio = self.chunk_ratio;
        let mut bat = vec![0u8; (self.bat_entries() * 8) as usize];
        let put = |bat: &mut Vec<u8>, i: u64, v: u64| {
            bat[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&v.to_le_bytes())
        };
        // Which blocks are only partly written, and their sector bitmaps by chunk.
        let mut chunk_bitmaps: HashMap<u64, Vec<u8>> = HashMap::new();
        for (b, &off) in st.offsets.iter().enumerate() {
            if off == 0 {
                continue;
            }
            let b = b as u64;
            let mut state = PAYLOAD_FULLY_PRESENT;
            if let Some(bits) = st.written.get(&b) {
                // Sectors past the disk's end count as written.
                let valid = ((self.size - b * bs).min(bs) / lss) as usize;
                let full = (0..valid).all(|s| bits[s / 64] >> (s % 64) & 1 == 1);
                if !full {
                    state = PAYLOAD_PARTIALLY_PRESENT;
                }
                let map = chunk_bitmaps
                    .entry(b / ratio)
                    .or_insert_with(|| vec![0u8; MIB as usize]);
                let base = ((b % ratio) * spb / 8) as usize;
                for (k, word) in bits.iter().enumerate() {
                    let bytes = word.to_le_bytes();
                    let at = base + k * 8;
                    let n = 8.min((spb / 8) as usize - k * 8);
                    map[at..at + n].copy_from_slice(&bytes[..n]);
                }
            }
            put(&mut bat, b + b / ratio, state | (off / MIB) << 20);
        }
        if self.child.is_some() {
            let mut chunks: Vec<_> = chunk_bitmaps.into_iter().collect();
            chunks.sort_by_key(|c| c.0);
            for (chunk, map) in chunks {
                let at = st.next;
                st.next += MIB;
                self.file.set_len(st.next).map_err(io(&path, "extend"))?;
                self.file
                    .write_all_at(&map, at)
                    .map_err(io(&path, "write sector bitmap"))?;
                put(&mut bat, chunk * (ratio + 1) + ratio, SB_PRESENT | (at / MIB) << 20);
            }
        }
        self.file
            .write_all_at(&bat, BAT_OFFSET)
            .map_err(io(&path, "write BAT"))?;
        self.file
            .write_all_at(&self.metadata(), META_OFFSET)
            .map_err(io(&path, "write metadata"))?;
        let regions = region_table(&[
            (REGION_BAT, BAT_OFFSET, self.bat_len()),
            (REGION_METADATA, META_OFFSET, META_LEN),
        ]);
        for off in REGION_OFFSETS {
            self.file
                .write_all_at(&regions, off)
                .map_err(io(&path, "write region table"))?;
        }
        let mut ident = vec![0u8; 8 + 512];
        ident[..8].copy_from_slice(b"vhdxfile");
        for (i, u) in "cairn".encode_utf16().enumerate() {
            ident[8 + 2 * i..10 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        self.file
            .write_all_at(&ident, 0)
            .map_err(io(&path, "write file identifier"))?;
        self.file.sync_all().map_err(io(&path, "fsync"))?;
        let file_guid = *uuid::Uuid::new_v4().as_bytes();
        let data_guid = *uuid::Uuid::new_v4().as_bytes();
        for (i, off) in HEADER_OFFSETS.into_iter().enumerate() {
            let h = Header {
                seq: 1 + i as u64,
                file_write_guid: file_guid,
                data_write_guid: data_guid,
                log_guid: [0; 16],
                log_version: 0,
                version: 1,
                log_length: LOG_LEN as u32,
                log_offset: LOG_OFFSET,
            };
            let b = h.encode();
            debug_assert_eq!(b.len(), HEADER_LEN);
            self.file.write_all_at(&b, off).map_err(io(&path, "write header"))?;
        }
        self.file.sync_all().map_err(io(&path, "fsync"))
    }

    /// The metadata region's table and items.
    fn metadata(&self) -> Vec<u8> {
        let mut fp = Vec::new();
        fp.extend_from_slice(&(self.block_size as u32).to_le_bytes());
        let flags: u32 = if self.child.is_some() { 2 } else { 0 };
        fp.extend_from_slice(&flags.to_le_bytes());
        // Flags: bit 1 IsVirtualDisk, bit 2 IsRequired.
        let mut items: Vec<([u8; 16], Vec<u8>, u32)> = vec![
            (META_FILE_PARAMETERS, fp, 4),
            (META_VIRTUAL_DISK_SIZE, self.size.to_le_bytes().to_vec(), 6),
            (META_PAGE83, uuid::Uuid::new_v4().as_bytes().to_vec(), 6),
            (META_LOGICAL_SECTOR, self.logical.to_le_bytes().to_vec(), 6),
            (META_PHYSICAL_SECTOR, self.physical.to_le_bytes().to_vec(), 6),
        ];
        if let Some(c) = &self.child {
            let loc = locator(&[
                ("parent_linkage", &c.linkage),
                ("relative_path", &c.relative_path),
                ("absolute_win32_path", &c.absolute_path),
            ]);
            items.push((META_PARENT_LOCATOR, loc, 4));
        }
        let mut out = vec![0u8; TABLE_LEN];
        out[..8].copy_from_slice(b"metadata");
        out[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
        for (i, (id, data, flags)) in items.into_iter().enumerate() {
            let at = out.len();
            let e = 32 + i * 32;
            out[e..e + 16].copy_from_slice(&id);
            out[e + 16..e + 20].copy_from_slice(&(at as u32).to_le_bytes());
            out[e + 20..e + 24].copy_from_slice(&(data.len() as u32).to_le_bytes());
            out[e + 24..e + 28].copy_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&data);
            // Keep items 8-byte aligned.
            out.resize(out.len().div_ceil(8) * 8, 0);
        }
        out
    }
}

/// A region table with its checksum.
fn region_table(regions: &[([u8; 16], u64, u64)]) -> Vec<u8> {
    let mut b = vec![0u8; TABLE_LEN];
    b[..4].copy_from_slice(b"regi");
    b[8..12].copy_from_slice(&(regions.len() as u32).to_le_bytes());
    for (i, (id, off, len)) in regions.iter().enumerate() {
        let e = 16 + i * 32;
        b[e..e + 16].copy_from_slice(id);
        b[e + 16..e + 24].copy_from_slice(&off.to_le_bytes());
        b[e + 24..e + 28].copy_from_slice(&(*len as u32).to_le_bytes());
        b[e + 28..e + 32].copy_from_slice(&1u32.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A parent locator item: type, key/value count, entries, UTF-16LE strings.
fn locator(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut head = Vec::new();
    head.extend_from_slice(&LOCATOR_TYPE_VHDX);
    head.extend_from_slice(&0u16.to_le_bytes());
    head.extend_from_slice(&(pairs.len() as u16).to_le_bytes());
    let mut strings = Vec::new();
    let base = 20 + 12 * pairs.len();
    let utf16 = |s: &str| s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect::<Vec<u8>>();
    for (k, v) in pairs {
        let (k, v) = (utf16(k), utf16(v));
        let ko = base + strings.len();
        strings.extend_from_slice(&k);
        let vo = base + strings.len();
        strings.extend_from_slice(&v);
        head.extend_from_slice(&(ko as u32).to_le_bytes());
        head.extend_from_slice(&(vo as u32).to_le_bytes());
        head.extend_from_slice(&(k.len() as u16).to_le_bytes());
        head.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    head.extend_from_slice(&strings);
    head
}

disk_writer_by_inherent_methods!(VhdxWriter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_use_backslashes() {
        assert_eq!(
            crate::layer::windows_relative(Path::new("/a/b"), Path::new("/a/b/p.vhdx")),
            ".\\p.vhdx"
        );
        assert_eq!(
            crate::layer::windows_relative(Path::new("/a/b"), Path::new("/a/c/p.vhdx")),
            "..\\c\\p.vhdx"
        );
        assert_eq!(
            crate::layer::windows_relative(Path::new("/a/b/c"), Path::new("/a/p.vhdx")),
            "..\\..\\p.vhdx"
        );
    }
}
