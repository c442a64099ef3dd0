//! What runs on a qemu host: discovery through each VM's QMP socket, and rescans — on a timer
//! ([`RESCAN_INTERVAL`]) and right after cairn starts or stops a VM — so `cairn vm list` follows
//! the host without `cairn host rescan`.
//!
//! QEMU serves one client per QMP socket: while a backup holds a VM's socket, a rescan gets no
//! greeting. Such a VM is busy, not gone: [`rescan`] keeps it as the inventory knew it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_configdb::{ConfigDb, DiscoveredDisk, DiscoveredVm, Host, HostKind, Vm};
use cairn_qemu::qmp::Qmp;

use super::{QMP_TIMEOUT, QemuLocation};

/// How often the server rescans its qemu hosts.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(60);

/// What one discovery run of a qemu host found.
#[derive(Debug, Default)]
pub struct Discovery {
    /// The VMs whose sockets answered.
    pub vms: Vec<DiscoveredVm>,
    /// QMP sockets held by another client (a backup): their VMs run but were not asked.
    pub busy: Vec<PathBuf>,
    /// What went wrong with the other sockets (their VMs are not present).
    pub problems: Vec<String>,
}

/// One VM as its QMP socket describes it; `Err(true)` when the socket is held by another client.
async fn discover_vm(qmp_path: &Path) -> Result<DiscoveredVm, (bool, String)> {
    let qmp = Qmp::connect(qmp_path, QMP_TIMEOUT)
        .await
        .map_err(|e| (e.is_busy(), format!("QMP socket {}: {e}", qmp_path.display())))?;
    let stem = qmp_path
        .file_stem()
        .map_or_else(|| "vm".to_string(), |s| s.to_string_lossy().into_owned());
    let name = match qmp.execute("query-name", serde_json::json!({})).await {
        Ok(v) => v
            .get("name")
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .map_or(stem, str::to_string),
        Err(_) => stem,
    };
    let disks = cairn_qemu::disks::list_disks(&qmp).await.map_err(|e| {
        (
            false,
            format!("VM {name} ({}): listing its disks: {e}", qmp_path.display()),
        )
    })?;
    Ok(DiscoveredVm {
        external_id: qmp_path.to_string_lossy().into_owned(),
        name,
        disks: disks
            .into_iter()
            .map(|d| DiscoveredDisk {
                key: d.device.clone(),
                name: d.device,
                path: d.file.clone(),
                format: d.format,
                capacity_bytes: i64::try_from(d.virtual_size).unwrap_or(i64::MAX),
            })
            .collect(),
    })
}

/// Asks every QMP socket of the host; see [`Discovery`].
pub async fn discover_all(location: &QemuLocation) -> Result<Discovery, String> {
    let mut found = Discovery::default();
    for socket in &location.sockets()? {
        match discover_vm(socket).await {
            Ok(vm) => found.vms.push(vm),
            Err((true, e)) => {
                tracing::debug!("{e}: its VM is kept as it was");
                found.busy.push(socket.clone());
            }
            Err((false, e)) => {
                tracing::debug!("{e}");
                found.problems.push(e);
            }
        }
    }
    Ok(found)
}

/// The VMs of a qemu host. A socket that does not answer is left out with a warning (its VM is
/// then kept as not present); no answering socket at all is an error naming each cause.
pub async fn discover(location: &QemuLocation) -> Result<Vec<DiscoveredVm>, String> {
    let found = discover_all(location).await?;
    if found.vms.is_empty() && found.busy.is_empty() && !location.qmp.is_dir() {
        return Err(found.problems.join("; "));
    }
    Ok(found.vms)
}

/// The VM the inventory knows at QMP socket `socket`, as discovery would report it.
async fn as_known(db: &ConfigDb, known: &[Vm], socket: &Path) -> Option<DiscoveredVm> {
    let vm = known.iter().find(|v| Path::new(&v.external_id) == socket)?;
    let disks = db.list_disks(vm.id).await.ok()?;
    Some(DiscoveredVm {
        external_id: vm.external_id.clone(),
        name: vm.name.clone(),
        disks: disks
            .into_iter()
            .filter(|d| d.present)
            .map(|d| DiscoveredDisk {
                key: d.key,
                name: d.name,
                path: d.path,
                format: d.format,
                capacity_bytes: d.capacity_bytes,
            })
            .collect(),
    })
}

/// Discovers qemu host `host` again and records it: new VMs and disks are added, VMs whose
/// socket is gone or refuses become not present, busy ones stay as they were. Returns the
/// host's VMs. With `strict`, a single-socket host whose socket does not answer is an error
/// naming the cause (a person asked) instead of a VM no longer present.
pub async fn rescan(db: &ConfigDb, host: &Host, strict: bool) -> Result<Vec<Vm>, String> {
    let location = QemuLocation::of(host)?;
    let mut found = discover_all(&location).await?;
    if strict && found.vms.is_empty() && found.busy.is_empty() && !location.qmp.is_dir() {
        return Err(found.problems.join("; "));
    }
    let known = db.list_vms(Some(host.id)).await.map_err(|e| e.to_string())?;
    for socket in &found.busy {
        if let Some(vm) = as_known(db, &known, socket).await {
            found.vms.push(vm);
        }
    }
    db.sync_host_inventory(host.id, &found.vms, jiff::Timestamp::now())
        .await
        .map_err(|e| format!("recording host {}: {e}", host.name))
}

/// Rescans host `host_id` after cairn started or stopped one of its VMs; a failure is logged.
pub async fn rescan_after_change(db: &ConfigDb, host_id: i64) {
    let host = match db.get_host(host_id).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("rescanning host {host_id}: {e}");
            return;
        }
    };
    if let Err(e) = rescan(db, &host, false).await {
        tracing::warn!("rescanning host {}: {e}", host.name);
    }
}

/// Rescans every qemu host every [`RESCAN_INTERVAL`] until the task is aborted.
pub fn spawn_rescans(db: ConfigDb) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(RESCAN_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: the inventory is fresh right after a start.
        loop {
            ticks.tick().await;
            let hosts = match db.list_hosts().await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!("rescanning the qemu hosts: {e}");
                    continue;
                }
            };
            for host in hosts.iter().filter(|h| h.kind == HostKind::Qemu) {
                if let Err(e) = rescan(&db, host, false).await {
                    tracing::warn!("rescanning qemu host {}: {e}", host.name);
                }
            }
        }
    })
}
