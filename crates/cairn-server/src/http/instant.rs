//! The instant-recovery routes: start a VM from a restore point over NBD, list, migrate onto
//! production disks while it runs, stop ([`crate::live::instant`] keeps them).

use std::path::PathBuf;

use axum::Json;
use axum::extract::State;
use cairn_configdb::Role;
use cairn_qemu::qmp::Qmp;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::restore_vm::{qemu_host, saved_config, vm_name};
use super::{ApiJson, ApiPath};
use crate::auth::Caller;
use crate::live::QMP_TIMEOUT;
use crate::live::instant::{InstantInfo, InstantState, Launch, run_migration};
use crate::state::AppState;
pub use cairn_api::instant::{InstantRequest, MigrateRequest};

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
    if !crate::http::restore::is_point_selector(&req.point) {
        return Err(ApiError::invalid(format!(
            "point {:?}: give latest, or a restore point id or its first hex digits",
            req.point
        )));
    }
    let requested = std::time::Instant::now();
    let row = state.db.get_repository(req.repository_id).await?;
    let (repo, point_id, config, disk_count) = saved_config(&state, &row, &req.vm, &req.point).await?;
    let (orig_host, orig_vm) = req.vm.split_once('/').unwrap_or(("", req.vm.as_str()));
    let (host, location) = qemu_host(&state, req.to_host.as_deref().unwrap_or(orig_host)).await?;
    let name = vm_name(req.name.as_deref(), orig_vm, "instant")?;
    if state.instant.is_running(&name) {
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
    let info = state
        .instant
        .launch(Launch {
            name,
            repo,
            vm: req.vm.clone(),
            point: point_id,
            disks: disk_count,
            // Its own UUID and MAC addresses, the same at every start (also once migrated).
            config: config.with_new_identity(),
            host: (host.id, host.name),
            qmp,
            qga,
            accel: req.accel,
            requested,
        })
        .await?;
    tracing::info!(
        "{} started instant recovery {} of {} point {}",
        caller.name,
        info.name,
        info.vm,
        info.point
    );
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
    audit: crate::http::audit_trail::AuditSlot,
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
        targets.push(cairn_api::checks::absolute_path("to", t)?);
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
                return Err(crate::restore_folders::confine_error(e).into());
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
                crate::live::inventory::rescan_after_change(&state.db, host_id).await;
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
