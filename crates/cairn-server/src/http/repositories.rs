//! Repositories, their restore points, proxies and global settings.
//!
//! Creating, changing and removing repositories and proxies keeps the resource scheduler in step
//! at once: a new task maximum applies to the next task that starts (running tasks are never
//! stopped); new read and write rate limits are re-split among the running tasks at once.

use std::path::Path;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cairn_configdb::{NewRepository, Proxy, Repository, Role};
use cairn_repo::folder;
use cairn_repo::{Encryption, RepoError};

use jiff::Timestamp;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::Caller;
use crate::repositories::{proxy_resource, register_proxy, register_repository, repo_error, repository_resource};
use crate::state::AppState;
pub use cairn_api::repositories::{
    CreateRepository, PointDisk, PointDto, ProxyDto, RepositoryDto, UpdateProxy, UpdateRepository, VmPoints,
};

/// `GET /api/v1/repositories/{id}/points` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PointsQuery {
    /// Only this VM's restore points.
    pub vm: Option<String>,
}

/// Opens repository `repo` with its stored password ([`crate::repositories::open`]).
pub(crate) async fn open_repository(
    state: &AppState,
    repo: &Repository,
) -> ApiResult<std::sync::Arc<cairn_repo::Repository>> {
    Ok(crate::repositories::open(&state.secrets, &state.jobs, repo).await?)
}

/// Whether the repository in `path` is encrypted (`None` if there is none or it is unreadable).
fn read_encrypted(path: &Path) -> Option<bool> {
    match folder::inspect(path) {
        Ok(folder::FolderState::Repository { encrypted }) => Some(encrypted),
        _ => None,
    }
}

fn free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The API form of `repo`, looking at its folder (blocking).
fn repository_dto(state: &AppState, repo: Repository) -> RepositoryDto {
    let path = Path::new(&repo.settings.path);
    let encrypted =
        read_encrypted(path).unwrap_or_else(|| state.secrets.repository_password(repo.id).ok().flatten().is_some());
    let on_agent = repo.settings.agent_id.is_some();
    let encrypted = encrypted || on_agent;
    RepositoryDto {
        id: repo.id,
        agent_id: repo.settings.agent_id,
        // The folder of an agent's repository is on another machine.
        free_bytes: if on_agent { None } else { free_bytes(path) },
        name: repo.settings.name,
        path: repo.settings.path,
        is_default: repo.settings.is_default,
        max_tasks: repo.settings.max_tasks,
        read_limit_bytes: repo.settings.read_limit_bytes,
        write_limit_bytes: repo.settings.write_limit_bytes,
        encrypted,
        created_at: repo.created_at,
        password_file: None,
    }
}

async fn repository_dtos(state: &AppState, repos: Vec<Repository>) -> ApiResult<Vec<RepositoryDto>> {
    let state = state.clone();
    Ok(tokio::task::spawn_blocking(move || repos.into_iter().map(|r| repository_dto(&state, r)).collect()).await?)
}

/// A rate limit from the API: 0 or null is unlimited; negative is refused.
fn limit(field: &str, value: Option<i64>) -> ApiResult<Option<i64>> {
    match value {
        None | Some(0) => Ok(None),
        Some(v) if v > 0 => Ok(Some(v)),
        Some(v) => Err(ApiError::invalid(format!(
            "{field} {v}: must be a number of bytes per second (0 or null for no limit)"
        ))),
    }
}

fn check_max_tasks(value: i64) -> ApiResult<i64> {
    if (1..=1024).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::invalid(format!(
            "max_tasks {value}: must be between 1 and 1024"
        )))
    }
}

/// Every repository.
#[utoipa::path(get, path = "/api/v1/repositories", tag = "repositories",
    responses((status = 200, description = "OK", body = Vec<RepositoryDto>), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody)))]
pub async fn list_repositories(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<Vec<RepositoryDto>>> {
    caller.require(Role::Viewer)?;
    let repos = state.db.list_repositories().await?;
    Ok(Json(repository_dtos(&state, repos).await?))
}

/// What creating a repository did on disk, with the password it was made or adopted with.
struct Made {
    folder: folder::Made,
    password: Option<String>,
}

/// Initialises or adopts the repository folder (blocking).
fn make_repository(path: &Path, encryption: Encryption, password: Option<String>) -> ApiResult<Made> {
    let state = folder::inspect(path).map_err(repo_error)?;
    if let folder::FolderState::Repository { encrypted: true } = state
        && password.is_none()
    {
        return Err(ApiError::invalid(format!(
            "{} holds an encrypted cairn repository: give its password to adopt it",
            path.display()
        )));
    }
    let password = match state {
        folder::FolderState::Repository { encrypted } => password.filter(|_| encrypted),
        _ if encryption == Encryption::None => None,
        _ => Some(password.unwrap_or_else(crate::secrets::generate_password)),
    };
    let made =
        folder::create_or_adopt(path, encryption, password.as_deref().map(str::as_bytes)).map_err(|e| match e {
            RepoError::WrongPassword { .. } => ApiError::invalid(format!(
                "{}: wrong password for the existing repository",
                path.display()
            )),
            RepoError::AlreadyExists { .. } => ApiError::conflict(format!(
                "{} is not empty and holds no cairn repository: choose an empty or new folder",
                path.display()
            )),
            other => repo_error(other).into(),
        })?;
    Ok(Made { folder: made, password })
}

/// The agent named `name`, if it may own a repository now.
async fn agent_repository_owner(
    state: &AppState,
    name: &str,
    encryption: Encryption,
) -> ApiResult<cairn_configdb::Agent> {
    let agent = state
        .db
        .list_agents()
        .await?
        .into_iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError::not_found(format!("agent: there is no agent {name:?} (see `cairn agent list`)")))?;
    if !crate::movers::has_role(&agent, cairn_configdb::AgentRole::Repository) {
        return Err(ApiError::invalid(format!(
            "agent: {name} was not enrolled with the repository role"
        )));
    }
    if let Some(why) = state.movers.unavailable(&agent, jiff::Timestamp::now()) {
        return Err(ApiError::conflict(format!("agent: {why}")));
    }
    if encryption == Encryption::None {
        return Err(ApiError::invalid(
            "encryption: a repository on an agent is always encrypted (aes-256-gcm)",
        ));
    }
    Ok(agent)
}

/// Longest wait for an agent to set up a repository folder.
const AGENT_INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Has `agent` create (or adopt) the repository at `path` with `password`.
async fn init_on_agent(
    state: &AppState,
    agent: &cairn_configdb::Agent,
    path: &Path,
    password: &str,
) -> ApiResult<Made> {
    use cairn_mover::protocol::{Instruction, TaskEvent};
    let mut task = state.movers.hub.open_task(agent.id);
    task.send(Instruction::InitRepository {
        task: task.id,
        path: path.to_string_lossy().into_owned(),
        password: password.to_string(),
    });
    let answer = tokio::time::timeout(AGENT_INIT_TIMEOUT, async {
        loop {
            match task.events.recv().await {
                Some(TaskEvent::RepositoryReady { summary }) => return Ok(summary),
                Some(TaskEvent::Failed { error, .. }) => return Err(error),
                Some(_) => continue,
                None => return Err("the agent ended the task without an answer".to_string()),
            }
        }
    })
    .await;
    match answer {
        Ok(Ok(summary)) => {
            tracing::info!("agent {}: {summary}", agent.name);
            Ok(Made {
                folder: folder::Made {
                    existed: true,
                    created: summary.starts_with("created"),
                    encrypted: true,
                },
                password: Some(password.to_string()),
            })
        }
        Ok(Err(error)) => Err(ApiError::invalid(format!(
            "agent {} could not set up {}: {error}",
            agent.name,
            path.display()
        ))),
        Err(_) => Err(ApiError::new(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            format!(
                "agent {} did not answer within {} s (is it running and polling for work?)",
                agent.name,
                AGENT_INIT_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Creates a repository in a new or empty folder, or adopts an existing cairn repository.
#[utoipa::path(post, path = "/api/v1/repositories", tag = "repositories", request_body = CreateRepository,
    responses(
        (status = 201, description = "Created", body = RepositoryDto),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "The caller's role is too low; the folder is (inside or around) the server's data folder, or the server may not write it", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "Name or folder taken, folder not empty, not a folder, or the agent cannot hold repositories now", body = ErrorBody),
        (status = 422, description = "Bad value, wrong password of an existing repository", body = ErrorBody),
    ))]
pub async fn create_repository(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateRepository>,
) -> ApiResult<(StatusCode, Json<RepositoryDto>)> {
    caller.require_admin()?;
    let name = super::checks::display_name("repository name", &req.name, 64)?;
    super::checks::absolute_path("path", &req.path)?;
    if req.password.as_deref() == Some("") {
        return Err(ApiError::invalid(
            "password: give a password, or leave it out to have one generated",
        ));
    }
    let path = if req.agent.is_some() {
        cairn_confine::normalize(Path::new(&req.path)).map_err(|e| ApiError::forbidden(format!("path: {e}")))?
    } else {
        let path = crate::restore_folders::check_admin_folder("path", &req.path, &state.data_dir)?;
        if path.exists() && !path.is_dir() {
            return Err(ApiError::conflict(format!("path: {} is not a folder", path.display())));
        }
        path
    };
    let encryption: Encryption = match &req.encryption {
        None => Encryption::Aes256Gcm,
        Some(text) => text.parse().map_err(ApiError::invalid)?,
    };
    if encryption == Encryption::None && req.password.is_some() {
        return Err(ApiError::invalid(
            "password: an unencrypted repository takes no password",
        ));
    }
    let max_tasks = check_max_tasks(
        req.max_tasks
            .unwrap_or_else(|| i64::try_from(cairn_resources::default_max_tasks()).unwrap_or(1)),
    )?;
    let read_limit = limit("read_limit_bytes", req.read_limit_bytes)?;
    let write_limit = limit("write_limit_bytes", req.write_limit_bytes)?;
    let existing = state.db.list_repositories().await?;
    if existing.iter().any(|r| r.settings.name == name) {
        return Err(ApiError::conflict(format!("repository {name:?} already exists")));
    }
    if let Some(same) = existing.iter().find(|r| Path::new(&r.settings.path) == path) {
        return Err(ApiError::conflict(format!(
            "{} is already repository {}",
            path.display(),
            same.settings.name
        )));
    }

    let agent = match &req.agent {
        Some(agent) => Some(agent_repository_owner(&state, agent, encryption).await?),
        None => None,
    };
    let made = match &agent {
        Some(agent) => {
            let password = req.password.clone().unwrap_or_else(crate::secrets::generate_password);
            init_on_agent(&state, agent, &path, &password).await?
        }
        None => {
            let (dir, password) = (path.clone(), req.password.clone());
            tokio::task::spawn_blocking(move || make_repository(&dir, encryption, password)).await??
        }
    };
    let row = state
        .db
        .create_repository(&NewRepository {
            agent_id: agent.as_ref().map(|a| a.id),
            name,
            path: path.to_string_lossy().into_owned(),
            is_default: existing.is_empty(),
            max_tasks,
            read_limit_bytes: read_limit,
            write_limit_bytes: write_limit,
        })
        .await;
    let repo = match row {
        Ok(repo) => repo,
        Err(e) => {
            if agent.is_none() {
                folder::remove_made(&path, &made.folder);
            }
            return Err(e.into());
        }
    };
    let mut password_file = None;
    if let Some(password) = &made.password {
        if let Err(e) = state.secrets.set_repository_password(repo.id, password.as_bytes()) {
            let _ = state.db.delete_repository(repo.id).await;
            if agent.is_none() {
                folder::remove_made(&path, &made.folder);
            }
            return Err(ApiError::internal(
                format!("cannot store the password of repository {}", repo.settings.name),
                e,
            ));
        }
        password_file = Some(
            state
                .secrets
                .repository_password_path(repo.id)
                .to_string_lossy()
                .into_owned(),
        );
    }
    register_repository(&state.resources, &repo)?;
    tracing::info!(
        "{} {} repository {} at {} ({})",
        caller.name,
        if made.folder.created { "created" } else { "adopted" },
        repo.settings.name,
        repo.settings.path,
        if made.folder.encrypted {
            "encrypted"
        } else {
            "not encrypted"
        }
    );
    let mut dto = repository_dtos(&state, vec![repo]).await?.remove(0);
    dto.password_file = password_file;
    Ok((StatusCode::CREATED, Json(dto)))
}

/// Changes a repository's task maximum and rate limits; applied to the resource scheduler at once.
#[utoipa::path(patch, path = "/api/v1/repositories/{id}", tag = "repositories", request_body = UpdateRepository,
    params(("id" = i64, Path, description = "Repository id")),
    responses(
        (status = 200, description = "OK", body = RepositoryDto),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ErrorBody),
    ))]
pub async fn update_repository(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<UpdateRepository>,
) -> ApiResult<Json<RepositoryDto>> {
    caller.require_admin()?;
    let repo = state.db.get_repository(id).await?;
    let mut settings = repo.settings.clone();
    if let Some(max) = req.max_tasks {
        settings.max_tasks = check_max_tasks(max)?;
    }
    if let Some(read) = req.read_limit_bytes {
        settings.read_limit_bytes = limit("read_limit_bytes", read)?;
    }
    if let Some(write) = req.write_limit_bytes {
        settings.write_limit_bytes = limit("write_limit_bytes", write)?;
    }
    let repo = state.db.update_repository(id, &settings).await?;
    register_repository(&state.resources, &repo)?;
    tracing::info!(
        "{} changed repository {}: max_tasks {}, read limit {:?}, write limit {:?}",
        caller.name,
        repo.settings.name,
        repo.settings.max_tasks,
        repo.settings.read_limit_bytes,
        repo.settings.write_limit_bytes
    );
    Ok(Json(repository_dtos(&state, vec![repo]).await?.remove(0)))
}

/// Removes a repository from the server; its files stay on disk, and its password is kept in
/// the secrets folder as `repository-ID-removed-TIME.password` so they stay restorable.
#[utoipa::path(delete, path = "/api/v1/repositories/{id}", tag = "repositories",
    params(("id" = i64, Path, description = "Repository id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "A job uses it", body = ErrorBody),
    ))]
pub async fn delete_repository(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let repo = state.db.get_repository(id).await?;
    let users: Vec<String> = state
        .db
        .list_jobs()
        .await?
        .into_iter()
        .filter(|j| j.spec.repository_id == id)
        .map(|j| j.spec.name)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "repository {} is used by jobs {}: point them elsewhere first",
            repo.settings.name,
            users.join(", ")
        )));
    }
    state.db.delete_repository(id).await?;
    state.resources.remove_repository(&repository_resource(id));
    // Database ids may be reused: move the password aside instead of leaving it under the id.
    let current = state.secrets.repository_password_path(id);
    if current.exists() {
        let stamp = Timestamp::now().as_second();
        let kept = current.with_file_name(format!("repository-{id}-removed-{stamp}.password"));
        if let Err(e) = std::fs::rename(&current, &kept) {
            tracing::warn!("keeping the password of removed repository {id}: {e}");
        }
    }
    tracing::info!(
        "{} removed repository {} (files stay in {})",
        caller.name,
        repo.settings.name,
        repo.settings.path
    );
    Ok(StatusCode::NO_CONTENT)
}

/// The restore points in a repository, read from the repository itself.
#[utoipa::path(get, path = "/api/v1/repositories/{id}/points", tag = "repositories",
    params(("id" = i64, Path, description = "Repository id"), PointsQuery),
    responses(
        (status = 200, description = "OK", body = Vec<VmPoints>),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 404, description = "No such repository or VM", body = ErrorBody),
    ))]
pub async fn list_points(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<PointsQuery>,
) -> ApiResult<Json<Vec<VmPoints>>> {
    caller.require(Role::Viewer)?;
    let row = state.db.get_repository(id).await?;
    let repo = open_repository(&state, &row).await?;
    let chains = tokio::task::spawn_blocking(move || -> Result<Vec<cairn_repo::ChainMeta>, RepoError> {
        match q.vm {
            Some(vm) => Ok(vec![repo.chain(&vm)?.meta().clone()]),
            None => Ok(repo
                .list()?
                .into_iter()
                .filter_map(|chain| match chain {
                    Ok(meta) => Some(meta),
                    Err(e) => {
                        tracing::warn!("listing restore points: {e}");
                        None
                    }
                })
                .collect()),
        }
    })
    .await?
    .map_err(repo_error)?;
    Ok(Json(
        chains
            .into_iter()
            .map(|meta| VmPoints {
                vm: meta.vm,
                points: meta
                    .points
                    .into_iter()
                    .map(|p| PointDto {
                        id: p.id,
                        time: p.time,
                        kind: match p.kind {
                            cairn_repo::PointKind::Full => "full".into(),
                            cairn_repo::PointKind::Incremental => "incremental".into(),
                        },
                        disks: p
                            .disks
                            .iter()
                            .map(|d| PointDisk {
                                disk: d.disk,
                                virtual_size: d.virtual_size,
                                blocks: d.blocks,
                            })
                            .collect(),
                        stats: serde_json::to_value(&p.stats).unwrap_or(serde_json::Value::Null),
                    })
                    .collect(),
            })
            .collect(),
    ))
}

fn proxy_dto(state: &AppState, p: Proxy) -> ProxyDto {
    let resource = match p.settings.agent_id {
        Some(_) => cairn_resources::ProxyId::new(format!("agent-proxy-{}", p.id)),
        None => proxy_resource(p.id),
    };
    let running = state.resources.proxy_load(&resource).map_or(0, |l| l.running as u64);
    ProxyDto {
        agent_id: p.settings.agent_id,
        id: p.id,
        name: p.settings.name,
        address: p.settings.address,
        max_tasks: p.settings.max_tasks,
        running_tasks: running,
        created_at: p.created_at,
    }
}

/// Every proxy with the tasks running on it.
#[utoipa::path(get, path = "/api/v1/proxies", tag = "repositories",
    responses((status = 200, description = "OK", body = Vec<ProxyDto>), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody)))]
pub async fn list_proxies(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<Vec<ProxyDto>>> {
    caller.require(Role::Viewer)?;
    // Proxy agents get their rows on first sight.
    crate::movers::agent_proxies(&state.db, &state.movers).await?;
    let proxies = state.db.list_proxies().await?;
    Ok(Json(proxies.into_iter().map(|p| proxy_dto(&state, p)).collect()))
}

/// Changes a proxy's task maximum; applied to the resource scheduler at once.
#[utoipa::path(patch, path = "/api/v1/proxies/{id}", tag = "repositories", request_body = UpdateProxy,
    params(("id" = i64, Path, description = "Proxy id")),
    responses(
        (status = 200, description = "OK", body = ProxyDto),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ErrorBody),
    ))]
pub async fn update_proxy(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<UpdateProxy>,
) -> ApiResult<Json<ProxyDto>> {
    caller.require_admin()?;
    let proxy = state.db.get_proxy(id).await?;
    let mut settings = proxy.settings.clone();
    settings.max_tasks = check_max_tasks(req.max_tasks)?;
    let proxy = state.db.update_proxy(id, &settings).await?;
    register_proxy(&state.resources, &proxy)?;
    tracing::info!(
        "{} set proxy {} to {} tasks",
        caller.name,
        proxy.settings.name,
        proxy.settings.max_tasks
    );
    Ok(Json(proxy_dto(&state, proxy)))
}
