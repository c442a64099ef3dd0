//! Positioned reads of image files, with errors that name the file and the
//! structure being read.
//!
//! Format parsers read through [`ImageFile`], which wraps anything that
//! implements [`ReadAt`]: a real file, bytes in memory (fuzzing, tests) or a
//! file seen through replayed log entries (VHDX).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{DiskError, Result};

/// Positioned reads from something with a length.
#[allow(clippy::len_without_is_empty)]
pub trait ReadAt: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read
    /// (0 only at or past the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
    /// Current length in bytes.
    fn len(&self) -> std::io::Result<u64>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= self.len() {
            return Ok(0);
        }
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(Vec::len(self) as u64)
    }
}

/// An image file: a name for messages, its bytes, and its length when opened.
#[derive(Clone)]
pub struct ImageFile {
    path: PathBuf,
    inner: Arc<dyn ReadAt>,
    len: u64,
}

impl std::fmt::Debug for ImageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFile")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

impl ImageFile {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| DiskError::Io {
            path: path.to_path_buf(),
            op: "open",
            source,
        })?;
        Self::new(path, Arc::new(file))
    }

    /// Wraps `inner`, naming it `path` in messages.
    pub fn new(path: &Path, inner: Arc<dyn ReadAt>) -> Result<Self> {
        let len = inner.len().map_err(|source| DiskError::Io {
            path: path.to_path_buf(),
            op: "size",
            source,
        })?;
        Ok(ImageFile {
            path: path.to_path_buf(),
            inner,
            len,
        })
    }

    /// In-memory bytes named `path` (for tests and fuzzing).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Self {
        let len = bytes.len() as u64;
        ImageFile {
            path: path.to_path_buf(),
            inner: Arc::new(bytes),
            len,
        }
    }

    /// The file's name for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Length of the file when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The underlying reader.
    pub fn inner(&self) -> &Arc<dyn ReadAt> {
        &self.inner
    }

    /// Reads exactly `buf.len()` bytes of the structure `what` at `offset`;
    /// a short file is a [`DiskError::Format`] naming `what`.
    pub fn read_exact(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(DiskError::format(
                &self.path,
                what,
                format!(
                    "needs bytes {offset}..{} but the file is {} bytes long (truncated?)",
                    offset.saturating_add(buf.len() as u64),
                    self.len
                ),
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            match self.inner.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(DiskError::format(
                        &self.path,
                        what,
                        format!(
                            "file ended at {} while reading {} bytes at {offset}",
                            offset + done as u64,
                            buf.len()
                        ),
                    ));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(DiskError::Io {
                        path: self.path.clone(),
                        op: "read",
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Reads `len` bytes of the structure `what` into a new buffer, refusing
    /// lengths beyond the file's end before allocating anything.
    pub fn read_vec(&self, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(DiskError::format(
                &self.path,
                what,
                format!(
                    "{len} bytes at offset {offset} reach past the end of the file ({} bytes)",
                    self.len
                ),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_exact(&mut buf, offset, what)?;
        Ok(buf)
    }
}

/// Little-endian and big-endian field readers over a byte slice whose length
/// the caller has checked.
pub mod bytes {
    /// `u16` little-endian at `at`.
    pub fn le16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    /// `u32` little-endian at `at`.
    pub fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    /// `u64` little-endian at `at`.
    pub fn le64(b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    }
    /// `u16` big-endian at `at`.
    pub fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }
    /// `u32` big-endian at `at`.
    pub fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    /// `u64` big-endian at `at`.
    pub fn be64(b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_be_bytes(a)
    }
}
