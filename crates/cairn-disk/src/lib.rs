//! Virtual disks as cairn's data path sees them: a size, an allocation map,
//! positioned reads, and optionally the extents that changed since the last
//! backup (changed block tracking).
//!
//! Every disk format implements [`DiskSource`] through [`image::Image`], which
//! opens raw, qcow2, VHDX and VHD files by content, follows differencing
//! chains, and reports allocation maps; [`writer`] creates images of each
//! format for restore. Format readers are in [`qcow2`], [`vhdx`], [`vhd`] and
//! [`raw`]; each implements [`layer::Layer`].
//!
//! ```no_run
//! use cairn_disk::{DiskSource, raw::RawFile};
//! let disk = RawFile::open("disk0.raw".as_ref()).unwrap();
//! for e in disk.allocation().unwrap() {
//!     println!("{} bytes of data at {}", e.length, e.offset);
//! }
//! ```

#![warn(missing_docs)]

pub mod buf;
pub mod extent;
pub mod image;
pub mod io;
pub mod layer;
mod output;
pub mod qcow2;
pub mod raw;
pub mod vhd;
pub mod vhdx;
pub mod writer;

use std::path::PathBuf;

pub use extent::Extent;
pub use image::Image;
pub use layer::{Format, SectorSizes};
pub use writer::{DiskWriter, WriteOptions};

/// Errors from opening or reading a disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// An I/O call on the disk failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done ("open", "read", ...).
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A changed-extents list could not be parsed or does not fit the disk.
    #[error("changed extents {origin}: line {line}: {reason}")]
    BadExtents {
        /// Where the list came from (a file name).
        origin: String,
        /// Line number, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// An image file is malformed: `field` names the structure that is wrong.
    #[error("{path}: {field}: {reason}")]
    Format {
        /// The image file.
        path: PathBuf,
        /// The structure or field that is wrong ("L1 table entry 5", "BAT entry 17").
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An image uses a feature cairn does not implement.
    #[error("{path}: unsupported {what}")]
    Unsupported {
        /// The image file.
        path: PathBuf,
        /// The feature.
        what: String,
    },
    /// A source that is not a local file (an NBD export, a restore point)
    /// could not be read.
    #[error("{source_name}: {reason}")]
    Source {
        /// The source (an NBD address and export, a VM's restore point).
        source_name: String,
        /// What went wrong.
        reason: String,
    },
    /// The parent (backing file) of a differencing image cannot be used.
    #[error("{child}: parent {parent}: {reason}")]
    Parent {
        /// The differencing file.
        child: PathBuf,
        /// The parent as the child names it.
        parent: String,
        /// Why it cannot be used.
        reason: String,
    },
}

impl DiskError {
    /// A [`DiskError::Format`] for `path`.
    pub fn format(path: &std::path::Path, field: impl Into<String>, reason: impl Into<String>) -> Self {
        DiskError::Format {
            path: path.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Maps an I/O error of `op` on `path` to [`DiskError::Io`] (for `map_err`).
pub(crate) fn io_error<'a>(
    path: &'a std::path::Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Result alias for this crate.
pub type Result<T, E = DiskError> = std::result::Result<T, E>;

/// A virtual disk that cairn can back up.
pub trait DiskSource: Send + Sync {
    /// Where the disk comes from, for messages (usually a path).
    fn describe(&self) -> String;

    /// Virtual size in bytes.
    fn virtual_size(&self) -> u64;

    /// The extents that may hold data, sorted and not overlapping. Space
    /// outside them reads as zeros and is never read.
    fn allocation(&self) -> Result<Vec<Extent>>;

    /// Fills `buf` with the disk's bytes at `offset`; bytes past the end read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Logical and physical sector sizes (512/512 unless the source knows better).
    fn sector_sizes(&self) -> SectorSizes {
        SectorSizes::default()
    }

    /// An identity of the source that changes when its data changes, used to
    /// tell whether a differencing child's parent is what the previous restore
    /// point was taken from. `None` when the source has none.
    fn identity(&self) -> Option<String> {
        None
    }
}
