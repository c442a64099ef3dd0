//! VMs of qemu hosts through the API: start one cairn started before (from its launch record),
//! stop one (QMP `quit`), and remove cairn's checkpoint bitmaps from one by hand.
//!
//! After a start or a stop the host is rescanned, so the inventory shows the change at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use cairn_configdb::{Host, HostKind, Vm};
use cairn_qemu::process::QemuProcess;
use cairn_qemu::qmp::Qmp;

use crate::auth::Caller;
use crate::http::ApiPath;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::live::QMP_TIMEOUT;
use crate::live::instant::InstantState;
use crate::live::launch::{self, LaunchRecord};
use crate::restore_folders::{self, confine_error};
use crate::state::AppState;
pub use cairn_api::vm::{ForgottenCheckpoints, RemovedCheckpoint, VmPowerResult};

/// How long a VM may take to end after `quit`.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The VM `id` with its host, which must be a qemu host (409 otherwise).
async fn qemu_vm(state: &AppState, id: i64) -> ApiResult<(Host, Vm)> {
    let vm = state.db.get_vm(id).await?;
    let host = state.db.get_host(vm.host_id).await?;
    if host.kind != HostKind::Qemu {
        return Err(ApiError::conflict(format!(
            "VM {}/{} is on {} host {}: only VMs of qemu hosts run under cairn's control",
            host.name, vm.name, host.kind, host.name
        )));
    }
    Ok((host, vm))
}

/// A connection to the running VM `label` at `qmp`, or 409 naming why there is none.
pub(crate) async fn connect_running(label: &str, qmp: &Path) -> ApiResult<Qmp> {
    Qmp::connect(qmp, QMP_TIMEOUT).await.map_err(|e| {
        if e.is_busy() {
            ApiError::conflict(format!(
                "VM {label}: its QMP socket {} is held by another client (a backup of it may be running): try again \
                 when it ends",
                qmp.display()
            ))
        } else {
            ApiError::conflict(format!("VM {label} is not running ({e})"))
        }
    })
}

/// Quits the VM `label` over `qmp` and waits until its socket is gone or refuses.
pub(crate) async fn quit_and_wait(label: &str, qmp_path: &Path, qmp: Qmp) -> ApiResult<()> {
    // QEMU may close the connection before it answers `quit`.
    let _ = qmp.quit().await;
    drop(qmp);
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if Qmp::connect(qmp_path, Duration::from_millis(500)).await.is_err() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(ApiError::conflict(format!(
        "VM {label} ({}) did not stop within {} s",
        qmp_path.display(),
        STOP_TIMEOUT.as_secs()
    )))
}

/// Waits until the processes `pids` of VM `label` have ended.
async fn wait_ended(label: &str, pids: &[u32]) -> ApiResult<()> {
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    while pids.iter().any(|&p| cairn_qemu::process::pid_alive(p)) {
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::conflict(format!(
                "VM {label} closed its QMP socket but its QEMU process did not end within {} s",
                STOP_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Starts a VM of a qemu host that cairn started before (a restored VM, a migrated instant
/// recovery), with the command line it saved then.
#[utoipa::path(post, path = "/api/v1/vms/{id}/start", tag = "inventory",
    params(("id" = i64, Path, description = "VM id")),
    responses(
        (status = 200, description = "The VM runs", body = VmPowerResult),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "Needs the administrator role; or its disk folder is the data folder, or reached through a symbolic link", body = ErrorBody),
        (status = 404, description = "No such VM", body = ErrorBody),
        (status = 409, description = "Not a VM of a qemu host, cairn did not start it (no launch record), or it runs", body = ErrorBody),
    ))]
pub async fn start_vm(
    caller: Caller,
    State(state): State<AppState>,
    audit: crate::http::audit_trail::AuditSlot,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<VmPowerResult>> {
    caller.require_admin()?;
    let (host, vm) = qemu_vm(&state, id).await?;
    let label = format!("{}/{}", host.name, vm.name);
    audit.target(format!("VM {label}"));
    let qmp = PathBuf::from(&vm.external_id);
    let name = launch::vm_name_of(&qmp)
        .ok_or_else(|| ApiError::conflict(format!("VM {label}: {} names no VM", qmp.display())))?;
    let record = LaunchRecord::load(&state.data_dir, host.id, &name)
        .map_err(|e| ApiError::internal(format!("VM {label}: its launch record"), e))?
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "cairn did not start VM {label} (it keeps no launch record of it): start it the way it was started \
                 before"
            ))
        })?;
    match Qmp::connect(&qmp, Duration::from_secs(2)).await {
        Ok(_) => return Err(ApiError::conflict(format!("VM {label} is running"))),
        Err(e) if e.is_busy() => return Err(ApiError::conflict(format!("VM {label} is running ({e})"))),
        Err(_) => {}
    }
    let folder = record
        .pidfile
        .parent()
        .ok_or_else(|| ApiError::internal(format!("VM {label}"), "its launch record names no pid file folder"))?;
    let allowed = restore_folders::allowed(&state.db, &state.data_dir).await?;
    let dir = launch::open_vm_folder(&allowed, &state.data_dir, folder).map_err(confine_error)?;
    let (Some(pid_name), Some(serial_name), true) = (
        record.pidfile.file_name(),
        record.serial_log.file_name(),
        record.serial_log.parent() == Some(folder),
    ) else {
        return Err(ApiError::internal(
            format!("VM {label}"),
            format!(
                "its launch record names {} and {}, not two files in one folder",
                record.pidfile.display(),
                record.serial_log.display()
            ),
        ));
    };
    launch::fresh_files(&dir, pid_name, serial_name).map_err(confine_error)?;
    let process = QemuProcess::spawn(&record.argv, &record.qmp, QMP_TIMEOUT)
        .await
        .map_err(|e| ApiError::internal(format!("starting VM {label}"), e))?;
    let pid = process.detach();
    tracing::info!("{} started VM {label} (pid {pid})", caller.name);
    crate::live::inventory::rescan_after_change(&state.db, host.id).await;
    Ok(Json(VmPowerResult {
        vm: label,
        running: true,
        pid: Some(pid),
        qmp: record.qmp.display().to_string(),
        serial_log: Some(record.serial_log.display().to_string()),
        forgot_instant_recovery: None,
    }))
}

/// Stops a running VM of a qemu host (QMP `quit`: QEMU ends at once, saving its persistent dirty
/// bitmaps). A migrated instant recovery of the same VM is forgotten with it.
#[utoipa::path(post, path = "/api/v1/vms/{id}/stop", tag = "inventory",
    params(("id" = i64, Path, description = "VM id")),
    responses(
        (status = 200, description = "The VM has stopped", body = VmPowerResult),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "Needs the administrator role", body = ErrorBody),
        (status = 404, description = "No such VM", body = ErrorBody),
        (status = 409, description = "Not a VM of a qemu host, not running, its QMP socket is held (a backup), it runs from an instant recovery's exports, or it did not stop in time", body = ErrorBody),
    ))]
pub async fn stop_vm(
    caller: Caller,
    State(state): State<AppState>,
    audit: crate::http::audit_trail::AuditSlot,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<VmPowerResult>> {
    caller.require_admin()?;
    let (host, vm) = qemu_vm(&state, id).await?;
    let label = format!("{}/{}", host.name, vm.name);
    audit.target(format!("VM {label}"));
    let instant = state.instant.by_qmp(&vm.external_id);
    if let Some(ir) = &instant
        && ir.state != InstantState::Migrated
    {
        return Err(ApiError::conflict(format!(
            "VM {label} runs from the exports of instant recovery {}: stop it with `cairn instant-recovery stop {}`",
            ir.name, ir.name
        )));
    }
    let qmp_path = PathBuf::from(&vm.external_id);
    let qmp = connect_running(&label, &qmp_path).await?;
    // The processes behind the pid files cairn knows for it (its launch record's, a migrated
    // instant recovery's), to wait until they are gone, not only its socket.
    let mut pidfiles = Vec::new();
    if let Some(name) = launch::vm_name_of(&qmp_path) {
        pidfiles.push(state.instant.pidfile_of(&name));
        if let Ok(Some(record)) = LaunchRecord::load(&state.data_dir, host.id, &name) {
            pidfiles.push(record.pidfile);
        }
    }
    let pids: Vec<u32> = pidfiles
        .iter()
        .filter_map(|p| cairn_qemu::process::running_pid(p))
        .collect();
    quit_and_wait(&label, &qmp_path, qmp).await?;
    wait_ended(&label, &pids).await?;
    let forgot = instant.map(|ir| {
        state.instant.forget(&ir.name);
        ir.name
    });
    state.instant.sweep();
    tracing::info!("{} stopped VM {label}", caller.name);
    crate::live::inventory::rescan_after_change(&state.db, host.id).await;
    Ok(Json(VmPowerResult {
        vm: label,
        running: false,
        pid: None,
        qmp: vm.external_id,
        serial_log: None,
        forgot_instant_recovery: forgot,
    }))
}

/// Removes every dirty bitmap of cairn's (`cairn-…`) from the disks of a running VM of a qemu
/// host: the VM's writes stop being recorded for cairn. Jobs that still back it up read every
/// block at their next backup.
#[utoipa::path(post, path = "/api/v1/vms/{id}/forget-checkpoints", tag = "inventory",
    params(("id" = i64, Path, description = "VM id")),
    responses(
        (status = 200, description = "The bitmaps removed", body = ForgottenCheckpoints),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "Needs the administrator role", body = ErrorBody),
        (status = 404, description = "No such VM", body = ErrorBody),
        (status = 409, description = "Not a VM of a qemu host, not running, a backup of it runs, or a bitmap is in use", body = ErrorBody),
    ))]
pub async fn forget_checkpoints(
    caller: Caller,
    State(state): State<AppState>,
    audit: crate::http::audit_trail::AuditSlot,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<ForgottenCheckpoints>> {
    caller.require_admin()?;
    let (host, vm) = qemu_vm(&state, id).await?;
    let label = format!("{}/{}", host.name, vm.name);
    audit.target(format!("VM {label}"));
    let jobs: Vec<_> = state
        .db
        .list_jobs()
        .await?
        .into_iter()
        .filter(|j| j.spec.vm_ids.contains(&id))
        .collect();
    if let Some(job) = jobs.iter().find(|j| state.jobs.running_session_of(j.id).is_some()) {
        return Err(ApiError::conflict(format!(
            "job {} is backing up VM {label} now: try again when it ends",
            job.spec.name
        )));
    }
    let qmp = connect_running(&label, Path::new(&vm.external_id)).await?;
    let removed =
        cairn_qemu::disks::remove_bitmaps(&qmp, |name| crate::live::checkpoints::unneeded(name, &BTreeSet::new()))
            .await
            .map_err(|e| ApiError::conflict(format!("VM {label}: {e}")))?;
    tracing::info!(
        "{} removed cairn's checkpoint bitmaps from VM {label}: {}",
        caller.name,
        crate::live::checkpoints::names(&removed)
    );
    Ok(Json(ForgottenCheckpoints {
        vm: label,
        removed: removed
            .into_iter()
            .map(|r| RemovedCheckpoint {
                disk: r.device,
                bitmap: r.name,
            })
            .collect(),
        jobs: jobs.into_iter().map(|j| j.spec.name).collect(),
    }))
}
