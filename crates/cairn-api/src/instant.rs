//! Instant recoveries: VMs run straight from a backup.

use crate::restore::latest;
use crate::settings::AbsolutePath;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/instant-recoveries` body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstantRequest {
    /// Repository holding the backup.
    pub repository_id: i64,
    /// VM name as backed up (`HOST/VM`).
    pub vm: String,
    /// `latest` (default), a restore point id, or a unique prefix of one.
    #[serde(default = "latest")]
    #[schema(pattern = "^(latest|[0-9a-f]{1,64})$")]
    pub point: String,
    /// The qemu host whose socket folder gets the VM's sockets (default: the VM's own host).
    #[serde(default)]
    pub to_host: Option<String>,
    /// The VM's name (default: `<vm>-instant`).
    #[serde(default)]
    pub name: Option<String>,
    /// Accelerator (default: as the original ran).
    #[serde(default)]
    pub accel: Option<String>,
}

/// `POST /api/v1/instant-recoveries/{name}/migrate` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MigrateRequest {
    /// Production files, one per disk (qcow2; must not exist), beneath a restore folder (see the
    /// settings). With one disk a single path.
    #[schema(min_items = 1, value_type = Vec<AbsolutePath>)]
    pub to: Vec<String>,
}

/// Where an instant recovery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstantState {
    /// The VM runs from the NBD export.
    Running,
    /// Its disks are being copied to production files.
    Migrating,
    /// The VM runs from production files; the export has ended.
    Migrated,
}

/// An instant recovery as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstantInfo {
    /// The VM's name (unique among instant recoveries).
    pub name: String,
    /// The VM backed up (`HOST/VM`).
    pub vm: String,
    /// The qemu host it runs on (its sockets are in that host's folder).
    pub host: String,
    /// The restore point id.
    pub point: String,
    /// State.
    pub state: InstantState,
    /// The VM's QMP socket.
    pub qmp: String,
    /// Its guest agent socket, when the original had one.
    pub qga: Option<String>,
    /// QEMU's process id.
    pub pid: Option<u32>,
    /// The NBD exports its disks are read from (until migrated).
    pub exports: Vec<String>,
    /// Bytes the VM wrote into the scratch files.
    pub written_bytes: u64,
    /// Production disk files (after a migration).
    pub disks: Vec<String>,
    /// Its serial console log (this run of it).
    pub serial_log: Option<String>,
    /// Seconds from the request until QEMU answered.
    pub start_secs: f64,
}
