//! The repository registry: what the resource scheduler enforces for each repository and proxy,
//! and opening a repository with the password the server keeps for it.

use std::sync::Arc;

use cairn_configdb::{Proxy, Repository};
use cairn_repo::RepoError;
use cairn_resources::{ProxyId, RepositoryId, RepositoryLimits};

use crate::error::{ErrorKind, ServiceError, ServiceResult};
use crate::runner::JobManager;
use crate::secrets::Secrets;

/// The resource-scheduler id of repository `id` (its database id as text).
pub fn repository_resource(id: i64) -> RepositoryId {
    RepositoryId::new(id.to_string())
}

/// The resource-scheduler id of proxy `id` (its database id as text).
pub fn proxy_resource(id: i64) -> ProxyId {
    ProxyId::new(id.to_string())
}

/// What the resource scheduler enforces for `repo`: its task maximum, its read limit (shared by
/// the tasks reading from it: restores) and its write limit (shared by the tasks writing to it:
/// backups). A limit of 0 or none is unlimited.
pub fn repository_limits(repo: &Repository) -> RepositoryLimits {
    let rate = |limit: Option<i64>| limit.and_then(|l| u64::try_from(l).ok()).filter(|l| *l > 0);
    RepositoryLimits {
        max_tasks: usize::try_from(repo.settings.max_tasks).unwrap_or(1).max(1),
        read_limit: rate(repo.settings.read_limit_bytes),
        write_limit: rate(repo.settings.write_limit_bytes),
    }
}

/// Tells the resource scheduler about `repo` (added or changed).
pub fn register_repository(
    state_resources: &cairn_resources::ResourceScheduler,
    repo: &Repository,
) -> ServiceResult<()> {
    state_resources
        .set_repository(repository_resource(repo.id), repository_limits(repo))
        .map_err(|e| ServiceError::invalid(format!("repository {}: {e}", repo.settings.name)))
}

/// Tells the resource scheduler about `proxy` (added or changed).
pub fn register_proxy(state_resources: &cairn_resources::ResourceScheduler, proxy: &Proxy) -> ServiceResult<()> {
    let max = usize::try_from(proxy.settings.max_tasks).unwrap_or(1).max(1);
    state_resources
        .set_proxy(proxy_resource(proxy.id), max)
        .map_err(|e| ServiceError::invalid(format!("proxy {}: {e}", proxy.settings.name)))
}

/// A repository error as a service error: missing points are not found, a folder the server may
/// not write is refused, the rest is a failure of the server.
pub fn repo_error(e: RepoError) -> ServiceError {
    match e {
        RepoError::NoSuchVm { .. } | RepoError::NoSuchPoint { .. } | RepoError::NoSuchDisk { .. } => {
            ServiceError::not_found(e.to_string())
        }
        RepoError::Invalid(_) => ServiceError::invalid(e.to_string()),
        // A folder the server may not write (a read-only mount, another owner's folder): the
        // place named is refused, the server did not fail.
        RepoError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            ServiceError::forbidden(e.to_string())
        }
        RepoError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::ReadOnlyFilesystem => {
            ServiceError::conflict(e.to_string())
        }
        other => ServiceError::internal(other.to_string(), &other),
    }
}

/// Opens repository `repo` with its stored password in `secrets` (on a blocking thread; kept
/// open across calls by the job manager `jobs`, so listing points does not derive keys every
/// time).
pub async fn open(
    secrets: &Secrets,
    jobs: &Arc<JobManager>,
    repo: &Repository,
) -> ServiceResult<Arc<cairn_repo::Repository>> {
    let password = secrets.repository_password(repo.id).map_err(|e| {
        ServiceError::internal(
            format!("cannot read the password of repository {}", repo.settings.name),
            e,
        )
    })?;
    let (path, id, jobs) = (repo.settings.path.clone(), repo.id, jobs.clone());
    let name = repo.settings.name.clone();
    let secret = secrets.repository_password_path(repo.id);
    tokio::task::spawn_blocking(move || jobs.open_repository(id, &path, password.as_deref()))
        .await?
        .map_err(|e| match e {
            RepoError::PasswordRequired { .. } | RepoError::WrongPassword { .. } => ServiceError::new(
                ErrorKind::Internal,
                format!(
                    "repository {name}: the password in {} is missing or does not open it",
                    secret.display()
                ),
            ),
            other => {
                let mut err = repo_error(other);
                err.message = format!("repository {name}: {}", err.message);
                err
            }
        })
}
