//! Files and folders created only beneath the folders an administrator allowed.
//!
//! The backup server and its agents run as root, and users of the API name
//! paths: restore targets, folders of restored VMs, migration targets. Every
//! such write goes through [`AllowedFolders`], which holds these rules:
//!
//! 1. The path is absolute and has no `..` component (checked on its text, so
//!    `/restore/a/../../etc/x` is refused before anything is opened).
//! 2. It lies beneath one of the allowed folders (its *root*; the longest one
//!    that matches). The root itself is opened as the administrator named it.
//! 3. Each component below the root is opened with `openat2` and
//!    `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` from the
//!    folder above it, so no symlink — one planted earlier, say by a guest's
//!    files restored there, or one swapped in while the call runs — and no
//!    `..` leads out of the root.
//! 4. No folder on the way, nor the root or any folder above it, is a
//!    protected folder (the data folder): compared by device and inode, so
//!    another name of the same folder (a bind mount) is caught too.
//! 5. No folder from the root down is writable by other users unless it has
//!    the sticky bit: someone else could otherwise rename entries under a
//!    later reader of the path (QEMU opening a restored disk by name).
//! 6. Files are created with `O_CREAT | O_EXCL | O_NOFOLLOW` (never over an
//!    existing file or through a final symlink) and mode 0600 unless the
//!    caller asks for another one without set-id or sticky bits; new folders
//!    get mode 0700.
//!
//! ```no_run
//! use cairn_confine::AllowedFolders;
//! use std::path::{Path, PathBuf};
//!
//! let allowed = AllowedFolders::new([PathBuf::from("/srv/restore")]).protect("/var/lib/cairn");
//! let out = allowed.create_file(Path::new("/srv/restore/web01/disk0.raw"), 0o600)?;
//! // … write into out.file; on failure: out.remove();
//! # Ok::<(), cairn_confine::ConfineError>(())
//! ```

#![warn(missing_docs)]

mod walk;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Mode, OFlags};

/// Mode of files created when the caller asks for none: owner read and write.
pub const DEFAULT_FILE_MODE: u32 = 0o600;
/// Mode of the folders this crate creates: owner only.
pub const FOLDER_MODE: u32 = 0o700;

/// Why a path was refused or could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfineError {
    /// The path is relative.
    #[error("{path}: give an absolute path")]
    NotAbsolute {
        /// The path as given.
        path: PathBuf,
    },
    /// The path has a `..` component.
    #[error("{path}: `..` is not allowed in the path")]
    DotDot {
        /// The path as given.
        path: PathBuf,
    },
    /// The path is not beneath any allowed folder.
    #[error("{path} is not beneath an allowed folder ({allowed})")]
    NotAllowed {
        /// The path as given.
        path: PathBuf,
        /// The allowed folders, for the message.
        allowed: String,
    },
    /// The path is an allowed folder itself where a file is needed.
    #[error("{path} is an allowed folder itself: name a file inside it")]
    IsRoot {
        /// The path as given.
        path: PathBuf,
    },
    /// The path reaches into a protected folder.
    #[error("{path}: {folder} is inside the protected folder {protected}: nothing is written there")]
    Protected {
        /// The path as given.
        path: PathBuf,
        /// The folder on the way that is (or is inside) the protected one.
        folder: PathBuf,
        /// The protected folder.
        protected: PathBuf,
    },
    /// A component below the root is a symlink.
    #[error("{path}: {component} is a symbolic link; links are not followed in restore paths")]
    Symlink {
        /// The path as given.
        path: PathBuf,
        /// The path up to and including the link.
        component: PathBuf,
    },
    /// A folder on the way is writable by other users.
    #[error(
        "{path}: the folder {folder} is writable by other users (mode {mode:o}); \
         a file there could be swapped under its reader"
    )]
    Writable {
        /// The path as given.
        path: PathBuf,
        /// The folder that others may write.
        folder: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// A component on the way is not a folder.
    #[error("{path}: {component} is not a folder")]
    NotAFolder {
        /// The path as given.
        path: PathBuf,
        /// The path up to that component.
        component: PathBuf,
    },
    /// A folder on the way does not exist.
    #[error("{path}: the folder {folder} does not exist")]
    NoFolder {
        /// The path as given.
        path: PathBuf,
        /// The first folder that is missing.
        folder: PathBuf,
    },
    /// The file exists already.
    #[error("{path} already exists: nothing is overwritten")]
    Exists {
        /// The path as given.
        path: PathBuf,
    },
    /// A file mode with more than permission bits was asked for.
    #[error("file mode {mode:o}: only permission bits (at most 0777) are allowed")]
    Mode {
        /// The mode asked for.
        mode: u32,
    },
    /// The system refused an operation.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}

impl ConfineError {
    /// Whether the error is the caller's (a path the rules refuse, a missing
    /// folder, an existing file) rather than a failure of the system.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, ConfineError::Io { .. })
    }

    /// Whether the error says the target exists already.
    pub fn is_exists(&self) -> bool {
        matches!(self, ConfineError::Exists { .. })
    }
}

/// Result of this crate.
pub type Result<T, E = ConfineError> = std::result::Result<T, E>;

/// The folders writes may go beneath, and the folders they must never reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedFolders {
    roots: Vec<PathBuf>,
    protected: Vec<PathBuf>,
}

impl AllowedFolders {
    /// Writes allowed beneath each of `roots` (absolute paths; others never
    /// match anything).
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> AllowedFolders {
        AllowedFolders {
            roots: roots.into_iter().map(|r| normalize(&r).unwrap_or(r)).collect(),
            protected: Vec::new(),
        }
    }

    /// Also refuses every write that reaches into `folder` (or another name of it).
    pub fn protect(mut self, folder: impl Into<PathBuf>) -> AllowedFolders {
        self.protected.push(folder.into());
        self
    }

    /// The allowed folders.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The protected folders.
    pub fn protected(&self) -> &[PathBuf] {
        &self.protected
    }

    /// Checks `path`'s text alone (absolute, no `..`, beneath an allowed
    /// folder, not naming a protected folder) and returns its root and the
    /// part below it. Nothing is opened: this is what a server can check of a
    /// path on another machine.
    pub fn check_text(&self, path: &Path) -> Result<(PathBuf, PathBuf)> {
        let norm = normalize(path)?;
        let root = self
            .roots
            .iter()
            .filter(|r| r.is_absolute() && norm.starts_with(r))
            .max_by_key(|r| r.components().count())
            .ok_or_else(|| ConfineError::NotAllowed {
                path: path.to_path_buf(),
                allowed: self.describe_roots(),
            })?;
        // The real check is made folder by folder when opening; a path that names a protected
        // folder in so many words is refused at once.
        if let Some(protected) = self
            .protected
            .iter()
            .find(|p| normalize(p).is_ok_and(|p| norm.starts_with(&p)))
        {
            return Err(ConfineError::Protected {
                path: path.to_path_buf(),
                folder: norm.clone(),
                protected: protected.clone(),
            });
        }
        let relative = norm.strip_prefix(root).map(Path::to_path_buf).unwrap_or_default();
        Ok((root.clone(), relative))
    }

    /// Creates the new file `path` (which must not exist) with `mode`,
    /// open for reading and writing, in a folder that exists.
    pub fn create_file(&self, path: &Path, mode: u32) -> Result<ConfinedFile> {
        check_mode(mode)?;
        let (dir, name) = self.parent_of(path)?;
        dir.create_file(&name, mode)
    }

    /// Checks that `path` could be created by [`AllowedFolders::create_file`]
    /// now: its folder exists beneath an allowed folder by the rules, and it
    /// does not exist. Creates nothing.
    pub fn check_new_file(&self, path: &Path) -> Result<()> {
        let (dir, name) = self.parent_of(path)?;
        if dir.contains(&name)? {
            return Err(ConfineError::Exists {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Opens the folder `path`, creating it and any missing folders above it
    /// below its root (mode 0700).
    pub fn create_folder(&self, path: &Path) -> Result<ConfinedDir> {
        let (root, relative) = self.check_text(path)?;
        walk::open_folder(self, path, &root, &relative, true)
    }

    /// Opens the existing folder `path`.
    pub fn open_folder(&self, path: &Path) -> Result<ConfinedDir> {
        let (root, relative) = self.check_text(path)?;
        walk::open_folder(self, path, &root, &relative, false)
    }

    fn parent_of(&self, path: &Path) -> Result<(ConfinedDir, OsString)> {
        let (root, relative) = self.check_text(path)?;
        let name = relative
            .file_name()
            .ok_or_else(|| ConfineError::IsRoot {
                path: path.to_path_buf(),
            })?
            .to_os_string();
        let parent = relative.parent().unwrap_or(Path::new(""));
        let dir = walk::open_folder(self, path, &root, parent, false)?;
        Ok((dir, name))
    }

    fn describe_roots(&self) -> String {
        if self.roots.is_empty() {
            return "none are configured".into();
        }
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Checks that `root` can serve as an allowed folder: absolute, no `..`, an
/// existing folder, not writable by other users (unless sticky), and neither
/// inside nor equal to any of `protected`. Returns it normalised.
pub fn validate_root(root: &Path, protected: &[PathBuf]) -> Result<PathBuf> {
    let norm = normalize(root)?;
    let allowed = AllowedFolders {
        roots: vec![norm.clone()],
        protected: protected.to_vec(),
    };
    allowed.open_folder(&norm)?;
    Ok(norm)
}

/// Whether `path` (which need not exist) is `folder` or lies inside it, comparing the real
/// locations: symlinks in the existing part of either path are resolved. Meant for checks of
/// folders an administrator names (a repository, a host's folder), not for confining writes.
pub fn is_within(path: &Path, folder: &Path) -> bool {
    let (Some(path), Some(folder)) = (real_location(path), real_location(folder)) else {
        return false;
    };
    path.starts_with(folder)
}

/// `path` with its longest existing prefix resolved (`canonicalize`) and the rest appended.
fn real_location(path: &Path) -> Option<PathBuf> {
    let path = std::path::absolute(path).ok()?;
    let mut rest = Vec::new();
    let mut base = path.as_path();
    loop {
        if let Ok(real) = base.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return Some(out);
        }
        rest.push(base.file_name()?.to_os_string());
        base = base.parent()?;
    }
}

/// Checks that `mode` holds only permission bits.
pub fn check_mode(mode: u32) -> Result<()> {
    if mode & !0o777 != 0 {
        return Err(ConfineError::Mode { mode });
    }
    Ok(())
}

/// `path` as an absolute path without `.` components, or an error for a
/// relative path or one with `..`.
pub fn normalize(path: &Path) -> Result<PathBuf> {
    if !path.is_absolute() {
        return Err(ConfineError::NotAbsolute {
            path: path.to_path_buf(),
        });
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ConfineError::DotDot {
                    path: path.to_path_buf(),
                });
            }
        }
    }
    Ok(out)
}

/// An open folder beneath an allowed folder; files are made in it by name.
#[derive(Clone, Debug)]
pub struct ConfinedDir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

impl ConfinedDir {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the new file `name` (one path component) in this folder with
    /// `mode`, open for reading and writing.
    pub fn create_file(&self, name: &OsStr, mode: u32) -> Result<ConfinedFile> {
        check_mode(mode)?;
        let path = self.child(name)?;
        let fd = rustix::fs::openat2(
            &*self.fd,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
            walk::RESOLVE,
        )
        .map_err(|e| match e {
            rustix::io::Errno::EXIST => ConfineError::Exists { path: path.clone() },
            other => ConfineError::Io {
                op: "create",
                path: path.clone(),
                source: other.into(),
            },
        })?;
        // The umask may have taken bits away; the file gets exactly `mode`.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| ConfineError::Io {
            op: "set the mode of",
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(ConfinedFile {
            file: File::from(fd),
            path,
            dir: self.clone(),
            name: name.to_os_string(),
        })
    }

    /// Whether this folder has an entry `name` (of any kind, links included).
    pub fn contains(&self, name: &OsStr) -> Result<bool> {
        let path = self.child(name)?;
        match rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(ConfineError::Io {
                op: "look up",
                path,
                source: e.into(),
            }),
        }
    }

    /// Removes the file `name` from this folder.
    pub fn remove_file(&self, name: &OsStr) -> Result<()> {
        let path = self.child(name)?;
        rustix::fs::unlinkat(&*self.fd, name, AtFlags::empty()).map_err(|e| ConfineError::Io {
            op: "remove",
            path,
            source: e.into(),
        })
    }

    /// Renames `from` to `to` inside this folder (replacing `to`).
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> Result<()> {
        let path = self.child(to)?;
        self.child(from)?;
        rustix::fs::renameat(&*self.fd, from, &*self.fd, to).map_err(|e| ConfineError::Io {
            op: "rename into",
            path,
            source: e.into(),
        })
    }

    /// The path of the entry `name`, which must be a single normal component.
    fn child(&self, name: &OsStr) -> Result<PathBuf> {
        let mut parts = Path::new(name).components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(_)), None) => Ok(self.path.join(name)),
            _ => Err(ConfineError::DotDot {
                path: self.path.join(name),
            }),
        }
    }
}

/// A file created beneath an allowed folder.
#[derive(Debug)]
pub struct ConfinedFile {
    /// The open file (read and write).
    pub file: File,
    /// Its path.
    pub path: PathBuf,
    dir: ConfinedDir,
    name: OsString,
}

impl ConfinedFile {
    /// The folder it is in.
    pub fn dir(&self) -> &ConfinedDir {
        &self.dir
    }

    /// Its name in that folder.
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// Removes the file again (by name, relative to its folder's descriptor).
    pub fn remove(self) -> Result<()> {
        drop(self.file);
        self.dir.remove_file(&self.name)
    }

    /// Splits it into the open file and a function that removes it.
    pub fn into_parts(self) -> (File, PathBuf, impl FnOnce() + Send + 'static) {
        let (dir, name) = (self.dir, self.name);
        (self.file, self.path, move || {
            let _ = dir.remove_file(&name);
        })
    }
}
