//! Opened repositories kept across sessions: opening one derives its keys with Argon2id, which
//! costs ~0.1 s and 64 MiB — per session that was most of the server's own time on a short
//! incremental backup.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use cairn_repo::Repository;

/// One opened repository and what it was opened from.
struct Entry {
    path: String,
    password: Option<Vec<u8>>,
    config: Vec<u8>,
    repo: Arc<Repository>,
}

/// Opened repositories by database id.
#[derive(Default)]
pub(crate) struct RepoCache {
    entries: Mutex<HashMap<i64, Entry>>,
}

impl RepoCache {
    /// The repository with database id `id` at `path`: the cached one if it was opened from the
    /// same path with the same password and has the same identity (a repository initialised anew
    /// in the same folder has another), else opened now.
    pub(crate) fn open(
        &self,
        id: i64,
        path: &str,
        password: Option<&[u8]>,
    ) -> cairn_repo::error::Result<Arc<Repository>> {
        let config = cairn_repo::folder::identity(Path::new(path));
        {
            let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if let (Some(e), Some(config)) = (entries.get(&id), &config)
                && e.path == path
                && e.password.as_deref() == password
                && &e.config == config
            {
                return Ok(e.repo.clone());
            }
        }
        let repo = Arc::new(Repository::open(Path::new(path), password)?);
        if let Some(config) = config {
            self.entries.lock().unwrap_or_else(PoisonError::into_inner).insert(
                id,
                Entry {
                    path: path.to_string(),
                    password: password.map(<[u8]>::to_vec),
                    config,
                    repo: repo.clone(),
                },
            );
        }
        Ok(repo)
    }
}
