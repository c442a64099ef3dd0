//! Creating disk images for restore, in any format cairn writes.
//!
//! A restore hands a writer the disk's non-zero blocks in any order, from
//! several threads; the writer lays them out sparsely and makes the file
//! complete and durable in [`DiskWriter::finish`]. Until `finish` returns,
//! the file is not a valid image.

use std::path::Path;

use crate::layer::Format;
use crate::{DiskError, Result, qcow2, raw, vhd, vhdx};

pub(crate) use crate::output::create_at;
pub use crate::output::{DiskWriter, NEW_FILE_MODE, NewFile, WRITE_ALIGN, WriteOptions};

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
