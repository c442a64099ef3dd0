//! What every format's writer shares: the empty file it fills
//! ([`NewFile`]), the options of a new image ([`WriteOptions`]) and the
//! [`DiskWriter`] trait it implements. The format writers build on this
//! module; [`crate::writer`] picks among them and re-exports these items.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{DiskError, Result, io_error};

/// Mode of the image files cairn creates: readable and writable by the owner
/// only, since they hold a guest's data.
pub const NEW_FILE_MODE: u32 = 0o600;

/// An empty file a writer fills, open for reading and writing, with the path
/// that messages name. The caller created it: by [`NewFile::create`], or
/// beneath a confined folder (so that no symlink or `..` of a user-named
/// path is followed).
#[derive(Debug)]
pub struct NewFile {
    /// The open, empty file.
    pub file: File,
    /// Its path, for messages.
    pub path: PathBuf,
}

impl NewFile {
    /// Creates `path`, which must not exist, with mode [`NEW_FILE_MODE`].
    pub fn create(path: &Path) -> Result<NewFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(NEW_FILE_MODE)
            .open(path)
            .map_err(io_error(path, "create"))?;
        Ok(NewFile {
            file,
            path: path.to_path_buf(),
        })
    }
}

/// Creates `path` as a [`NewFile`] and hands it to `fill`; removes the file
/// again when `fill` fails (so an invalid option leaves nothing behind).
pub(crate) fn create_at<W>(path: &Path, fill: impl FnOnce(NewFile) -> Result<W>) -> Result<W> {
    fill(NewFile::create(path)?).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

/// Writes given to a [`DiskWriter`] start at multiples of this many bytes and
/// are multiples of it long, except a last write that ends at the disk's end.
pub const WRITE_ALIGN: u64 = 64 * 1024;

/// A disk image being written.
pub trait DiskWriter: Send + Sync {
    /// Writes `data` at guest `offset` (aligned to [`WRITE_ALIGN`]). Every
    /// byte is written at most once; bytes never written read as zeros.
    fn write_at(&self, data: &[u8], offset: u64) -> Result<()>;

    /// Writes the metadata and flushes the image to stable storage.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Implements [`DiskWriter`] for a writer type by its inherent `write_at`
/// and `finish` methods.
macro_rules! disk_writer_by_inherent_methods {
    ($writer:ty) => {
        impl $crate::output::DiskWriter for $writer {
            fn write_at(&self, data: &[u8], offset: u64) -> $crate::Result<()> {
                <$writer>::write_at(self, data, offset)
            }

            fn finish(self: Box<Self>) -> $crate::Result<()> {
                <$writer>::finish(*self)
            }
        }
    };
}
pub(crate) use disk_writer_by_inherent_methods;

/// Checks that `len` bytes written at guest `offset` stay within a disk of
/// `size` bytes (the image at `path`).
pub(crate) fn check_write_range(path: &Path, size: u64, len: usize, offset: u64) -> Result<()> {
    let end = offset.checked_add(len as u64);
    if end.is_none_or(|e| e > size) {
        return Err(DiskError::format(
            path,
            "write",
            format!("{len} bytes at {offset} reach past the disk's {size} bytes"),
        ));
    }
    Ok(())
}

/// Options for a new image.
#[derive(Clone, Copy, Debug)]
pub struct WriteOptions {
    /// Logical sector size (VHDX: 512 or 4096; VHD: 512).
    pub logical_sector: u32,
    /// Physical sector size (VHDX: 512 or 4096).
    pub physical_sector: u32,
    /// Allocation unit: VHDX block size (default 32 MiB), qcow2 cluster size
    /// (default 64 KiB); VHD always uses 2 MiB. `None` takes the default.
    pub block_size: Option<u32>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            logical_sector: 512,
            physical_sector: 4096,
            block_size: None,
        }
    }
}
