//! File system primitives that make repository writes crash-safe.
//!
//! The rule: a file becomes visible under its final name only after its
//! bytes are on stable storage (write aside → fsync → rename → fsync dir).
//!
//! Every file and folder the repository creates is private to its owner
//! (files 0600, folders 0700) whatever the umask: an unencrypted repository
//! holds guest data in clear.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, FlockOperation};

use crate::error::{RepoError, Result, io};

/// Suffix of files being written; leftovers with it are removed on the next write.
pub const TMP_SUFFIX: &str = ".tmp";

/// `path` with [`TMP_SUFFIX`] appended.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// Mode of every file the repository creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every folder the repository creates.
pub const DIR_MODE: u32 = 0o700;

/// Opens `path` for reading and writing, creating it with [`FILE_MODE`]
/// (set explicitly, so the umask cannot widen or narrow it). With `new`, the
/// file must not exist; otherwise an existing file is truncated.
pub fn create_private(path: &Path, new: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true).mode(FILE_MODE);
    if new {
        o.create_new(true);
    } else {
        o.create(true).truncate(true);
    }
    let f = o.open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Creates the folder `dir` (and missing parents) with [`DIR_MODE`]; an
/// existing `dir` gets that mode too. Parents that existed are left alone.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io(dir, "create directory"))?;
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(io(dir, "set permissions"))
}

/// Writes `bytes` to `path` aside, as `path` + [`TMP_SUFFIX`], and fsyncs it;
/// returns the temporary path. On error the temporary file is removed.
pub fn write_aside(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut f = create_private(&tmp, false).map_err(io(&tmp, "create"))?;
        f.write_all(bytes).map_err(io(&tmp, "write"))?;
        f.sync_all().map_err(io(&tmp, "fsync"))
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_aside(path, bytes)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path, "rename")(e));
    }
    sync_parent(path)
}

/// Renames `from` to `to` and makes the rename durable.
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(io(to, "rename"))?;
    sync_parent(to)
}

/// Fsyncs the directory holding `path`, so renames and unlinks in it persist.
pub fn sync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    sync_dir(dir)
}

/// Fsyncs a directory.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "fsync directory"))
}

/// Reads a whole file.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(io(path, "read"))
}

/// Reads exactly `buf.len()` bytes at `offset`, failing on a short file.
pub fn read_exact_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            // Say what is missing rather than "failed to fill whole buffer".
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            RepoError::Damaged {
                path: path.to_path_buf(),
                reason: format!(
                    "file is truncated: {} bytes at offset {offset} lie past its end ({len} bytes)",
                    buf.len()
                ),
            }
        } else {
            io(path, "read")(e)
        }
    })
}

/// An advisory lock (flock) held until dropped.
pub struct Lock {
    _file: File,
}

/// Takes a shared (readers) or exclusive (writers) lock on `path`, waiting for it.
pub fn lock(path: &Path, exclusive: bool) -> Result<Lock> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io(path, "open lock"))?;
    let op = if exclusive {
        FlockOperation::LockExclusive
    } else {
        FlockOperation::LockShared
    };
    rustix::fs::flock(&file, op).map_err(|e| io(path, "lock")(e.into()))?;
    Ok(Lock { _file: file })
}

/// Appends `len` bytes of `src` starting at `src_off` to `dst` at `dst_off`,
/// with copy_file_range (a block clone on XFS/Btrfs), falling back to read/write.
pub fn copy_range(
    src: &File,
    src_path: &Path,
    src_off: u64,
    dst: &File,
    dst_path: &Path,
    dst_off: u64,
    len: u64,
) -> Result<()> {
    let (mut so, mut dof, mut left) = (src_off, dst_off, len);
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut so), dst, Some(&mut dof), chunk) {
            Ok(0) => {
                return Err(io(src_path, "copy range")(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "source ended early",
                )));
            }
            Ok(n) => left -= n as u64,
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::INVAL,
            ) => {
                let mut buf = vec![0u8; left.min(8 << 20) as usize];
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    src.read_exact_at(&mut buf[..n], so).map_err(io(src_path, "read"))?;
                    dst.write_all_at(&buf[..n], dof).map_err(io(dst_path, "write"))?;
                    so += n as u64;
                    dof += n as u64;
                    left -= n as u64;
                }
            }
            Err(e) => return Err(io(dst_path, "copy range")(e.into())),
        }
    }
    Ok(())
}

/// Frees the blocks of `[offset, offset + len)` without changing the file size.
/// Returns `false` when the file system cannot punch holes.
pub fn punch_hole(file: &File, path: &Path, offset: u64, len: u64) -> Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    match rustix::fs::fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    ) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => Ok(false),
        Err(e) => Err(io(path, "punch hole")(e.into())),
    }
}
