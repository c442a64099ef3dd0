//! The VHDX region table and where the file's fixed structures lie.
//!
//! Two copies of the region table (at 192 KiB and 256 KiB, each covered by a
//! CRC-32C) list the BAT and metadata regions. Both regions, the header
//! section and the log are read into memory when a file is opened, so
//! [`Layout::read`] checks that they lie inside the file and do not overlap
//! before anything trusts them.

use std::path::Path;

use super::header::{Header, KIB, MIB, crc_with_hole, format_guid, guid, guid_at, reason};
use crate::io::ImageFile;
use crate::io::bytes::{le32, le64};
use crate::{DiskError, Result};

/// Offsets of the two region table copies.
pub(crate) const REGION_OFFSETS: [u64; 2] = [192 * KIB, 256 * KIB];
/// Bytes of a region table (and of the metadata table).
pub(crate) const TABLE_LEN: usize = 64 * 1024;

/// Region table GUID of the BAT region.
pub(crate) const REGION_BAT: [u8; 16] = guid("2DC27766-F623-4200-9D64-115E9BFD4A08");
/// Region table GUID of the metadata region.
pub(crate) const REGION_METADATA: [u8; 16] = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E");

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

/// Parses a region table whose signature and checksum are good.
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

/// Where the file's fixed structures lie: the BAT and metadata regions, and
/// every structure read into memory as a named byte range.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub bat: Region,
    pub meta: Region,
    /// (name, offset, length) of the header section, the log (if any) and
    /// the two regions; data blocks may not overlap any of them.
    pub areas: Vec<(String, u64, u64)>,
}

impl Layout {
    /// Reads the region table and checks that the header section, the log
    /// and the regions lie inside the first `phys_len` bytes (the real file:
    /// a log replayed in memory may extend it) without overlapping.
    pub(crate) fn read(file: &ImageFile, phys_len: u64, header: &Header) -> Result<Layout> {
        let path = file.path();
        let (bat, meta) = read_regions(file)?;
        let mut areas = vec![("header section".to_string(), 0, MIB)];
        if header.log_length > 0 {
            areas.push(("log".to_string(), header.log_offset, u64::from(header.log_length)));
        }
        areas.push(("BAT region".to_string(), bat.offset, bat.length));
        areas.push(("metadata region".to_string(), meta.offset, meta.length));
        for (name, off, len) in &areas {
            if off.checked_add(*len).is_none_or(|end| end > phys_len) {
                return Err(DiskError::format(
                    path,
                    name.clone(),
                    format!(
                        "bytes {off}..{} reach past the end of the file ({phys_len} bytes; truncated?)",
                        off.saturating_add(*len)
                    ),
                ));
            }
        }
        check_disjoint(path, &areas)?;
        Ok(Layout { bat, meta, areas })
    }

    /// The name of the structure that bytes `off..off + size` overlap, if any.
    pub(crate) fn overlapping(&self, off: u64, size: u64) -> Option<String> {
        self.areas
            .iter()
            .find(|(_, a, l)| off < a + l && *a < off + size)
            .map(|a| a.0.clone())
    }
}
