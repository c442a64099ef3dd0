//! Creating disk images for restore, in any format cairn writes.
//!
//! A restore hands a writer the disk's non-zero blocks in any order, from
//! several threads; the writer lays them out sparsely and makes the file
//! complete and durable in [`DiskWriter::finish`]. Until `finish` returns,
//! the file is not a valid image.

use std::path::Path;

use crate::layer::Format;
use crate::{DiskError, Result, qcow2, raw, vhd, vhdx};

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

/// Creates a new image of `format` at `path` (which must not exist) holding a
/// disk of `size` bytes, all zero until written.
pub fn create(format: Format, path: &Path, size: u64, opts: &WriteOptions) -> Result<Box<dyn DiskWriter>> {
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
        Format::Raw => Box::new(raw::RawWriter::create(path, size)?),
        Format::Qcow2 => Box::new(qcow2::Qcow2Writer::create(path, size, opts)?),
        Format::Vhdx => Box::new(vhdx::VhdxWriter::create(path, size, opts)?),
        Format::Vhd => Box::new(vhd::VhdWriter::create(path, size, opts)?),
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
