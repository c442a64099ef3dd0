//! The VHDX metadata region: the metadata table, the values cairn reads from
//! it (block size, sector sizes, virtual disk size, page 83 data) and the
//! parent locator of differencing disks.
//!
//! The metadata table (`metadata`, 64 KiB) lists items by GUID; each item's
//! bytes lie in the region past the table. Items cairn does not know are
//! skipped unless marked required, which the specification says a reader
//! must refuse.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::header::{MIB, format_guid, guid, guid_at};
use super::regions::{Region, TABLE_LEN};
use crate::io::ImageFile;
use crate::io::bytes::{le16, le32, le64};
use crate::layer::{Format, ParentRef};
use crate::{DiskError, Result};

/// Largest virtual disk the specification allows (64 TiB).
pub(crate) const MAX_DISK: u64 = 64 << 40;

/// Metadata item GUID: file parameters (block size, LeaveBlocksAllocated, HasParent).
pub(crate) const META_FILE_PARAMETERS: [u8; 16] = guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
/// Metadata item GUID: virtual disk size.
pub(crate) const META_VIRTUAL_DISK_SIZE: [u8; 16] = guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8");
/// Metadata item GUID: page 83 data (the virtual disk id).
pub(crate) const META_PAGE83: [u8; 16] = guid("BECA12AB-B2E6-4523-93EF-C309E000C746");
/// Metadata item GUID: logical sector size.
pub(crate) const META_LOGICAL_SECTOR: [u8; 16] = guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
/// Metadata item GUID: physical sector size.
pub(crate) const META_PHYSICAL_SECTOR: [u8; 16] = guid("CDA348C7-445D-4471-9CC9-E9885251C556");
/// Metadata item GUID: parent locator of a differencing disk.
pub(crate) const META_PARENT_LOCATOR: [u8; 16] = guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C");
/// Parent locator type GUID of a VHDX parent (the only type there is).
pub(crate) const LOCATOR_TYPE_VHDX: [u8; 16] = guid("B04AEFB7-D19E-4A81-B789-25B8E9445913");

/// Values from the metadata region.
#[derive(Clone, Debug)]
pub(crate) struct Metadata {
    pub block_size: u64,
    pub leave_allocated: bool,
    pub has_parent: bool,
    pub disk_size: u64,
    pub logical: u32,
    pub physical: u32,
    pub page83: Option<[u8; 16]>,
    pub locator: Vec<(String, String)>,
}

/// Reads the metadata table in `region` and checks the values it holds.
pub(crate) fn read_metadata(file: &ImageFile, region: Region) -> Result<Metadata> {
    let items = Items {
        path: file.path(),
        map: read_items(file, region)?,
    };
    let (block_size, flags) = items.file_parameters()?;
    let (logical, physical) = items.sector_sizes()?;
    let disk_size = items.disk_size(logical)?;
    let page83 = items.get(META_PAGE83, "page 83 data", 16)?.map(|b| guid_at(b, 0));
    let has_parent = flags & 2 != 0;
    let locator = items.parent_locator(has_parent)?;
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

/// Reads the metadata table and the bytes of every item cairn knows, by GUID.
fn read_items(file: &ImageFile, region: Region) -> Result<HashMap<[u8; 16], Vec<u8>>> {
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
    Ok(items)
}

/// The known metadata items' bytes by GUID, and the file they came from.
struct Items<'a> {
    path: &'a Path,
    map: HashMap<[u8; 16], Vec<u8>>,
}

impl Items<'_> {
    /// Item `id` if the table lists it; refused if shorter than `min` bytes.
    fn get(&self, id: [u8; 16], name: &str, min: usize) -> Result<Option<&[u8]>> {
        match self.map.get(&id) {
            Some(b) if b.len() < min => Err(DiskError::format(
                self.path,
                format!("metadata item {name}"),
                format!("{} bytes, expected at least {min}", b.len()),
            )),
            other => Ok(other.map(Vec::as_slice)),
        }
    }

    /// Item `id`, which the table must list.
    fn require(&self, id: [u8; 16], name: &str, min: usize) -> Result<&[u8]> {
        self.get(id, name, min)?
            .ok_or_else(|| DiskError::format(self.path, format!("metadata item {name}"), "missing"))
    }

    /// The block size and the flags (LeaveBlocksAllocated, HasParent).
    fn file_parameters(&self) -> Result<(u64, u32)> {
        let fp = self.require(META_FILE_PARAMETERS, "file parameters", 8)?;
        let block_size = u64::from(le32(fp, 0));
        let flags = le32(fp, 4);
        if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
            return Err(DiskError::format(
                self.path,
                "metadata item file parameters",
                format!("block size {block_size} (must be a power of two from 1 MiB to 256 MiB)"),
            ));
        }
        Ok((block_size, flags))
    }

    /// The logical and physical sector sizes (physical defaults to logical).
    fn sector_sizes(&self) -> Result<(u32, u32)> {
        let logical = le32(self.require(META_LOGICAL_SECTOR, "logical sector size", 4)?, 0);
        if logical != 512 && logical != 4096 {
            return Err(DiskError::format(
                self.path,
                "metadata item logical sector size",
                format!("{logical} (must be 512 or 4096)"),
            ));
        }
        let physical = match self.get(META_PHYSICAL_SECTOR, "physical sector size", 4)? {
            Some(b) => le32(b, 0),
            None => logical,
        };
        if physical != 512 && physical != 4096 {
            return Err(DiskError::format(
                self.path,
                "metadata item physical sector size",
                format!("{physical} (must be 512 or 4096)"),
            ));
        }
        Ok((logical, physical))
    }

    /// The virtual disk size: whole logical sectors, at most 64 TiB.
    fn disk_size(&self, logical: u32) -> Result<u64> {
        let disk_size = le64(self.require(META_VIRTUAL_DISK_SIZE, "virtual disk size", 8)?, 0);
        if disk_size == 0 || disk_size > MAX_DISK || !disk_size.is_multiple_of(u64::from(logical)) {
            return Err(DiskError::format(
                self.path,
                "metadata item virtual disk size",
                format!(
                    "{disk_size} (must be a non-zero multiple of the {logical}-byte logical sector, at most 64 TiB)"
                ),
            ));
        }
        Ok(disk_size)
    }

    /// The parent locator's key/value pairs: required for a differencing
    /// disk, ignored (empty) for any other.
    fn parent_locator(&self, has_parent: bool) -> Result<Vec<(String, String)>> {
        let locator = match self.get(META_PARENT_LOCATOR, "parent locator", 20)? {
            Some(b) if has_parent => parse_locator(self.path, b)?,
            _ => Vec::new(),
        };
        if has_parent && locator.is_empty() {
            return Err(DiskError::format(
                self.path,
                "metadata item parent locator",
                "a differencing disk (HasParent) without a parent locator",
            ));
        }
        Ok(locator)
    }
}

/// Parses a parent locator item (type, then UTF-16LE key/value pairs).
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

/// Normalises a GUID string from a parent locator to [`format_guid`]'s form
/// (braces added if missing, lower case).
fn normalize_guid_text(s: &str) -> String {
    let t = s.trim().trim_start_matches('{').trim_end_matches('}');
    format!("{{{}}}", t.to_ascii_lowercase())
}

/// Where a differencing disk's parent is: candidate paths from the locator's
/// `relative_path` and `absolute_win32_path` (its file name, beside the child),
/// and the DataWriteGuids (`parent_linkage`, `parent_linkage2`) it may have.
pub(crate) fn parent_ref(child: &Path, locator: &[(String, String)]) -> Result<ParentRef> {
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
