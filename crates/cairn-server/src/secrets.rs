//! Repository passwords, kept by the server so scheduled jobs run unattended.
//!
//! Each encrypted repository the server manages has its password in
//! `DATA/secrets/repository-<id>.password` (mode 0600, folder 0700), written atomically. The
//! configuration database never holds them, so a database dump (or a PostgreSQL server shared
//! with other software) does not give access to backups. Whoever reads the data folder can read
//! the backups: protect it, and keep a copy of the passwords somewhere else — without them an
//! encrypted repository cannot be restored on another machine.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngExt;

/// The folder of repository passwords.
#[derive(Debug, Clone)]
pub struct Secrets {
    dir: PathBuf,
}

impl Secrets {
    /// Opens (creating it with mode 0700 if needed) the secrets folder `DATA/secrets`.
    pub fn open(data_dir: &Path) -> io::Result<Secrets> {
        let dir = data_dir.join("secrets");
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        Ok(Secrets { dir })
    }

    /// Where the password of repository `id` is kept.
    pub fn repository_password_path(&self, id: i64) -> PathBuf {
        self.dir.join(format!("repository-{id}.password"))
    }

    /// The password of repository `id`; `None` if it has none (unencrypted repository).
    pub fn repository_password(&self, id: i64) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.repository_password_path(id)) {
            Ok(mut bytes) => {
                while bytes.last() == Some(&b'\n') {
                    bytes.pop();
                }
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores the password of repository `id` (mode 0600, replaced atomically).
    pub fn set_repository_password(&self, id: i64, password: &[u8]) -> io::Result<()> {
        let mut text = password.to_vec();
        text.push(b'\n');
        write_private(&self.repository_password_path(id), &text)
    }

    /// Forgets the password of repository `id` (when the repository is removed).
    pub fn remove_repository_password(&self, id: i64) -> io::Result<()> {
        match fs::remove_file(self.repository_password_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Replaces `path` with `bytes` atomically and durably, mode 0600: written to `PATH.tmp`,
/// synced, renamed over `path`, the folder synced.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A new random password: 32 characters from a 62-letter alphabet (~190 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
