//! Hosts (inventory sources) and the VMs and disks found on them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cairn_configdb::{DiscoveredDisk, DiscoveredVm, Host, HostKind, NewHost, Role, Vm};
use jiff::Timestamp;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::Caller;
use crate::live::{QemuLocation, check_qmp_path, discover};
use crate::state::AppState;
pub use cairn_api::inventory::{AddHost, DiskDto, HostDto, HostWithVms, VmDto};

/// `GET /api/v1/vms` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VmQuery {
    /// Only the VMs of this host.
    pub host: Option<i64>,
}

fn host_dto(h: Host, vms: i64) -> HostDto {
    HostDto {
        id: h.id,
        name: h.name,
        kind: h.kind.as_str().into(),
        location: h.location,
        created_at: h.created_at,
        vms,
    }
}

/// VMs with their disks and host names.
async fn vm_dtos(state: &AppState, vms: Vec<Vm>) -> ApiResult<Vec<VmDto>> {
    let hosts: HashMap<i64, String> = state
        .db
        .list_hosts()
        .await?
        .into_iter()
        .map(|h| (h.id, h.name))
        .collect();
    let mut out = Vec::with_capacity(vms.len());
    for vm in vms {
        let disks = state.db.list_disks(vm.id).await?;
        out.push(VmDto {
            id: vm.id,
            host_id: vm.host_id,
            host: hosts.get(&vm.host_id).cloned().unwrap_or_default(),
            external_id: vm.external_id,
            name: vm.name,
            present: vm.present,
            last_seen_at: vm.last_seen_at,
            disks: disks.into_iter().map(DiskDto::from).collect(),
        });
    }
    Ok(out)
}

/// What a scan of an image folder found, in the database's terms.
pub fn discovered(inv: &cairn_inventory::Inventory) -> Vec<DiscoveredVm> {
    for problem in &inv.problems {
        tracing::warn!("scanning {}: {problem}", inv.root.display());
    }
    inv.vms
        .iter()
        .map(|vm| {
            for problem in &vm.problems {
                tracing::warn!("scanning VM {} in {}: {problem}", vm.name, inv.root.display());
            }
            DiscoveredVm {
                external_id: vm.path.to_string_lossy().into_owned(),
                name: vm.name.clone(),
                disks: vm
                    .disks
                    .iter()
                    .map(|d| {
                        if let Some(problem) = &d.problem {
                            tracing::warn!("VM {} disk {}: {problem}", vm.name, d.path.display());
                        }
                        let path = if d.path.is_absolute() {
                            d.path.clone()
                        } else {
                            inv.root.join(&d.path)
                        };
                        DiscoveredDisk {
                            key: d.key.clone(),
                            name: d
                                .path
                                .file_name()
                                .map_or_else(|| d.path.to_string_lossy(), |n| n.to_string_lossy())
                                .into_owned(),
                            path: path.to_string_lossy().into_owned(),
                            format: d.format.name().into(),
                            capacity_bytes: i64::try_from(d.virtual_size).unwrap_or(i64::MAX),
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Scans an image folder on a blocking thread; a missing folder or a file is 422.
async fn scan(path: PathBuf) -> ApiResult<cairn_inventory::Inventory> {
    tokio::task::spawn_blocking(move || cairn_inventory::scan(&path))
        .await?
        .map_err(|e| match e {
            cairn_inventory::InventoryError::BadRoot { ref reason, .. } if reason == "not a folder" => {
                ApiError::conflict(format!("not a folder: {e}"))
            }
            cairn_inventory::InventoryError::BadRoot { .. } => {
                ApiError::not_found(format!("not an existing folder: {e}"))
            }
            other => ApiError::invalid(format!("cannot scan the folder: {other}")),
        })
}

/// Records a scan of `host` and answers with the host and its VMs.
async fn sync(state: &AppState, host: Host, inv: &cairn_inventory::Inventory) -> ApiResult<HostWithVms> {
    sync_discovered(state, host, &discovered(inv)).await
}

/// Records what a discovery run found on `host` and answers with the host and its VMs.
async fn sync_discovered(state: &AppState, host: Host, found: &[DiscoveredVm]) -> ApiResult<HostWithVms> {
    let vms = state.db.sync_host_inventory(host.id, found, Timestamp::now()).await?;
    let count = i64::try_from(vms.len()).unwrap_or(i64::MAX);
    Ok(HostWithVms {
        host: host_dto(host, count),
        vms: vm_dtos(state, vms).await?,
    })
}

/// Every host.
#[utoipa::path(get, path = "/api/v1/hosts", tag = "inventory",
    responses((status = 200, description = "OK", body = Vec<HostDto>), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody)))]
pub async fn list_hosts(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<Vec<HostDto>>> {
    caller.require(Role::Viewer)?;
    let mut counts: HashMap<i64, i64> = HashMap::new();
    for vm in state.db.list_vms(None).await? {
        *counts.entry(vm.host_id).or_default() += 1;
    }
    let hosts = state.db.list_hosts().await?;
    Ok(Json(
        hosts
            .into_iter()
            .map(|h| {
                let n = counts.get(&h.id).copied().unwrap_or(0);
                host_dto(h, n)
            })
            .collect(),
    ))
}

/// Adds a host and scans it at once.
#[utoipa::path(post, path = "/api/v1/hosts", tag = "inventory", request_body = AddHost,
    responses(
        (status = 201, description = "Created", body = HostWithVms),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "The caller's role is too low, or the folder is (inside) the server's data folder", body = ErrorBody),
        (status = 404, description = "The folder or socket does not exist", body = ErrorBody),
        (status = 409, description = "Name taken, folder already added, not a folder (or QMP socket)", body = ErrorBody),
        (status = 422, description = "A QMP socket that does not answer as QEMU", body = ErrorBody),
    ))]
pub async fn add_host(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<AddHost>,
) -> ApiResult<(StatusCode, Json<HostWithVms>)> {
    caller.require_admin()?;
    if req.kind == HostKind::Qemu.as_str() {
        return add_qemu_host(caller, state, req).await;
    }
    if req.kind != HostKind::ImageFolder.as_str() {
        return Err(ApiError::invalid(format!(
            "host kind {:?}: use \"image-folder\" or \"qemu\"",
            req.kind
        )));
    }
    let path = crate::restore_folders::check_admin_folder("path", &req.path, &state.data_dir)?;
    let inv = scan(path).await?;
    let location = inv.root.to_string_lossy().into_owned();
    let hosts = state.db.list_hosts().await?;
    if let Some(same) = hosts.iter().find(|h| h.location == location) {
        return Err(ApiError::conflict(format!(
            "folder {location} is already host {} (id {})",
            same.name, same.id
        )));
    }
    let name = match req.name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_owned(),
        Some(_) => return Err(ApiError::invalid("name: must not be empty")),
        None => unique_host_name(
            &hosts,
            inv.root
                .file_name()
                .map_or_else(|| "images".to_owned(), |n| n.to_string_lossy().into_owned()),
        ),
    };
    let host = state
        .db
        .create_host(&NewHost {
            name,
            kind: HostKind::ImageFolder,
            location,
        })
        .await?;
    let host_id = host.id;
    match sync(&state, host, &inv).await {
        Ok(answer) => {
            tracing::info!(
                "{} added host {} with {} VMs",
                caller.name,
                answer.host.name,
                answer.vms.len()
            );
            Ok((StatusCode::CREATED, Json(answer)))
        }
        Err(e) => {
            // Do not leave a host whose first scan was not recorded.
            let _ = state.db.delete_host(host_id).await;
            Err(e)
        }
    }
}

/// Scans a host again: new VMs and disks are added, missing ones marked not present.
#[utoipa::path(post, path = "/api/v1/hosts/{id}/rescan", tag = "inventory",
    params(("id" = i64, Path, description = "Host id")),
    responses(
        (status = 200, description = "OK", body = HostWithVms),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 422, description = "The folder is gone", body = ErrorBody),
    ))]
pub async fn rescan_host(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<HostWithVms>> {
    caller.require_admin()?;
    let host = state.db.get_host(id).await?;
    if host.kind == HostKind::Qemu {
        let vms = crate::live::rescan(&state.db, &host, true)
            .await
            .map_err(ApiError::invalid)?;
        let count = i64::try_from(vms.len()).unwrap_or(i64::MAX);
        return Ok(Json(HostWithVms {
            host: host_dto(host, count),
            vms: vm_dtos(&state, vms).await?,
        }));
    }
    if host.kind != HostKind::ImageFolder {
        return Err(ApiError::invalid(format!(
            "host {}: {} hosts cannot be scanned yet",
            host.name, host.kind
        )));
    }
    let inv = scan(PathBuf::from(&host.location)).await?;
    Ok(Json(sync(&state, host, &inv).await?))
}

/// Removes a host with its VMs and disks from the inventory (the image files stay).
#[utoipa::path(delete, path = "/api/v1/hosts/{id}", tag = "inventory",
    params(("id" = i64, Path, description = "Host id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "A job still backs up one of its VMs", body = ErrorBody),
    ))]
pub async fn delete_host(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let host = state.db.get_host(id).await?;
    let vm_ids: Vec<i64> = state.db.list_vms(Some(id)).await?.iter().map(|v| v.id).collect();
    let users: Vec<String> = state
        .db
        .list_jobs()
        .await?
        .into_iter()
        .filter(|j| j.spec.vm_ids.iter().any(|v| vm_ids.contains(v)))
        .map(|j| j.spec.name)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "host {} has VMs that jobs back up ({}): remove them from the jobs first",
            host.name,
            users.join(", ")
        )));
    }
    // Its VMs keep no checkpoint bitmap of cairn's recording for nothing (logged when one cannot
    // be reached).
    let vms = state.db.list_vms(Some(id)).await?;
    crate::live::checkpoints::forget_host(&host, vms).await;
    state.db.delete_host(id).await?;
    crate::live::launch::remove_host(&state.data_dir, id);
    tracing::info!("{} removed host {}", caller.name, host.name);
    Ok(StatusCode::NO_CONTENT)
}

/// VMs of every host, or of one.
#[utoipa::path(get, path = "/api/v1/vms", tag = "inventory", params(VmQuery),
    responses(
        (status = 200, description = "OK", body = Vec<VmDto>),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 404, description = "No such host", body = ErrorBody),
    ))]
pub async fn list_vms(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<VmQuery>,
) -> ApiResult<Json<Vec<VmDto>>> {
    caller.require(Role::Viewer)?;
    if let Some(host) = q.host {
        state.db.get_host(host).await?;
    }
    let vms = state.db.list_vms(q.host).await?;
    Ok(Json(vm_dtos(&state, vms).await?))
}

/// One VM with its disks.
#[utoipa::path(get, path = "/api/v1/vms/{id}", tag = "inventory",
    params(("id" = i64, Path, description = "VM id")),
    responses((status = 200, description = "OK", body = VmDto), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get_vm(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<VmDto>> {
    caller.require(Role::Viewer)?;
    let vm = state.db.get_vm(id).await?;
    let mut dtos = vm_dtos(&state, vec![vm]).await?;
    dtos.pop()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))
}

/// `base`, or `base-2`, `base-3`… when a host already has that name.
fn unique_host_name(hosts: &[Host], base: String) -> String {
    let mut name = base.clone();
    let mut n = 2;
    while hosts.iter().any(|h| h.name == name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// Adds a qemu host (a VM's QMP socket or a folder of them) and discovers its VMs through QMP.
async fn add_qemu_host(caller: Caller, state: AppState, req: AddHost) -> ApiResult<(StatusCode, Json<HostWithVms>)> {
    let qmp = crate::restore_folders::check_admin_folder("path", &req.path, &state.data_dir)?;
    if std::fs::symlink_metadata(&qmp).is_err() {
        return Err(ApiError::not_found(format!("path: {} does not exist", qmp.display())));
    }
    check_qmp_path(&qmp).map_err(|e| ApiError::conflict(format!("path: {e}")))?;
    let qga = match req.qga.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(_) if qmp.is_dir() => {
            return Err(ApiError::invalid(
                "qga: a folder host finds each VM's agent as NAME.qga beside NAME.qmp",
            ));
        }
        Some(q) if !Path::new(q).is_absolute() => {
            return Err(ApiError::invalid(format!("qga {q:?}: give an absolute path")));
        }
        Some(q) => Some(PathBuf::from(q)),
    };
    let location = QemuLocation { qmp, qga };
    let hosts = state.db.list_hosts().await?;
    if let Some(same) = hosts
        .iter()
        .filter(|h| h.kind == HostKind::Qemu)
        .find(|h| QemuLocation::of(h).is_ok_and(|l| l.qmp == location.qmp))
    {
        return Err(ApiError::conflict(format!(
            "{} is already host {} (id {})",
            location.qmp.display(),
            same.name,
            same.id
        )));
    }
    let vms = discover(&location).await.map_err(ApiError::invalid)?;
    let name = match req.name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_owned(),
        Some(_) => return Err(ApiError::invalid("name: must not be empty")),
        None => unique_host_name(
            &hosts,
            location
                .qmp
                .file_stem()
                .map_or_else(|| "qemu".to_owned(), |n| n.to_string_lossy().into_owned()),
        ),
    };
    let host = state
        .db
        .create_host(&NewHost {
            name,
            kind: HostKind::Qemu,
            location: location.to_location(),
        })
        .await?;
    let host_id = host.id;
    match sync_discovered(&state, host, &vms).await {
        Ok(answer) => {
            tracing::info!(
                "{} added qemu host {} with {} VMs",
                caller.name,
                answer.host.name,
                answer.vms.len()
            );
            Ok((StatusCode::CREATED, Json(answer)))
        }
        Err(e) => {
            let _ = state.db.delete_host(host_id).await;
            Err(e)
        }
    }
}
