//! Global settings: parallel processing, the restore folders, the schedules' time zone.

use std::path::PathBuf;

use axum::Json;
use axum::extract::State;
use cairn_configdb::{Role, SETTING_PARALLEL_PROCESSING, SETTING_REQUIRE_ADMIN_TOTP};

use super::ApiJson;
use super::error::{ApiResult, ErrorBody};
use crate::auth::Caller;
use crate::restore_folders;
use crate::state::AppState;
pub use cairn_api::settings::{AbsolutePath, SettingsDto, UpdateSettings};

/// Whether parallel processing is on (the default).
pub async fn parallel_processing(db: &cairn_configdb::ConfigDb) -> cairn_configdb::Result<bool> {
    Ok(db
        .get_setting(SETTING_PARALLEL_PROCESSING)
        .await?
        .is_none_or(|v| v != "false"))
}

/// Whether administrators must have a second factor (default off).
pub async fn require_admin_totp(db: &cairn_configdb::ConfigDb) -> cairn_configdb::Result<bool> {
    Ok(db
        .get_setting(SETTING_REQUIRE_ADMIN_TOTP)
        .await?
        .is_some_and(|v| v == "true"))
}

async fn settings_dto(state: &AppState) -> ApiResult<SettingsDto> {
    Ok(SettingsDto {
        parallel_processing: parallel_processing(&state.db).await?,
        time_zone: state.time_zone.iana_name().unwrap_or("system").to_owned(),
        restore_folders: restore_folders::configured(&state.db)
            .await?
            .iter()
            .map(|f| f.display().to_string())
            .collect(),
        require_totp_for_administrators: require_admin_totp(&state.db).await?,
    })
}

/// Global settings.
#[utoipa::path(get, path = "/api/v1/settings", tag = "repositories",
    responses(
        (status = 200, description = "OK", body = SettingsDto),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
    ))]
pub async fn get_settings(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<SettingsDto>> {
    caller.require(Role::Viewer)?;
    Ok(Json(settings_dto(&state).await?))
}

/// Changes global settings (parallel processing applies to tasks that start from now on; the
/// restore folders to restores that start from now on).
#[utoipa::path(patch, path = "/api/v1/settings", tag = "repositories", request_body = UpdateSettings,
    responses(
        (status = 200, description = "OK", body = SettingsDto),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "Needs the administrator role", body = ErrorBody),
        (status = 403, description = "A restore folder is writable by other users, or is (inside) the data folder", body = ErrorBody),
        (status = 404, description = "A restore folder does not exist", body = ErrorBody),
        (status = 409, description = "A restore folder is not a folder", body = ErrorBody),
    ))]
pub async fn update_settings(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<UpdateSettings>,
) -> ApiResult<Json<SettingsDto>> {
    caller.require_admin()?;
    let folders: Option<Vec<PathBuf>> = match &req.restore_folders {
        Some(list) => Some(restore_folders::validate(list, &state.data_dir)?),
        None => None,
    };
    if let Some(on) = req.parallel_processing {
        state
            .db
            .set_setting(SETTING_PARALLEL_PROCESSING, if on { "true" } else { "false" })
            .await?;
        state.resources.set_parallel_processing(on);
        tracing::info!(
            "{} turned parallel processing {}",
            caller.name,
            if on { "on" } else { "off" }
        );
    }
    if let Some(on) = req.require_totp_for_administrators {
        state
            .db
            .set_setting(SETTING_REQUIRE_ADMIN_TOTP, if on { "true" } else { "false" })
            .await?;
        tracing::info!(
            "{} {} a second factor for administrators",
            caller.name,
            if on { "requires" } else { "no longer requires" }
        );
    }
    if let Some(folders) = folders {
        restore_folders::store(&state.db, &folders).await?;
        tracing::info!(
            "{} set the restore folders to {}",
            caller.name,
            folders
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(Json(settings_dto(&state).await?))
}
