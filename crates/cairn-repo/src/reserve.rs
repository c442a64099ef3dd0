//! The space reserve of a chain: a preallocated file that lets retention and
//! repair commit on a full disk.
//!
//! Removing restore points gives space back only after `chain.meta` no longer
//! lists them, and writing that `chain.meta` needs space for a second copy of
//! it (written aside, then renamed). On a volume without a free byte this
//! would fail, and the points could never be removed. So every backup keeps
//! `REPO/chains/<chain-id>/reserve` allocated, at least twice the size of the
//! chain's metadata; retention and repair delete it when a metadata write
//! runs out of space, try again, and allocate it anew once they gave space
//! back. The reserve holds nothing: losing it loses nothing, and a missing
//! one is made again by the next backup.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::FallocateFlags;

use crate::error::{RepoError, Result, io};
use crate::fsutil;

/// Name of the reserve file in a chain folder.
pub const RESERVE_FILE: &str = "reserve";

/// Granularity (and least size) of the reserve.
const STEP: u64 = 64 * 1024;

/// The reserve size for metadata of `meta_len` bytes: twice that (room for a
/// grown copy), at least [`STEP`], rounded up to whole steps.
pub fn wanted(meta_len: u64) -> u64 {
    meta_len.saturating_mul(2).max(STEP).div_ceil(STEP) * STEP
}

fn path(dir: &Path) -> PathBuf {
    dir.join(RESERVE_FILE)
}

/// Makes the reserve of the chain in `dir` at least `len` bytes, allocated on
/// the volume. Fails with the file system's error (ENOSPC on a full disk).
pub fn ensure(dir: &Path, len: u64) -> Result<()> {
    let path = path(dir);
    let current = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if current >= len {
        return Ok(());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .or_else(|_| fsutil::create_private(&path, false))
        .map_err(io(&path, "create reserve"))?;
    let result = match rustix::fs::fallocate(&file, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        // Without fallocate, write the bytes: not zeros, which a compressing
        // file system would store in no space at all.
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {
            let chunk: Vec<u8> = (0..STEP).map(|i| (i * 131 % 251) as u8 + 1).collect();
            let mut at = current / STEP * STEP;
            let mut r = Ok(());
            while at < len && r.is_ok() {
                r = file.write_all_at(&chunk, at);
                at += STEP;
            }
            r
        }
        Err(e) => Err(e.into()),
    };
    if let Err(e) = result {
        // Keep what was there before; a half-grown reserve would only hide
        // space from the backup that failed for the lack of it.
        let _ = file.set_len(current);
        return Err(io(&path, "allocate reserve")(e));
    }
    Ok(())
}

/// Deletes the reserve of the chain in `dir`; returns its size (0 if there was none).
pub fn release(dir: &Path) -> Result<u64> {
    let path = path(dir);
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(&path, "stat reserve")(e)),
    };
    std::fs::remove_file(&path).map_err(io(&path, "remove reserve"))?;
    tracing::info!(path = %path.display(), len, "released the space reserve to commit on a full disk");
    Ok(len)
}

/// Whether `e` is a file system's "no space left on device".
pub fn is_no_space(e: &RepoError) -> bool {
    matches!(e, RepoError::Io { source, .. } if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_is_twice_the_metadata_in_whole_steps() {
        assert_eq!(wanted(0), STEP);
        assert_eq!(wanted(100), STEP);
        assert_eq!(wanted(STEP / 2 + 1), 2 * STEP);
        assert_eq!(wanted(5 * STEP), 10 * STEP);
    }

    #[test]
    fn ensure_grows_and_release_removes() {
        let tmp = tempfile::tempdir().unwrap();
        ensure(tmp.path(), STEP).unwrap();
        let p = tmp.path().join(RESERVE_FILE);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), STEP);
        ensure(tmp.path(), 3 * STEP).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 3 * STEP);
        // Never shrinks.
        ensure(tmp.path(), STEP).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 3 * STEP);
        use std::os::unix::fs::MetadataExt;
        assert!(
            std::fs::metadata(&p).unwrap().blocks() * 512 >= 3 * STEP,
            "the reserve is allocated, not a hole"
        );
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(release(tmp.path()).unwrap(), 3 * STEP);
        assert!(!p.exists());
        assert_eq!(release(tmp.path()).unwrap(), 0);
    }
}
