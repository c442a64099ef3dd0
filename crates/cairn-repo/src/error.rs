//! Errors of repository operations, each naming the file or object involved.

use std::path::PathBuf;

use cairn_format::FormatError;

/// What went wrong in a repository operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// A file system call failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A repository file has bad contents.
    #[error("{}: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    /// The folder holds no cairn repository.
    #[error("{}: not a cairn repository (it has no config file)", path.display())]
    NotARepository { path: PathBuf },
    /// `init` on a folder that already holds files.
    #[error("{}: already exists and is not empty", path.display())]
    AlreadyExists { path: PathBuf },
    /// The password does not unlock the repository key.
    #[error("{}: wrong password", path.display())]
    WrongPassword { path: PathBuf },
    /// The repository is encrypted and no password was given.
    #[error("{}: the repository is encrypted and no password was given", path.display())]
    PasswordRequired { path: PathBuf },
    /// No backups exist for the VM.
    #[error("no backups of VM {vm:?} in this repository")]
    NoSuchVm { vm: String },
    /// The restore point does not exist.
    #[error("VM {vm:?} has no restore point {point:?}")]
    NoSuchPoint { vm: String, point: String },
    /// The restore point has no such disk.
    #[error("restore point {point} of VM {vm:?} has no disk {disk}")]
    NoSuchDisk { vm: String, point: String, disk: u32 },
    /// A backup asked for a block size different from the chain's.
    #[error("VM {vm:?} is backed up with {chain} byte blocks; {asked} was asked (block size is fixed per chain)")]
    BlockSizeMismatch { vm: String, chain: u32, asked: u32 },
    /// Something the metadata promises is missing or inconsistent.
    #[error("{}: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    /// An invalid request (bad option combination).
    #[error("{0}")]
    Invalid(String),
}

impl RepoError {
    /// Whether the error says that stored data is damaged or missing (a
    /// checksum, a decode, a missing or short file), as opposed to a problem
    /// that may go away (permissions, an I/O error, a lock) or a wrong request.
    pub fn is_damage(&self) -> bool {
        match self {
            RepoError::Format { source, .. } => !matches!(source, FormatError::WrongPassword),
            RepoError::Damaged { .. } => true,
            RepoError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;

/// Builds a closure that turns an I/O error into [`RepoError::Io`].
pub(crate) fn io<'a>(path: &'a std::path::Path, op: &'static str) -> impl FnOnce(std::io::Error) -> RepoError + 'a {
    move |source| RepoError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Builds a closure that turns a format error into [`RepoError::Format`].
pub(crate) fn fmt(path: &std::path::Path) -> impl FnOnce(FormatError) -> RepoError + '_ {
    move |source| RepoError::Format {
        path: path.to_path_buf(),
        source,
    }
}
