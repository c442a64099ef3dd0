//! Virtual disks as cairn's data path sees them: a size, an allocation map,
//! positioned reads, and optionally the extents that changed since the last
//! backup (changed block tracking).
//!
//! Every disk format implements [`DiskSource`]; this crate holds the trait,
//! extent arithmetic, and the raw-file reader and writer.
//!
//! ```no_run
//! use cairn_disk::{DiskSource, raw::RawFile};
//! let disk = RawFile::open("disk0.raw".as_ref()).unwrap();
//! for e in disk.allocation().unwrap() {
//!     println!("{} bytes of data at {}", e.length, e.offset);
//! }
//! ```

pub mod extent;
pub mod raw;

use std::path::PathBuf;

pub use extent::Extent;

/// Errors from opening or reading a disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// An I/O call on the disk failed.
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A changed-extents list could not be parsed or does not fit the disk.
    #[error("changed extents {origin}: line {line}: {reason}")]
    BadExtents {
        origin: String,
        line: usize,
        reason: String,
    },
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
}
