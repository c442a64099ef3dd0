//! Starting, stopping and forgetting the checkpoints of VMs.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a start or a stop did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VmPowerResult {
    /// The VM (`HOST/VM`).
    pub vm: String,
    /// Whether it runs now.
    pub running: bool,
    /// QEMU's process id (after a start).
    pub pid: Option<u32>,
    /// Its QMP socket.
    pub qmp: String,
    /// Its serial console log (after a start).
    pub serial_log: Option<String>,
    /// The migrated instant recovery of that name that the stop also forgot.
    pub forgot_instant_recovery: Option<String>,
}

/// A checkpoint bitmap removed from a disk.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RemovedCheckpoint {
    /// The disk's device id.
    pub disk: String,
    /// The bitmap's name.
    pub bitmap: String,
}

/// What `POST /api/v1/vms/{id}/forget-checkpoints` did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ForgottenCheckpoints {
    /// The VM (`HOST/VM`).
    pub vm: String,
    /// The bitmaps removed.
    pub removed: Vec<RemovedCheckpoint>,
    /// Jobs that still back the VM up: their next backup of it reads every block.
    pub jobs: Vec<String>,
}
