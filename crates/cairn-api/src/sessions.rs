//! Sessions (runs of a job), their tasks and logs.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One run of a job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionDto {
    /// Session id.
    pub id: i64,
    /// The job.
    pub job_id: i64,
    /// The job's name.
    pub job_name: String,
    /// waiting, running, success, warning, failed or stopped.
    pub state: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub ended_at: Option<Timestamp>,
    /// Statistics written by the job manager (tasks, bytes, ratios, busy, bottleneck, trigger…).
    #[schema(value_type = Object)]
    pub statistics: serde_json::Value,
}

/// A page of sessions, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionPageDto {
    /// The sessions.
    pub sessions: Vec<SessionDto>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Live progress of a running task.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProgressDto {
    /// Bytes processed so far.
    pub done_bytes: u64,
    /// Bytes the task processes in all.
    pub total_bytes: u64,
}

/// One task (one VM disk) of a session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskDto {
    /// Task id.
    pub id: i64,
    /// Session id.
    pub session_id: i64,
    /// VM id (null if the VM was deleted since).
    pub vm_id: Option<i64>,
    /// Disk id (null if the disk was deleted since).
    pub disk_id: Option<i64>,
    /// VM name.
    pub vm_name: String,
    /// Disk name.
    pub disk_name: String,
    /// waiting, running, success, warning, failed or stopped.
    pub state: String,
    /// Proxy that processes it.
    pub proxy_id: Option<i64>,
    /// Repository it writes to.
    pub repository_id: Option<i64>,
    /// When processing started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub ended_at: Option<Timestamp>,
    /// Statistics (bytes, blocks, ratios, busy, bottleneck, point_id).
    #[schema(value_type = Object)]
    pub statistics: serde_json::Value,
    /// Live progress while it runs; null otherwise.
    pub progress: Option<ProgressDto>,
}

/// A session with its tasks.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionDetail {
    /// The session.
    pub session: SessionDto,
    /// Its tasks, in creation order.
    pub tasks: Vec<TaskDto>,
}

/// One line of a task log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogLineDto {
    /// Line id (increasing); pass the last one as `after` to follow a log.
    pub id: i64,
    /// Task id.
    pub task_id: i64,
    /// When it was written.
    pub at: Timestamp,
    /// info, warning or error.
    pub level: String,
    /// The message.
    pub text: String,
}
