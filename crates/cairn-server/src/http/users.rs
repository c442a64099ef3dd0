//! Users and their roles (administrator only).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cairn_configdb::{Role, User};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::{ApiJson, ApiPath};
use crate::auth::{Caller, hash_password_async};
use crate::state::AppState;
pub use cairn_api::users::{CreateUser, UpdateUser, UserDto};

/// Shortest accepted password.
pub const MIN_PASSWORD_CHARS: usize = 8;

fn check_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "user name {name:?}: use 1 to 64 ASCII letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

pub(crate) fn check_password(password: &str) -> ApiResult<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ApiError::invalid(format!(
            "password: at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

/// Refuses a change that would leave the server without an administrator.
async fn keep_an_administrator(state: &AppState, user: &User, what: &str) -> ApiResult<()> {
    if user.role != Role::Administrator {
        return Ok(());
    }
    let admins = state
        .db
        .list_users()
        .await?
        .into_iter()
        .filter(|u| u.role == Role::Administrator)
        .count();
    if admins <= 1 {
        return Err(ApiError::conflict(format!(
            "{what} user {}: it is the last administrator",
            user.name
        )));
    }
    Ok(())
}

/// Every user.
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, description = "OK", body = Vec<UserDto>), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody)))]
pub async fn list_users(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<Vec<UserDto>>> {
    caller.require_admin()?;
    Ok(Json(
        state.db.list_users().await?.into_iter().map(UserDto::from).collect(),
    ))
}

/// Creates a user.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserDto),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 422, description = "Bad name or password", body = ErrorBody),
    ))]
pub async fn create_user(
    caller: Caller,
    State(state): State<AppState>,
    audit: crate::http::audit_trail::AuditSlot,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserDto>)> {
    audit.target(format!("user {}", req.name));
    caller.require_admin()?;
    check_name(&req.name)?;
    check_password(&req.password)?;
    let hash = hash_password_async(&req.password).await?;
    let user = state.db.create_user(&req.name, &hash, req.role).await?;
    tracing::info!("{} created user {} ({})", caller.name, user.name, user.role);
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// Changes a user's password (which revokes the user's login tokens) and/or role.
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", request_body = UpdateUser,
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 200, description = "OK", body = UserDto),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Would demote the last administrator", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ErrorBody),
    ))]
pub async fn update_user(
    caller: Caller,
    State(state): State<AppState>,
    audit: crate::http::audit_trail::AuditSlot,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> ApiResult<Json<UserDto>> {
    caller.require_admin()?;
    let user = state.db.get_user(id).await?;
    audit.target(format!("user {}", user.name));
    audit.detail("password_changed", req.password.is_some());
    if let Some(role) = &req.role {
        audit.detail("role", serde_json::to_value(role).unwrap_or_default());
    }
    if let Some(password) = &req.password {
        check_password(password)?;
    }
    let role = req.role;
    if let Some(role) = role
        && role != Role::Administrator
    {
        keep_an_administrator(&state, &user, "cannot demote").await?;
    }
    if let Some(password) = &req.password {
        let hash = hash_password_async(password).await?;
        state.db.set_user_password_hash(id, &hash).await?;
        // A new password ends every login made with the old one.
        let revoked = state
            .db
            .delete_user_tokens(id, Some(cairn_configdb::TokenKind::Login))
            .await?;
        tracing::info!(
            "{} set a new password for user {} ({revoked} login tokens revoked)",
            caller.name,
            user.name
        );
    }
    if let Some(role) = role {
        state.db.set_user_role(id, role).await?;
    }
    tracing::info!("{} changed user {}", caller.name, user.name);
    Ok(Json(state.db.get_user(id).await?.into()))
}

/// Deletes a user and their tokens.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody), (status = 403, description = "The caller's role is too low", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "The last administrator", body = ErrorBody),
    ))]
pub async fn delete_user(
    caller: Caller,
    State(state): State<AppState>,
    audit: crate::http::audit_trail::AuditSlot,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let user = state.db.get_user(id).await?;
    audit.target(format!("user {}", user.name));
    keep_an_administrator(&state, &user, "cannot delete").await?;
    state.db.delete_user(id).await?;
    tracing::info!("{} deleted user {}", caller.name, user.name);
    Ok(StatusCode::NO_CONTENT)
}
