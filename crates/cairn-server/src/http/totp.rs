//! The second factor of a user: set up, confirm, disable; an administrator's reset.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cairn_configdb::{Role, TokenKind, TokenScope, User};

use super::auth::login_token;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::{ApiJson, ApiPath};
use crate::auth::{Caller, totp};
use crate::http::audit_trail::AuditSlot;
use crate::state::AppState;
pub use cairn_api::auth::{TotpCode, TotpEnabled, TotpSetup};

/// Whether `code` is a current, unused code of `user`'s second factor (and marks it used).
pub(crate) async fn accept_code(state: &AppState, user: &User, code: &str) -> ApiResult<bool> {
    let Some(secret) = &user.totp_secret else {
        return Ok(false);
    };
    let now = jiff::Timestamp::now().as_second().max(0) as u64;
    let step = totp::matching_step(secret, code, now)
        .map_err(|e| ApiError::internal(format!("checking the second factor of user {}", user.name), e))?;
    match step {
        Some(step) => Ok(state.db.accept_totp_step(user.id, step).await?),
        None => Ok(false),
    }
}

/// Starts setting up a second factor for the caller: a new secret for the authenticator app,
/// in force once confirmed with a code.
#[utoipa::path(post, path = "/api/v1/auth/totp", tag = "auth",
    responses(
        (status = 200, description = "Secret for the authenticator app", body = TotpSetup),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 409, description = "The caller has a second factor already (disable it first)", body = ErrorBody),
    ))]
pub async fn setup(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<TotpSetup>> {
    let user = state.db.get_user(caller.user_id).await?;
    if user.totp_enabled {
        return Err(ApiError::conflict(format!(
            "user {} has a second factor already: disable it first to set up a new one",
            user.name
        )));
    }
    let secret = totp::new_secret();
    let otpauth_url =
        totp::otpauth_url(&secret, &user.name).map_err(|e| ApiError::internal("making the otpauth URL", e))?;
    state.db.set_user_totp(user.id, Some(&secret), false).await?;
    tracing::info!("user {} started setting up a second factor", user.name);
    Ok(Json(TotpSetup {
        secret,
        otpauth_url,
        digits: 6,
        period: 30,
    }))
}

/// Confirms the second factor being set up with a current code; from now on every login of the
/// caller needs a code.
#[utoipa::path(post, path = "/api/v1/auth/totp/confirm", tag = "auth", request_body = TotpCode,
    responses(
        (status = 200, description = "In force", body = TotpEnabled),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 409, description = "No setup was started, or a second factor is in force already", body = ErrorBody),
        (status = 422, description = "The code is wrong", body = ErrorBody),
    ))]
pub async fn confirm(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TotpCode>,
) -> ApiResult<Json<TotpEnabled>> {
    let user = state.db.get_user(caller.user_id).await?;
    if user.totp_enabled {
        return Err(ApiError::conflict(format!(
            "user {} has a second factor already",
            user.name
        )));
    }
    let Some(secret) = user.totp_secret.clone() else {
        return Err(ApiError::conflict(format!(
            "user {} has no second factor being set up: POST /api/v1/auth/totp first",
            user.name
        )));
    };
    if !accept_code(&state, &user, &req.code).await? {
        return Err(ApiError::invalid(
            "the code is wrong: give the current 6-digit code of the authenticator app",
        ));
    }
    state.db.set_user_totp(user.id, Some(&secret), true).await?;
    // The code just accepted stays used.
    let now = jiff::Timestamp::now().as_second().max(0) as u64;
    if let Ok(Some(step)) = totp::matching_step(&secret, &req.code, now) {
        state.db.accept_totp_step(user.id, step).await?;
    }
    tracing::info!("user {} has a second factor now", user.name);
    let login = if caller.scope == TokenScope::TotpSetup {
        state.db.delete_token(caller.token_id).await?;
        Some(login_token(&state, &user, false).await?)
    } else {
        None
    };
    Ok(Json(TotpEnabled { enabled: true, login }))
}

/// Removes the caller's second factor (with a current code). Administrators cannot while the
/// settings require one of them.
#[utoipa::path(post, path = "/api/v1/auth/totp/disable", tag = "auth", request_body = TotpCode,
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 409, description = "No second factor, or administrators must have one", body = ErrorBody),
        (status = 422, description = "The code is wrong", body = ErrorBody),
    ))]
pub async fn disable(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TotpCode>,
) -> ApiResult<StatusCode> {
    let user = state.db.get_user(caller.user_id).await?;
    if !user.totp_enabled {
        return Err(ApiError::conflict(format!("user {} has no second factor", user.name)));
    }
    if user.role == Role::Administrator && super::settings::require_admin_totp(&state.db).await? {
        return Err(ApiError::conflict(
            "administrators must have a second factor (see the settings)",
        ));
    }
    if !accept_code(&state, &user, &req.code).await? {
        return Err(ApiError::invalid("the code is wrong"));
    }
    state.db.set_user_totp(user.id, None, false).await?;
    tracing::info!("user {} removed their second factor", user.name);
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a user's second factor (a lost phone) and revokes their login tokens; the user sets up
/// a new one at the next login when it is required.
#[utoipa::path(delete, path = "/api/v1/users/{id}/totp", tag = "users",
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "Needs the administrator role", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub async fn reset(
    caller: Caller,
    State(state): State<AppState>,
    audit: AuditSlot,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let user = state.db.get_user(id).await?;
    audit.target(format!("user {}", user.name));
    state.db.set_user_totp(user.id, None, false).await?;
    let revoked = state.db.delete_user_tokens(user.id, Some(TokenKind::Login)).await?;
    tracing::info!(
        "{} removed the second factor of user {} ({revoked} login tokens revoked)",
        caller.name,
        user.name
    );
    Ok(StatusCode::NO_CONTENT)
}
