//! Restores of one disk of a restore point to an image file on the server's machine.
//!
//! A restore is a task like a backup's: it waits for a task slot on the server's proxy and on the
//! repository (in arrival order with the backup tasks), reads at its share of the repository's
//! read rate limit (split equally among the tasks reading from it at that moment), and frees its
//! slots when it ends. A restore whose client goes away stops at the next block and removes its
//! partial image file.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use cairn_configdb::Role;
use cairn_confine::{AllowedFolders, ConfineError, ConfinedDir, ConfinedFile};
use cairn_disk::Format;
use cairn_engine::{RestoreHooks, RestoreStats, RestoreTarget};
use cairn_resources::{Direction, RateLimiter, ResourceError, TaskRequest};

use super::ApiJson;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::repositories::open_repository;
use crate::auth::Caller;
use crate::repositories::{proxy_resource, register_repository, repo_error, repository_resource};
use crate::restore_folders::{self, confine_error};
use crate::state::AppState;
pub use cairn_api::restore::{RestoreRequest, RestoreResult};

/// Whether `point` selects a restore point as the document says: `latest`, or 1–64 lower-case
/// hex digits.
pub(crate) fn is_point_selector(point: &str) -> bool {
    point == "latest"
        || (!point.is_empty() && point.len() <= 64 && point.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Longest single sleep of a throttled read, so a stop is noticed soon.
const THROTTLE_SLICE: Duration = Duration::from_millis(50);

/// Numbers the restores, so each is its own job at the resource scheduler (with parallel
/// processing off, restores therefore still run side by side, like different jobs).
static RESTORES: AtomicU64 = AtomicU64::new(1);

/// Sets its flag when dropped: the handler's future is dropped when the client goes away.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Paces a restore's repository reads to its lease's share of the read limit.
struct LeaseHooks {
    limiter: RateLimiter,
    stop: Arc<AtomicBool>,
}

impl RestoreHooks for LeaseHooks {
    fn throttle_read(&self, bytes: u64) {
        let delay = self.limiter.delay_for(bytes);
        let start = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let left = delay.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(THROTTLE_SLICE));
        }
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Restores one disk of a restore point to a new image file on the server's machine; answers
/// when the file is complete. The restore first waits for a task slot on the server's proxy and
/// on the repository, and reads at its share of the repository's read rate limit.
#[utoipa::path(post, path = "/api/v1/restores", tag = "restore", request_body = RestoreRequest,
    responses(
        (status = 200, description = "OK", body = RestoreResult),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "Needs the restore-operator role or higher; or the target is not beneath a restore folder, goes through `..` or a symbolic link, or into the data folder", body = ErrorBody),
        (status = 404, description = "No such repository, VM, point or disk; or the target's folder does not exist", body = ErrorBody),
        (status = 409, description = "The target file exists", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ErrorBody),
    ))]
pub async fn restore(
    caller: Caller,
    State(state): State<AppState>,
    audit: crate::http::audit_trail::AuditSlot,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> ApiResult<Json<RestoreResult>> {
    audit.target(format!("VM {} point {} disk {}", req.vm, req.point, req.disk));
    audit.detail("repository_id", req.repository_id);
    audit.detail("target_path", req.target_path.clone());
    caller.require(Role::RestoreOperator)?;
    let format = match req.format.as_deref() {
        None | Some("") => Format::Raw,
        Some(text) => Format::ALL
            .into_iter()
            .find(|f| f.name() == text)
            .ok_or_else(|| ApiError::invalid(format!("format {text:?}: use raw, qcow2, vhdx or vhd")))?,
    };
    super::checks::absolute_path("target_path", &req.target_path)?;
    if !is_point_selector(&req.point) {
        return Err(ApiError::invalid(format!(
            "point {:?}: give latest, or a restore point id or its first hex digits",
            req.point
        )));
    }
    if let Some(sector) = req.sector_size
        && ![512, 4096].contains(&sector)
    {
        return Err(ApiError::invalid(format!("sector_size {sector}: use 512 or 4096")));
    }
    let mode = restore_folders::file_mode(req.file_mode.as_deref())?;
    let target = PathBuf::from(&req.target_path);
    let row = state.db.get_repository(req.repository_id).await?;
    let allowed = restore_folders::allowed(&state.db, &state.data_dir).await?;
    if row.settings.agent_id.is_some() {
        // The agent holds the write to the same folders on its machine; the text is checked here.
        allowed.check_text(&target).map_err(confine_error)?;
        return restore_on_agent(&state, &caller.name, &row, &req, format, allowed.roots(), mode)
            .await
            .map(Json);
    }
    // Answer a path that cannot be written at once, before waiting for a task slot.
    allowed.check_new_file(&target).map_err(confine_error)?;
    let options = RestoreTarget {
        format,
        logical_sector: req.sector_size,
        block_size: None,
    };
    let stats = restore_disk(
        &state,
        &caller.name,
        &row,
        &req.vm,
        &req.point,
        req.disk,
        NewRestoreFile::Beneath {
            allowed,
            path: target,
            mode,
        },
        options,
    )
    .await?;
    Ok(Json(cairn_mover::protocol::restore_summary(stats)))
}

/// The file a restore on the server writes, created (beneath a restore folder, never over an
/// existing file) once the restore has its task slots.
pub(crate) enum NewRestoreFile {
    /// `path`, beneath one of `allowed`.
    Beneath {
        /// Where writes may go.
        allowed: AllowedFolders,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `name` in the folder `dir` (opened beneath an allowed folder before).
    InFolder {
        /// The folder.
        dir: ConfinedDir,
        /// The file's name in it.
        name: OsString,
        /// Its permission bits.
        mode: u32,
    },
}

impl NewRestoreFile {
    fn create(self) -> Result<ConfinedFile, ConfineError> {
        match self {
            NewRestoreFile::Beneath { allowed, path, mode } => allowed.create_file(&path, mode),
            NewRestoreFile::InFolder { dir, name, mode } => dir.create_file(&name, mode),
        }
    }

    fn describe(&self) -> String {
        match self {
            NewRestoreFile::Beneath { path, .. } => path.display().to_string(),
            NewRestoreFile::InFolder { dir, name, .. } => dir.path().join(name).display().to_string(),
        }
    }
}

/// Restores disk `disk` of `vm`'s point `point` to the new file `target` as a task: waits for a
/// task slot on the server's proxy and on the repository, reads at its share of the read limit.
/// Dropping the future stops the restore at the next block (the partial file is removed).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn restore_disk(
    state: &AppState,
    who: &str,
    row: &cairn_configdb::Repository,
    vm: &str,
    point: &str,
    disk: u32,
    target: NewRestoreFile,
    options: RestoreTarget,
) -> ApiResult<RestoreStats> {
    let repository = repository_resource(row.id);
    if state.resources.repository_load(&repository).is_none() {
        register_repository(&state.resources, row)?;
    }
    let number = RESTORES.fetch_add(1, Ordering::Relaxed);
    let request = TaskRequest::new(
        format!("restore-{number}"),
        proxy_resource(state.jobs.proxy_id()),
        repository.clone(),
    )
    .with_direction(Direction::Read);
    tracing::info!(
        "restore {number} of VM {vm} waits for a task slot on repository {}",
        row.settings.name
    );
    // Dropping this future (the client went away) withdraws the request.
    let lease = state.resources.acquire_async(request).await.map_err(|e| match e {
        ResourceError::UnknownRepository(_) => ApiError::not_found(format!(
            "repository {} was removed while the restore waited for a task slot",
            row.settings.name
        )),
        other => ApiError::internal(
            format!(
                "restore from repository {}: no task slot could be had",
                row.settings.name
            ),
            other,
        ),
    })?;
    let repo = open_repository(state, row).await?;
    tracing::info!(
        "{who} restores VM {vm} point {point} disk {disk} from repository {} to {} (restore {number}, {})",
        row.settings.name,
        target.describe(),
        lease.rate_limiter().rate().map_or_else(
            || "no read rate limit".to_string(),
            |r| format!("read rate share {r} bytes/s")
        )
    );
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let hooks = LeaseHooks {
        limiter: lease.rate_limiter().clone(),
        stop,
    };
    let (vm, point) = (vm.to_string(), point.to_string());
    tokio::task::spawn_blocking(move || {
        let (file, path, remove) = target.create().map_err(EngineFailure::Confine)?.into_parts();
        let result = cairn_engine::restore_with_hooks(
            &repo,
            &vm,
            &point,
            disk,
            cairn_engine::RestoreOutput::File {
                file: cairn_disk::writer::NewFile { file, path },
                remove: Box::new(remove),
            },
            &options,
            &hooks,
        )
        .map_err(EngineFailure::Engine);
        // The slots are freed as soon as the data is written, even if the client is gone.
        drop(lease);
        result
    })
    .await?
    .map_err(|e| match e {
        EngineFailure::Confine(e) => ApiError::from(confine_error(e)),
        EngineFailure::Engine(cairn_engine::EngineError::Repo(r)) => repo_error(r).into(),
        EngineFailure::Engine(other) => ApiError::internal(format!("the restore failed: {other}"), &other),
    })
}

/// Why a restore on the server failed: its file could not be made, or the engine failed.
enum EngineFailure {
    Confine(ConfineError),
    Engine(cairn_engine::EngineError),
}

/// Restores one disk of a repository that lives on a repository agent: the agent reads its own
/// repository and writes the image at `target_path` on its host; the server takes the task slot,
/// steers the read rate share and watches the agent's heartbeats.
async fn restore_on_agent(
    state: &AppState,
    who: &str,
    row: &cairn_configdb::Repository,
    req: &RestoreRequest,
    format: Format,
    restore_folders: &[PathBuf],
    file_mode: u32,
) -> ApiResult<RestoreResult> {
    use cairn_mover::protocol::{Instruction, RestoreTask, TaskEvent};
    let agent_id = row.settings.agent_id.unwrap_or_default();
    let agent = state.db.get_agent(agent_id).await?;
    if let Some(why) = state.movers.unavailable(&agent, jiff::Timestamp::now()) {
        return Err(ApiError::conflict(format!(
            "repository {} cannot be read: {why}",
            row.settings.name
        )));
    }
    let password = state
        .secrets
        .repository_password(row.id)
        .map_err(|e| ApiError::internal(format!("reading the password of repository {}", row.settings.name), e))?
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .ok_or_else(|| ApiError::invalid(format!("repository {} has no stored password", row.settings.name)))?;
    let repository = repository_resource(row.id);
    if state.resources.repository_load(&repository).is_none() {
        register_repository(&state.resources, row)?;
    }
    let number = RESTORES.fetch_add(1, Ordering::Relaxed);
    let request = TaskRequest::new(
        format!("restore-{number}"),
        proxy_resource(state.jobs.proxy_id()),
        repository,
    )
    .with_direction(Direction::Read);
    let lease = state.resources.acquire_async(request).await.map_err(|e| {
        ApiError::internal(
            format!("restore from repository {}: no task slot", row.settings.name),
            e,
        )
    })?;
    tracing::info!(
        "{who} restores VM {} point {} disk {} from repository {} on agent {} to {} there",
        req.vm,
        req.point,
        req.disk,
        row.settings.name,
        agent.name,
        req.target_path
    );
    let mut task = state.movers.hub.open_task(agent.id);
    task.send(Instruction::Restore(RestoreTask {
        task: task.id,
        repository: row.settings.path.clone(),
        password,
        vm: req.vm.clone(),
        point: req.point.clone(),
        disk: req.disk,
        target_path: req.target_path.clone(),
        format: format.name().to_string(),
        sector_size: req.sector_size,
        read_rate: lease.rate_limiter().rate(),
        restore_folders: restore_folders.iter().map(|f| f.display().to_string()).collect(),
        file_mode,
    }));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            ev = task.events.recv() => match ev {
                Some(TaskEvent::Restored(s)) => {
                    return Ok(RestoreResult {
                        vm: s.vm,
                        point: s.point,
                        disk: s.disk,
                        virtual_size: s.virtual_size,
                        blocks: s.blocks,
                        written_bytes: s.written_bytes,
                        format: s.format,
                        duration_secs: s.duration_secs,
                    });
                }
                Some(TaskEvent::Failed { error, .. }) => {
                    let status = if error.contains("already exists") {
                        axum::http::StatusCode::CONFLICT
                    } else if error.contains("no VM") || error.contains("no restore point") || error.contains("no disk") {
                        axum::http::StatusCode::NOT_FOUND
                    } else {
                        axum::http::StatusCode::UNPROCESSABLE_ENTITY
                    };
                    return Err(ApiError::new(status, format!("restore on agent {}: {error}", agent.name)));
                }
                Some(TaskEvent::Stopped { reason }) => {
                    return Err(ApiError::conflict(format!("restore on agent {} stopped: {reason}", agent.name)));
                }
                Some(_) => {}
                None => return Err(ApiError::conflict(format!("agent {} ended the restore without an answer", agent.name))),
            },
            _ = tick.tick() => {
                let rate = lease.rate_limiter().rate();
                task.steer(|c| c.write_rate = rate);
                if let Ok(fresh) = state.db.get_agent(agent.id).await
                    && let Some(why) = state.movers.unavailable(&fresh, jiff::Timestamp::now())
                {
                    return Err(ApiError::new(
                        axum::http::StatusCode::BAD_GATEWAY,
                        format!("restore from repository {}: {why}", row.settings.name),
                    ));
                }
            }
        }
    }
}
