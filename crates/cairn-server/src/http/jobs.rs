//! Backup jobs: create, edit (first save wins), enable/disable, run, stop, delete.

use std::str::FromStr;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cairn_api::spec::{BlockSize, Consistency, Method, Retention, compression_from_request};
use cairn_configdb::{Job, JobSpec, Role, Session, SessionQuery};
use cairn_schedule::{Rule, Schedule};
use jiff::Timestamp;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::{ApiJson, ApiPath};
use crate::auth::Caller;
use crate::runner::Trigger;
use crate::state::AppState;
pub use cairn_api::jobs::{JobDto, JobInput, JobUpdate, LastSession, SessionStarted};

/// The API form of `job`.
pub async fn job_dto(state: &AppState, job: Job) -> ApiResult<JobDto> {
    let page = state
        .db
        .list_sessions(&SessionQuery {
            job_id: Some(job.id),
            after: None,
            limit: 1,
        })
        .await?;
    let now = state.jobs.clock().now();
    Ok(dto_from(state, job, page.sessions.into_iter().next(), now))
}

/// A job's API form, given its newest session.
fn dto_from(state: &AppState, job: Job, last: Option<Session>, now: Timestamp) -> JobDto {
    let last_session = last.map(|s| LastSession {
        id: s.id,
        state: s.state.as_str().into(),
        started_at: s.started_at,
        ended_at: s.ended_at,
    });
    let next_run = crate::scheduler::next_run(&job, now, &state.time_zone);
    let s = job.spec;
    JobDto {
        id: job.id,
        version: job.version,
        created_at: job.created_at,
        updated_at: job.updated_at,
        name: s.name,
        vm_ids: s.vm_ids,
        excluded_disk_ids: s.excluded_disk_ids,
        repository_id: s.repository_id,
        block_size: s.block_size,
        compression: s.compression,
        encryption: s.encryption,
        method: s.method,
        retention_points: s.retention_points,
        schedule: s.schedule,
        backup_window: s.backup_window,
        retries: s.retries,
        retry_wait_seconds: s.retry_wait_seconds,
        enabled: s.enabled,
        consistency: s.consistency,
        require_app_consistency: s.require_app_consistency,
        pre_freeze_script: s.pre_freeze_script,
        post_thaw_script: s.post_thaw_script,
        next_run,
        last_session,
    }
}

/// A schedule text in its canonical form, or 422 naming the problem.
pub fn parse_schedule(text: &str) -> ApiResult<Schedule> {
    Schedule::from_str(text).map_err(|e| ApiError::invalid(format!("schedule {text:?}: {e}")))
}

/// Checks that the VMs, excluded disks and repository of `input` exist (the excluded disks
/// belonging to those VMs); returns the VM ids without repeats and the sorted excluded disks.
async fn check_members(state: &AppState, input: &JobInput) -> ApiResult<(Vec<i64>, Vec<i64>)> {
    let missing = |e: cairn_configdb::Error, what: String| match e {
        cairn_configdb::Error::NotFound { .. } => ApiError::not_found(what),
        other => other.into(),
    };
    let mut vm_ids: Vec<i64> = Vec::with_capacity(input.vm_ids.len());
    for id in &input.vm_ids {
        if vm_ids.contains(id) {
            continue;
        }
        if let Err(e) = state.db.get_vm(*id).await {
            return Err(missing(e, format!("vm_ids: VM {id} does not exist")));
        }
        vm_ids.push(*id);
    }
    let mut excluded = input.excluded_disk_ids.clone();
    excluded.sort_unstable();
    excluded.dedup();
    for id in &excluded {
        match state.db.get_disk(*id).await {
            Ok(disk) if vm_ids.contains(&disk.vm_id) => {}
            Ok(disk) => {
                return Err(ApiError::invalid(format!(
                    "excluded_disk_ids: disk {id} belongs to VM {}, which the job does not back up",
                    disk.vm_id
                )));
            }
            Err(e) => return Err(missing(e, format!("excluded_disk_ids: disk {id} does not exist"))),
        }
    }
    if let Err(e) = state.db.get_repository(input.repository_id).await {
        let what = format!("repository_id: repository {} does not exist", input.repository_id);
        return Err(missing(e, what));
    }
    Ok((vm_ids, excluded))
}

/// A schedule of job `name` (`editing`, when editing): canonical, and not after itself or a job
/// that does not exist.
async fn check_schedule(
    state: &AppState,
    name: &str,
    text: Option<&str>,
    editing: Option<&Job>,
) -> ApiResult<Option<String>> {
    let text = match text.map(str::trim) {
        None | Some("") => return Ok(None),
        Some(text) => text,
    };
    let schedule = parse_schedule(text)?;
    if let Rule::After { job } = &schedule.rule {
        let itself = || ApiError::invalid(format!("schedule {text:?}: a job cannot run after itself"));
        if *job == name {
            return Err(itself());
        }
        match state.db.find_job_by_name(job).await? {
            Some(other) if editing.is_some_and(|e| e.id == other.id) => return Err(itself()),
            Some(_) => {}
            None => {
                return Err(ApiError::not_found(format!(
                    "schedule {text:?}: there is no job named {job:?}"
                )));
            }
        }
    }
    Ok(Some(schedule.to_string()))
}

/// A guest script of `field`: trimmed, absent when blank, at most 1024 characters.
fn guest_script(field: &str, value: Option<String>) -> ApiResult<Option<String>> {
    match value.as_deref() {
        Some(text) if text.chars().count() > 1024 => Err(ApiError::invalid(format!(
            "{field}: {} characters, at most 1024",
            text.chars().count()
        ))),
        Some(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
        _ => Ok(None),
    }
}

/// Checks `input` (for job `editing`, when editing) and turns it into a stored spec.
pub async fn validate(state: &AppState, input: JobInput, editing: Option<&Job>) -> ApiResult<JobSpec> {
    let name = super::checks::display_name("job name", &input.name, 100)?;
    if input.vm_ids.is_empty() {
        return Err(ApiError::invalid("vm_ids: a job backs up at least one VM"));
    }
    let (vm_ids, excluded) = check_members(state, &input).await?;
    let block_size = input.block_size.map_or(Ok(BlockSize::DEFAULT), BlockSize::try_from)?;
    let compression = compression_from_request(input.compression.as_deref())?;
    let encryption = match input.encryption.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            cairn_repo::Encryption::from_str(text)
                .map_err(|e| ApiError::invalid(format!("encryption: {e}")))?
                .to_string(),
        ),
    };
    let method = Method::from_request(input.method.as_deref())?;
    let retention_points = input
        .retention_points
        .map_or(Ok(Retention::DEFAULT), Retention::try_from)?;
    let retries = super::checks::within("retries", input.retries.unwrap_or(3), 0..=100)?;
    let retry_wait_seconds = input.retry_wait_seconds.unwrap_or(600);
    if !(0..=7 * 86_400).contains(&retry_wait_seconds) {
        return Err(ApiError::invalid(format!(
            "retry_wait_seconds {retry_wait_seconds}: must be between 0 and 604800 (a week)"
        )));
    }
    let schedule = check_schedule(state, &name, input.schedule.as_deref(), editing).await?;
    let backup_window = match input.backup_window.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(
            crate::runner::parse_window(text)
                .map_err(ApiError::invalid)?
                .to_string(),
        ),
    };
    let consistency = Consistency::from_request(input.consistency.as_deref())?;
    let pre_freeze_script = guest_script("pre_freeze_script", input.pre_freeze_script)?;
    let post_thaw_script = guest_script("post_thaw_script", input.post_thaw_script)?;
    let crash = consistency == Consistency::Crash;
    if crash && (pre_freeze_script.is_some() || post_thaw_script.is_some()) {
        return Err(ApiError::invalid(
            "pre_freeze_script/post_thaw_script: a crash-consistent job does not freeze the guest, so its \
             scripts would never run",
        ));
    }
    let require_app_consistency = input.require_app_consistency.unwrap_or(false);
    if crash && require_app_consistency {
        return Err(ApiError::invalid(
            "require_app_consistency: a crash-consistent job cannot require application consistency",
        ));
    }
    Ok(JobSpec {
        name,
        vm_ids,
        excluded_disk_ids: excluded,
        repository_id: input.repository_id,
        block_size,
        compression,
        encryption,
        method,
        retention_points,
        schedule,
        backup_window,
        retries,
        retry_wait_seconds,
        enabled: input.enabled.unwrap_or(true),
        consistency,
        require_app_consistency,
        pre_freeze_script,
        post_thaw_script,
    })
}

/// Every job.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs",
    responses((status = 200, description = "OK", body = Vec<JobDto>), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody)))]
pub async fn list_jobs(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<Vec<JobDto>>> {
    caller.require(Role::Viewer)?;
    // Two queries whatever the number of jobs: the jobs, and the newest session of each.
    let mut last = state.db.last_sessions().await?;
    let now = state.jobs.clock().now();
    let out = state
        .db
        .list_jobs()
        .await?
        .into_iter()
        .map(|job| {
            let last_session = last.remove(&job.id);
            dto_from(&state, job, last_session, now)
        })
        .collect();
    Ok(Json(out))
}

/// Creates a job.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = JobInput,
    responses(
        (status = 201, description = "Created", body = JobDto),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody),
        (status = 404, description = "A VM, disk, repository or `after` job it names does not exist", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 422, description = "Invalid settings (the message names the field and the problem)", body = ErrorBody),
    ))]
pub async fn create_job(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(input): ApiJson<JobInput>,
) -> ApiResult<(StatusCode, Json<JobDto>)> {
    caller.require_admin()?;
    let spec = validate(&state, input, None).await?;
    let job = state.db.create_job(&spec).await?;
    state.jobs.notify();
    tracing::info!("{} created job {}", caller.name, job.spec.name);
    Ok((StatusCode::CREATED, Json(job_dto(&state, job).await?)))
}

/// One job.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, description = "OK", body = JobDto), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get_job(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<JobDto>> {
    caller.require(Role::Viewer)?;
    let job = state.db.get_job(id).await?;
    Ok(Json(job_dto(&state, job).await?))
}

/// Replaces a job's settings if `version` is still current (the first save wins).
#[utoipa::path(put, path = "/api/v1/jobs/{id}", tag = "jobs", request_body = JobUpdate,
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "OK", body = JobDto),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "No such job, or a VM, disk, repository or `after` job it names does not exist", body = ErrorBody),
        (status = 409, description = "Someone else saved first (reload and apply the change again), or name taken", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ErrorBody),
    ))]
pub async fn update_job(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(update): ApiJson<JobUpdate>,
) -> ApiResult<Json<JobDto>> {
    caller.require_admin()?;
    let current = state.db.get_job(id).await?;
    let stale = |now: &Job| {
        ApiError::conflict(format!(
            "job {} was changed by someone else (now version {}): reload it and apply your change again",
            now.spec.name, now.version
        ))
    };
    if current.version != update.version {
        return Err(stale(&current));
    }
    let spec = validate(&state, update.job, Some(&current)).await?;
    let job = match state.db.update_job(id, update.version, &spec).await {
        Ok(job) => job,
        Err(cairn_configdb::Error::Conflict { .. }) => {
            let now = state.db.get_job(id).await?;
            return Err(stale(&now));
        }
        Err(e) => return Err(e.into()),
    };
    state.jobs.notify();
    tracing::info!(
        "{} changed job {} (version {})",
        caller.name,
        job.spec.name,
        job.version
    );
    // VMs it no longer backs up into the repository it used keep no checkpoint bitmap for it.
    let left: Vec<i64> = if current.spec.repository_id == job.spec.repository_id {
        current
            .spec
            .vm_ids
            .iter()
            .filter(|v| !job.spec.vm_ids.contains(v))
            .copied()
            .collect()
    } else {
        current.spec.vm_ids.clone()
    };
    if !left.is_empty() {
        crate::live::checkpoints::tidy(&state.db, &left).await;
    }
    Ok(Json(job_dto(&state, job).await?))
}

/// Deletes a job with its session history (refused while it runs). cairn's checkpoint bitmaps of
/// its repository are removed from running VMs no other job backs up into it.
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "The job is running", body = ErrorBody),
    ))]
pub async fn delete_job(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let job = state.db.get_job(id).await?;
    if let Some(session) = state.jobs.running_session_of(id) {
        return Err(ApiError::conflict(format!(
            "job {} is running (session {session}): stop it first",
            job.spec.name
        )));
    }
    let followers: Vec<String> = state
        .db
        .list_jobs()
        .await?
        .into_iter()
        .filter(|j| {
            j.spec
                .schedule
                .as_deref()
                .and_then(|s| Schedule::from_str(s).ok())
                .is_some_and(|s| matches!(&s.rule, Rule::After { job: after } if *after == job.spec.name))
        })
        .map(|j| j.spec.name)
        .collect();
    if !followers.is_empty() {
        return Err(ApiError::conflict(format!(
            "jobs {} run after job {}: change their schedules first",
            followers.join(", "),
            job.spec.name
        )));
    }
    state.db.delete_job(id).await?;
    state.jobs.notify();
    tracing::info!("{} deleted job {}", caller.name, job.spec.name);
    // Its running VMs keep no checkpoint bitmap for a repository no job backs them up into.
    crate::live::checkpoints::tidy(&state.db, &job.spec.vm_ids).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_enabled(caller: Caller, state: AppState, id: i64, enabled: bool) -> ApiResult<Json<JobDto>> {
    caller.require_admin()?;
    state.db.set_job_enabled(id, enabled).await?;
    state.jobs.notify();
    let job = state.db.get_job(id).await?;
    tracing::info!(
        "{} {} job {}",
        caller.name,
        if enabled { "enabled" } else { "disabled" },
        job.spec.name
    );
    Ok(Json(job_dto(&state, job).await?))
}

/// Lets the scheduler start the job.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/enable", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, description = "OK", body = JobDto), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn enable_job(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<JobDto>> {
    set_enabled(caller, state, id, true).await
}

/// Keeps the scheduler from starting the job (it can still be run by hand).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/disable", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, description = "OK", body = JobDto), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn disable_job(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<JobDto>> {
    set_enabled(caller, state, id, false).await
}

/// Starts a session of the job now; answers at once with the session id.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/run", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 202, description = "Accepted", body = SessionStarted),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Already running", body = ErrorBody),
        (status = 422, description = "The job cannot run as configured", body = ErrorBody),
    ))]
pub async fn run_job(
    caller: Caller,
    State(state): State<AppState>,
    audit: crate::http::audit_trail::AuditSlot,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<(StatusCode, Json<SessionStarted>)> {
    caller.require_admin()?;
    let job = state.db.get_job(id).await?;
    audit.target(format!("job {id} ({})", job.spec.name));
    let session_id = state
        .jobs
        .run_job(
            id,
            Trigger::Manual {
                user: caller.name.clone(),
            },
        )
        .await?;
    tracing::info!("{} started job {} (session {session_id})", caller.name, job.spec.name);
    Ok((StatusCode::ACCEPTED, Json(SessionStarted { session_id })))
}

/// Stops the job's running session (tasks stop at the next block; the repository stays as it was).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/stop", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 202, description = "Accepted", body = SessionStarted),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Not running", body = ErrorBody),
    ))]
pub async fn stop_job(
    caller: Caller,
    State(state): State<AppState>,
    audit: crate::http::audit_trail::AuditSlot,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<(StatusCode, Json<SessionStarted>)> {
    caller.require_admin()?;
    let job = state.db.get_job(id).await?;
    audit.target(format!("job {id} ({})", job.spec.name));
    let session_id = state
        .jobs
        .running_session_of(id)
        .ok_or_else(|| ApiError::conflict(format!("job {} is not running", job.spec.name)))?;
    state.jobs.stop_session(session_id).await?;
    tracing::info!("{} stopped job {} (session {session_id})", caller.name, job.spec.name);
    Ok((StatusCode::ACCEPTED, Json(SessionStarted { session_id })))
}
