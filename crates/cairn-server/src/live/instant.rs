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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_disk::DiskSource;
use cairn_engine::PointDisk;
use cairn_nbd::{CowExport, NbdServer, ServerHandle};
use cairn_qemu::config::{LaunchDisk, LaunchSpec, VmConfig};
use cairn_qemu::process::QemuProcess;
use cairn_qemu::qmp::Qmp;
use serde_json::json;

use super::QMP_TIMEOUT;
use crate::error::{ServiceError, ServiceResult};
pub use cairn_api::instant::{InstantInfo, InstantState};

/// The pid file of an instant recovery's QEMU in its folder.
const PIDFILE: &str = "qemu.pid";
/// Its serial log.
const SERIAL_LOG: &str = "serial.log";

/// The copy-on-write scratch file of disk `i`.
fn cow_file(i: usize) -> String {
    format!("disk{i}.cow")
}

/// Copy-on-write granularity of the scratch file.
const COW_CLUSTER: u32 = 64 << 10;
/// How long a storage migration may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(3600);

/// An instant recovery the server runs.
struct Recovery {
    info: InstantInfo,
    exports: Vec<(String, Arc<CowExport>)>,
    scratch: PathBuf,
    /// The configuration it runs with (the point's, with its own UUID and MAC addresses).
    config: VmConfig,
    /// How it was started.
    spec: LaunchSpec,
    /// Its host.
    host_id: i64,
}

/// What an instant recovery starts from: a restore point's disks, the VM's configuration, where
/// its sockets go.
pub(crate) struct Launch {
    /// The recovery's (and its VM's) name.
    pub(crate) name: String,
    /// The repository holding the point.
    pub(crate) repo: Arc<cairn_repo::Repository>,
    /// The VM backed up (`HOST/VM`).
    pub(crate) vm: String,
    /// The restore point id.
    pub(crate) point: String,
    /// How many disks the point has.
    pub(crate) disks: usize,
    /// The configuration to start (with its own UUID and MAC addresses).
    pub(crate) config: VmConfig,
    /// The host it runs on: id and name.
    pub(crate) host: (i64, String),
    /// Its QMP socket.
    pub(crate) qmp: PathBuf,
    /// Its guest agent socket, when the original had one.
    pub(crate) qga: Option<PathBuf>,
    /// Accelerator (default: as the original ran).
    pub(crate) accel: Option<String>,
    /// When the request came (for `start_secs`).
    pub(crate) requested: std::time::Instant,
}

/// The instant recoveries of the server, with the NBD server that serves them.
pub struct InstantRecoveries {
    socket: PathBuf,
    server: Arc<NbdServer>,
    handle: Mutex<Option<ServerHandle>>,
    running: Mutex<HashMap<String, Recovery>>,
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

    /// Whether an instant recovery named `name` runs (or the state cannot be read).
    pub(crate) fn is_running(&self, name: &str) -> bool {
        self.running.lock().map(|r| r.contains_key(name)).unwrap_or(true)
    }

    /// Serves each disk of the point as a copy-on-write NBD export (its writes go to a scratch
    /// file in `DATA/instant/NAME/`) and starts the VM on them. On failure nothing stays behind.
    pub(crate) async fn launch(&self, l: Launch) -> ServiceResult<InstantInfo> {
        let name = l.name.clone();
        if self.is_running(&name) {
            return Err(ServiceError::conflict(format!(
                "instant recovery {name} is already running"
            )));
        }
        self.ensure_serving()?;
        let scratch = self.dir().join(&name);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| ServiceError::internal(format!("creating {}", scratch.display()), e))?;
        let exports = match self.add_exports(&l, &scratch).await {
            Ok(e) => e,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(e);
            }
        };
        let spec = LaunchSpec {
            name: name.clone(),
            disks: exports
                .iter()
                .enumerate()
                .map(|(i, (export, _))| LaunchDisk::Nbd {
                    socket: self.socket.clone(),
                    export: export.clone(),
                    node: format!("ir-disk{i}"),
                })
                .collect(),
            qmp: l.qmp.clone(),
            qga: l.qga.clone(),
            accel: l.accel.clone(),
            daemonize: true,
            pidfile: Some(scratch.join(PIDFILE)),
            serial_log: Some(scratch.join(SERIAL_LOG)),
            new_macs: false,
        };
        let started = match l.config.command_line(&spec) {
            Ok(argv) => QemuProcess::spawn(&argv, &l.qmp, QMP_TIMEOUT)
                .await
                .map_err(|e| ServiceError::internal(format!("starting instant recovery {name}"), e)),
            Err(e) => Err(ServiceError::invalid(format!("building the QEMU command line: {e}"))),
        };
        let process = match started {
            Ok(p) => p,
            Err(e) => {
                self.remove_exports(&exports);
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(e);
            }
        };
        let info = InstantInfo {
            name: name.clone(),
            vm: l.vm,
            host: l.host.1,
            point: l.point,
            state: InstantState::Running,
            qmp: l.qmp.display().to_string(),
            qga: l.qga.map(|p| p.display().to_string()),
            pid: Some(process.detach()),
            exports: exports.iter().map(|(e, _)| e.clone()).collect(),
            written_bytes: 0,
            disks: Vec::new(),
            serial_log: spec.serial_log.as_ref().map(|p| p.display().to_string()),
            start_secs: l.requested.elapsed().as_secs_f64(),
        };
        if let Ok(mut r) = self.running.lock() {
            r.insert(
                name,
                Recovery {
                    info: info.clone(),
                    exports,
                    scratch,
                    config: l.config,
                    spec,
                    host_id: l.host.0,
                },
            );
        }
        Ok(info)
    }

    /// Stops serving `exports` (of a start that failed).
    fn remove_exports(&self, exports: &[(String, Arc<CowExport>)]) {
        for (name, _) in exports {
            self.server.remove_export(name);
        }
    }

    /// One copy-on-write export per disk of the point, named `NAME-diskI`, its scratch file in
    /// `scratch`; on failure the ones added are removed.
    async fn add_exports(&self, l: &Launch, scratch: &Path) -> ServiceResult<Vec<(String, Arc<CowExport>)>> {
        let mut exports: Vec<(String, Arc<CowExport>)> = Vec::new();
        for i in 0..l.disks {
            let (r, vm, point, path) = (l.repo.clone(), l.vm.clone(), l.point.clone(), scratch.join(cow_file(i)));
            let opened = tokio::task::spawn_blocking(move || -> Result<CowExport, String> {
                let base: Arc<dyn DiskSource> =
                    Arc::new(PointDisk::open(&r, &vm, &point, i as u32).map_err(|e| e.to_string())?);
                CowExport::create(base, &path, COW_CLUSTER).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| ServiceError::internal("opening a restore point's disk", e))
            .and_then(|r| {
                r.map_err(|e| ServiceError::invalid(format!("opening disk {i} of {} point {}: {e}", l.vm, l.point)))
            });
            let export = match opened {
                Ok(export) => Arc::new(export),
                Err(e) => {
                    self.remove_exports(&exports);
                    return Err(e);
                }
            };
            let export_name = format!("{}-disk{i}", l.name);
            self.server.add_export(
                &export_name,
                &format!("{} point {} disk {i}", l.vm, l.point),
                export.clone(),
            );
            exports.push((export_name, export));
        }
        Ok(exports)
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
