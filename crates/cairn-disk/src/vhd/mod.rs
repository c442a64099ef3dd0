//! Vhd images (reader not written yet).

use std::path::Path;

use crate::io::ImageFile;
use crate::layer::{Format, Layer, Mapping};
use crate::writer::{DiskWriter, WriteOptions};
use crate::{DiskError, Result};

/// A Vhd file.
pub struct Vhd {
    file: ImageFile,
}

impl Vhd {
    /// Opens a Vhd file.
    pub fn open(file: ImageFile) -> Result<Self> {
        Err(DiskError::Unsupported { path: file.path().to_path_buf(), what: "format (reader not written yet)".into() })
    }
}

impl Layer for Vhd {
    fn file(&self) -> &ImageFile { &self.file }
    fn format(&self) -> Format { Format::Vhd }
    fn virtual_size(&self) -> u64 { 0 }
    fn map(&self, _offset: u64, _max_len: u64) -> Result<Mapping> { unreachable!() }
    fn read_data(&self, _buf: &mut [u8], _host: u64) -> Result<()> { unreachable!() }
}

/// Writes a Vhd image.
pub struct VhdWriter;

impl VhdWriter {
    /// Creates a Vhd image.
    pub fn create(path: &Path, _size: u64, _opts: &WriteOptions) -> Result<Self> {
        Err(DiskError::Unsupported { path: path.to_path_buf(), what: "format (writer not written yet)".into() })
    }
}

impl DiskWriter for VhdWriter {
    fn write_at(&self, _data: &[u8], _offset: u64) -> Result<()> { unreachable!() }
    fn finish(self: Box<Self>) -> Result<()> { unreachable!() }
}

/// Whether the last 512 bytes of `file` are a VHD footer.
pub fn footer_at_end(file: &ImageFile) -> Result<bool> {
    let mut b = [0u8; 8];
    file.read_exact(&mut b, file.len() - 512, "VHD footer")?;
    Ok(&b == b"conectix")
}
