//! VHD images (Virtual PC / legacy Hyper-V): fixed, dynamic and differencing.
//!
//! Layout, after Microsoft's "Virtual Hard Disk Image Format Specification"
//! (sections "Hard Disk Footer Format", "Dynamic Disk Header Format", "Block
//! Allocation Table and Data Blocks", "Implementing a Differencing Hard
//! Disk"; all fields big-endian):
//!
//! - Every file ends with the 512-byte *hard disk footer* ("conectix"): disk
//!   type (2 fixed, 3 dynamic, 4 differencing), current size, CHS geometry,
//!   creator, unique id, and a checksum (one's complement of the byte sum).
//! - A *fixed* disk is the disk's bytes followed by the footer.
//! - A *dynamic* disk starts with a copy of the footer; the footer's data
//!   offset points at the 1024-byte *dynamic disk header* ("cxsparse", own
//!   checksum), which gives the offset and length of the *block allocation
//!   table* (BAT: one u32 sector number per block, all ones when the block is
//!   not stored) and the block size (2 MiB in practice). Each stored block is
//!   a *sector bitmap* (one bit per sector, most significant bit first,
//!   padded to 512 bytes) followed by the block's data. A clear bit means the
//!   sector reads as zeros.
//! - A *differencing* disk is a dynamic disk whose header also names its
//!   parent (unique id, UTF-16BE file name, and up to eight *parent
//!   locators* pointing at path strings stored elsewhere in the file); a
//!   clear bit or a missing block means the parent's bytes.
//!
//! Which size a guest sees depends on the creator: see
//! [`format::Footer::virtual_size`]. [`VhdWriter`] writes dynamic disks
//! (and differencing children, for tests).

pub mod format;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::SeekFrom;

use crate::io::ImageFile;
use crate::layer::{Format, Layer, Mapping, ParentRef, Piece, relative_to};
use crate::{DiskError, Result};
use format::{
    DynHeader, FOOTER_LEN, Footer, HEADER_LEN, MAX_BLOCK_SIZE, MAX_SIZE, SECTOR, TYPE_DIFFERENCING, TYPE_DYNAMIC,
    TYPE_FIXED, UNALLOCATED, bitmap_len, code_string, id_string, platform,
};
pub use writer::VhdWriter;

/// Longest parent locator cairn reads (a 32 767-character UTF-16 path plus slack).
const MAX_LOCATOR_LEN: u32 = 64 << 10;
/// Sector bitmaps of partly stored blocks kept in memory at most.
const BITMAP_CACHE: usize = 64;

/// Block states, learned from the sector bitmap when a block is first mapped.
const UNKNOWN: u8 = 0;
const FULL: u8 = 1;
const EMPTY: u8 = 2;
const MIXED: u8 = 3;

/// An open VHD file.
pub struct Vhd {
    file: ImageFile,
    footer: Footer,
    /// Where the footer in use came from, for `details`.
    footer_note: String,
    size: u64,
    kind: Kind,
}

enum Kind {
    /// Data at 0..size; `fd` answers SEEK_DATA/SEEK_HOLE when the image is a real file.
    Fixed {
        fd: Option<File>,
    },
    Sparse(Box<Sparse>),
}

/// The tables of a dynamic or differencing disk.
struct Sparse {
    header: DynHeader,
    differencing: bool,
    block_size: u64,
    bitmap_len: u64,
    /// BAT entries of the blocks inside the virtual size.
    bat: Vec<u32>,
    /// Per block: UNKNOWN, FULL, EMPTY or MIXED.
    states: Vec<AtomicU8>,
    /// Sector bitmaps of MIXED blocks.
    bitmaps: Mutex<HashMap<usize, Arc<Vec<u8>>>>,
    parent: Option<ParentRef>,
}

impl Vhd {
    /// Opens a VHD file: reads and checks the footer (falling back to the
    /// copy at offset 0 for dynamic and differencing disks when the one at
    /// the end is damaged), the dynamic disk header and the BAT.
    pub fn open(file: ImageFile) -> Result<Self> {
        let path = file.path().to_path_buf();
        let len = file.len();
        if len < FOOTER_LEN as u64 {
            return Err(DiskError::format(
                &path,
                "footer",
                format!("the file is {len} bytes long, shorter than a VHD footer ({FOOTER_LEN} bytes)"),
            ));
        }
        let (footer, footer_note) = read_footer(&file)?;
        let size = footer.virtual_size();
        if size > MAX_SIZE {
            return Err(DiskError::format(
                &path,
                size_field(&footer),
                format!("the disk would be {size} bytes, more than the VHD limit of {MAX_SIZE}"),
            ));
        }
        let kind = match footer.disk_type {
            TYPE_FIXED => {
                let data = len - FOOTER_LEN as u64;
                if size > data {
                    return Err(DiskError::format(
                        &path,
                        size_field(&footer),
                        format!(
                            "the fixed disk is {size} bytes but the file holds only {data} bytes before its footer (truncated?)"
                        ),
                    ));
                }
                let fd = File::open(&path)
                    .ok()
                    .filter(|f| f.metadata().is_ok_and(|m| m.len() == len));
                Kind::Fixed { fd }
            }
            _ => Kind::Sparse(Box::new(open_sparse(&file, &footer, size)?)),
        };
        Ok(Vhd {
            file,
            footer,
            footer_note,
            size,
            kind,
        })
    }

    /// The footer in use.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The dynamic disk header (dynamic and differencing disks).
    pub fn header(&self) -> Option<&DynHeader> {
        match &self.kind {
            Kind::Sparse(s) => Some(&s.header),
            Kind::Fixed { .. } => None,
        }
    }

    fn fixed_map(&self, fd: &Option<File>, offset: u64, end: u64) -> Mapping {
        let data = |length| Mapping {
            piece: Piece::Data { host: offset },
            length,
        };
        let Some(fd) = fd else { return data(end - offset) };
        match rustix::fs::seek(fd, SeekFrom::Data(offset)) {
            Ok(d) if d <= offset => {
                let hole = rustix::fs::seek(fd, SeekFrom::Hole(offset)).unwrap_or(end);
                data(hole.clamp(offset + 1, end) - offset)
            }
            Ok(d) => Mapping {
                piece: Piece::Parent,
                length: d.min(end) - offset,
            },
            Err(rustix::io::Errno::NXIO) => Mapping {
                piece: Piece::Parent,
                length: end - offset,
            },
            Err(_) => data(end - offset),
        }
    }
}

/// The field a wrong virtual size comes from, for messages.
fn size_field(f: &Footer) -> &'static str {
    if f.size_from_geometry() {
        "footer disk geometry"
    } else {
        "footer current size"
    }
}

/// Reads the footer at the end, or its copy at offset 0 when the end one is
/// damaged and the copy describes a dynamic or differencing disk.
fn read_footer(file: &ImageFile) -> Result<(Footer, String)> {
    let path = file.path();
    let at = file.len() - FOOTER_LEN as u64;
    let mut b = [0u8; FOOTER_LEN];
    file.read_exact(&mut b, at, "footer")?;
    let end_err = match Footer::parse(&b) {
        Ok(f) => {
            check_type(path, &f, at)?;
            return Ok((f, "at the end of the file".into()));
        }
        Err(e) => e,
    };
    let copy_err = if at >= FOOTER_LEN as u64 {
        file.read_exact(&mut b, 0, "footer copy")?;
        match Footer::parse(&b) {
            Ok(f) if matches!(f.disk_type, TYPE_DYNAMIC | TYPE_DIFFERENCING) => {
                return Ok((
                    f,
                    format!("copy at offset 0 (the footer at the end is damaged: {end_err})"),
                ));
            }
            Ok(f) => format!("describes disk type {}, which keeps no copy there", f.disk_type),
            Err(e) => e,
        }
    } else {
        "the file is too short to hold one".into()
    };
    Err(DiskError::format(
        path,
        "footer",
        format!("at offset {at}: {end_err}; no usable copy at offset 0 ({copy_err})"),
    ))
}

fn check_type(path: &Path, f: &Footer, at: u64) -> Result<()> {
    if matches!(f.disk_type, TYPE_FIXED | TYPE_DYNAMIC | TYPE_DIFFERENCING) {
        return Ok(());
    }
    Err(DiskError::format(
        path,
        "footer disk type",
        format!(
            "{} in the footer at offset {at} (expected 2 fixed, 3 dynamic or 4 differencing)",
            f.disk_type
        ),
    ))
}

/// A byte range of the file holding metadata, for overlap checks.
struct Region {
    start: u64,
    end: u64,
    what: &'static str,
}

/// Opens the tables of a dynamic or differencing disk of `size` bytes: the
/// dynamic disk header, the BAT, and the checks that keep the blocks it
/// names inside the file and clear of each other.
fn open_sparse(file: &ImageFile, footer: &Footer, size: u64) -> Result<Sparse> {
    let meta_end = file.len() - FOOTER_LEN as u64; // the footer at the end
    let header = read_dyn_header(file, footer, meta_end)?;
    let block_size = header.block_size as u64;
    let bm_len = bitmap_len(header.block_size);
    let (bat, table_end) = read_bat(file, &header, footer.data_offset, size, meta_end)?;
    // Every stored block lies inside the file, clear of the metadata and of the other blocks.
    let hdr_at = footer.data_offset;
    let regions = [
        Region {
            start: 0,
            end: FOOTER_LEN as u64,
            what: "the footer copy",
        },
        Region {
            start: hdr_at,
            end: hdr_at + HEADER_LEN as u64,
            what: "the dynamic disk header",
        },
        Region {
            start: header.table_offset,
            end: table_end,
            what: "the BAT",
        },
    ];
    let blocks = Blocks {
        path: file.path(),
        size,
        block_size,
        bitmap_len: bm_len,
        meta_end,
    };
    blocks.check(&bat, &regions)?;

    let differencing = footer.disk_type == TYPE_DIFFERENCING;
    let parent = if differencing {
        Some(parent_ref(file, &header)?)
    } else {
        None
    };
    let states = (0..bat.len()).map(|_| AtomicU8::new(UNKNOWN)).collect();
    Ok(Sparse {
        header,
        differencing,
        block_size,
        bitmap_len: bm_len,
        bat,
        states,
        bitmaps: Mutex::new(HashMap::new()),
        parent,
    })
}

/// Reads the dynamic disk header the footer points at, which must lie
/// between the footer copy and the footer, and checks its block size.
fn read_dyn_header(file: &ImageFile, footer: &Footer, meta_end: u64) -> Result<DynHeader> {
    let err = |field: &str, reason: String| DiskError::format(file.path(), field, reason);
    let hdr_at = footer.data_offset;
    if hdr_at < FOOTER_LEN as u64 || hdr_at.checked_add(HEADER_LEN as u64).is_none_or(|e| e > meta_end) {
        return Err(err(
            "footer data offset",
            format!(
                "the dynamic disk header at {hdr_at} must lie between the footer copy and the footer (bytes {FOOTER_LEN}..{meta_end})"
            ),
        ));
    }
    let mut hb = [0u8; HEADER_LEN];
    file.read_exact(&mut hb, hdr_at, "dynamic disk header")?;
    let header = DynHeader::parse(&hb).map_err(|e| err("dynamic disk header", format!("at offset {hdr_at}: {e}")))?;
    let bs = header.block_size;
    if !bs.is_power_of_two() || !(SECTOR as u32..=MAX_BLOCK_SIZE).contains(&bs) {
        return Err(err(
            "dynamic disk header block size",
            format!("{bs}: must be a power of two from {SECTOR} to {MAX_BLOCK_SIZE}"),
        ));
    }
    Ok(header)
}

/// Reads the BAT entries of the blocks inside the virtual size, after
/// checking that the table covers the disk and lies inside the file, clear
/// of the dynamic disk header at `hdr_at`. Returns them with the table's end.
fn read_bat(file: &ImageFile, header: &DynHeader, hdr_at: u64, size: u64, meta_end: u64) -> Result<(Vec<u32>, u64)> {
    let err = |field: &str, reason: String| DiskError::format(file.path(), field, reason);
    let block_size = header.block_size as u64;
    let needed = size.div_ceil(block_size);
    let entries = header.max_table_entries as u64;
    if entries < needed {
        return Err(err(
            "dynamic disk header max table entries",
            format!(
                "{entries} blocks of {block_size} bytes cover {} bytes but the disk is {size} bytes",
                entries * block_size
            ),
        ));
    }
    let table = header.table_offset;
    let table_end = table.checked_add(entries * 4);
    if table < FOOTER_LEN as u64 || table_end.is_none_or(|e| e > meta_end) {
        return Err(err(
            "dynamic disk header max table entries",
            format!(
                "a table of {entries} entries at offset {table} does not fit between the footer copy and the footer (bytes {FOOTER_LEN}..{meta_end})"
            ),
        ));
    }
    let table_end = table + entries * 4;
    if table < hdr_at + HEADER_LEN as u64 && hdr_at < table_end {
        return Err(err(
            "dynamic disk header table offset",
            format!("the BAT at bytes {table}..{table_end} overlaps the dynamic disk header at {hdr_at}"),
        ));
    }
    let raw = file.read_vec(table, needed * 4, "BAT")?;
    let bat = raw
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((bat, table_end))
}

/// Where the stored blocks of a sparse disk may lie.
struct Blocks<'a> {
    path: &'a Path,
    /// Virtual size: the last block may be shorter.
    size: u64,
    block_size: u64,
    bitmap_len: u64,
    /// Where the data area ends (the footer at the end starts).
    meta_end: u64,
}

impl Blocks<'_> {
    /// Checks that every block `bat` stores lies inside the data area, clear
    /// of the metadata `regions` and of the other blocks.
    fn check(&self, bat: &[u32], regions: &[Region]) -> Result<()> {
        let err = |field: &str, reason: String| DiskError::format(self.path, field, reason);
        let (block_size, meta_end) = (self.block_size, self.meta_end);
        let mut spans: Vec<(u64, u64, usize)> = Vec::new();
        for (i, &e) in bat.iter().enumerate() {
            if e == UNALLOCATED {
                continue;
            }
            let start = e as u64 * SECTOR;
            let data_len = block_size.min(self.size - i as u64 * block_size);
            let end = start + self.bitmap_len + data_len;
            let field = format!("BAT entry {i}");
            if end > meta_end {
                return Err(err(
                    &field,
                    format!(
                        "the block at bytes {start}..{end} reaches past the data area, which ends at {meta_end} where the footer starts (truncated?)"
                    ),
                ));
            }
            if let Some(r) = regions.iter().find(|r| start < r.end && r.start < end) {
                return Err(err(
                    &field,
                    format!(
                        "the block at bytes {start}..{end} overlaps {} (bytes {}..{})",
                        r.what, r.start, r.end
                    ),
                ));
            }
            spans.push((start, end, i));
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(err(
                    &format!("BAT entry {}", w[1].2),
                    format!(
                        "the block at bytes {}..{} overlaps the block of BAT entry {} (bytes {}..{})",
                        w[1].0, w[1].1, w[0].2, w[0].0, w[0].1
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Where a differencing disk's parent may be, from its locators and name.
fn parent_ref(file: &ImageFile, header: &DynHeader) -> Result<ParentRef> {
    let path = file.path();
    let meta_end = file.len() - FOOTER_LEN as u64;
    let mut relative = Vec::new();
    let mut absolute = Vec::new();
    for (i, l) in header.locators.iter().enumerate() {
        let is_relative = matches!(l.code, platform::W2RU | platform::WI2R);
        if !matches!(
            l.code,
            platform::W2RU | platform::W2KU | platform::WI2R | platform::WI2K | platform::MACX
        ) {
            continue; // unused entry, or a Mac alias blob
        }
        let field = format!("parent locator {i}");
        if l.data_len > MAX_LOCATOR_LEN {
            return Err(DiskError::format(
                path,
                field,
                format!("data length {} is more than {MAX_LOCATOR_LEN} bytes", l.data_len),
            ));
        }
        if l.data_offset < FOOTER_LEN as u64
            || l.data_offset
                .checked_add(l.data_len as u64)
                .is_none_or(|e| e > meta_end)
        {
            return Err(DiskError::format(
                path,
                field,
                format!(
                    "{} bytes at offset {} are not between the footer copy and the footer (bytes {FOOTER_LEN}..{meta_end})",
                    l.data_len, l.data_offset
                ),
            ));
        }
        let data = file.read_vec(l.data_offset, l.data_len as u64, &field)?;
        let text = match l.code {
            platform::W2RU | platform::W2KU => {
                let units: Vec<u16> = data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                String::from_utf16_lossy(&units)
            }
            platform::MACX => mac_url_path(&String::from_utf8_lossy(&data)),
            _ => String::from_utf8_lossy(&data).into_owned(),
        };
        let text = text.trim_end_matches('\0').replace('\\', "/");
        if text.is_empty() {
            continue;
        }
        if is_relative {
            relative.push(text.trim_start_matches("./").to_string());
        } else {
            absolute.push(text);
        }
    }
    let child = path;
    let mut candidates: Vec<PathBuf> = Vec::new();
    for r in &relative {
        candidates.push(relative_to(child, r));
    }
    // Windows absolute paths ("C:/VMs/base.vhd") mean nothing here; Unix ones do.
    candidates.extend(absolute.iter().filter(|a| a.starts_with('/')).map(PathBuf::from));
    let name = header.parent_name.trim_end_matches('\0').replace('\\', "/");
    if let Some(base) = name.rsplit('/').next().filter(|b| !b.is_empty()) {
        candidates.push(relative_to(child, base));
    }
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|c| seen.insert(c.clone()));
    let shown = if !header.parent_name.is_empty() {
        header.parent_name.clone()
    } else if let Some(first) = relative.first().or(absolute.first()) {
        first.clone()
    } else {
        return Err(DiskError::format(
            path,
            "parent locator",
            "the differencing disk names no parent (no parent name and no usable locator)",
        ));
    };
    // A nil parent id is how some tools (Xen's vhd-util) mark a raw parent.
    let nil = header.parent_id == [0u8; 16];
    Ok(ParentRef {
        name: shown,
        candidates,
        format: if nil { None } else { Some(Format::Vhd) },
        linkage: if nil {
            Vec::new()
        } else {
            vec![id_string(&header.parent_id)]
        },
    })
}

/// The path of a `file://host/path` URL, percent-escapes decoded.
fn mac_url_path(url: &str) -> String {
    let rest = url.strip_prefix("file://").unwrap_or(url);
    let rest = match rest.find('/') {
        Some(i) => &rest[i..],
        None => rest,
    };
    let b = rest.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Sparse {
    /// How this layer stores sectors whose bitmap bit is clear.
    fn clear_piece(&self) -> Piece {
        if self.differencing { Piece::Parent } else { Piece::Zero }
    }

    /// Sectors of block `b` inside the disk.
    fn sectors_in(&self, b: usize, size: u64) -> u64 {
        self.block_size.min(size - b as u64 * self.block_size) / SECTOR
    }

    fn read_bitmap(&self, file: &ImageFile, b: usize) -> Result<Vec<u8>> {
        let at = self.bat[b] as u64 * SECTOR;
        file.read_vec(at, self.bitmap_len, &format!("sector bitmap of block {b}"))
    }

    /// The state of stored block `b`, reading its bitmap the first time.
    fn state(&self, file: &ImageFile, b: usize, size: u64) -> Result<u8> {
        let s = self.states[b].load(Ordering::Relaxed);
        if s != UNKNOWN {
            return Ok(s);
        }
        let bm = self.read_bitmap(file, b)?;
        let n = self.sectors_in(b, size) as usize;
        let (full, rem) = (n / 8, n % 8);
        let tail_mask = if rem == 0 { 0 } else { 0xFFu8 << (8 - rem) };
        let all = |v: u8| bm[..full].iter().all(|&x| x == v) && (rem == 0 || bm[full] & tail_mask == v & tail_mask);
        let s = if all(0xFF) {
            FULL
        } else if all(0) {
            EMPTY
        } else {
            self.cache(b, bm);
            MIXED
        };
        self.states[b].store(s, Ordering::Relaxed);
        Ok(s)
    }

    fn cache(&self, b: usize, bm: Vec<u8>) -> Arc<Vec<u8>> {
        let bm = Arc::new(bm);
        let mut c = self.bitmaps.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= BITMAP_CACHE {
            c.clear();
        }
        c.insert(b, bm.clone());
        bm
    }

    fn bitmap(&self, file: &ImageFile, b: usize) -> Result<Arc<Vec<u8>>> {
        if let Some(bm) = self.bitmaps.lock().unwrap_or_else(|e| e.into_inner()).get(&b) {
            return Ok(bm.clone());
        }
        let bm = self.read_bitmap(file, b)?;
        Ok(self.cache(b, bm))
    }

    /// The piece covering all of block `b` when it is uniform, else `None`.
    fn whole_block(&self, file: &ImageFile, b: usize, size: u64) -> Result<Option<Piece>> {
        if self.bat[b] == UNALLOCATED {
            return Ok(Some(Piece::Parent));
        }
        Ok(match self.state(file, b, size)? {
            EMPTY => Some(self.clear_piece()),
            _ => None,
        })
    }

    fn map(&self, file: &ImageFile, size: u64, offset: u64, end: u64) -> Result<Mapping> {
        let bs = self.block_size;
        let b = (offset / bs) as usize;
        let block_start = b as u64 * bs;
        let block_end = (block_start + bs).min(end);
        let within = offset - block_start;
        let (piece, run_end) = if self.bat[b] == UNALLOCATED {
            (Piece::Parent, block_end)
        } else {
            let data = Piece::Data {
                host: self.bat[b] as u64 * SECTOR + self.bitmap_len + within,
            };
            match self.state(file, b, size)? {
                FULL => (data, block_end),
                EMPTY => (self.clear_piece(), block_end),
                _ => {
                    let bm = self.bitmap(file, b)?;
                    let bit = |s: u64| bm[(s / 8) as usize] & (0x80 >> (s % 8)) != 0;
                    let first = within / SECTOR;
                    let last = (block_end - block_start).div_ceil(SECTOR);
                    let set = bit(first);
                    let mut s = first + 1;
                    while s < last && bit(s) == set {
                        s += 1;
                    }
                    let piece = if set { data } else { self.clear_piece() };
                    (piece, (block_start + s * SECTOR).min(block_end))
                }
            }
        };
        // Stored data ends at the block's end: the next block's sector bitmap
        // lies between the two blocks' data, so they are never contiguous in the
        // file. Runs that are not stored data continue into following uniform blocks.
        let mut run_end = run_end;
        if run_end == block_end && !matches!(piece, Piece::Data { .. }) {
            while run_end < end {
                let nb = (run_end / bs) as usize;
                if self.whole_block(file, nb, size)? != Some(piece) {
                    break;
                }
                run_end = (run_end + bs).min(end);
            }
        }
        Ok(Mapping {
            piece,
            length: run_end - offset,
        })
    }
}

impl Layer for Vhd {
    fn file(&self) -> &ImageFile {
        &self.file
    }

    fn format(&self) -> Format {
        Format::Vhd
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn parent(&self) -> Option<&ParentRef> {
        match &self.kind {
            Kind::Sparse(s) => s.parent.as_ref(),
            Kind::Fixed { .. } => None,
        }
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let end = offset.saturating_add(max_len).min(self.size);
        if offset >= end {
            return Err(DiskError::format(
                self.file.path(),
                "allocation map",
                format!(
                    "asked for {max_len} bytes at guest offset {offset} of a {} byte disk",
                    self.size
                ),
            ));
        }
        match &self.kind {
            Kind::Fixed { fd } => Ok(self.fixed_map(fd, offset, end)),
            Kind::Sparse(s) => s.map(&self.file, self.size, offset, end),
        }
    }

    fn read_data(&self, buf: &mut [u8], host: u64) -> Result<()> {
        self.file.read_exact(buf, host, "block data")
    }

    fn linkage_id(&self) -> Option<String> {
        Some(id_string(&self.footer.unique_id))
    }

    fn details(&self) -> Vec<(String, String)> {
        let f = &self.footer;
        let subformat = match f.disk_type {
            TYPE_FIXED => "fixed",
            TYPE_DIFFERENCING => "differencing",
            _ => "dynamic",
        };
        let mut d = vec![
            ("subformat".to_string(), subformat.to_string()),
            (
                "creator".into(),
                format!(
                    "{} {}.{} on {}",
                    code_string(&f.creator_app),
                    f.creator_version >> 16,
                    f.creator_version & 0xFFFF,
                    code_string(&f.creator_os)
                ),
            ),
            (
                "geometry".into(),
                format!("{}/{}/{} (C/H/S)", f.cylinders, f.heads, f.sectors_per_track),
            ),
            ("current size".into(), f.current_size.to_string()),
            (
                "size from".into(),
                if f.size_from_geometry() {
                    "CHS geometry".into()
                } else {
                    "current size".into()
                },
            ),
            ("unique id".into(), id_string(&f.unique_id)),
            ("footer".into(), self.footer_note.clone()),
        ];
        if let Kind::Sparse(s) = &self.kind {
            d.push(("block size".into(), s.block_size.to_string()));
            let stored = s.bat.iter().filter(|&&e| e != UNALLOCATED).count();
            d.push(("blocks stored".into(), format!("{stored} of {}", s.bat.len())));
            if s.differencing {
                d.push(("parent name".into(), s.header.parent_name.clone()));
                d.push(("parent id".into(), id_string(&s.header.parent_id)));
            }
        }
        d
    }
}

/// Whether the last 512 bytes of `file` are a valid VHD footer (cookie and
/// checksum), i.e. whether a file without a footer copy at offset 0 is a
/// fixed VHD. Files shorter than a footer are not.
pub fn footer_at_end(file: &ImageFile) -> Result<bool> {
    let len = file.len();
    if len < FOOTER_LEN as u64 {
        return Ok(false);
    }
    let mut b = [0u8; FOOTER_LEN];
    file.read_exact(&mut b, len - FOOTER_LEN as u64, "VHD footer")?;
    Ok(Footer::parse(&b).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_urls_decode() {
        assert_eq!(
            mac_url_path("file://localhost/Users/a%20b/base.vhd"),
            "/Users/a b/base.vhd"
        );
        assert_eq!(mac_url_path("file:///x/y.vhd"), "/x/y.vhd");
        assert_eq!(mac_url_path("file:///x/%zz%4"), "/x/%zz%4");
    }

    #[test]
    fn footer_at_end_needs_a_checksum_and_512_bytes() {
        let p = Path::new("x.img");
        assert!(!footer_at_end(&ImageFile::from_bytes(p, b"conectix".to_vec())).unwrap());
        let mut raw = vec![0u8; 4096];
        raw[4096 - 512..4096 - 504].copy_from_slice(b"conectix");
        assert!(!footer_at_end(&ImageFile::from_bytes(p, raw)).unwrap());
    }
}
