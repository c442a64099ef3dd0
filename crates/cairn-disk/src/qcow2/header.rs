//! The qcow2 header ("Header" section of the spec) and its header extensions.

use std::path::Path;

use crate::io::ImageFile;
use crate::io::bytes::{be32, be64};
use crate::{DiskError, Result};

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// Length of the fixed part of a version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Length of the mandatory part of a version 3 header.
pub const V3_HEADER_MIN: u32 = 104;
/// Largest L1 table qemu accepts (bytes).
pub const MAX_L1_BYTES: u64 = 32 << 20;

/// Incompatible feature bit 0: the image was not closed cleanly (refcounts may be stale).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: qemu found metadata corruption.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: the compression type field is valid.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: L2 entries are 128 bits with subcluster bitmaps.
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = 0x1f;
/// Compatible feature bit 0: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear feature bit 0: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// Autoclear feature bit 1: the external data file is a valid raw image on its own.
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Compression used for compressed clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate, 4 KiB window.
    Zlib,
    /// Zstandard frames.
    Zstd,
}

/// The header fields cairn uses, after validation.
#[derive(Clone, Debug)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size (9..=21).
    pub cluster_bits: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_offset: u64,
    /// Number of internal snapshots (ignored).
    pub nb_snapshots: u32,
    /// Incompatible feature bits (version 3).
    pub incompatible: u64,
    /// Compatible feature bits (version 3).
    pub compatible: u64,
    /// Autoclear feature bits (version 3).
    pub autoclear: u64,
    /// Refcounts are 2^refcount_order bits wide.
    pub refcount_order: u32,
    /// How compressed clusters are compressed.
    pub compression: Compression,
    /// Backing file name as stored.
    pub backing: Option<String>,
    /// Backing file format from the extension.
    pub backing_format: Option<String>,
    /// External data file name from the extension.
    pub data_file: Option<String>,
    /// Names from the feature name table: (type, bit) → name.
    pub feature_names: Vec<(u8, u8, String)>,
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether L2 entries are 128 bits wide with subcluster bitmaps.
    pub fn extended_l2(&self) -> bool {
        self.incompatible & INCOMPAT_EXTL2 != 0
    }

    /// The name the feature table gives to `(kind, bit)`, if any.
    pub fn feature_name(&self, kind: u8, bit: u8) -> Option<&str> {
        self.feature_names
            .iter()
            .find(|(k, b, _)| *k == kind && *b == bit)
            .map(|(_, _, n)| n.as_str())
    }

    /// Reads and validates the header of `file`.
    pub fn read(file: &ImageFile) -> Result<Header> {
        let path = file.path();
        let bad = |field: &str, reason: String| DiskError::format(path, field, reason);
        let mut fixed = [0u8; V2_HEADER_LEN as usize];
        file.read_exact(&mut fixed, 0, "qcow2 header")?;
        let b = &fixed[..];
        if be32(b, 0) != MAGIC {
            return Err(bad("magic", format!("{:#010x} is not QFI\\xfb", be32(b, 0))));
        }
        let version = be32(b, 4);
        if version != 2 && version != 3 {
            return Err(DiskError::Unsupported {
                path: path.to_path_buf(),
                what: format!("qcow2 version {version} (only 2 and 3 exist)"),
            });
        }
        let backing_offset = be64(b, 8);
        let backing_size = be32(b, 16);
        let cluster_bits = be32(b, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(
                "cluster_bits",
                format!("{cluster_bits} is outside 9..=21 (512 bytes to 2 MiB clusters)"),
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let size = be64(b, 24);
        let crypt_method = be32(b, 32);
        if crypt_method != 0 {
            let kind = match crypt_method {
                1 => "AES-CBC",
                2 => "LUKS",
                _ => "unknown method",
            };
            return Err(DiskError::Unsupported {
                path: path.to_path_buf(),
                what: format!("encrypted qcow2 (crypt_method {crypt_method}: {kind})"),
            });
        }
        let l1_size = be32(b, 36);
        let l1_offset = be64(b, 40);
        let nb_snapshots = be32(b, 60);

        let mut raw = Raw {
            version,
            backing_offset,
            backing_size,
            cluster_bits,
            size,
            l1_size,
            l1_offset,
            nb_snapshots,
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_byte: 0,
        };
        if version == 3 {
            let mut v3 = [0u8; V3_HEADER_MIN as usize - V2_HEADER_LEN as usize];
            file.read_exact(&mut v3, V2_HEADER_LEN as u64, "qcow2 version 3 header")?;
            raw.incompatible = be64(&v3, 0);
            raw.compatible = be64(&v3, 8);
            raw.autoclear = be64(&v3, 16);
            raw.refcount_order = be32(&v3, 24);
            let hl = be32(&v3, 28);
            if hl < V3_HEADER_MIN || hl as u64 > cluster_size || !hl.is_multiple_of(8) {
                return Err(bad(
                    "header_length",
                    format!("{hl} must be a multiple of 8 between {V3_HEADER_MIN} and the cluster size {cluster_size}"),
                ));
            }
            if raw.refcount_order > 6 {
                return Err(bad(
                    "refcount_order",
                    format!("{} is above 6 (64-bit refcounts)", raw.refcount_order),
                ));
            }
            raw.header_length = hl;
            if hl > V3_HEADER_MIN {
                let mut c = [0u8; 1];
                file.read_exact(&mut c, V3_HEADER_MIN as u64, "compression_type")?;
                raw.compression_byte = c[0];
            }
        }
        Self::finish(file, raw)
    }

    /// Completes the header from the fixed fields: parses the extensions,
    /// checks the incompatible features and reads the backing file name.
    fn finish(file: &ImageFile, r: Raw) -> Result<Header> {
        let ext = Extensions::read(file, &r)?;
        let mut header = Header {
            version: r.version,
            cluster_bits: r.cluster_bits,
            size: r.size,
            l1_size: r.l1_size,
            l1_offset: r.l1_offset,
            nb_snapshots: r.nb_snapshots,
            incompatible: r.incompatible,
            compatible: r.compatible,
            autoclear: r.autoclear,
            refcount_order: r.refcount_order,
            compression: Compression::Zlib,
            backing: None,
            backing_format: ext.backing_format,
            data_file: ext.data_file,
            feature_names: ext.feature_names,
        };
        header.apply_incompatible_features(file.path(), &r)?;
        header.backing = read_backing_name(file, &r)?;
        Ok(header)
    }

    /// Refuses unknown incompatible features and applies the known ones
    /// that change how the image reads: the compression type and the
    /// external data file (whose name counts only when bit 2 is set).
    fn apply_incompatible_features(&mut self, path: &Path, r: &Raw) -> Result<()> {
        let bad = |field: &str, reason: String| DiskError::format(path, field, reason);
        let unknown = r.incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            let bit = unknown.trailing_zeros();
            let name = self
                .feature_name(0, bit as u8)
                .map(|n| format!(" ({n:?})"))
                .unwrap_or_default();
            return Err(DiskError::Unsupported {
                path: path.to_path_buf(),
                what: format!("qcow2 incompatible feature bit {bit}{name} (incompatible_features {unknown:#x})"),
            });
        }
        if r.incompatible & INCOMPAT_COMPRESSION != 0 {
            if r.header_length <= V3_HEADER_MIN {
                return Err(bad(
                    "compression_type",
                    format!(
                        "incompatible bit 3 is set but the header ({} bytes) has no compression type",
                        r.header_length
                    ),
                ));
            }
            self.compression = match r.compression_byte {
                0 => Compression::Zlib,
                1 => Compression::Zstd,
                t => {
                    return Err(DiskError::Unsupported {
                        path: path.to_path_buf(),
                        what: format!("qcow2 compression type {t}"),
                    });
                }
            };
        } else if r.compression_byte != 0 {
            return Err(bad(
                "compression_type",
                format!("{} without incompatible bit 3 (must be 0, zlib)", r.compression_byte),
            ));
        }
        if r.incompatible & INCOMPAT_DATA_FILE != 0 && self.data_file.is_none() {
            return Err(bad(
                "external data file",
                "incompatible bit 2 is set but there is no external data file name extension (0x44415441)".into(),
            ));
        }
        if r.incompatible & INCOMPAT_DATA_FILE == 0 {
            self.data_file = None;
        }
        Ok(())
    }
}

/// What the header extensions cairn reads say.
struct Extensions {
    backing_format: Option<String>,
    data_file: Option<String>,
    feature_names: Vec<(u8, u8, String)>,
}

impl Extensions {
    /// Parses the header extensions: from the end of the header to the end
    /// of the first cluster (or to the backing file name, if that comes first).
    fn read(file: &ImageFile, r: &Raw) -> Result<Extensions> {
        let path = file.path();
        let cluster_size = 1u64 << r.cluster_bits;
        let mut ext_end = cluster_size.min(file.len());
        if r.backing_offset > r.header_length as u64 && r.backing_offset < ext_end {
            ext_end = r.backing_offset;
        }
        let mut ext = Extensions {
            backing_format: None,
            data_file: None,
            feature_names: Vec::new(),
        };
        let start = r.header_length as u64;
        if ext_end <= start {
            return Ok(ext);
        }
        let area = file.read_vec(start, ext_end - start, "header extensions")?;
        let mut pos = 0usize;
        // Reaching the end of the area without an end marker is tolerated
        // only when the area is exhausted exactly.
        while pos + 8 <= area.len() {
            let kind = be32(&area, pos);
            let len = be32(&area, pos + 4) as usize;
            if kind == EXT_END {
                break;
            }
            let field = format!("header extension {kind:#010x} at offset {}", start + pos as u64);
            let body_end = pos + 8 + len;
            if body_end > area.len() {
                return Err(DiskError::format(
                    path,
                    &field,
                    format!("its {len} bytes reach past the end of the header area ({ext_end})"),
                ));
            }
            let body = &area[pos + 8..body_end];
            match kind {
                EXT_BACKING_FORMAT => ext.backing_format = Some(ext_string(path, &field, body)?),
                EXT_DATA_FILE => ext.data_file = Some(ext_string(path, &field, body)?),
                EXT_FEATURE_TABLE => {
                    for e in body.chunks_exact(48) {
                        let name = e[2..].split(|&c| c == 0).next().unwrap_or(&[]);
                        ext.feature_names
                            .push((e[0], e[1], String::from_utf8_lossy(name).into_owned()));
                    }
                }
                _ => {}
            }
            pos = body_end.div_ceil(8) * 8;
        }
        Ok(ext)
    }
}

/// Reads the backing file name, which must lie in the header cluster after
/// the header (None when the header names none).
fn read_backing_name(file: &ImageFile, r: &Raw) -> Result<Option<String>> {
    if r.backing_offset == 0 || r.backing_size == 0 {
        return Ok(None);
    }
    let path = file.path();
    let bad = |field: &str, reason: String| DiskError::format(path, field, reason);
    let cluster_size = 1u64 << r.cluster_bits;
    let field = "backing file name";
    if r.backing_size > 1023 {
        return Err(bad(field, format!("{} bytes is more than 1023", r.backing_size)));
    }
    let end = r.backing_offset.checked_add(r.backing_size as u64);
    if r.backing_offset < r.header_length as u64 || end.is_none_or(|e| e > cluster_size) {
        return Err(bad(
            field,
            format!(
                "{} bytes at offset {} are not inside the header cluster (after {} header bytes, before {cluster_size})",
                r.backing_size, r.backing_offset, r.header_length
            ),
        ));
    }
    let name = file.read_vec(r.backing_offset, r.backing_size as u64, field)?;
    let name = String::from_utf8(name).map_err(|_| bad(field, "is not UTF-8".into()))?;
    if name.is_empty() || name.contains('\0') {
        return Err(bad(field, format!("{name:?} is not a file name")));
    }
    Ok(Some(name))
}

/// Header fields before the extensions are parsed.
struct Raw {
    version: u32,
    backing_offset: u64,
    backing_size: u32,
    cluster_bits: u32,
    size: u64,
    l1_size: u32,
    l1_offset: u64,
    nb_snapshots: u32,
    incompatible: u64,
    compatible: u64,
    autoclear: u64,
    refcount_order: u32,
    header_length: u32,
    compression_byte: u8,
}

fn ext_string(path: &Path, field: &str, body: &[u8]) -> Result<String> {
    let s = std::str::from_utf8(body).map_err(|_| DiskError::format(path, field, "name is not UTF-8"))?;
    let s = s.trim_end_matches('\0');
    if s.is_empty() || s.contains('\0') {
        return Err(DiskError::format(path, field, format!("{s:?} is not a valid name")));
    }
    Ok(s.to_string())
}
