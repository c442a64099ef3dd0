//! Qcow2 images (reader not written yet).

use std::path::Path;

use crate::io::ImageFile;
use crate::layer::{Format, Layer, Mapping};
use crate::writer::{DiskWriter, WriteOptions};
use crate::{DiskError, Result};

/// A Qcow2 file.
pub struct Qcow2 {
    file: ImageFile,
}

impl Qcow2 {
    /// Opens a Qcow2 file.
    pub fn open(file: ImageFile) -> Result<Self> {
        Err(DiskError::Unsupported { path: file.path().to_path_buf(), what: "format (reader not written yet)".into() })
    }
}

impl Layer for Qcow2 {
    fn file(&self) -> &ImageFile { &self.file }
    fn format(&self) -> Format { Format::Qcow2 }
    fn virtual_size(&self) -> u64 { 0 }
    fn map(&self, _offset: u64, _max_len: u64) -> Result<Mapping> { unreachable!() }
    fn read_data(&self, _buf: &mut [u8], _host: u64) -> Result<()> { unreachable!() }
}

/// Writes a Qcow2 image.
pub struct Qcow2Writer;

impl Qcow2Writer {
    /// Creates a Qcow2 image.
    pub fn create(path: &Path, _size: u64, _opts: &WriteOptions) -> Result<Self> {
        Err(DiskError::Unsupported { path: path.to_path_buf(), what: "format (writer not written yet)".into() })
    }
}

impl DiskWriter for Qcow2Writer {
    fn write_at(&self, _data: &[u8], _offset: u64) -> Result<()> { unreachable!() }
    fn finish(self: Box<Self>) -> Result<()> { unreachable!() }
}
