//! Running QEMU VMs as a host kind (`qemu`): discovery through QMP, live
//! backups through point-in-time views with dirty bitmaps, whole-VM restores
//! and instant recovery from an NBD export of a restore point.
//!
//! A qemu host is one VM's QMP socket, or a folder of `NAME.qmp` sockets
//! (one per VM). A VM's guest agent socket is the one given with the host,
//! else `NAME.qga` beside its QMP socket when it exists.
//!
//! Modules: [`inventory`] (discovery, rescans on a timer and after cairn starts or stops a VM),
//! [`backup`] (the live part of a backup), [`checkpoints`] (cairn's bitmaps on VMs it no longer
//! backs up), [`instant`] (the NBD exports and QEMU processes of instant recoveries) and
//! [`launch`] (how cairn starts a VM again). Their routes (VM restores, instant recoveries,
//! starting and stopping VMs) are in the HTTP layer: [`crate::http::restore_vm`],
//! [`crate::http::instant`], [`crate::http::vm_control`].

pub(crate) mod backup;
pub mod checkpoints;
pub mod instant;
pub mod inventory;
pub mod launch;

pub use inventory::{discover, rescan};

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_configdb::Host;
use serde::{Deserialize, Serialize};

/// How long discovery and control wait for a VM's QMP socket to answer.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a qemu host's VMs are: stored as JSON in the host's `location`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuLocation {
    /// A VM's QMP socket, or a folder of `NAME.qmp` sockets.
    pub qmp: PathBuf,
    /// The guest agent socket of the VM at `qmp` (a single-socket host only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qga: Option<PathBuf>,
}

impl QemuLocation {
    /// The location of `host`, or why it is not a qemu location.
    pub fn of(host: &Host) -> Result<QemuLocation, String> {
        serde_json::from_str(&host.location).map_err(|e| {
            format!(
                "host {}: its location {:?} is not a qemu location: {e}",
                host.name, host.location
            )
        })
    }

    /// The JSON stored as the host's location.
    pub fn to_location(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether the host is a folder of sockets (new VMs are started there).
    pub fn is_folder(&self) -> bool {
        self.qmp.is_dir()
    }

    /// The QMP sockets of the host's VMs.
    pub fn sockets(&self) -> Result<Vec<PathBuf>, String> {
        if !self.qmp.is_dir() {
            return Ok(vec![self.qmp.clone()]);
        }
        let entries =
            std::fs::read_dir(&self.qmp).map_err(|e| format!("reading folder {}: {e}", self.qmp.display()))?;
        let mut out: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "qmp"))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The guest agent socket of the VM whose QMP socket is `qmp`, if it has one.
    pub fn agent_for(&self, qmp: &Path) -> Option<PathBuf> {
        if qmp == self.qmp
            && let Some(qga) = &self.qga
        {
            return Some(qga.clone());
        }
        let beside = qmp.with_extension("qga");
        beside.exists().then_some(beside)
    }

    /// The folder where VMs restored to this host get their sockets.
    pub fn socket_folder(&self) -> PathBuf {
        if self.qmp.is_dir() {
            self.qmp.clone()
        } else {
            self.qmp.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
        }
    }
}

/// Checks a qemu host's QMP path when it is added: a socket or a folder, absolute.
pub fn check_qmp_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!(
            "{}: give an absolute path on the server's machine",
            path.display()
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    use std::os::unix::fs::FileTypeExt;
    if meta.is_dir() || meta.file_type().is_socket() {
        Ok(())
    } else {
        Err(format!(
            "{}: neither a QMP socket nor a folder of NAME.qmp sockets",
            path.display()
        ))
    }
}
