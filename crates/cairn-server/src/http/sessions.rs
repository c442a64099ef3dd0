//! Sessions (job runs), their tasks and task logs.

use std::collections::HashMap;
use std::str::FromStr;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cairn_configdb::{Role, Session, SessionCursor, SessionQuery, Task};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::{ApiPath, ApiQuery};
use crate::auth::Caller;
use crate::state::AppState;
pub use cairn_api::sessions::{LogLineDto, ProgressDto, SessionDetail, SessionDto, SessionPageDto, TaskDto};

/// Default and largest page of sessions.
const SESSION_PAGE: (u32, u32) = (50, 500);
/// Default and largest page of log lines.
const LOG_PAGE: (u32, u32) = (1000, 10_000);

/// `GET /api/v1/sessions` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionsQuery {
    /// Only the sessions of this job.
    pub job: Option<i64>,
    /// Page size, 1–500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^([0-9]{1,16}\.[0-9]{1,18})?$")]
    pub cursor: Option<String>,
}

/// `GET /api/v1/tasks/{id}/log` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only lines after this line id.
    pub after: Option<i64>,
    /// Lines at most, 1–10000 (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

fn session_dto(s: Session, job_name: String) -> SessionDto {
    SessionDto {
        id: s.id,
        job_id: s.job_id,
        job_name,
        state: s.state.as_str().into(),
        started_at: s.started_at,
        ended_at: s.ended_at,
        statistics: s.statistics,
    }
}

fn task_dto(state: &AppState, t: Task) -> TaskDto {
    let progress = (!t.state.is_final())
        .then(|| state.jobs.task_progress(t.id))
        .flatten()
        .map(|p| ProgressDto {
            done_bytes: p.done_bytes,
            total_bytes: p.total_bytes,
        });
    TaskDto {
        id: t.id,
        session_id: t.session_id,
        vm_id: t.vm_id,
        disk_id: t.disk_id,
        vm_name: t.vm_name,
        disk_name: t.disk_name,
        state: t.state.as_str().into(),
        proxy_id: t.proxy_id,
        repository_id: t.repository_id,
        started_at: t.started_at,
        ended_at: t.ended_at,
        statistics: t.statistics,
        progress,
    }
}

fn page_size(limit: Option<u32>, (default, max): (u32, u32), what: &str) -> ApiResult<u32> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit {n}: {what} pages hold 1 to {max}"
        ))),
    }
}

/// Sessions, newest first, one page at a time.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", params(SessionsQuery),
    responses(
        (status = 200, description = "OK", body = SessionPageDto),
        (status = 400, description = "Bad cursor", body = ErrorBody),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ))]
pub async fn list_sessions(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<SessionsQuery>,
) -> ApiResult<Json<SessionPageDto>> {
    caller.require(Role::Viewer)?;
    let limit = page_size(q.limit, SESSION_PAGE, "session")?;
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            SessionCursor::from_str(text)
                .map_err(|_| ApiError::bad_request(format!("cursor {text:?}: not a cursor this server handed out")))?,
        ),
    };
    if let Some(job) = q.job {
        state.db.get_job(job).await?;
    }
    let page = state
        .db
        .list_sessions(&SessionQuery {
            job_id: q.job,
            after,
            limit,
        })
        .await?;
    // One query for the job names of the whole page.
    let mut ids: Vec<i64> = page.sessions.iter().map(|s| s.job_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let names: HashMap<i64, String> = state.db.job_names(&ids).await?;
    let sessions = page
        .sessions
        .into_iter()
        .map(|s| {
            let name = names.get(&s.job_id).cloned().unwrap_or_default();
            session_dto(s, name)
        })
        .collect();
    Ok(Json(SessionPageDto {
        sessions,
        next_cursor: page.next.map(|c| c.to_string()),
    }))
}

/// A session with its tasks (and live progress of running tasks).
#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "sessions",
    params(("id" = i64, Path, description = "Session id")),
    responses((status = 200, description = "OK", body = SessionDetail), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get_session(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<SessionDetail>> {
    caller.require(Role::Viewer)?;
    let session = state.db.get_session(id).await?;
    let job_name = state
        .db
        .get_job(session.job_id)
        .await
        .map(|j| j.spec.name)
        .unwrap_or_default();
    let tasks = state.db.list_tasks(id).await?;
    Ok(Json(SessionDetail {
        session: session_dto(session, job_name),
        tasks: tasks.into_iter().map(|t| task_dto(&state, t)).collect(),
    }))
}

/// Lines of a task's log, oldest first; follow a running task by passing the last line id as
/// `after`.
#[utoipa::path(get, path = "/api/v1/tasks/{id}/log", tag = "sessions",
    params(("id" = i64, Path, description = "Task id"), LogQuery),
    responses((status = 200, description = "OK", body = Vec<LogLineDto>), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn task_log(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> ApiResult<Json<Vec<LogLineDto>>> {
    caller.require(Role::Viewer)?;
    let limit = page_size(q.limit, LOG_PAGE, "log")?;
    state.db.get_task(id).await?;
    let lines = state.db.task_log(id, q.after, limit).await?;
    Ok(Json(lines.into_iter().map(LogLineDto::from).collect()))
}

/// Asks a running session to stop.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/stop", tag = "sessions",
    params(("id" = i64, Path, description = "Session id")),
    responses(
        (status = 202, description = "Stop requested"),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "The session has ended", body = ErrorBody),
    ))]
pub async fn stop_session(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let session = state.db.get_session(id).await?;
    if session.state.is_final() {
        return Err(ApiError::conflict(format!(
            "session {id} has already ended ({})",
            session.state
        )));
    }
    state.jobs.stop_session(id).await?;
    tracing::info!("{} stopped session {id}", caller.name);
    Ok(StatusCode::ACCEPTED)
}
