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

use axum::Json;
use axum::extract::State;
use cairn_configdb::Role;
use cairn_disk::DiskSource;
use cairn_engine::PointDisk;
use cairn_nbd::{CowExport, NbdServer, ServerHandle};
use cairn_qemu::config::{LaunchDisk, LaunchSpec, VmConfig};
use cairn_qemu::process::QemuProcess;
use cairn_qemu::qmp::Qmp;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::QMP_TIMEOUT;
use super::restore_vm::{latest, qemu_host, saved_config, vm_name};
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::{ApiJson, ApiPath};
use crate::auth::Caller;
use crate::state::AppState;

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
    fn migrated(&self, name: &str, targets: &[PathBuf]) -> Option<i64> {
        let mut r = self.running.lock().ok()?;
        let rec = r.get_mut(name)?;
        rec.info.state = InstantState::Migrated;
        rec.info.disks = targets.iter().map(|t| t.display().to_string()).collect();
        Some(rec.host_id)
    }

    /// Saves how to start migrated `name` again: its command line with the production disks
    /// `targets` (qcow2), its sockets, UUID and MAC addresses, its pid file and serial log beside
    /// the first disk. Returns the record's path.
    fn save_launch_record(
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

    fn dir(&self) -> PathBuf {
        self.socket
            .parent()
            .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
    }

    fn ensure_serving(&self) -> ApiResult<()> {
        let mut handle = self
            .handle
            .lock()
            .map_err(|_| ApiError::internal("instant recovery state", "lock poisoned"))?;
        if handle.is_none() {
            std::fs::create_dir_all(self.dir())
                .map_err(|e| ApiError::internal(format!("creating {}", self.dir().display()), e))?;
            let _ = std::fs::remove_file(&self.socket);
            *handle = Some(
                self.server
                    .serve_unix(&self.socket)
                    .map_err(|e| ApiError::internal(format!("serving NBD on {}", self.socket.display()), e))?,
            );
        }
        Ok(())
    }

    fn list(&self) -> Vec<InstantInfo> {
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

    fn set_state(&self, name: &str, state: InstantState) {
        if let Ok(mut r) = self.running.lock()
            && let Some(rec) = r.get_mut(name)
        {
            rec.info.state = state;
        }
    }

    /// Ends the exports and scratch files of `name` (its VM no longer reads them). With
    /// `vm_ended` its whole folder goes; otherwise its pid file and serial log stay (the VM runs
    /// on and QEMU holds them).
    fn end_exports(&self, name: &str, vm_ended: bool) {
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

/// `POST /api/v1/instant-recoveries` body.
#[derive(Debug, Deserialize, ToSchema)]
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
    #[schema(min_items = 1, value_type = Vec<crate::api::settings::AbsolutePath>)]
    pub to: Vec<String>,
}

/// Starts a VM from a restore point over NBD.
#[utoipa::path(post, path = "/api/v1/instant-recoveries", tag = "restore", request_body = InstantRequest,
    responses(
        (status = 201, description = "The VM runs from the backup", body = InstantInfo),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "Needs the restore-operator role or higher", body = ErrorBody),
        (status = 404, description = "No such repository, host, VM or point", body = ErrorBody),
        (status = 409, description = "The name is in use", body = ErrorBody),
        (status = 422, description = "Invalid input, or the point has no VM configuration", body = ErrorBody),
    ))]
pub async fn start(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<InstantRequest>,
) -> ApiResult<(axum::http::StatusCode, Json<InstantInfo>)> {
    caller.require(Role::RestoreOperator)?;
    if !crate::api::restore::is_point_selector(&req.point) {
        return Err(ApiError::invalid(format!(
            "point {:?}: give latest, or a restore point id or its first hex digits",
            req.point
        )));
    }
    let started = std::time::Instant::now();
    let ir = state.instant.clone();
    let row = state.db.get_repository(req.repository_id).await?;
    let (repo, point_id, config, disk_count) = saved_config(&state, &row, &req.vm, &req.point).await?;
    let (orig_host, orig_vm) = req.vm.split_once('/').unwrap_or(("", req.vm.as_str()));
    let (host, location) = qemu_host(&state, req.to_host.as_deref().unwrap_or(orig_host)).await?;
    // Its own UUID and MAC addresses, the same at every start (also once migrated).
    let config = config.with_new_identity();
    let name = vm_name(req.name.as_deref(), orig_vm, "instant")?;
    if ir.running.lock().map(|r| r.contains_key(&name)).unwrap_or(true) {
        return Err(ApiError::conflict(format!(
            "instant recovery {name} is already running"
        )));
    }
    let qmp = location.socket_folder().join(format!("{name}.qmp"));
    let qga = config.guest_agent.then(|| qmp.with_extension("qga"));
    for p in [Some(&qmp), qga.as_ref()].into_iter().flatten() {
        if p.symlink_metadata().is_ok() {
            return Err(ApiError::conflict(format!(
                "{} already exists (choose another name)",
                p.display()
            )));
        }
    }
    ir.ensure_serving()?;
    let scratch = ir.dir().join(&name);
    std::fs::create_dir_all(&scratch).map_err(|e| ApiError::internal(format!("creating {}", scratch.display()), e))?;

    // One copy-on-write export per disk over the point's disk.
    let mut exports = Vec::new();
    for i in 0..disk_count {
        let (r, vm, point, path) = (
            repo.clone(),
            req.vm.clone(),
            point_id.clone(),
            scratch.join(cow_file(i)),
        );
        let export = tokio::task::spawn_blocking(move || -> Result<CowExport, String> {
            let base: Arc<dyn DiskSource> =
                Arc::new(PointDisk::open(&r, &vm, &point, i as u32).map_err(|e| e.to_string())?);
            CowExport::create(base, &path, COW_CLUSTER).map_err(|e| e.to_string())
        })
        .await?
        .map_err(|e| ApiError::invalid(format!("opening disk {i} of {} point {point_id}: {e}", req.vm)))?;
        let export = Arc::new(export);
        let export_name = format!("{name}-disk{i}");
        ir.server.add_export(
            &export_name,
            &format!("{} point {point_id} disk {i}", req.vm),
            export.clone(),
        );
        exports.push((export_name, export));
    }
    let spec = LaunchSpec {
        name: name.clone(),
        disks: exports
            .iter()
            .enumerate()
            .map(|(i, (export, _))| LaunchDisk::Nbd {
                socket: ir.socket.clone(),
                export: export.clone(),
                node: format!("ir-disk{i}"),
            })
            .collect(),
        qmp: qmp.clone(),
        qga: qga.clone(),
        accel: req.accel.clone(),
        daemonize: true,
        pidfile: Some(scratch.join(PIDFILE)),
        serial_log: Some(scratch.join(SERIAL_LOG)),
        new_macs: false,
    };
    let cleanup = |ir: &InstantRecoveries| {
        for (export, _) in &exports {
            ir.server.remove_export(export);
        }
        let _ = std::fs::remove_dir_all(&scratch);
    };
    let argv = match config.command_line(&spec) {
        Ok(a) => a,
        Err(e) => {
            cleanup(&ir);
            return Err(ApiError::invalid(format!("building the QEMU command line: {e}")));
        }
    };
    let process = match QemuProcess::spawn(&argv, &qmp, QMP_TIMEOUT).await {
        Ok(p) => p,
        Err(e) => {
            cleanup(&ir);
            return Err(ApiError::internal(format!("starting instant recovery {name}"), e));
        }
    };
    let pid = Some(process.detach());
    let info = InstantInfo {
        name: name.clone(),
        vm: req.vm.clone(),
        host: host.name.clone(),
        point: point_id.clone(),
        state: InstantState::Running,
        qmp: qmp.display().to_string(),
        qga: qga.map(|p| p.display().to_string()),
        pid,
        exports: exports.iter().map(|(e, _)| e.clone()).collect(),
        written_bytes: 0,
        disks: Vec::new(),
        serial_log: spec.serial_log.as_ref().map(|p| p.display().to_string()),
        start_secs: started.elapsed().as_secs_f64(),
    };
    tracing::info!(
        "{} started instant recovery {name} of {} point {point_id}",
        caller.name,
        req.vm
    );
    if let Ok(mut r) = ir.running.lock() {
        r.insert(
            name,
            Recovery {
                info: info.clone(),
                exports,
                scratch,
                config,
                spec,
                host_id: host.id,
            },
        );
    }
    Ok((axum::http::StatusCode::CREATED, Json(info)))
}

/// The instant recoveries.
#[utoipa::path(get, path = "/api/v1/instant-recoveries", tag = "restore",
    responses((status = 200, description = "OK", body = Vec<InstantInfo>), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody)))]
pub async fn list(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<Vec<InstantInfo>>> {
    caller.require(Role::Viewer)?;
    Ok(Json(state.instant.list()))
}

fn find(state: &AppState, name: &str) -> ApiResult<InstantInfo> {
    state
        .instant
        .list()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| ApiError::not_found(format!("there is no instant recovery named {name:?}")))
}

/// Waits for block job `job` to send `event` (or to fail).
async fn wait_job(
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

/// Moves an instant recovery onto production disk files while it runs (`blockdev-mirror`), then
/// ends its NBD exports.
#[utoipa::path(post, path = "/api/v1/instant-recoveries/{name}/migrate", tag = "restore", request_body = MigrateRequest,
    params(("name" = String, Path, description = "Instant recovery name")),
    responses(
        (status = 200, description = "Migrated", body = InstantInfo),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "Needs the restore-operator role or higher; or a target is not beneath a restore folder, goes through `..` or a symbolic link, or into the data folder", body = ErrorBody),
        (status = 404, description = "No such instant recovery, or a target's folder does not exist", body = ErrorBody),
        (status = 409, description = "Already migrating or migrated, or a target exists", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ErrorBody),
    ))]
pub async fn migrate(
    caller: Caller,
    State(state): State<AppState>,
    audit: crate::audit::AuditSlot,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<MigrateRequest>,
) -> ApiResult<Json<InstantInfo>> {
    audit.target(format!("instant recovery {name}"));
    audit.detail("to", req.to.clone());
    caller.require(Role::RestoreOperator)?;
    let info = find(&state, &name)?;
    if info.state != InstantState::Running {
        return Err(ApiError::conflict(format!(
            "instant recovery {name} is {:?}, not running",
            info.state
        )));
    }
    if req.to.len() != info.exports.len() {
        return Err(ApiError::invalid(format!(
            "to: {} files given for {} disks",
            req.to.len(),
            info.exports.len()
        )));
    }
    let mut targets: Vec<PathBuf> = Vec::new();
    for t in &req.to {
        targets.push(crate::api::checks::absolute_path("to", t)?);
    }
    // Each target is made now, empty and 0600, beneath a restore folder (never over a file, never
    // through a link); `qemu-img create` then writes the qcow2 into it.
    let allowed = crate::restore_folders::allowed(&state.db, &state.data_dir).await?;
    let mut created = Vec::new();
    for t in &targets {
        match allowed.create_file(t, cairn_confine::DEFAULT_FILE_MODE) {
            Ok(f) => created.push(f),
            Err(e) => {
                for f in created {
                    let _ = f.remove();
                }
                return Err(crate::restore_folders::confine_error(e));
            }
        }
    }
    state.instant.set_state(&name, InstantState::Migrating);
    let result = run_migration(&info, &targets).await;
    match result {
        Ok(()) => {
            state.instant.end_exports(&name, false);
            let host_id = state.instant.migrated(&name, &targets);
            match state.instant.save_launch_record(&name, &targets, &state.data_dir) {
                Ok(path) => tracing::info!(
                    "{} migrated instant recovery {name}: VM {name} runs from {}; its launch record is {}",
                    caller.name,
                    targets
                        .iter()
                        .map(|t| t.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    path.display()
                ),
                Err(e) => tracing::error!(
                    "{} migrated instant recovery {name}, but its launch record could not be saved, so `cairn vm \
                     start` cannot start it again: {e}",
                    caller.name
                ),
            }
            if let Some(host_id) = host_id {
                super::inventory::rescan_after_change(&state.db, host_id).await;
            }
            find(&state, &name).map(Json)
        }
        Err(e) => {
            state.instant.set_state(&name, InstantState::Running);
            for f in created {
                let _ = f.remove();
            }
            Err(ApiError::invalid(format!("migrating instant recovery {name}: {e}")))
        }
    }
}

async fn run_migration(info: &InstantInfo, targets: &[PathBuf]) -> Result<(), String> {
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

/// Stops an instant recovery: quits its VM and ends its exports and scratch files. A migrated one
/// is only forgotten: its VM runs on as a normal VM of its host (`POST /api/v1/vms/{id}/stop`
/// stops it).
#[utoipa::path(delete, path = "/api/v1/instant-recoveries/{name}", tag = "restore",
    params(("name" = String, Path, description = "Instant recovery name")),
    responses(
        (status = 204, description = "Stopped (a migrated one: forgotten, its VM runs on)"),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "Needs the restore-operator role or higher", body = ErrorBody),
        (status = 404, description = "No such instant recovery", body = ErrorBody),
        (status = 409, description = "It is migrating", body = ErrorBody),
    ))]
pub async fn stop(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::http::StatusCode> {
    caller.require(Role::RestoreOperator)?;
    let info = find(&state, &name)?;
    match info.state {
        InstantState::Migrating => {
            return Err(ApiError::conflict(format!("instant recovery {name} is migrating")));
        }
        InstantState::Running => {
            if let Ok(qmp) = Qmp::connect(std::path::Path::new(&info.qmp), QMP_TIMEOUT).await {
                let _ = qmp.quit().await;
            }
        }
        InstantState::Migrated => {}
    }
    let migrated = info.state == InstantState::Migrated;
    state.instant.end_exports(&name, !migrated);
    state.instant.forget(&name);
    state.instant.sweep();
    if migrated {
        tracing::info!(
            "{} forgot migrated instant recovery {name}: its VM runs on as VM {name} of host {}",
            caller.name,
            info.host
        );
    } else {
        tracing::info!("{} stopped instant recovery {name}", caller.name);
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}
