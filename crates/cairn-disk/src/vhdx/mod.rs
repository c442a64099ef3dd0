//! Vhdx images (reader not written yet).

use std::path::Path;

use crate::io::ImageFile;
use crate::layer::{Format, Layer, Mapping};
use crate::writer::{DiskWriter, WriteOptions};
use crate::{DiskError, Result};

/// A Vhdx file.
pub struct Vhdx {
    file: ImageFile,
}

impl Vhdx {
    /// Opens a Vhdx file.
    pub fn open(file: ImageFile) -> Result<Self> {
        Err(DiskError::Unsupported { path: file.path().to_path_buf(), what: "format (reader not written yet)".into() })
    }
}

impl Layer for Vhdx {
    fn file(&self) -> &ImageFile { &self.file }
    fn format(&self) -> Format { Format::Vhdx }
    fn virtual_size(&self) -> u64 { 0 }
    fn map(&self, _offset: u64, _max_len: u64) -> Result<Mapping> { unreachable!() }
    fn read_data(&self, _buf: &mut [u8], _host: u64) -> Result<()> { unreachable!() }
}

/// Writes a Vhdx image.
pub struct VhdxWriter;

impl VhdxWriter {
    /// Creates a Vhdx image.
    pub fn create(path: &Path, _size: u64, _opts: &WriteOptions) -> Result<Self> {
        Err(DiskError::Unsupported { path: path.to_path_buf(), what: "format (writer not written yet)".into() })
    }
}

impl DiskWriter for VhdxWriter {
    fn write_at(&self, _data: &[u8], _offset: u64) -> Result<()> { unreachable!() }
    fn finish(self: Box<Self>) -> Result<()> { unreachable!() }
}

/// Applies a pending log to the file (placeholder until the VHDX reader lands).
pub fn replay_log_in_place(path: &Path) -> Result<bool> {
    Err(DiskError::Unsupported { path: path.to_path_buf(), what: "log replay".into() })
}
