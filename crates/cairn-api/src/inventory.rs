//! Hosts, their VMs and disks.

use crate::HostKind;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A host: where VMs are discovered.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HostDto {
    /// Host id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Kind of source: `image-folder` (later `qemu`, `hyperv`).
    #[schema(example = "image-folder")]
    pub kind: String,
    /// Folder path (image folder) or address (hypervisor).
    pub location: String,
    /// When the host was added.
    pub created_at: Timestamp,
    /// How many VMs it has (present or not).
    pub vms: i64,
}

fn image_folder() -> String {
    HostKind::ImageFolder.as_str().into()
}

/// A disk of a VM.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DiskDto {
    /// Disk id.
    pub id: i64,
    /// VM id.
    pub vm_id: i64,
    /// Stable key of the disk within the VM.
    pub disk_key: String,
    /// Display name (the image file name).
    pub name: String,
    /// Path of the image file (the top of its chain).
    pub path: String,
    /// Image format: raw, qcow2, vhdx, vhd.
    pub format: String,
    /// Virtual size in bytes.
    pub capacity_bytes: i64,
    /// Whether the last scan found it.
    pub present: bool,
}

/// A VM with its disks.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VmDto {
    /// VM id.
    pub id: i64,
    /// Host id.
    pub host_id: i64,
    /// Host name.
    pub host: String,
    /// Stable identity on the host (for an image folder: the sub-folder or file).
    pub external_id: String,
    /// VM name.
    pub name: String,
    /// Whether the last scan found it.
    pub present: bool,
    /// When a scan last found it.
    pub last_seen_at: Timestamp,
    /// Its disks.
    pub disks: Vec<DiskDto>,
}

/// A host with its VMs (answer of add and rescan).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HostWithVms {
    /// The host.
    pub host: HostDto,
    /// Its VMs.
    pub vms: Vec<VmDto>,
}

/// `POST /api/v1/hosts` body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AddHost {
    /// Kind of source: `image-folder` (default) or `qemu`.
    #[serde(default = "image_folder")]
    #[schema(example = "image-folder", pattern = "^(image-folder|qemu)$")]
    pub kind: String,
    /// The folder of disk images (absolute path on the server's machine); for a `qemu` host a
    /// VM's QMP socket or a folder of `NAME.qmp` sockets. Never inside (or around) the server's
    /// data folder.
    #[schema(max_length = 4096, pattern = r"^(/[^/\x00]{0,255})+$")]
    pub path: String,
    /// `qemu` hosts with a single QMP socket: the VM's guest agent socket (default: the `.qga`
    /// beside the QMP socket, when it exists).
    #[serde(default)]
    #[schema(max_length = 4096, pattern = r"^(/[^/\x00]{0,255})+$")]
    pub qga: Option<String>,
    /// Unique name (1–64 characters); defaults to the folder's name (made unique).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
}
