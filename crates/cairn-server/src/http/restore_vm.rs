//! Whole-VM restores to a qemu host: every disk of a restore point to new
//! image files, then a QEMU process started with the configuration saved
//! with the point — beside the original under a new name, or in place of the
//! original (stopped, its disks replaced, started again).
//!
//! The started VM's pid file and serial log lie beside its disks (`NAME.pid`,
//! `NAME.serial.log`, made like the disks, never in the host's socket folder), and its command
//! line is kept as its launch record ([`crate::live::launch`]): `cairn vm stop|start HOST/NAME`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::State;
use cairn_configdb::{Host, HostKind, Role};
use cairn_confine::{AllowedFolders, ConfinedDir};
use cairn_disk::Format;
use cairn_engine::RestoreTarget;
use cairn_qemu::config::{LaunchDisk, LaunchSpec, VmConfig};
use cairn_qemu::process::QemuProcess;
use cairn_qemu::qmp::Qmp;

use crate::auth::Caller;
use crate::http::ApiJson;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::repositories::open_repository;
use crate::http::restore::NewRestoreFile;
use crate::live::{QMP_TIMEOUT, QemuLocation};
use crate::repositories::repo_error;
use crate::restore_folders::{self, confine_error};
use crate::state::AppState;
pub use cairn_api::restore::{VmRestoreRequest, VmRestoreResult};

/// The name of a VM a restore starts: `name`, else `<original>-<suffix>`; it names its socket
/// files, so it must be a plain file name.
pub(crate) fn vm_name(name: Option<&str>, original: &str, suffix: &str) -> ApiResult<String> {
    let name = name.map_or_else(|| format!("{original}-{suffix}"), str::to_string);
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(ApiError::invalid(format!("name {name:?}: a plain file name is needed")));
    }
    Ok(name)
}

/// The qemu host named `name`, or 404/422.
pub(crate) async fn qemu_host(state: &AppState, name: &str) -> ApiResult<(Host, QemuLocation)> {
    let host = state
        .db
        .list_hosts()
        .await?
        .into_iter()
        .find(|h| h.name == name)
        .ok_or_else(|| ApiError::not_found(format!("there is no host named {name:?}")))?;
    if host.kind != HostKind::Qemu {
        return Err(ApiError::invalid(format!(
            "host {name} is an {} host: VMs can only be restored to qemu hosts",
            host.kind
        )));
    }
    let location = QemuLocation::of(&host).map_err(ApiError::invalid)?;
    Ok((host, location))
}

/// The saved configuration of `vm`'s point `point`, with the point's id.
pub(crate) async fn saved_config(
    state: &AppState,
    row: &cairn_configdb::Repository,
    vm: &str,
    point: &str,
) -> ApiResult<(std::sync::Arc<cairn_repo::Repository>, String, VmConfig, usize)> {
    let repo = open_repository(state, row).await?;
    let (vm_name, sel) = (vm.to_string(), point.to_string());
    let r = repo.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<_, cairn_repo::RepoError> {
        let chain = r.chain(&vm_name)?;
        let p = chain.point(&sel)?;
        Ok((p.id.clone(), p.vm_config.clone(), p.disks.len()))
    })
    .await?
    .map_err(repo_error)?;
    let (id, config, disks) = found;
    let config = config.ok_or_else(|| {
        ApiError::invalid(format!(
            "restore point {id} of {vm} has no VM configuration (it was not backed up from a running VM): \
             restore its disks one by one instead"
        ))
    })?;
    let config: VmConfig = serde_json::from_value(config)
        .map_err(|e| ApiError::invalid(format!("restore point {id} of {vm}: its VM configuration: {e}")))?;
    Ok((repo, id, config, disks))
}

/// The QEMU format name of a disk format written by cairn.
fn qemu_format(format: Format) -> &'static str {
    match format {
        Format::Raw => "raw",
        Format::Qcow2 => "qcow2",
        Format::Vhdx => "vhdx",
        Format::Vhd => "vpc",
    }
}

fn cairn_format(qemu: &str) -> Format {
    match qemu {
        "raw" => Format::Raw,
        "vhdx" => Format::Vhdx,
        "vpc" => Format::Vhd,
        _ => Format::Qcow2,
    }
}

/// Where a restored disk goes: `written` in `dir`, then renamed to `name` (the same for a new VM).
struct DiskTarget {
    dir: ConfinedDir,
    written: OsString,
    name: OsString,
}

/// The disks of a VM being replaced: each disk file of the saved configuration must be one the
/// VM uses now (the inventory); it is written beside the original as `FILE.cairn-restore` in the
/// original's folder (opened without following links below it, never in the data folder).
fn replaced_disks(config: &VmConfig, current: &[PathBuf], data_dir: &Path) -> ApiResult<Vec<DiskTarget>> {
    let mut out = Vec::new();
    for d in &config.disks {
        let path = PathBuf::from(&d.file);
        if !current.contains(&path) {
            return Err(ApiError::conflict(format!(
                "the VM does not use {} any more (its disks changed since the backup): restore it as a new VM \
                 instead",
                path.display()
            )));
        }
        let (Some(folder), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(ApiError::invalid(format!("{}: not a file path", path.display())));
        };
        let dir = AllowedFolders::new([folder.to_path_buf()])
            .protect(data_dir)
            .open_folder(folder)
            .map_err(confine_error)?;
        let mut written = name.to_os_string();
        written.push(".cairn-restore");
        out.push(DiskTarget {
            dir,
            written,
            name: name.to_os_string(),
        });
    }
    Ok(out)
}

/// Stops the VM behind `qmp_path` and waits until its socket is gone or refuses.
async fn stop_vm(qmp_path: &Path) -> ApiResult<()> {
    let qmp = Qmp::connect(qmp_path, QMP_TIMEOUT)
        .await
        .map_err(|e| ApiError::invalid(format!("the original VM's QMP socket {}: {e}", qmp_path.display())))?;
    super::vm_control::quit_and_wait("being replaced", qmp_path, qmp).await
}

/// The VM a restore starts: its name, where its disks go, its sockets.
struct Plan {
    name: String,
    targets: Vec<DiskTarget>,
    qmp: PathBuf,
    qga: Option<PathBuf>,
}

impl Plan {
    /// The final paths of its disk files, in the VM's disk order.
    fn disk_paths(&self) -> Vec<PathBuf> {
        self.targets.iter().map(|t| t.dir.path().join(&t.name)).collect()
    }
}

/// Checks what can be checked before anything is looked up: the request's combination of
/// options, its point selector, and that its folder may be written.
async fn check_request(state: &AppState, req: &VmRestoreRequest) -> ApiResult<()> {
    if req.replace_original && (req.name.is_some() || req.folder.is_some()) {
        return Err(ApiError::invalid(
            "replace_original: a replaced VM keeps its name and disk files (leave out name and folder)",
        ));
    }
    if !crate::http::restore::is_point_selector(&req.point) {
        return Err(ApiError::invalid(format!(
            "point {:?}: give latest, or a restore point id or its first hex digits",
            req.point
        )));
    }
    if let Some(folder) = &req.folder {
        cairn_api::checks::absolute_path("folder", folder)?;
        restore_folders::allowed(&state.db, &state.data_dir)
            .await?
            .check_text(Path::new(folder))
            .map_err(confine_error)?;
    }
    Ok(())
}

/// The plan of a restore in place of VM `orig_vm` of `host`: its disks are the ones it uses now.
async fn plan_replacement(
    state: &AppState,
    host: &Host,
    location: &QemuLocation,
    config: &VmConfig,
    orig_vm: &str,
) -> ApiResult<Plan> {
    let vm = state
        .db
        .list_vms(Some(host.id))
        .await?
        .into_iter()
        .find(|v| v.name == orig_vm)
        .ok_or_else(|| ApiError::not_found(format!("host {} has no VM named {orig_vm:?} to replace", host.name)))?;
    let qmp = PathBuf::from(&vm.external_id);
    let current: Vec<PathBuf> = state
        .db
        .list_disks(vm.id)
        .await?
        .into_iter()
        .map(|d| PathBuf::from(d.path))
        .collect();
    let targets = replaced_disks(config, &current, &state.data_dir)?;
    let qga = location
        .agent_for(&qmp)
        .or_else(|| config.guest_agent.then(|| qmp.with_extension("qga")));
    Ok(Plan {
        name: vm.name,
        targets,
        qmp,
        qga,
    })
}

/// The plan of a restore as a new VM: a new name, new disk files in a (new) folder beneath a
/// restore folder, new sockets; nothing that exists is overwritten.
async fn plan_new_vm(
    state: &AppState,
    req: &VmRestoreRequest,
    location: &QemuLocation,
    config: &VmConfig,
    orig_vm: &str,
) -> ApiResult<Plan> {
    let name = vm_name(req.name.as_deref(), orig_vm, "restored")?;
    let allowed = restore_folders::allowed(&state.db, &state.data_dir).await?;
    let folder = match &req.folder {
        Some(f) => PathBuf::from(f),
        None => allowed
            .roots()
            .first()
            .map(|root| root.join(&name))
            .ok_or_else(|| ApiError::invalid("no restore folders are configured (see the settings)"))?,
    };
    allowed.check_text(&folder).map_err(confine_error)?;
    let qmp = location.socket_folder().join(format!("{name}.qmp"));
    let qga = config.guest_agent.then(|| qmp.with_extension("qga"));
    for p in [&qmp].into_iter().chain(qga.iter()) {
        if p.symlink_metadata().is_ok() {
            return Err(ApiError::conflict(format!(
                "{} already exists: restores never overwrite (choose another name)",
                p.display()
            )));
        }
    }
    let dir = allowed.create_folder(&folder).map_err(confine_error)?;
    let mut targets = Vec::new();
    for (i, d) in config.disks.iter().enumerate() {
        let ext = match d.format.as_str() {
            "raw" => "raw",
            "vpc" => "vhd",
            "vhdx" => "vhdx",
            _ => "qcow2",
        };
        let file = OsString::from(format!("disk{i}.{ext}"));
        if dir.contains(&file).map_err(confine_error)? {
            return Err(ApiError::conflict(format!(
                "{} already exists: restores never overwrite (choose another name or folder)",
                dir.path().join(&file).display()
            )));
        }
        targets.push(DiskTarget {
            dir: dir.clone(),
            written: file.clone(),
            name: file,
        });
    }
    Ok(Plan {
        name,
        targets,
        qmp,
        qga,
    })
}

/// Restores every disk of point `point_id` to its target. Disks being replaced go to
/// `<file>.cairn-restore` first and are renamed over the originals only when all are written: a
/// failed restore leaves the original disks as they were (and removes what it wrote).
async fn write_disks(
    state: &AppState,
    user: &str,
    row: &cairn_configdb::Repository,
    (vm, point_id): (&str, &str),
    config: &VmConfig,
    targets: &[DiskTarget],
) -> ApiResult<()> {
    let mut written: Vec<&DiskTarget> = Vec::new();
    for (i, (disk, t)) in config.disks.iter().zip(targets).enumerate() {
        if t.written != t.name && t.dir.contains(&t.written).map_err(confine_error)? {
            t.dir.remove_file(&t.written).map_err(confine_error)?;
        }
        let target = RestoreTarget {
            format: cairn_format(&disk.format),
            logical_sector: None,
            block_size: None,
        };
        let file = NewRestoreFile::InFolder {
            dir: t.dir.clone(),
            name: t.written.clone(),
            mode: cairn_confine::DEFAULT_FILE_MODE,
        };
        if let Err(e) = crate::http::restore::restore_disk(state, user, row, vm, point_id, i as u32, file, target).await
        {
            for w in &written {
                let _ = w.dir.remove_file(&w.written);
            }
            return Err(e);
        }
        written.push(t);
    }
    for t in targets {
        if t.written != t.name {
            t.dir.rename(&t.written, &t.name).map_err(confine_error)?;
        }
    }
    Ok(())
}

/// A started VM: its process id and serial log.
struct Started {
    pid: Option<u32>,
    serial_log: PathBuf,
}

/// Starts the restored VM of `plan` on `host` with the saved configuration, its pid file and
/// serial log beside its (first) disk, and keeps its launch record.
async fn launch(
    state: &AppState,
    host: &Host,
    config: &VmConfig,
    plan: &Plan,
    accel: Option<String>,
    new_macs: bool,
) -> ApiResult<Started> {
    let name = &plan.name;
    let disk_paths = plan.disk_paths();
    let files_dir = plan
        .targets
        .first()
        .map(|t| t.dir.clone())
        .ok_or_else(|| ApiError::invalid("the restore point has no disks"))?;
    let (pid_name, serial_name) = crate::live::launch::file_names(name);
    let (pidfile, serial_log) =
        crate::live::launch::fresh_files(&files_dir, &pid_name, &serial_name).map_err(confine_error)?;
    let spec = LaunchSpec {
        name: name.clone(),
        disks: config
            .disks
            .iter()
            .zip(&disk_paths)
            .map(|(d, p)| LaunchDisk::File {
                path: p.clone(),
                format: qemu_format(cairn_format(&d.format)).to_string(),
            })
            .collect(),
        qmp: plan.qmp.clone(),
        qga: plan.qga.clone(),
        accel,
        daemonize: true,
        pidfile: Some(pidfile.clone()),
        serial_log: Some(serial_log.clone()),
        new_macs,
    };
    let argv = config
        .command_line(&spec)
        .map_err(|e| ApiError::invalid(format!("building the QEMU command line: {e}")))?;
    let process = QemuProcess::spawn(&argv, &plan.qmp, QMP_TIMEOUT)
        .await
        .map_err(|e| ApiError::internal(format!("starting the restored VM {name}"), e))?;
    let pid = Some(process.detach());
    let record = crate::live::launch::LaunchRecord {
        name: crate::live::launch::vm_name_of(&plan.qmp).unwrap_or_else(|| name.clone()),
        host_id: host.id,
        qmp: plan.qmp.clone(),
        qga: plan.qga.clone(),
        argv,
        pidfile,
        serial_log: serial_log.clone(),
        disks: disk_paths,
        saved_at: jiff::Timestamp::now(),
    };
    if let Err(e) = record.save(&state.data_dir) {
        tracing::error!(
            "VM {name} runs, but its launch record could not be saved (`cairn vm start` cannot start it again): {e}"
        );
    }
    Ok(Started { pid, serial_log })
}

/// Restores a whole VM from a restore point to a qemu host and starts it.
#[utoipa::path(post, path = "/api/v1/restores/vm", tag = "restore", request_body = VmRestoreRequest,
    responses(
        (status = 200, description = "The VM is restored and started", body = VmRestoreResult),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "Needs the restore-operator role or higher; or the folder is not beneath a restore folder, goes through `..` or a symbolic link, or into the data folder", body = ErrorBody),
        (status = 404, description = "No such repository, host, VM or point", body = ErrorBody),
        (status = 409, description = "A target file or socket exists", body = ErrorBody),
        (status = 422, description = "Invalid input, or the point has no VM configuration", body = ErrorBody),
    ))]
pub async fn restore_vm(
    caller: Caller,
    State(state): State<AppState>,
    audit: crate::http::audit_trail::AuditSlot,
    ApiJson(req): ApiJson<VmRestoreRequest>,
) -> ApiResult<Json<VmRestoreResult>> {
    audit.target(format!("VM {} point {}", req.vm, req.point));
    audit.detail("replace_original", req.replace_original);
    if let Some(folder) = &req.folder {
        audit.detail("folder", folder.clone());
    }
    if let Some(host) = &req.to_host {
        audit.detail("to_host", host.clone());
    }
    caller.require(Role::RestoreOperator)?;
    let started = std::time::Instant::now();
    // A folder that cannot be written is refused before anything is looked up.
    check_request(&state, &req).await?;
    let row = state.db.get_repository(req.repository_id).await?;
    let (_repo, point_id, config, disk_count) = saved_config(&state, &row, &req.vm, &req.point).await?;
    let (orig_host, orig_vm) = req.vm.split_once('/').unwrap_or(("", req.vm.as_str()));
    let host_name = req.to_host.clone().unwrap_or_else(|| orig_host.to_string());
    let (host, location) = qemu_host(&state, &host_name).await?;
    if config.disks.len() != disk_count {
        return Err(ApiError::invalid(format!(
            "restore point {point_id} of {}: {} disks stored but {} in its VM configuration",
            req.vm,
            disk_count,
            config.disks.len()
        )));
    }
    let plan = if req.replace_original {
        plan_replacement(&state, &host, &location, &config, orig_vm).await?
    } else {
        plan_new_vm(&state, &req, &location, &config, orig_vm).await?
    };
    if req.replace_original {
        stop_vm(&plan.qmp).await?;
    }
    write_disks(&state, &caller.name, &row, (&req.vm, &point_id), &config, &plan.targets).await?;
    let vm = launch(&state, &host, &config, &plan, req.accel.clone(), !req.replace_original).await?;
    tracing::info!(
        "{} restored VM {} point {point_id} to host {} as {} (pid {:?})",
        caller.name,
        req.vm,
        host.name,
        plan.name,
        vm.pid
    );
    // The VM's socket is in the host's folder (or is the host's socket): record it in the inventory.
    crate::live::inventory::rescan_after_change(&state.db, host.id).await;
    Ok(Json(VmRestoreResult {
        disks: plan.disk_paths().iter().map(|p| p.display().to_string()).collect(),
        name: plan.name,
        point: point_id,
        qmp: plan.qmp.display().to_string(),
        qga: plan.qga.map(|p| p.display().to_string()),
        pid: vm.pid,
        serial_log: vm.serial_log.display().to_string(),
        replaced: req.replace_original,
        duration_secs: started.elapsed().as_secs_f64(),
    }))
}
