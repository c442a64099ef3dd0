//! One file of a disk image: how it maps guest bytes to stored bytes.
//!
//! Every format reader (raw, qcow2, VHDX, VHD) implements [`Layer`]. A layer
//! answers, for any guest offset, whether the bytes are stored in this file,
//! read as zeros, or come from the parent; [`crate::image::Image`] stacks
//! layers into the disk a guest sees.

use std::path::{Path, PathBuf};

use crate::Result;
use crate::io::ImageFile;

/// Disk image formats cairn reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A plain file or block device holding the disk byte for byte.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// Hyper-V VHDX (fixed, dynamic, differencing).
    Vhdx,
    /// Virtual PC / legacy Hyper-V VHD (fixed, dynamic, differencing).
    Vhd,
}

impl Format {
    /// Every format, in the order `--format` lists them.
    pub const ALL: [Format; 4] = [Format::Raw, Format::Qcow2, Format::Vhdx, Format::Vhd];

    /// The lowercase name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vhdx => "vhdx",
            Format::Vhd => "vhd",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown disk format {s:?} (expected raw, qcow2, vhdx or vhd)"))
    }
}

/// Logical and physical sector sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SectorSizes {
    /// The unit of addressing the guest sees (512 or 4096).
    pub logical: u32,
    /// The unit the guest should write in for speed.
    pub physical: u32,
}

impl Default for SectorSizes {
    fn default() -> Self {
        SectorSizes {
            logical: 512,
            physical: 512,
        }
    }
}

/// How a run of guest bytes is stored in one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Stored uncompressed at `host` in this layer's data file.
    Data {
        /// Offset in the data file of the run's first byte.
        host: u64,
    },
    /// qcow2 compressed cluster: `len` bytes at `host` decompress to the
    /// whole cluster that starts at guest offset `cluster`.
    Compressed {
        /// Offset of the compressed bytes in the file.
        host: u64,
        /// Number of compressed bytes (may include slack past the stream).
        len: u64,
        /// Guest offset of the cluster's first byte.
        cluster: u64,
    },
    /// Reads as zeros; this layer says so.
    Zero,
    /// Not defined by this layer: read from the parent, or zeros without one.
    Parent,
}

/// A run of guest bytes stored one way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// How the run is stored.
    pub piece: Piece,
    /// Number of guest bytes in the run (at least 1).
    pub length: u64,
}

/// Where a differencing layer's parent is, as the child names it.
#[derive(Clone, Debug, Default)]
pub struct ParentRef {
    /// The parent as the child names it, for messages.
    pub name: String,
    /// Paths to try, in order; the first that exists is used.
    pub candidates: Vec<PathBuf>,
    /// The parent's format, when the child declares it.
    pub format: Option<Format>,
    /// Ids of which the parent's [`Layer::linkage_id`] must be one (empty: not checked).
    pub linkage: Vec<String>,
}

/// One file of a disk image.
pub trait Layer: Send + Sync {
    /// The file (its path names the layer in messages).
    fn file(&self) -> &ImageFile;

    /// The format of this file.
    fn format(&self) -> Format;

    /// Virtual size in bytes.
    fn virtual_size(&self) -> u64;

    /// Sector sizes the image declares (512/512 where the format has none).
    fn sector_sizes(&self) -> SectorSizes {
        SectorSizes::default()
    }

    /// The parent of a differencing layer.
    fn parent(&self) -> Option<&ParentRef> {
        None
    }

    /// How the guest bytes at `offset` (below the virtual size) are stored.
    /// The mapping covers at least one and at most `max_len` bytes.
    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping>;

    /// Reads stored bytes of a [`Piece::Data`] run at `host`.
    fn read_data(&self, buf: &mut [u8], host: u64) -> Result<()>;

    /// Decompresses a [`Piece::Compressed`] cluster into `out` (resized to the cluster size).
    fn read_compressed(&self, host: u64, len: u64, out: &mut Vec<u8>) -> Result<()> {
        let _ = (host, len, out);
        Err(crate::DiskError::Unsupported {
            path: self.file().path().to_path_buf(),
            what: "compressed clusters in this format".into(),
        })
    }

    /// The id a child names this layer by when it checks its parent (VHDX
    /// DataWriteGuid, VHD unique id).
    fn linkage_id(&self) -> Option<String> {
        None
    }

    /// An id that changes whenever the layer's data changes (VHDX
    /// DataWriteGuid); `None` where the format has none.
    fn content_id(&self) -> Option<String> {
        None
    }

    /// Format details for `cairn disk info` (subformat, block size, version...).
    fn details(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Resolves `name`, as written inside `child`, relative to the child's folder.
pub fn relative_to(child: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    child.parent().unwrap_or(Path::new(".")).join(p)
}

/// `target` relative to the folder `from` (both absolute), in the form
/// Windows tools write into parent locators: `.\base.vhdx`, `..\images\base.vhdx`.
pub(crate) fn windows_relative(from: &Path, target: &Path) -> String {
    use std::path::Component;
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = target.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = Vec::new();
    if common == a.len() {
        parts.push(".".into());
    }
    parts.extend(std::iter::repeat_n("..".to_string(), a.len() - common));
    parts.extend(b[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    parts.join("\\")
}
