//! Creating disk images for restore, in any format cairn writes.
//!
//! A restore hands a writer the disk's non-zero blocks in any order, from
//! several threads; the writer lays them out sparsely and makes the file
//! complete and durable in [`DiskWriter::finish`]. Until `finish` returns,
//! the file is not a valid image.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::layer::Format;
use crate::{DiskError, Result, io_error, qcow2, raw, vhd, vhdx};

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

/// Creates a new image of `format` at `path` (which must not exist, mode
/// [`NEW_FILE_MODE`]) holding a disk of `size` bytes, all zero until written.
pub fn create(format: Format, path: &Path, size: u64, opts: &WriteOptions) -> Result<Box<dyn DiskWriter>> {
    create_at(path, |out| create_in(format, out, size, opts))
}

/// Writes a new image of `format` into the empty file `out`, holding a disk
/// of `size` bytes, all zero until written. On an error the caller removes
/// the file.
pub fn create_in(format: Format, out: NewFile, size: u64, opts: &WriteOptions) -> Result<Box<dyn DiskWriter>> {
    let path = out.path.as_path();
    if ![512, 4096].contains(&opts.logical_sector) || ![512, 4096].contains(&opts.physical_sector) {
        return Err(DiskError::format(
            path,
            "sector size",
            format!(
                "logical {} / physical {}: each must be 512 or 4096",
                opts.logical_sector, opts.physical_sector
            ),
        ));
    }
    Ok(match format {
        Format::Raw => Box::new(raw::RawWriter::create_in(out, size)?),
        Format::Qcow2 => Box::new(qcow2::Qcow2Writer::create_in(out, size, opts)?),
        Format::Vhdx => Box::new(vhdx::VhdxWriter::create_in(out, size, opts)?),
        Format::Vhd => Box::new(vhd::VhdWriter::create_in(out, size, opts)?),
    })
}

/// The virtual size of the image [`create`] writes for a disk of `size`
/// bytes: raw keeps `size`; qcow2 rounds it up to whole 512-byte sectors
/// (QEMU counts its size in sectors), VHDX to whole logical sectors, VHD to
/// the next size its CHS geometry describes exactly (so that every reader
/// sees one size; see `vhd::writer`). The added bytes read as zeros.
pub fn image_size(format: Format, size: u64, opts: &WriteOptions) -> u64 {
    match format {
        Format::Raw => size,
        Format::Qcow2 => size.div_ceil(512) * 512,
        Format::Vhdx => {
            let lss = u64::from(opts.logical_sector.max(1));
            size.div_ceil(lss) * lss
        }
        Format::Vhd => vhd::format::chs_size(size).0,
    }
}
