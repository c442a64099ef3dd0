//! Opening a folder below an allowed folder one component at a time, with
//! the checks of the crate's rules on every folder passed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::{AllowedFolders, ConfineError, ConfinedDir, FOLDER_MODE, Result};

/// How every component below a root is resolved.
pub(crate) const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Flags of the descriptors folders are held by.
const DIR_FLAGS: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

/// A folder's identity: device and inode.
type FolderId = (u64, u64);

/// Opens `root`/`relative` for the request `path`; with `create`, missing
/// folders below the root are made (mode 0700).
pub(crate) fn open_folder(
    allowed: &AllowedFolders,
    path: &Path,
    root: &Path,
    relative: &Path,
    create: bool,
) -> Result<ConfinedDir> {
    let io = |op: &'static str, at: &Path| {
        let at = at.to_path_buf();
        move |e: Errno| ConfineError::Io {
            op,
            path: at,
            source: e.into(),
        }
    };
    let protected: Vec<(FolderId, &PathBuf)> = allowed
        .protected
        .iter()
        .filter_map(|p| rustix::fs::stat(p).ok().map(|st| ((st.st_dev, st.st_ino), p)))
        .collect();
    let check = |fd: &OwnedFd, at: &Path| -> Result<()> {
        let st = rustix::fs::fstat(fd).map_err(io("inspect", at))?;
        if let Some((_, p)) = protected.iter().find(|(id, _)| *id == (st.st_dev, st.st_ino)) {
            return Err(ConfineError::Protected {
                path: path.to_path_buf(),
                folder: at.to_path_buf(),
                protected: (*p).clone(),
            });
        }
        let mode = st.st_mode & 0o7777;
        let sticky = mode & 0o1000 != 0;
        let others_write = mode & 0o002 != 0 || (mode & 0o020 != 0 && st.st_gid != 0);
        if others_write && !sticky {
            return Err(ConfineError::Writable {
                path: path.to_path_buf(),
                folder: at.to_path_buf(),
                mode,
            });
        }
        Ok(())
    };

    let mut fd = rustix::fs::open(root, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
        Errno::NOENT => ConfineError::NoFolder {
            path: path.to_path_buf(),
            folder: root.to_path_buf(),
        },
        Errno::NOTDIR => ConfineError::NotAFolder {
            path: path.to_path_buf(),
            component: root.to_path_buf(),
        },
        other => io("open", root)(other),
    })?;
    check_above(&fd, root, &protected, path)?;
    check(&fd, root)?;

    let mut at = root.to_path_buf();
    for part in relative.iter() {
        at.push(part);
        let next = match rustix::fs::openat2(&fd, part, DIR_FLAGS, Mode::empty(), RESOLVE) {
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&fd, part, Mode::from_raw_mode(FOLDER_MODE)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io("create the folder", &at)(e)),
                }
                rustix::fs::openat2(&fd, part, DIR_FLAGS, Mode::empty(), RESOLVE)
            }
            other => other,
        };
        fd = next.map_err(|e| match e {
            Errno::NOENT => ConfineError::NoFolder {
                path: path.to_path_buf(),
                folder: at.clone(),
            },
            Errno::LOOP | Errno::XDEV => ConfineError::Symlink {
                path: path.to_path_buf(),
                component: at.clone(),
            },
            Errno::NOTDIR => ConfineError::NotAFolder {
                path: path.to_path_buf(),
                component: at.clone(),
            },
            other => io("open", &at)(other),
        })?;
        check(&fd, &at)?;
    }
    Ok(ConfinedDir {
        fd: Arc::new(fd),
        path: at,
    })
}

/// Refuses a root that is inside a protected folder: walks from the root's
/// folder up through `..` to `/`, comparing identities.
fn check_above(root_fd: &OwnedFd, root: &Path, protected: &[(FolderId, &PathBuf)], path: &Path) -> Result<()> {
    if protected.is_empty() {
        return Ok(());
    }
    let stat = |fd: &OwnedFd| {
        rustix::fs::fstat(fd)
            .map(|st| (st.st_dev, st.st_ino))
            .map_err(|e| ConfineError::Io {
                op: "inspect the folders above",
                path: root.to_path_buf(),
                source: e.into(),
            })
    };
    let mut id = stat(root_fd)?;
    let mut fd = rustix::fs::openat(root_fd, "..", DIR_FLAGS, Mode::empty()).map_err(|e| ConfineError::Io {
        op: "open the folder above",
        path: root.to_path_buf(),
        source: e.into(),
    })?;
    // A path has at most a few thousand components; the bound only guards
    // against a file system that never reaches its root.
    for _ in 0..4096 {
        let above = stat(&fd)?;
        if above == id {
            return Ok(());
        }
        if let Some((_, p)) = protected.iter().find(|(pid, _)| *pid == above) {
            return Err(ConfineError::Protected {
                path: path.to_path_buf(),
                folder: root.to_path_buf(),
                protected: (*p).clone(),
            });
        }
        id = above;
        fd = rustix::fs::openat(&fd, "..", DIR_FLAGS, Mode::empty()).map_err(|e| ConfineError::Io {
            op: "open the folder above",
            path: root.to_path_buf(),
            source: e.into(),
        })?;
    }
    Ok(())
}
