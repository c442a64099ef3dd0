//! Restores of a disk or of a whole VM, and what they did.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/restores` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RestoreRequest {
    /// Repository holding the backup.
    pub repository_id: i64,
    /// VM name as backed up.
    pub vm: String,
    /// `latest` (default), a restore point id, or a unique prefix of one (hex digits).
    #[serde(default = "latest", deserialize_with = "string_or_number")]
    #[schema(value_type = String, example = "latest", pattern = "^(latest|[0-9a-f]{1,64})$")]
    pub point: String,
    /// Disk number within the VM (0 is the first).
    #[serde(default)]
    pub disk: u32,
    /// The image file to write: an absolute path beneath a restore folder (see the settings) on
    /// the machine that holds the repository (the server, or the repository's agent). It must
    /// not exist; no `..` and no symbolic link below the restore folder are allowed.
    #[schema(max_length = 4096, pattern = r"^(/[^/\x00]{0,255})+$")]
    pub target_path: String,
    /// Permission bits of the new file in octal (default `0600`; at most `0777`).
    #[serde(default)]
    #[schema(example = "0640", pattern = "^(0o|0)?[0-7]{1,3}$")]
    pub file_mode: Option<String>,
    /// Image format: raw (default), qcow2, vhdx or vhd.
    #[serde(default)]
    #[schema(pattern = "^(|raw|qcow2|vhdx|vhd)$")]
    pub format: Option<String>,
    /// Logical sector size of the new image (512 or 4096; default: the source's).
    #[serde(default)]
    #[schema(schema_with = sector_size_schema)]
    pub sector_size: Option<u32>,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RestoreResult {
    /// VM name.
    pub vm: String,
    /// The restore point id.
    pub point: String,
    /// Disk number.
    pub disk: u32,
    /// Virtual size of the disk in bytes.
    pub virtual_size: u64,
    /// Blocks read from the repository.
    pub blocks: u64,
    /// Bytes written (the rest are holes).
    pub written_bytes: u64,
    /// Image format written.
    pub format: String,
    /// Wall time in seconds.
    pub duration_secs: f64,
}

/// `POST /api/v1/restores/vm` body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VmRestoreRequest {
    /// Repository holding the backup.
    pub repository_id: i64,
    /// VM name as backed up (`HOST/VM`).
    pub vm: String,
    /// `latest` (default), a restore point id, or a unique prefix of one.
    #[serde(default = "latest")]
    #[schema(pattern = "^(latest|[0-9a-f]{1,64})$")]
    pub point: String,
    /// The qemu host to restore to (by name; default: the VM's own host).
    #[serde(default)]
    pub to_host: Option<String>,
    /// Name of the restored VM (default: `<vm>-restored`); not with `replace_original`.
    #[serde(default)]
    pub name: Option<String>,
    /// Stop the original VM, replace its disks with the restore point's, start it again.
    #[serde(default)]
    pub replace_original: bool,
    /// Folder for the new disk files, beneath a restore folder (created if needed; default:
    /// `<first restore folder>/<name>`); not with `replace_original`.
    #[serde(default)]
    #[schema(max_length = 4096, pattern = r"^(/[^/\x00]{0,255})+$")]
    pub folder: Option<String>,
    /// Accelerator of the started VM (default: as the original ran, e.g. `kvm` or `tcg`).
    #[serde(default)]
    pub accel: Option<String>,
}

/// What a VM restore did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VmRestoreResult {
    /// The VM's name.
    pub name: String,
    /// The restore point id.
    pub point: String,
    /// Its disk files, in the VM's disk order.
    pub disks: Vec<String>,
    /// Its QMP socket.
    pub qmp: String,
    /// Its guest agent socket, when the original had an agent.
    pub qga: Option<String>,
    /// QEMU's process id.
    pub pid: Option<u32>,
    /// Its serial console log (beside its disks).
    pub serial_log: String,
    /// Whether the original VM was replaced.
    pub replaced: bool,
    /// Seconds from the request to the started VM.
    pub duration_secs: f64,
}

/// The default restore point of a request.
pub(crate) fn latest() -> String {
    "latest".into()
}

fn sector_size_schema() -> utoipa::openapi::Object {
    crate::checks::integer_enum(&[512, 4096], true, "Logical sector size in bytes (null: the source's)")
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "point: expected \"latest\" or a point id, found {other}"
        ))),
    }
}
