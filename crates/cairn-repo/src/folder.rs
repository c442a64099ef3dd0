//! A repository's folder as a whole: what it holds, making or adopting a repository in it, taking
//! back what a make left, and telling whether a repository changed since it was opened. Other
//! crates use these and never name the repository's files themselves.

use std::path::Path;

use crate::config::{Config, Encryption};
use crate::error::{RepoError, Result, io};
use crate::repository::{CHAINS_DIR, CONFIG_FILE, Repository};

/// What a folder holds, as far as repositories go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderState {
    /// Nothing is there.
    Missing,
    /// An empty folder.
    Empty,
    /// A cairn repository; whether it is encrypted.
    Repository {
        /// Its blocks are encrypted (a password is needed to open it).
        encrypted: bool,
    },
    /// Something else: a non-empty folder without a repository, or a file.
    Other,
}

/// Looks at `root` without opening anything: a repository is recognised by its config file, whose
/// header says whether it is encrypted.
pub fn inspect(root: &Path) -> Result<FolderState> {
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FolderState::Missing),
        Err(e) => return Err(io(root, "inspect")(e)),
    };
    if !meta.is_dir() {
        return Ok(FolderState::Other);
    }
    let config = root.join(CONFIG_FILE);
    match std::fs::read(&config) {
        Ok(bytes) => {
            let config = Config::decode(&bytes, &config)?;
            Ok(FolderState::Repository {
                encrypted: config.encryption != Encryption::None,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut entries = std::fs::read_dir(root).map_err(io(root, "read directory"))?;
            Ok(if entries.next().is_none() {
                FolderState::Empty
            } else {
                FolderState::Other
            })
        }
        Err(e) => Err(io(&config, "read")(e)),
    }
}

/// What [`create_or_adopt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Made {
    /// The folder existed before (empty, or holding the repository adopted).
    pub existed: bool,
    /// A new repository was made (else an existing one was adopted).
    pub created: bool,
    /// The repository is encrypted.
    pub encrypted: bool,
}

/// Makes a repository in `root` (missing or empty) with `encryption` and `password`, or adopts the
/// repository already there: an encrypted one must open with `password` (else
/// [`RepoError::WrongPassword`] or [`RepoError::PasswordRequired`]); an unencrypted one is adopted
/// whatever `encryption` says. A non-empty folder without a repository is
/// [`RepoError::AlreadyExists`].
pub fn create_or_adopt(root: &Path, encryption: Encryption, password: Option<&[u8]>) -> Result<Made> {
    match inspect(root)? {
        FolderState::Repository { encrypted } => {
            Repository::open(root, if encrypted { password } else { None })?;
            Ok(Made {
                existed: true,
                created: false,
                encrypted,
            })
        }
        FolderState::Other => Err(RepoError::AlreadyExists {
            path: root.to_path_buf(),
        }),
        state => {
            Repository::init(root, encryption, password, None)?;
            Ok(Made {
                existed: state == FolderState::Empty,
                created: true,
                encrypted: encryption != Encryption::None,
            })
        }
    }
}

/// Takes back what [`create_or_adopt`] made in `root` (nothing when it adopted a repository): the
/// new repository's files, and the folder when it did not exist before. Best effort: a failure is
/// left for the administrator (the message of the step that called this says what happened).
pub fn remove_made(root: &Path, made: &Made) {
    if !made.created {
        return;
    }
    let _ = std::fs::remove_file(root.join(CONFIG_FILE));
    let _ = std::fs::remove_dir_all(root.join(CHAINS_DIR));
    if !made.existed {
        let _ = std::fs::remove_dir(root);
    }
}

/// The identity of the repository in `root` as written when it was made (its config file's
/// bytes): a repository made anew in the same folder has another. `None` without a repository.
pub fn identity(root: &Path) -> Option<Vec<u8>> {
    std::fs::read(root.join(CONFIG_FILE)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_told_apart_and_made_or_adopted() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        assert_eq!(inspect(&root).unwrap(), FolderState::Missing);
        std::fs::create_dir(&root).unwrap();
        assert_eq!(inspect(&root).unwrap(), FolderState::Empty);
        let made = create_or_adopt(&root, Encryption::Aes256Gcm, Some(b"pw")).unwrap();
        assert_eq!(
            made,
            Made {
                existed: true,
                created: true,
                encrypted: true
            }
        );
        assert_eq!(inspect(&root).unwrap(), FolderState::Repository { encrypted: true });
        let first = identity(&root).unwrap();
        let again = create_or_adopt(&root, Encryption::None, Some(b"pw")).unwrap();
        assert!(!again.created && again.encrypted);
        assert!(matches!(
            create_or_adopt(&root, Encryption::Aes256Gcm, Some(b"wrong")),
            Err(RepoError::WrongPassword { .. })
        ));
        remove_made(&root, &made);
        assert_eq!(inspect(&root).unwrap(), FolderState::Empty, "the folder existed before");
        let made = create_or_adopt(&root, Encryption::Aes256Gcm, Some(b"pw")).unwrap();
        assert_ne!(identity(&root).unwrap(), first, "a new repository has a new identity");
        remove_made(&root, &made);

        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("file"), b"x").unwrap();
        assert_eq!(inspect(&other).unwrap(), FolderState::Other);
        assert!(matches!(
            create_or_adopt(&other, Encryption::None, None),
            Err(RepoError::AlreadyExists { .. })
        ));
        assert_eq!(inspect(&other.join("file")).unwrap(), FolderState::Other);

        let fresh = tmp.path().join("fresh");
        let made = create_or_adopt(&fresh, Encryption::None, None).unwrap();
        assert!(made.created && !made.existed && !made.encrypted);
        remove_made(&fresh, &made);
        assert_eq!(inspect(&fresh).unwrap(), FolderState::Missing);
    }
}
