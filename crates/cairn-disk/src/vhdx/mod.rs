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

pub mod log;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::io::ImageFile;
use crate::io::bytes::{le16, le32, le64};
use crate::layer::{Format, Layer, Mapping, ParentRef, Piece, SectorSizes};
use crate::{DiskError, Result};

pub use log::replay_log_in_place;
pub use writer::VhdxWriter;

pub(crate) const KIB: u64 = 1024;
pub(crate) const MIB: u64 = 1024 * 1024;
/// Offsets of the two header copies.
pub(crate) const HEADER_OFFSETS: [u64; 2] = [64 * KIB, 128 * KIB];
/// Offsets of the two region table copies.
pub(crate) const REGION_OFFSETS: [u64; 2] = [192 * KIB, 256 * KIB];
/// Bytes of a header covered by its checksum.
pub(crate) const HEADER_LEN: usize = 4096;
/// Bytes of a region table (and of the metadata table).
pub(crate) const TABLE_LEN: usize = 64 * 1024;
/// Largest virtual disk the specification allows (64 TiB).
pub(crate) const MAX_DISK: u64 = 64 << 40;

/// A GUID in its on-disk byte order from its textual fields.
pub(crate) const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7],
    ]
}

pub(crate) const REGION_BAT: [u8; 16] = guid(
    0x2DC27766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
pub(crate) const REGION_METADATA: [u8; 16] = guid(
    0x8B7CA206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
pub(crate) const META_FILE_PARAMETERS: [u8; 16] = guid(
    0xCAA16737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
pub(crate) const META_VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2FA54224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
pub(crate) const META_PAGE83: [u8; 16] = guid(
    0xBECA12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
pub(crate) const META_LOGICAL_SECTOR: [u8; 16] = guid(
    0x8141BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
pub(crate) const META_PHYSICAL_SECTOR: [u8; 16] = guid(
    0xCDA348C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
pub(crate) const META_PARENT_LOCATOR: [u8; 16] = guid(
    0xA8D35F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
pub(crate) const LOCATOR_TYPE_VHDX: [u8; 16] = guid(
    0xB04AEFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

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

/// Formats on-disk GUID bytes the way parent locators write them:
/// `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}` (lower case, as QEMU and libvhdi
/// write them; libvhdi rejects upper-case hex, and comparisons ignore case).
pub fn format_guid(b: &[u8; 16]) -> String {
    format!(
        "{{{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}}}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// Normalises a GUID string from a parent locator to [`format_guid`]'s form
/// (braces added if missing, lower case).
fn normalize_guid_text(s: &str) -> String {
    let t = s.trim().trim_start_matches('{').trim_end_matches('}');
    format!("{{{}}}", t.to_ascii_lowercase())
}

/// One parsed header.
#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub seq: u64,
    pub file_write_guid: [u8; 16],
    pub data_write_guid: [u8; 16],
    pub log_guid: [u8; 16],
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

fn guid_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    g
}

/// CRC-32C of `data` with the 4-byte checksum field at `at` taken as zero.
pub(crate) fn crc_with_hole(data: &[u8], at: usize) -> u32 {
    let c = crc32c::crc32c(&data[..at]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &data[at + 4..])
}

impl Header {
    /// Parses and checks a 4 KiB header.
    pub(crate) fn parse(b: &[u8]) -> std::result::Result<Header, String> {
        if &b[..4] != b"head" {
            return Err("no \"head\" signature".into());
        }
        let stored = le32(b, 4);
        let crc = crc_with_hole(&b[..HEADER_LEN], 4);
        if stored != crc {
            return Err(format!(
                "checksum {stored:#010x} does not match the contents ({crc:#010x})"
            ));
        }
        Ok(Header {
            seq: le64(b, 8),
            file_write_guid: guid_at(b, 16),
            data_write_guid: guid_at(b, 32),
            log_guid: guid_at(b, 48),
            log_version: le16(b, 64),
            version: le16(b, 66),
            log_length: le32(b, 68),
            log_offset: le64(b, 72),
        })
    }

    /// Serialises the header into a 4 KiB buffer with its checksum.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[..4].copy_from_slice(b"head");
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..32].copy_from_slice(&self.file_write_guid);
        b[32..48].copy_from_slice(&self.data_write_guid);
        b[48..64].copy_from_slice(&self.log_guid);
        b[64..66].copy_from_slice(&self.log_version.to_le_bytes());
        b[66..68].copy_from_slice(&self.version.to_le_bytes());
        b[68..72].copy_from_slice(&self.log_length.to_le_bytes());
        b[72..80].copy_from_slice(&self.log_offset.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// The reason of a format error without the path (for messages that combine several).
fn reason(e: DiskError) -> String {
    match e {
        DiskError::Format { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// Reads both headers and returns the current one with its slot (0 or 1).
pub(crate) fn current_header(file: &ImageFile) -> Result<(Header, usize)> {
    check_file_identifier(file)?;
    let mut found: Vec<(Header, usize)> = Vec::new();
    let mut errors = Vec::new();
    for (slot, &off) in HEADER_OFFSETS.iter().enumerate() {
        let parsed = file
            .read_vec(off, HEADER_LEN as u64, &format!("header {}", slot + 1))
            .map_err(reason)
            .and_then(|b| Header::parse(&b));
        match parsed {
            Ok(h) => found.push((h, slot)),
            Err(e) => errors.push(format!("header {} at {off}: {e}", slot + 1)),
        }
    }
    let Some(best) = found.into_iter().max_by_key(|(h, slot)| (h.seq, *slot)) else {
        return Err(DiskError::format(
            file.path(),
            "headers",
            format!("both headers are damaged: {}", errors.join("; ")),
        ));
    };
    let h = &best.0;
    let field = format!("header {}", best.1 + 1);
    if h.version != 1 {
        return Err(DiskError::Unsupported {
            path: file.path().to_path_buf(),
            what: format!("VHDX version {} ({field})", h.version),
        });
    }
    if h.log_version != 0 {
        return Err(DiskError::Unsupported {
            path: file.path().to_path_buf(),
            what: format!("VHDX log version {} ({field})", h.log_version),
        });
    }
    if h.log_offset % MIB != 0 || u64::from(h.log_length) % MIB != 0 || (h.log_length > 0 && h.log_offset < MIB) {
        return Err(DiskError::format(
            file.path(),
            format!("{field} log location"),
            format!(
                "log at {} with length {}: both must be multiples of 1 MiB, past the header section",
                h.log_offset, h.log_length
            ),
        ));
    }
    Ok(best)
}

fn check_file_identifier(file: &ImageFile) -> Result<()> {
    let mut sig = [0u8; 8];
    file.read_exact(&mut sig, 0, "file type identifier")?;
    if &sig != b"vhdxfile" {
        return Err(DiskError::format(
            file.path(),
            "file type identifier",
            "no \"vhdxfile\" signature",
        ));
    }
    Ok(())
}

/// A region table entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    pub offset: u64,
    pub length: u64,
}

/// Reads the region tables (falling back to the second copy) and returns the
/// BAT and metadata regions.
fn read_regions(file: &ImageFile) -> Result<(Region, Region)> {
    let mut errors = Vec::new();
    for (i, &off) in REGION_OFFSETS.iter().enumerate() {
        let what = format!("region table {}", i + 1);
        let b = match file.read_vec(off, TABLE_LEN as u64, &what) {
            Ok(b) => b,
            Err(e) => {
                errors.push(format!("{what}: {}", reason(e)));
                continue;
            }
        };
        if &b[..4] != b"regi" {
            errors.push(format!("{what}: no \"regi\" signature"));
            continue;
        }
        let stored = le32(&b, 4);
        let crc = crc_with_hole(&b, 4);
        if stored != crc {
            errors.push(format!(
                "{what}: checksum {stored:#010x} does not match the contents ({crc:#010x})"
            ));
            continue;
        }
        return parse_regions(file, &b, &what);
    }
    Err(DiskError::format(
        file.path(),
        "region tables",
        format!("both region tables are damaged: {}", errors.join("; ")),
    ))
}

fn parse_regions(file: &ImageFile, b: &[u8], what: &str) -> Result<(Region, Region)> {
    let count = le32(b, 8) as usize;
    if count > 2047 {
        return Err(DiskError::format(
            file.path(),
            what,
            format!("{count} entries (at most 2047 fit)"),
        ));
    }
    let (mut bat, mut meta) = (None, None);
    for i in 0..count {
        let e = &b[16 + i * 32..16 + (i + 1) * 32];
        let id = guid_at(e, 0);
        let region = Region {
            offset: le64(e, 16),
            length: u64::from(le32(e, 24)),
        };
        let required = le32(e, 28) & 1 != 0;
        let field = format!("{what} entry {i}");
        let slot = if id == REGION_BAT {
            &mut bat
        } else if id == REGION_METADATA {
            &mut meta
        } else if required {
            return Err(DiskError::Unsupported {
                path: file.path().to_path_buf(),
                what: format!("required region {} ({field})", format_guid(&id)),
            });
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(DiskError::format(
                file.path(),
                field,
                format!("region {} listed twice", format_guid(&id)),
            ));
        }
        if !region.offset.is_multiple_of(MIB)
            || region.offset < MIB
            || region.length == 0
            || !region.length.is_multiple_of(MIB)
        {
            return Err(DiskError::format(
                file.path(),
                field,
                format!(
                    "region at {} with length {}: both must be non-zero multiples of 1 MiB past the header section",
                    region.offset, region.length
                ),
            ));
        }
        *slot = Some(region);
    }
    match (bat, meta) {
        (Some(b), Some(m)) => Ok((b, m)),
        (None, _) => Err(DiskError::format(file.path(), what, "no BAT region")),
        (_, None) => Err(DiskError::format(file.path(), what, "no metadata region")),
    }
}

/// Values from the metadata region.
#[derive(Clone, Debug)]
struct Metadata {
    block_size: u64,
    leave_allocated: bool,
    has_parent: bool,
    disk_size: u64,
    logical: u32,
    physical: u32,
    page83: Option<[u8; 16]>,
    locator: Vec<(String, String)>,
}

fn read_metadata(file: &ImageFile, region: Region) -> Result<Metadata> {
    let path = file.path();
    let t = file.read_vec(region.offset, TABLE_LEN as u64, "metadata table")?;
    if &t[..8] != b"metadata" {
        return Err(DiskError::format(path, "metadata table", "no \"metadata\" signature"));
    }
    let count = le16(&t, 10) as usize;
    if count > 2047 {
        return Err(DiskError::format(
            path,
            "metadata table",
            format!("{count} entries (at most 2047 fit)"),
        ));
    }
    let mut items: HashMap<[u8; 16], Vec<u8>> = HashMap::new();
    for i in 0..count {
        let e = &t[32 + i * 32..32 + (i + 1) * 32];
        let id = guid_at(e, 0);
        let off = u64::from(le32(e, 16));
        let len = u64::from(le32(e, 20));
        let required = le32(e, 24) & 4 != 0;
        let field = format!("metadata entry {i} ({})", format_guid(&id));
        let known = [
            META_FILE_PARAMETERS,
            META_VIRTUAL_DISK_SIZE,
            META_PAGE83,
            META_LOGICAL_SECTOR,
            META_PHYSICAL_SECTOR,
            META_PARENT_LOCATOR,
        ];
        if !known.contains(&id) {
            if required {
                return Err(DiskError::Unsupported {
                    path: path.to_path_buf(),
                    what: format!("required metadata item {}", format_guid(&id)),
                });
            }
            continue;
        }
        if items.contains_key(&id) {
            return Err(DiskError::format(path, field, "item listed twice"));
        }
        if len > 0 && (off < TABLE_LEN as u64 || off + len > region.length) {
            return Err(DiskError::format(
                path,
                field,
                format!(
                    "{len} bytes at {off} lie outside the metadata region's items area (64 KiB..{})",
                    region.length
                ),
            ));
        }
        let bytes = if len == 0 {
            Vec::new()
        } else {
            file.read_vec(region.offset + off, len, &field)?
        };
        items.insert(id, bytes);
    }
    let item = |id: [u8; 16], name: &str, min: usize| -> Result<Option<&Vec<u8>>> {
        match items.get(&id) {
            Some(b) if b.len() < min => Err(DiskError::format(
                path,
                format!("metadata item {name}"),
                format!("{} bytes, expected at least {min}", b.len()),
            )),
            other => Ok(other),
        }
    };
    let need = |v: Option<&Vec<u8>>, name: &str| {
        v.cloned()
            .ok_or_else(|| DiskError::format(path, format!("metadata item {name}"), "missing"))
    };
    let fp = need(item(META_FILE_PARAMETERS, "file parameters", 8)?, "file parameters")?;
    let block_size = u64::from(le32(&fp, 0));
    let flags = le32(&fp, 4);
    if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
        return Err(DiskError::format(
            path,
            "metadata item file parameters",
            format!("block size {block_size} (must be a power of two from 1 MiB to 256 MiB)"),
        ));
    }
    let logical = le32(
        &need(
            item(META_LOGICAL_SECTOR, "logical sector size", 4)?,
            "logical sector size",
        )?,
        0,
    );
    if logical != 512 && logical != 4096 {
        return Err(DiskError::format(
            path,
            "metadata item logical sector size",
            format!("{logical} (must be 512 or 4096)"),
        ));
    }
    let physical = match item(META_PHYSICAL_SECTOR, "physical sector size", 4)? {
        Some(b) => le32(b, 0),
        None => logical,
    };
    if physical != 512 && physical != 4096 {
        return Err(DiskError::format(
            path,
            "metadata item physical sector size",
            format!("{physical} (must be 512 or 4096)"),
        ));
    }
    let disk_size = le64(
        &need(
            item(META_VIRTUAL_DISK_SIZE, "virtual disk size", 8)?,
            "virtual disk size",
        )?,
        0,
    );
    if disk_size == 0 || disk_size > MAX_DISK || !disk_size.is_multiple_of(u64::from(logical)) {
        return Err(DiskError::format(
            path,
            "metadata item virtual disk size",
            format!("{disk_size} (must be a non-zero multiple of the {logical}-byte logical sector, at most 64 TiB)"),
        ));
    }
    let page83 = item(META_PAGE83, "page 83 data", 16)?.map(|b| guid_at(b, 0));
    let has_parent = flags & 2 != 0;
    let locator = match item(META_PARENT_LOCATOR, "parent locator", 20)? {
        Some(b) if has_parent => parse_locator(path, b)?,
        _ => Vec::new(),
    };
    if has_parent && locator.is_empty() {
        return Err(DiskError::format(
            path,
            "metadata item parent locator",
            "a differencing disk (HasParent) without a parent locator",
        ));
    }
    Ok(Metadata {
        block_size,
        leave_allocated: flags & 1 != 0,
        has_parent,
        disk_size,
        logical,
        physical,
        page83,
        locator,
    })
}

fn parse_locator(path: &Path, b: &[u8]) -> Result<Vec<(String, String)>> {
    let field = "metadata item parent locator";
    let kind = guid_at(b, 0);
    if kind != LOCATOR_TYPE_VHDX {
        return Err(DiskError::Unsupported {
            path: path.to_path_buf(),
            what: format!("parent locator type {}", format_guid(&kind)),
        });
    }
    let count = le16(b, 18) as usize;
    if 20 + count * 12 > b.len() {
        return Err(DiskError::format(
            path,
            field,
            format!("{count} key/value entries do not fit in {} bytes", b.len()),
        ));
    }
    let text = |off: u32, len: u16, what: &str, i: usize| -> Result<String> {
        let (off, len) = (off as usize, len as usize);
        let Some(raw) = b.get(off..off + len).filter(|_| len % 2 == 0 && len > 0) else {
            return Err(DiskError::format(
                path,
                format!("{field} entry {i}"),
                format!(
                    "{what} of {len} bytes at {off} is empty, odd-sized or outside the item ({} bytes)",
                    b.len()
                ),
            ));
        };
        let units: Vec<u16> = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        String::from_utf16(&units).map_err(|_| {
            DiskError::format(
                path,
                format!("{field} entry {i}"),
                format!("{what} is not valid UTF-16"),
            )
        })
    };
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let e = &b[20 + i * 12..32 + i * 12];
        let key = text(le32(e, 0), le16(e, 8), "key", i)?;
        let value = text(le32(e, 4), le16(e, 10), "value", i)?;
        out.push((key, value));
    }
    Ok(out)
}

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

const BITMAP_CACHE_MAX: usize = 256;

/// Checks that named intervals do not overlap; `field` names the first of a pair.
fn check_disjoint(path: &Path, areas: &[(String, u64, u64)]) -> Result<()> {
    for (i, a) in areas.iter().enumerate() {
        for b in &areas[i + 1..] {
            if a.1 < b.1.saturating_add(b.2) && b.1 < a.1.saturating_add(a.2) {
                return Err(DiskError::format(
                    path,
                    a.0.clone(),
                    format!(
                        "bytes {}..{} overlap the {} (bytes {}..{})",
                        a.1,
                        a.1 + a.2,
                        b.0,
                        b.1,
                        b.1 + b.2
                    ),
                ));
            }
        }
    }
    Ok(())
}

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
        let path = file.path().to_path_buf();
        let file_len = phys_len;
        let (bat_region, meta_region) = read_regions(&file)?;
        // Structures are read into memory: they must lie in the real file.
        let mut areas = vec![("header section".to_string(), 0, MIB)];
        if header.log_length > 0 {
            areas.push(("log".to_string(), header.log_offset, u64::from(header.log_length)));
        }
        areas.push(("BAT region".to_string(), bat_region.offset, bat_region.length));
        areas.push(("metadata region".to_string(), meta_region.offset, meta_region.length));
        for (name, off, len) in &areas {
            if off.checked_add(*len).is_none_or(|end| end > file_len) {
                return Err(DiskError::format(
                    &path,
                    name.clone(),
                    format!(
                        "bytes {off}..{} reach past the end of the file ({file_len} bytes; truncated?)",
                        off.saturating_add(*len)
                    ),
                ));
            }
        }
        check_disjoint(&path, &areas)?;
        let meta = read_metadata(&file, meta_region)?;
        let bs = meta.block_size;
        let chunk_ratio = (1u64 << 23) * u64::from(meta.logical) / bs;
        let blocks = meta.disk_size.div_ceil(bs);
        let chunks = blocks.div_ceil(chunk_ratio);
        let entries = if meta.has_parent {
            chunks * (chunk_ratio + 1)
        } else {
            blocks + (blocks - 1) / chunk_ratio
        };
        if entries.saturating_mul(8) > bat_region.length {
            return Err(DiskError::format(
                &path,
                "BAT region",
                format!(
                    "{} bytes hold {} entries but a {}-byte disk with {bs}-byte blocks needs {entries}",
                    bat_region.length,
                    bat_region.length / 8,
                    meta.disk_size
                ),
            ));
        }
        let raw = file.read_vec(bat_region.offset, entries * 8, "BAT")?;
        let mut payload = Vec::with_capacity(blocks as usize);
        let mut bitmaps = vec![0u64; chunks as usize];
        let len = file.len();
        let overlaps_meta = |off: u64, size: u64| {
            areas
                .iter()
                .find(|(_, a, l)| off < a + l && *a < off + size)
                .map(|a| a.0.clone())
        };
        for (i, e) in raw.chunks_exact(8).enumerate() {
            let i = i as u64;
            let v = le64(e, 0);
            let state = v & 7;
            let off = (v >> 20) * MIB;
            let field = || format!("BAT entry {i}");
            if (i + 1).is_multiple_of(chunk_ratio + 1) {
                // Sector bitmap entry.
                let chunk = i / (chunk_ratio + 1);
                if !meta.has_parent || chunk >= chunks {
                    continue;
                }
                match state {
                    0 => {}
                    SB_PRESENT => {
                        if off == 0 || off.checked_add(MIB).is_none_or(|end| end > len) {
                            return Err(DiskError::format(
                                &path,
                                field(),
                                format!("sector bitmap block at {off} is not inside the file ({len} bytes)"),
                            ));
                        }
                        if let Some(what) = overlaps_meta(off, MIB) {
                            return Err(DiskError::format(
                                &path,
                                field(),
                                format!("sector bitmap block at {off} overlaps the {what}"),
                            ));
                        }
                        bitmaps[chunk as usize] = off;
                    }
                    s => {
                        return Err(DiskError::format(
                            &path,
                            field(),
                            format!("invalid sector bitmap state {s}"),
                        ));
                    }
                }
                continue;
            }
            let block = i - i / (chunk_ratio + 1);
            if block >= blocks {
                continue;
            }
            match state {
                PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_ZERO | PAYLOAD_UNMAPPED | PAYLOAD_UNMAPPED_QEMU => {}
                PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT => {
                    if state == PAYLOAD_PARTIALLY_PRESENT && !meta.has_parent {
                        return Err(DiskError::format(
                            &path,
                            field(),
                            "partially present block in a disk without a parent",
                        ));
                    }
                    let need = bs.min(meta.disk_size - block * bs);
                    if off == 0 || off.checked_add(need).is_none_or(|end| end > len) {
                        return Err(DiskError::format(
                            &path,
                            field(),
                            format!("payload block {block} at file offset {off} is not inside the file ({len} bytes)"),
                        ));
                    }
                    if let Some(what) = overlaps_meta(off, need) {
                        return Err(DiskError::format(
                            &path,
                            field(),
                            format!("payload block {block} at file offset {off} overlaps the {what}"),
                        ));
                    }
                }
                s => {
                    return Err(DiskError::format(
                        &path,
                        field(),
                        format!("invalid payload block state {s}"),
                    ));
                }
            }
            payload.push(v);
        }
        // No two blocks may share file space. Present blocks lie inside the
        // file, so there are at most (file length / 1 MiB) of them.
        let mut used: Vec<(u64, u64, u64)> = Vec::new();
        for (b, v) in payload.iter().enumerate() {
            if matches!(v & 7, PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT) {
                let b = b as u64;
                let need = bs.min(meta.disk_size - b * bs);
                used.push(((v >> 20) * MIB, need, b + b / chunk_ratio));
            }
        }
        for (c, &off) in bitmaps.iter().enumerate() {
            if off != 0 {
                used.push((off, MIB, c as u64 * (chunk_ratio + 1) + chunk_ratio));
            }
        }
        used.sort_unstable();
        for w in used.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                let (a, b) = if w[0].2 < w[1].2 { (w[0], w[1]) } else { (w[1], w[0]) };
                return Err(DiskError::format(
                    &path,
                    format!("BAT entry {}", b.2),
                    format!(
                        "its block at file offset {} overlaps BAT entry {}'s at {}",
                        b.0, a.2, a.0
                    ),
                ));
            }
        }
        drop(used);
        // Partially present blocks need their chunk's sector bitmap.
        for (b, v) in payload.iter().enumerate() {
            if v & 7 == PAYLOAD_PARTIALLY_PRESENT && bitmaps[b / chunk_ratio as usize] == 0 {
                let entry = b as u64 + b as u64 / chunk_ratio;
                return Err(DiskError::format(
                    &path,
                    format!("BAT entry {entry}"),
                    format!(
                        "block {b} is partially present but its sector bitmap (BAT entry {}) is not",
                        (b as u64 / chunk_ratio) * (chunk_ratio + 1) + chunk_ratio
                    ),
                ));
            }
        }
        let parent = if meta.has_parent {
            Some(parent_ref(&path, &meta.locator)?)
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

fn parent_ref(child: &Path, locator: &[(String, String)]) -> Result<ParentRef> {
    let get = |k: &str| locator.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let mut candidates: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if !candidates.contains(&p) {
            candidates.push(p);
        }
    };
    if let Some(rel) = get("relative_path") {
        push(crate::layer::relative_to(child, &rel.replace('\\', "/")));
    }
    if let Some(abs) = get("absolute_win32_path") {
        let name = abs.rsplit(['\\', '/']).next().unwrap_or(abs);
        if !name.is_empty() && name != "." && name != ".." {
            push(crate::layer::relative_to(child, name));
        }
    }
    if candidates.is_empty() {
        return Err(DiskError::format(
            child,
            "metadata item parent locator",
            "names no parent path (relative_path or absolute_win32_path)",
        ));
    }
    let mut linkage = Vec::new();
    for key in ["parent_linkage", "parent_linkage2"] {
        if let Some(v) = get(key) {
            linkage.push(normalize_guid_text(v));
        }
    }
    if linkage.is_empty() {
        return Err(DiskError::format(
            child,
            "metadata item parent locator",
            "no parent_linkage key",
        ));
    }
    let name = get("relative_path")
        .or(get("absolute_win32_path"))
        .unwrap_or_default()
        .to_string();
    Ok(ParentRef {
        name,
        candidates,
        format: Some(Format::Vhdx),
        linkage,
    })
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
