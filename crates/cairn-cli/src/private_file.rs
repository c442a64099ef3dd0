//! Files only their owner may read, replaced whole: written to a temporary file (mode 0600,
//! never over an existing one), synced, then renamed over the target.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to `path` through `tmp` (in the same folder) and a rename.
pub fn write(path: &Path, tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let _ = fs::remove_file(tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(tmp, path)
}
