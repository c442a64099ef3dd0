//! Instant recovery: a VM boots from a restore point served by cairn's own
//! NBD server (read-only from the repository; the VM's writes go to a
//! copy-on-write scratch file), then a storage migration (QMP
//! `blockdev-mirror`) moves it onto production disk files while it runs,
//! and the export ends.
//!
//! Instant recoveries live in the server process: a restart of the server
//! ends their exports (their VMs lose their disks), so migrate or stop them
//! before restarting.
//!
//! A migrated VM is a normal VM of its host: its command line with the production disks is
//! saved as its launch record ([`super::launch`]), so `cairn vm stop|start HOST/NAME` stops and
//! starts it; its pid file and serial log stay in `DATA/instant/NAME/` while this run of it
//! lasts (QEMU holds them), and are removed once it has ended. Stopping a migrated instant
//! recovery only forgets it: its VM runs on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_nbd::{CowExport, NbdServer, ServerHandle};
use cairn_qemu::config::{LaunchDisk, LaunchSpec, VmConfig};
use cairn_qemu::qmp::Qmp;
use serde_json::json;

use super::QMP_TIMEOUT;
use crate::error::{ServiceError, ServiceResult};
pub use cairn_api::instant::{InstantInfo, InstantState};

/// The pid file of an instant recovery's QEMU in its folder.
pub(crate) const PIDFILE: &str = "qemu.pid";
/// Its serial log.
pub(crate) const SERIAL_LOG: &str = "serial.log";

/// The copy-on-write scratch file of disk `i`.
pub(crate) fn cow_file(i: usize) -> String {
    format!("disk{i}.cow")
}

/// Copy-on-write granularity of the scratch file.
pub(crate) const COW_CLUSTER: u32 = 64 << 10;
/// How long a storage migration may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(3600);

pub(crate) struct Recovery {
    pub(crate) info: InstantInfo,
    pub(crate) exports: Vec<(String, Arc<CowExport>)>,
    pub(crate) scratch: PathBuf,
    /// The configuration it runs with (the point's, with its own UUID and MAC addresses).
    pub(crate) config: VmConfig,
    /// How it was started.
    pub(crate) spec: LaunchSpec,
    /// Its host.
    pub(crate) host_id: i64,
}

/// The instant recoveries of the server, with the NBD server that serves them.
pub struct InstantRecoveries {
    pub(crate) socket: PathBuf,
    pub(crate) server: Arc<NbdServer>,
    pub(crate) handle: Mutex<Option<ServerHandle>>,
    pub(crate) running: Mutex<HashMap<String, Recovery>>,
}

impl InstantRecoveries {
    /// Instant recoveries whose NBD socket and scratch files are under `dir` (the socket is made
    /// at the first start). Folders of earlier recoveries whose VM has ended are removed.
    pub fn new(dir: PathBuf) -> Arc<InstantRecoveries> {
        let recoveries = Arc::new(InstantRecoveries {
            socket: dir.join("nbd.sock"),
            server: NbdServer::new(),
            handle: Mutex::new(None),
            running: Mutex::new(HashMap::new()),
        });
        recoveries.sweep();
        recoveries
    }

    /// Removes the folders (`DATA/instant/NAME/`) of instant recoveries the server no longer
    /// runs whose VM has ended (a migrated VM keeps its pid file and serial log there while it
    /// runs).
    pub fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return;
        };
        let active: Vec<String> = self
            .running
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !path.is_dir() || active.contains(&name) {
                continue;
            }
            if cairn_qemu::process::running_pid(&path.join(PIDFILE)).is_none()
                && let Err(e) = std::fs::remove_dir_all(&path)
            {
                tracing::warn!("removing {} (its VM has ended): {e}", path.display());
            }
        }
    }

    /// Records that `name` now runs from `targets`; returns its host.
    pub(crate) fn migrated(&self, name: &str, targets: &[PathBuf]) -> Option<i64> {
        let mut r = self.running.lock().ok()?;
        let rec = r.get_mut(name)?;
        rec.info.state = InstantState::Migrated;
        rec.info.disks = targets.iter().map(|t| t.display().to_string()).collect();
        Some(rec.host_id)
    }

    /// Saves how to start migrated `name` again: its command line with the production disks
    /// `targets` (qcow2), its sockets, UUID and MAC addresses, its pid file and serial log beside
    /// the first disk. Returns the record's path.
    pub(crate) fn save_launch_record(
        &self,
        name: &str,
        targets: &[PathBuf],
        data_dir: &std::path::Path,
    ) -> Result<PathBuf, String> {
        let (config, spec, host_id) = {
            let r = self
                .running
                .lock()
                .map_err(|_| "instant recovery state: lock poisoned".to_owned())?;
            let rec = r.get(name).ok_or_else(|| format!("instant recovery {name} is gone"))?;
            (rec.config.clone(), rec.spec.clone(), rec.host_id)
        };
        let folder = targets
            .first()
            .and_then(|t| t.parent())
            .ok_or_else(|| "no production disk".to_owned())?;
        let (pid, serial) = super::launch::file_names(name);
        let spec = LaunchSpec {
            disks: targets
                .iter()
                .map(|t| LaunchDisk::File {
                    path: t.clone(),
                    format: "qcow2".into(),
                })
                .collect(),
            pidfile: Some(folder.join(&pid)),
            serial_log: Some(folder.join(&serial)),
            ..spec
        };
        let argv = config
            .command_line(&spec)
            .map_err(|e| format!("building its QEMU command line: {e}"))?;
        let record = super::launch::LaunchRecord {
            name: name.to_owned(),
            host_id,
            qmp: spec.qmp.clone(),
            qga: spec.qga.clone(),
            argv,
            pidfile: folder.join(pid),
            serial_log: folder.join(serial),
            disks: targets.to_vec(),
            saved_at: jiff::Timestamp::now(),
        };
        record.save(data_dir).map_err(|e| format!("writing it: {e}"))
    }

    /// The pid file an instant recovery named `name` gave its QEMU (`DATA/instant/NAME/qemu.pid`).
    pub fn pidfile_of(&self, name: &str) -> PathBuf {
        self.dir().join(name).join(PIDFILE)
    }

    /// The instant recovery whose VM's QMP socket is `qmp`.
    pub fn by_qmp(&self, qmp: &str) -> Option<InstantInfo> {
        self.list().into_iter().find(|i| i.qmp == qmp)
    }

    /// Forgets instant recovery `name` (its VM is no longer its business).
    pub fn forget(&self, name: &str) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(name);
        }
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.socket
            .parent()
            .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
    }

    pub(crate) fn ensure_serving(&self) -> ServiceResult<()> {
        let mut handle = self
            .handle
            .lock()
            .map_err(|_| ServiceError::internal("instant recovery state", "lock poisoned"))?;
        if handle.is_none() {
            std::fs::create_dir_all(self.dir())
                .map_err(|e| ServiceError::internal(format!("creating {}", self.dir().display()), e))?;
            let _ = std::fs::remove_file(&self.socket);
            *handle = Some(
                self.server
                    .serve_unix(&self.socket)
                    .map_err(|e| ServiceError::internal(format!("serving NBD on {}", self.socket.display()), e))?,
            );
        }
        Ok(())
    }

    pub(crate) fn list(&self) -> Vec<InstantInfo> {
        let running = self.running.lock().map(|r| {
            r.values()
                .map(|rec| {
                    let mut info = rec.info.clone();
                    info.written_bytes = rec.exports.iter().map(|(_, e)| e.written_bytes()).sum();
                    info
                })
                .collect::<Vec<_>>()
        });
        let mut out = running.unwrap_or_default();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub(crate) fn set_state(&self, name: &str, state: InstantState) {
        if let Ok(mut r) = self.running.lock()
            && let Some(rec) = r.get_mut(name)
        {
            rec.info.state = state;
        }
    }

    /// Ends the exports and scratch files of `name` (its VM no longer reads them). With
    /// `vm_ended` its whole folder goes; otherwise its pid file and serial log stay (the VM runs
    /// on and QEMU holds them).
    pub(crate) fn end_exports(&self, name: &str, vm_ended: bool) {
        if let Ok(mut r) = self.running.lock()
            && let Some(rec) = r.get_mut(name)
        {
            for (export, _) in rec.exports.drain(..) {
                self.server.remove_export(&export);
            }
            rec.info.exports.clear();
            if vm_ended {
                let _ = std::fs::remove_dir_all(&rec.scratch);
            } else {
                for i in 0..rec.config.disks.len() {
                    let _ = std::fs::remove_file(rec.scratch.join(cow_file(i)));
                }
            }
        }
    }
}

/// Waits for block job `job` to send `event` (or to fail).
pub(crate) async fn wait_job(
    qmp: &Qmp,
    events: &mut tokio::sync::broadcast::Receiver<cairn_qemu::qmp::QmpEvent>,
    job: &str,
    event: &str,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let ev = tokio::time::timeout(left, events.recv())
            .await
            .map_err(|_| format!("block job {job}: no {event} within {} s", MIGRATION_TIMEOUT.as_secs()))?
            .map_err(|e| format!("QMP events of {}: {e}", qmp.path().display()))?;
        let device = ev.data.get("device").and_then(|d| d.as_str()).unwrap_or("");
        if device != job {
            continue;
        }
        if let Some(err) = ev.data.get("error").and_then(|e| e.as_str()) {
            return Err(format!("block job {job}: {err}"));
        }
        if ev.event == event {
            return Ok(());
        }
        if ev.event == "BLOCK_JOB_CANCELLED" {
            return Err(format!("block job {job} was cancelled"));
        }
    }
}

pub(crate) async fn run_migration(info: &InstantInfo, targets: &[PathBuf]) -> Result<(), String> {
    let qmp = Qmp::connect(std::path::Path::new(&info.qmp), QMP_TIMEOUT)
        .await
        .map_err(|e| format!("QMP socket {}: {e}", info.qmp))?;
    let disks = cairn_qemu::disks::list_disks(&qmp).await.map_err(|e| e.to_string())?;
    if disks.len() != targets.len() {
        return Err(format!(
            "the VM has {} disks, {} targets given",
            disks.len(),
            targets.len()
        ));
    }
    for (i, (target, disk)) in targets.iter().zip(&disks).enumerate() {
        let (source, size) = (disk.node.clone(), disk.virtual_size);
        let out = tokio::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(target)
            .arg(size.to_string())
            .output()
            .await
            .map_err(|e| format!("running qemu-img create: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "qemu-img create {}: {}",
                target.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let node = format!("cairn-prod{i}");
        qmp.blockdev_add(json!({
            "driver": "qcow2", "node-name": node,
            "file": {"driver": "file", "filename": target.display().to_string()}
        }))
        .await
        .map_err(|e| format!("attaching {}: {e}", target.display()))?;
        let job = format!("cairn-migrate{i}");
        let mut events = qmp.events();
        qmp.execute(
            "blockdev-mirror",
            json!({"job-id": job, "device": source, "target": node, "sync": "full"}),
        )
        .await
        .map_err(|e| format!("blockdev-mirror of disk {i}: {e}"))?;
        wait_job(&qmp, &mut events, &job, "BLOCK_JOB_READY").await?;
        qmp.execute("block-job-complete", json!({"device": job}))
            .await
            .map_err(|e| format!("completing the mirror of disk {i}: {e}"))?;
        wait_job(&qmp, &mut events, &job, "BLOCK_JOB_COMPLETED").await?;
        // The VM now writes to the production file. A node the command line made with -blockdev
        // stays until deleted; one made by -drive went with its last user.
        let _ = qmp.blockdev_del(&source).await;
    }
    Ok(())
}
