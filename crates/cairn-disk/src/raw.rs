//! Raw disk images: regular files (sparse or not) and block devices.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::SeekFrom;

use crate::extent::{Extent, normalize};
use crate::io_error as io;
use crate::{DiskError, DiskSource, Result};

/// A raw image read with positioned reads; holes are found with SEEK_DATA/SEEK_HOLE.
pub struct RawFile {
    path: PathBuf,
    file: File,
    size: u64,
}

impl RawFile {
    /// Opens a raw image read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(io(path, "open"))?;
        // Seeking to the end works for files and block devices alike.
        let size = rustix::fs::seek(&file, SeekFrom::End(0)).map_err(|e| DiskError::Io {
            path: path.to_path_buf(),
            op: "size",
            source: e.into(),
        })?;
        Ok(RawFile {
            path: path.to_path_buf(),
            file,
            size,
        })
    }
}

impl DiskSource for RawFile {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn allocation(&self) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        let mut pos = 0u64;
        while pos < self.size {
            let data = match rustix::fs::seek(&self.file, SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(rustix::io::Errno::NXIO) => break, // no data after pos
                // No SEEK_DATA support (some block devices, old file systems): all data.
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
                    return Ok(vec![Extent {
                        offset: 0,
                        length: self.size,
                    }]);
                }
                Err(e) => return Err(io(&self.path, "seek data")(e.into())),
            };
            let hole = rustix::fs::seek(&self.file, SeekFrom::Hole(data))
                .map_err(|e| io(&self.path, "seek hole")(e.into()))?
                .min(self.size);
            if hole <= data {
                break;
            }
            out.push(Extent {
                offset: data,
                length: hole - data,
            });
            pos = hole;
        }
        Ok(normalize(out))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(&self.path, "read")(e)),
            }
        }
        Ok(())
    }
}

/// A raw file as a layer of an image (a raw backing file, or a raw disk
/// opened through [`crate::image::Image`]): data maps to the same offset,
/// holes are unallocated.
pub struct RawLayer {
    file: crate::io::ImageFile,
    /// The same file as a descriptor, for SEEK_DATA/SEEK_HOLE.
    fd: Option<File>,
}

impl RawLayer {
    /// Wraps an opened raw file.
    pub fn new(file: crate::io::ImageFile) -> Result<Self> {
        let fd = File::open(file.path()).ok();
        Ok(RawLayer { file, fd })
    }
}

impl crate::layer::Layer for RawLayer {
    fn file(&self) -> &crate::io::ImageFile {
        &self.file
    }

    fn format(&self) -> crate::layer::Format {
        crate::layer::Format::Raw
    }

    fn virtual_size(&self) -> u64 {
        self.file.len()
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<crate::layer::Mapping> {
        use crate::layer::{Mapping, Piece};
        let end = offset.saturating_add(max_len).min(self.file.len());
        let data = |length| Mapping {
            piece: Piece::Data { host: offset },
            length,
        };
        let Some(fd) = &self.fd else {
            return Ok(data(end - offset));
        };
        match rustix::fs::seek(fd, SeekFrom::Data(offset)) {
            Ok(d) if d <= offset => {
                let hole = rustix::fs::seek(fd, SeekFrom::Hole(offset)).unwrap_or(end);
                Ok(data(hole.clamp(offset + 1, end) - offset))
            }
            Ok(d) => Ok(Mapping {
                piece: Piece::Parent,
                length: d.min(end) - offset,
            }),
            Err(rustix::io::Errno::NXIO) => Ok(Mapping {
                piece: Piece::Parent,
                length: end - offset,
            }),
            Err(_) => Ok(data(end - offset)),
        }
    }

    fn read_data(&self, buf: &mut [u8], host: u64) -> Result<()> {
        self.file.read_exact(buf, host, "data")
    }
}

/// Writes a raw image sparsely: the file is sized up front and all-zero
/// blocks are never written, so they stay holes.
pub struct RawWriter {
    path: PathBuf,
    file: File,
}

impl RawWriter {
    /// Creates `path` (which must not exist) with `size` bytes, all holes.
    pub fn create(path: &Path, size: u64) -> Result<Self> {
        crate::output::create_at(path, |out| Self::create_in(out, size))
    }

    /// Makes the empty file `out` a raw image of `size` bytes, all holes.
    pub fn create_in(out: crate::output::NewFile, size: u64) -> Result<Self> {
        let crate::output::NewFile { file, path } = out;
        file.set_len(size).map_err(io(&path, "set length"))?;
        Ok(RawWriter { path, file })
    }

    /// Writes `data` at `offset` unless it is all zeros.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        if is_zero(data) {
            return Ok(());
        }
        self.file.write_all_at(data, offset).map_err(io(&self.path, "write"))
    }

    /// Flushes the image to stable storage.
    pub fn finish(self) -> Result<()> {
        self.file.sync_all().map_err(io(&self.path, "fsync"))
    }
}

impl crate::output::DiskWriter for RawWriter {
    fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        RawWriter::write_at(self, data, offset)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        RawWriter::finish(*self)
    }
}

/// Whether every byte of `data` is zero (compared 16 bytes at a time).
pub fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(16);
    chunks.all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0) && chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_skips_holes_and_reads_zero_past_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 8192], 8 << 20).unwrap();
        f.write_all_at(&[2u8; 4096], 40 << 20).unwrap();
        drop(f);
        let d = RawFile::open(&p).unwrap();
        assert_eq!(d.virtual_size(), 64 << 20);
        let alloc = d.allocation().unwrap();
        let total: u64 = alloc.iter().map(|e| e.length).sum();
        assert!(total < 1 << 20, "holes reported as data: {alloc:?}");
        assert!(alloc.iter().any(|e| e.offset <= 8 << 20 && e.end() >= (8 << 20) + 8192));
        let mut buf = vec![9u8; 100];
        d.read_at(&mut buf, (64 << 20) - 50).unwrap();
        assert!(buf[50..].iter().all(|&b| b == 0));
    }

    #[test]
    fn writer_leaves_zero_blocks_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.raw");
        let w = RawWriter::create(&p, 16 << 20).unwrap();
        w.write_at(&vec![0u8; 1 << 20], 0).unwrap();
        w.write_at(&vec![5u8; 1 << 20], 4 << 20).unwrap();
        w.finish().unwrap();
        let alloc = RawFile::open(&p).unwrap().allocation().unwrap();
        let total: u64 = alloc.iter().map(|e| e.length).sum();
        assert_eq!(total, 1 << 20, "{alloc:?}");
        assert!(RawWriter::create(&p, 1).is_err(), "must not overwrite");
    }

    #[test]
    fn is_zero_checks_every_byte() {
        let mut v = vec![0u8; 1027];
        assert!(is_zero(&v));
        for i in [0, 7, 8, 1023, 1026] {
            v[i] = 1;
            assert!(!is_zero(&v), "{i}");
            v[i] = 0;
        }
    }
}
