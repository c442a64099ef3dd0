//! Repositories, proxies and the restore points they hold.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A repository.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RepositoryDto {
    /// Repository id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Folder on the server's machine.
    pub path: String,
    /// Whether jobs use it when they name none.
    pub is_default: bool,
    /// Maximum concurrent tasks.
    pub max_tasks: i64,
    /// Read rate limit in bytes/s shared by its tasks; null unlimited.
    pub read_limit_bytes: Option<i64>,
    /// Write rate limit in bytes/s shared by its tasks; null unlimited.
    pub write_limit_bytes: Option<i64>,
    /// Whether its backups are encrypted.
    pub encrypted: bool,
    /// The repository agent that owns it (null: the backup server's own disks).
    pub agent_id: Option<i64>,
    /// When it was added.
    pub created_at: Timestamp,
    /// Free space of its volume in bytes (absent when the folder cannot be reached).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub free_bytes: Option<u64>,
    /// Where the server keeps its password (only in the answer to a create of an encrypted
    /// repository): keep a copy somewhere safe.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub password_file: Option<String>,
}

/// `POST /api/v1/repositories` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateRepository {
    /// Unique name (1–64 characters, not only spaces, no control characters).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// Folder (absolute path on the server's machine, or the agent's): absent or empty to create
    /// a repository, or holding a cairn repository to adopt it. Never inside the server's data
    /// folder.
    #[schema(max_length = 4096, pattern = r"^(/[^/\x00]{0,255})+$")]
    pub path: String,
    /// `aes-256-gcm` (default) or `none`; ignored when adopting.
    #[serde(default)]
    #[schema(example = "aes-256-gcm", pattern = "^(aes-256-gcm|none)$")]
    pub encryption: Option<String>,
    /// Password of an encrypted repository; generated when absent (kept in the server's
    /// secrets folder). Required to adopt an existing encrypted repository.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub password: Option<String>,
    /// Maximum concurrent tasks, 1–1024 (default: the number of CPU cores).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1024)]
    pub max_tasks: Option<i64>,
    /// Read rate limit in bytes/s; 0 or absent is unlimited.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub read_limit_bytes: Option<i64>,
    /// Write rate limit in bytes/s; 0 or absent is unlimited.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub write_limit_bytes: Option<i64>,
    /// Name of the repository agent that owns the folder (`path` is then on that agent's host,
    /// and only that agent writes to it). Absent: the backup server's own disks.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub agent: Option<String>,
}

/// `PATCH /api/v1/repositories/{id}` body; absent fields stay, 0 or null limits are unlimited.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateRepository {
    /// Maximum concurrent tasks (1–1024).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1024)]
    pub max_tasks: Option<i64>,
    /// Read rate limit in bytes/s; 0 or null is unlimited.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub read_limit_bytes: Option<Option<i64>>,
    /// Write rate limit in bytes/s; 0 or null is unlimited.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub write_limit_bytes: Option<Option<i64>>,
}

/// A proxy (data mover) with its load.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProxyDto {
    /// Proxy id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Address of its agent; null is the backup server itself.
    pub address: Option<String>,
    /// Maximum concurrent tasks.
    pub max_tasks: i64,
    /// Tasks running on it now.
    pub running_tasks: u64,
    /// When it was added.
    pub created_at: Timestamp,
    /// The proxy agent it is (null: the backup server itself).
    pub agent_id: Option<i64>,
}

/// `PATCH /api/v1/proxies/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateProxy {
    /// Maximum concurrent tasks (1–1024).
    #[schema(minimum = 1, maximum = 1024)]
    pub max_tasks: i64,
}

/// The restore points of one VM.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VmPoints {
    /// VM name.
    pub vm: String,
    /// Its restore points, oldest first.
    pub points: Vec<PointDto>,
}

/// One restore point.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PointDto {
    /// Point id (hex; a unique prefix also selects it).
    pub id: String,
    /// When the backup was taken (RFC 3339).
    pub time: String,
    /// `full` or `incremental`.
    pub kind: String,
    /// Its disks.
    pub disks: Vec<PointDisk>,
    /// Statistics of the backup that made it.
    #[schema(value_type = Object)]
    pub stats: serde_json::Value,
}

/// One disk of a restore point.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PointDisk {
    /// Disk number within the VM.
    pub disk: u32,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Non-zero blocks the point holds.
    pub blocks: u64,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}
