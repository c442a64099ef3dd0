//! Sessions (job runs), their tasks (one per VM disk) and task logs.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use cairn_api::{LogLevel, SessionState};

use crate::ConfigDb;
use crate::db::{from_us, from_us_opt, json_from_text, on_pool, to_us};
use crate::error::{Error, Result, one_row, write_err};

/// One run of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Database id.
    pub id: i64,
    /// The job that ran.
    pub job_id: i64,
    /// Current state.
    pub state: SessionState,
    /// When the run was started (queued).
    pub started_at: Timestamp,
    /// When it ended; `None` while waiting or running.
    pub ended_at: Option<Timestamp>,
    /// Statistics document (bytes read, transferred, bottleneck…), owned by the job manager.
    pub statistics: serde_json::Value,
}

/// Position in the session list: the last session of the previous page.
///
/// Its text form `MICROSECONDS.ID` is what the API hands out as an opaque page token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionCursor {
    /// Start time of the last session seen.
    pub started_at: Timestamp,
    /// Id of the last session seen.
    pub id: i64,
}

impl fmt::Display for SessionCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", to_us(self.started_at), self.id)
    }
}

impl FromStr for SessionCursor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::Invalid {
            what: format!("session page token {s:?}"),
        };
        let (us, id) = s.split_once('.').ok_or_else(invalid)?;
        let us: i64 = us.parse().map_err(|_| invalid())?;
        let id: i64 = id.parse().map_err(|_| invalid())?;
        Ok(SessionCursor {
            started_at: jiff::Timestamp::from_microsecond(us).map_err(|_| invalid())?,
            id,
        })
    }
}

/// Which sessions to list: newest first, `limit` at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionQuery {
    /// Only the sessions of this job; `None` lists all.
    pub job_id: Option<i64>,
    /// Continue after this session (from [`SessionPage::next`]); `None` starts with the newest.
    pub after: Option<SessionCursor>,
    /// Page size (at least 1 is used).
    pub limit: u32,
}

/// One page of sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionPage {
    /// Sessions, newest first (by start time, then id).
    pub sessions: Vec<Session>,
    /// Cursor for the next page; `None` when this page is the last.
    pub next: Option<SessionCursor>,
}

/// A task to create: one VM disk of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// The session.
    pub session_id: i64,
    /// The VM, if it is in the inventory.
    pub vm_id: Option<i64>,
    /// The disk, if it is in the inventory.
    pub disk_id: Option<i64>,
    /// VM name, kept for the history even if the VM is deleted.
    pub vm_name: String,
    /// Disk name, kept for the history even if the disk is deleted.
    pub disk_name: String,
}

/// A stored task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Database id.
    pub id: i64,
    /// The session.
    pub session_id: i64,
    /// The VM (`None` if it was deleted since).
    pub vm_id: Option<i64>,
    /// The disk (`None` if it was deleted since).
    pub disk_id: Option<i64>,
    /// VM name.
    pub vm_name: String,
    /// Disk name.
    pub disk_name: String,
    /// Current state.
    pub state: SessionState,
    /// Proxy that processes it, once assigned.
    pub proxy_id: Option<i64>,
    /// Repository it writes to, once assigned.
    pub repository_id: Option<i64>,
    /// When processing started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub ended_at: Option<Timestamp>,
    /// Statistics document (busy % per stage, bytes…).
    pub statistics: serde_json::Value,
}

/// One line of a task log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Database id, increasing in append order.
    pub id: i64,
    /// The task.
    pub task_id: i64,
    /// When it was logged.
    pub at: Timestamp,
    /// Severity.
    pub level: LogLevel,
    /// Message.
    pub text: String,
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: i64,
    job_id: i64,
    state: String,
    started_at: i64,
    ended_at: Option<i64>,
    statistics: String,
}

impl TryFrom<SessionRow> for Session {
    type Error = Error;
    fn try_from(r: SessionRow) -> Result<Self> {
        Ok(Session {
            id: r.id,
            job_id: r.job_id,
            state: r.state.parse()?,
            started_at: from_us(r.started_at)?,
            ended_at: from_us_opt(r.ended_at)?,
            statistics: json_from_text(&r.statistics)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: i64,
    session_id: i64,
    vm_id: Option<i64>,
    disk_id: Option<i64>,
    vm_name: String,
    disk_name: String,
    state: String,
    proxy_id: Option<i64>,
    repository_id: Option<i64>,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    statistics: String,
}

impl TryFrom<TaskRow> for Task {
    type Error = Error;
    fn try_from(r: TaskRow) -> Result<Self> {
        Ok(Task {
            id: r.id,
            session_id: r.session_id,
            vm_id: r.vm_id,
            disk_id: r.disk_id,
            vm_name: r.vm_name,
            disk_name: r.disk_name,
            state: r.state.parse()?,
            proxy_id: r.proxy_id,
            repository_id: r.repository_id,
            started_at: from_us_opt(r.started_at)?,
            ended_at: from_us_opt(r.ended_at)?,
            statistics: json_from_text(&r.statistics)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct LogRow {
    id: i64,
    task_id: i64,
    at: i64,
    level: String,
    text: String,
}

impl TryFrom<LogRow> for LogLine {
    type Error = Error;
    fn try_from(r: LogRow) -> Result<Self> {
        Ok(LogLine {
            id: r.id,
            task_id: r.task_id,
            at: from_us(r.at)?,
            level: r.level.parse()?,
            text: r.text,
        })
    }
}

macro_rules! session_select {
    ($($rest:literal),+) => {
        concat!("SELECT id, job_id, state, started_at, ended_at, statistics FROM sessions ", $($rest),+)
    };
}
macro_rules! task_select {
    ($($rest:literal),+) => {
        concat!(
            "SELECT id, session_id, vm_id, disk_id, vm_name, disk_name, state, proxy_id, repository_id, ",
            "started_at, ended_at, statistics FROM tasks ",
            $($rest),+
        )
    };
}

fn json_text(value: &serde_json::Value) -> String {
    value.to_string()
}

impl ConfigDb {
    /// Starts a session of `job_id` at `now`, in state waiting with empty statistics.
    pub async fn create_session(&self, job_id: i64, now: Timestamp) -> Result<Session> {
        on_pool!(self, |pool| {
            let row: SessionRow = sqlx::query_as(concat!(
                "INSERT INTO sessions (job_id, state, started_at, ended_at, statistics) ",
                "VALUES ($1, $2, $3, NULL, '{}') RETURNING id, job_id, state, started_at, ended_at, statistics"
            ))
            .bind(job_id)
            .bind(SessionState::Waiting.as_str())
            .bind(to_us(now))
            .fetch_one(pool)
            .await
            .map_err(write_err(format!("session of job {job_id}")))?;
            row.try_into()
        })
    }

    /// Sets a session's state; a final state also records `now` as its end.
    pub async fn set_session_state(&self, id: i64, state: SessionState, now: Timestamp) -> Result<()> {
        let ended = state.is_final().then(|| to_us(now));
        on_pool!(self, |pool| {
            let done = sqlx::query("UPDATE sessions SET state = $2, ended_at = $3 WHERE id = $1")
                .bind(id)
                .bind(state.as_str())
                .bind(ended)
                .execute(pool)
                .await?;
            one_row(done.rows_affected(), || format!("session {id}"))
        })
    }

    /// Replaces a session's statistics document.
    pub async fn set_session_statistics(&self, id: i64, statistics: &serde_json::Value) -> Result<()> {
        on_pool!(self, |pool| {
            let done = sqlx::query("UPDATE sessions SET statistics = $2 WHERE id = $1")
                .bind(id)
                .bind(json_text(statistics))
                .execute(pool)
                .await?;
            one_row(done.rows_affected(), || format!("session {id}"))
        })
    }

    /// The session with `id`.
    pub async fn get_session(&self, id: i64) -> Result<Session> {
        on_pool!(self, |pool| {
            let row: Option<SessionRow> = sqlx::query_as(session_select!("WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.ok_or_else(|| Error::NotFound {
                what: format!("session {id}"),
            })?
            .try_into()
        })
    }

    /// One page of sessions, newest first. Keyset paging on the indexed `(started_at, id)` (per job:
    /// `(job_id, started_at, id)`), so every page costs the same however deep it is.
    pub async fn list_sessions(&self, query: &SessionQuery) -> Result<SessionPage> {
        let limit = i64::from(query.limit.max(1));
        let rows: Vec<SessionRow> = on_pool!(self, |pool| {
            match (query.job_id, query.after) {
                (None, None) => {
                    sqlx::query_as(session_select!("ORDER BY started_at DESC, id DESC LIMIT $1"))
                        .bind(limit)
                        .fetch_all(pool)
                        .await?
                }
                (None, Some(after)) => {
                    sqlx::query_as(session_select!(
                        "WHERE (started_at, id) < ($1, $2) ORDER BY started_at DESC, id DESC LIMIT $3"
                    ))
                    .bind(to_us(after.started_at))
                    .bind(after.id)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
                }
                (Some(job), None) => {
                    sqlx::query_as(session_select!(
                        "WHERE job_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2"
                    ))
                    .bind(job)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
                }
                (Some(job), Some(after)) => {
                    sqlx::query_as(session_select!(
                        "WHERE job_id = $1 AND (started_at, id) < ($2, $3) ",
                        "ORDER BY started_at DESC, id DESC LIMIT $4"
                    ))
                    .bind(job)
                    .bind(to_us(after.started_at))
                    .bind(after.id)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
                }
            }
        });
        let full = i64::try_from(rows.len()).is_ok_and(|n| n == limit);
        let sessions = rows.into_iter().map(Session::try_from).collect::<Result<Vec<_>>>()?;
        let next = match sessions.last() {
            Some(last) if full => Some(SessionCursor {
                started_at: last.started_at,
                id: last.id,
            }),
            _ => None,
        };
        Ok(SessionPage { sessions, next })
    }

    /// The newest session of every job that has one, keyed by job id: one index lookup per job
    /// (statistics are left empty: callers want the state and times).
    pub async fn last_sessions(&self) -> Result<HashMap<i64, Session>> {
        let rows: Vec<SessionRow> = on_pool!(self, |pool| {
            sqlx::query_as(concat!(
                "SELECT s.id, s.job_id, s.state, s.started_at, s.ended_at, '{}' AS statistics ",
                "FROM jobs j JOIN sessions s ON s.id = (SELECT id FROM sessions WHERE job_id = j.id ",
                "ORDER BY started_at DESC, id DESC LIMIT 1)"
            ))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|row| Session::try_from(row).map(|s| (s.job_id, s)))
            .collect()
    }

    /// Every session still waiting or running, oldest first (uses the partial index on `state`).
    pub async fn list_unfinished_sessions(&self) -> Result<Vec<Session>> {
        on_pool!(self, |pool| {
            let rows: Vec<SessionRow> = sqlx::query_as(session_select!(
                "WHERE state IN ('waiting', 'running') ORDER BY started_at, id"
            ))
            .fetch_all(pool)
            .await?;
            rows.into_iter().map(Session::try_from).collect()
        })
    }

    /// After a restart: every session and task still waiting or running belongs to a process that
    /// is gone, so it is marked failed, ended at `now`. Returns how many sessions were marked.
    pub async fn mark_running_sessions_failed(&self, now: Timestamp) -> Result<u64> {
        let now = to_us(now);
        on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin.write).await?;
            sqlx::query("UPDATE tasks SET state = $1, ended_at = $2 WHERE state IN ('waiting', 'running')")
                .bind(SessionState::Failed.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let done =
                sqlx::query("UPDATE sessions SET state = $1, ended_at = $2 WHERE state IN ('waiting', 'running')")
                    .bind(SessionState::Failed.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(done.rows_affected())
        })
    }

    /// Adds a task (state waiting, empty statistics) to a session.
    pub async fn create_task(&self, task: &NewTask) -> Result<Task> {
        on_pool!(self, |pool| {
            let row: TaskRow = sqlx::query_as(concat!(
                "INSERT INTO tasks (session_id, vm_id, disk_id, vm_name, disk_name, state, statistics) ",
                "VALUES ($1, $2, $3, $4, $5, $6, '{}') ",
                "RETURNING id, session_id, vm_id, disk_id, vm_name, disk_name, state, proxy_id, repository_id, ",
                "started_at, ended_at, statistics"
            ))
            .bind(task.session_id)
            .bind(task.vm_id)
            .bind(task.disk_id)
            .bind(&task.vm_name)
            .bind(&task.disk_name)
            .bind(SessionState::Waiting.as_str())
            .fetch_one(pool)
            .await
            .map_err(write_err(format!(
                "task {:?}/{:?} of session {}",
                task.vm_name, task.disk_name, task.session_id
            )))?;
            row.try_into()
        })
    }

    /// Sets a task's state: running records the start (once), a final state records the end.
    pub async fn set_task_state(&self, id: i64, state: SessionState, now: Timestamp) -> Result<()> {
        let started = (state == SessionState::Running).then(|| to_us(now));
        let ended = state.is_final().then(|| to_us(now));
        on_pool!(self, |pool| {
            let done = sqlx::query(
                "UPDATE tasks SET state = $2, started_at = COALESCE(started_at, $3), ended_at = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(state.as_str())
            .bind(started)
            .bind(ended)
            .execute(pool)
            .await?;
            one_row(done.rows_affected(), || format!("task {id}"))
        })
    }

    /// Records the proxy and repository the resource scheduler gave a task.
    pub async fn assign_task(&self, id: i64, proxy_id: Option<i64>, repository_id: Option<i64>) -> Result<()> {
        on_pool!(self, |pool| {
            let done = sqlx::query("UPDATE tasks SET proxy_id = $2, repository_id = $3 WHERE id = $1")
                .bind(id)
                .bind(proxy_id)
                .bind(repository_id)
                .execute(pool)
                .await
                .map_err(write_err(format!("task {id}")))?;
            one_row(done.rows_affected(), || format!("task {id}"))
        })
    }

    /// Replaces a task's statistics document.
    pub async fn set_task_statistics(&self, id: i64, statistics: &serde_json::Value) -> Result<()> {
        on_pool!(self, |pool| {
            let done = sqlx::query("UPDATE tasks SET statistics = $2 WHERE id = $1")
                .bind(id)
                .bind(json_text(statistics))
                .execute(pool)
                .await?;
            one_row(done.rows_affected(), || format!("task {id}"))
        })
    }

    /// The task with `id`.
    pub async fn get_task(&self, id: i64) -> Result<Task> {
        on_pool!(self, |pool| {
            let row: Option<TaskRow> = sqlx::query_as(task_select!("WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.ok_or_else(|| Error::NotFound {
                what: format!("task {id}"),
            })?
            .try_into()
        })
    }

    /// The tasks of a session, in creation order.
    pub async fn list_tasks(&self, session_id: i64) -> Result<Vec<Task>> {
        on_pool!(self, |pool| {
            let rows: Vec<TaskRow> = sqlx::query_as(task_select!("WHERE session_id = $1 ORDER BY id"))
                .bind(session_id)
                .fetch_all(pool)
                .await?;
            rows.into_iter().map(Task::try_from).collect()
        })
    }

    /// Appends a line to a task's log; returns its id.
    pub async fn append_task_log(&self, task_id: i64, level: LogLevel, text: &str, at: Timestamp) -> Result<i64> {
        on_pool!(self, |pool| {
            Ok(sqlx::query_scalar(
                "INSERT INTO task_log (task_id, at, level, text) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(task_id)
            .bind(to_us(at))
            .bind(level.as_str())
            .bind(text)
            .fetch_one(pool)
            .await
            .map_err(write_err(format!("log line of task {task_id}")))?)
        })
    }

    /// Up to `limit` log lines of a task after line `after_id` (all from the start if `None`), oldest
    /// first; a client follows a running task by passing the last id it has.
    pub async fn task_log(&self, task_id: i64, after_id: Option<i64>, limit: u32) -> Result<Vec<LogLine>> {
        on_pool!(self, |pool| {
            let rows: Vec<LogRow> = sqlx::query_as(
                "SELECT id, task_id, at, level, text FROM task_log WHERE task_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(task_id)
            .bind(after_id.unwrap_or(i64::MIN))
            .bind(i64::from(limit.max(1)))
            .fetch_all(pool)
            .await?;
            rows.into_iter().map(LogLine::try_from).collect()
        })
    }
}
