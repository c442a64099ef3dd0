//! Backup jobs: what a client sends, what the server shows.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::spec::{BlockSize, Compression, Consistency, Method, Retention};

/// Job settings as sent by a client. Only `name`, `vm_ids` and `repository_id` are required;
/// absent fields take their defaults (also on PUT, which replaces the whole job).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobInput {
    /// Unique name (1–100 characters, not only spaces, no control characters).
    #[schema(
        example = "nightly",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// VMs to back up, in processing order (a VM listed twice is backed up once).
    #[schema(min_items = 1)]
    pub vm_ids: Vec<i64>,
    /// Disks of those VMs to leave out.
    #[serde(default)]
    pub excluded_disk_ids: Vec<i64>,
    /// Target repository.
    pub repository_id: i64,
    /// Block size in bytes: 262144, 524288, 1048576 (default) or 4194304.
    #[serde(default)]
    #[schema(schema_with = block_size_schema)]
    pub block_size: Option<i64>,
    /// Compression: `zstd:LEVEL` (default `zstd:3`; levels 1–19), `zstd`, `lz4` or `none`; empty:
    /// the default.
    #[serde(default)]
    #[schema(pattern = r"^(|none|lz4|zstd|zstd:([1-9]|1[0-9]))$")]
    pub compression: Option<String>,
    /// Encryption: null or empty (the repository decides, default), `aes-256-gcm` or `none`.
    #[serde(default)]
    #[schema(pattern = "^(|aes-256-gcm|none)$")]
    pub encryption: Option<String>,
    /// Backup method: `forever-forward` (default) or `forward`.
    #[serde(default)]
    #[schema(pattern = "^(forever-forward|forward)$")]
    pub method: Option<String>,
    /// Restore points to keep (1–10000, default 14).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub retention_points: Option<i64>,
    /// Schedule text (`daily 22:00 mon-fri`, `every 4h`, `after JOB`, `cron "0 22 * * 1-5"`…);
    /// null runs only on demand.
    #[serde(default)]
    #[schema(example = "daily 22:00 mon-fri")]
    pub schedule: Option<String>,
    /// Backup window (`mon-fri 20:00-06:00 sat,sun 00:00-24:00`, optionally `tz ZONE`); null
    /// allows any time.
    #[serde(default)]
    #[schema(example = "mon-fri 20:00-06:00")]
    pub backup_window: Option<String>,
    /// Retries of a failed VM (0–100, default 3).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    pub retries: Option<i64>,
    /// Seconds between retries (0–604800, default 600).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 604800)]
    pub retry_wait_seconds: Option<i64>,
    /// Whether the scheduler starts it (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Point-in-time view of running VMs: `online` (default: guest agent freeze, else
    /// crash-consistent with a warning), `offline` (freeze, else pause the VM) or `crash`.
    #[serde(default)]
    #[schema(example = "online", pattern = "^(|online|offline|crash)$")]
    pub consistency: Option<String>,
    /// Fail a VM whose guest cannot be frozen instead of falling back (default false).
    #[serde(default)]
    pub require_app_consistency: Option<bool>,
    /// Command run in the guest through its agent before the freeze (a path inside the guest;
    /// never run on the server; at most 4096 bytes).
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub pre_freeze_script: Option<String>,
    /// Command run in the guest after the thaw (as `pre_freeze_script`).
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub post_thaw_script: Option<String>,
}

/// `PUT /api/v1/jobs/{id}` body: the version read plus the whole job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobUpdate {
    /// The `version` of the job as read; a stale version is refused with 409.
    pub version: i64,
    /// The job's new settings.
    #[serde(flatten)]
    pub job: JobInput,
}

/// The newest session of a job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LastSession {
    /// Session id.
    pub id: i64,
    /// waiting, running, success, warning, failed or stopped.
    pub state: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub ended_at: Option<Timestamp>,
}

/// A job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobDto {
    /// Job id.
    pub id: i64,
    /// Version; send it back with PUT.
    pub version: i64,
    /// When the job was created.
    pub created_at: Timestamp,
    /// When the job was last changed.
    pub updated_at: Timestamp,
    /// Unique name.
    pub name: String,
    /// VMs to back up, in processing order.
    pub vm_ids: Vec<i64>,
    /// Disks left out.
    pub excluded_disk_ids: Vec<i64>,
    /// Target repository.
    pub repository_id: i64,
    /// Block size in bytes.
    #[schema(value_type = i64)]
    pub block_size: BlockSize,
    /// Compression.
    #[schema(value_type = String)]
    pub compression: Compression,
    /// Encryption; null lets the repository decide.
    pub encryption: Option<String>,
    /// Backup method.
    #[schema(value_type = String)]
    pub method: Method,
    /// Restore points to keep.
    #[schema(value_type = i64)]
    pub retention_points: Retention,
    /// Schedule; null runs only on demand.
    pub schedule: Option<String>,
    /// Backup window; null is any time.
    pub backup_window: Option<String>,
    /// Retries of a failed VM.
    pub retries: i64,
    /// Seconds between retries.
    pub retry_wait_seconds: i64,
    /// Whether the scheduler starts it.
    pub enabled: bool,
    /// Point-in-time view of running VMs: `online`, `offline` or `crash`.
    #[schema(value_type = String)]
    pub consistency: Consistency,
    /// Fail a VM whose guest cannot be frozen instead of falling back.
    pub require_app_consistency: bool,
    /// Command run in the guest before the freeze.
    pub pre_freeze_script: Option<String>,
    /// Command run in the guest after the thaw.
    pub post_thaw_script: Option<String>,
    /// The next scheduled run (null: disabled, on demand, or after another job).
    pub next_run: Option<Timestamp>,
    /// The newest session.
    pub last_session: Option<LastSession>,
}

/// `202` answer of run and stop.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionStarted {
    /// The session started (run) or asked to stop (stop).
    pub session_id: i64,
}

fn block_size_schema() -> utoipa::openapi::Object {
    crate::checks::integer_enum(
        &crate::spec::BLOCK_SIZES.map(i64::from),
        true,
        "Block size in bytes (null: 1048576)",
    )
}
