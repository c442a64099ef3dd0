//! Login (throttled, with the second factor when the user has one), logout, who am I, the
//! caller's own password, API tokens.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cairn_configdb::{Role, TokenKind, TokenScope, User};
use jiff::{SignedDuration, Timestamp};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::{ApiJson, ApiPath, ClientAddr};
use crate::auth::{Caller, LOGIN_TOKEN_LIFETIME, check_login, hash_password_async, issue_token};
use crate::http::audit_trail::AuditSlot;
use crate::state::AppState;
pub use cairn_api::auth::{
    ChangePasswordRequest, CreateTokenRequest, LoginRequest, LoginResponse, TokenCreated, TokenInfo, UserInfo,
};

/// Longest lifetime of an API token, in days.
const MAX_TOKEN_DAYS: i64 = 3650;

/// Logs in with a user name and password (and the second factor's code when the user has one)
/// and returns a login token valid for 7 days. Failed logins are throttled per user, per address
/// and per both (429 with `Retry-After` while locked).
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", security(()), request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 401, description = "Wrong user name, password or code; or the code is missing (code \
            `totp_required`)", body = ErrorBody),
        (status = 429, description = "Too many failed logins: locked for the seconds in Retry-After (code \
            `login_locked`)", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    audit: AuditSlot,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    audit.user(&req.user);
    audit.target(format!("user {}", req.user));
    let now = std::time::Instant::now();
    if let Err(locked) = state.logins.check(&req.user, address, now) {
        audit.skip();
        let secs = locked.retry_after.as_secs_f64().ceil() as u64;
        return Err(ApiError::too_many(
            format!("too many failed logins for {}: try again in {secs} s", locked.what),
            secs,
        )
        .with_code("login_locked"));
    }
    let fail = |why: &str| {
        let lock = state.logins.failed(&req.user, address, now);
        match &lock {
            Some(l) => tracing::warn!(
                "failed login of user {} from {address}: {why}; {} locked for {} s",
                req.user,
                l.what,
                l.retry_after.as_secs()
            ),
            None => tracing::warn!("failed login of user {} from {address}: {why}", req.user),
        }
        ApiError::unauthorized(if why.contains("code") {
            "wrong or reused code of the second factor"
        } else {
            "wrong user name or password"
        })
    };
    if req.user.is_empty() || req.password.is_empty() {
        return Err(fail("empty user name or password"));
    }
    let Some(user) = check_login(&state.db, &req.user, &req.password).await? else {
        return Err(fail("wrong user name or password"));
    };
    if user.totp_enabled {
        let Some(code) = req.code.as_deref().filter(|c| !c.trim().is_empty()) else {
            return Err(ApiError::unauthorized(format!(
                "user {} has a second factor: give the current code of the authenticator app",
                user.name
            ))
            .with_code("totp_required"));
        };
        if !crate::http::totp::accept_code(&state, &user, code).await? {
            return Err(fail("wrong or reused code"));
        }
    }
    state.logins.succeeded(&req.user, address);
    let setup_only = user.role == Role::Administrator
        && !user.totp_enabled
        && crate::http::settings::require_admin_totp(&state.db).await?;
    if setup_only {
        audit.detail("totp_setup_required", true);
    }
    tracing::info!("user {} logged in from {address}", user.name);
    login_token(&state, &user, setup_only).await.map(Json)
}

/// A new login token for `user` (only for setting up a second factor with `setup_only`).
pub(crate) async fn login_token(state: &AppState, user: &User, setup_only: bool) -> ApiResult<LoginResponse> {
    let now = Timestamp::now();
    // Housekeeping: logins are rare enough to carry it.
    if let Err(e) = state.db.delete_expired_tokens(now).await {
        tracing::warn!("removing expired tokens: {e}");
    }
    let expires_at = now
        .checked_add(LOGIN_TOKEN_LIFETIME)
        .map_err(|e| ApiError::internal("computing the token expiry", e))?;
    let scope = if setup_only {
        TokenScope::TotpSetup
    } else {
        TokenScope::Full
    };
    let (_, secret) = issue_token(&state.db, user.id, TokenKind::Login, "login", Some(expires_at), scope).await?;
    Ok(LoginResponse {
        token: secret,
        kind: TokenKind::Login.as_str().into(),
        expires_at,
        user: UserInfo {
            id: user.id,
            name: user.name.clone(),
            role: user.role,
        },
        totp_setup_required: setup_only,
    })
}

/// Changes the caller's own password. Every login token of the caller stops working (API tokens
/// keep working); the answer carries a new login token.
#[utoipa::path(post, path = "/api/v1/auth/password", tag = "auth", request_body = ChangePasswordRequest,
    responses(
        (status = 200, description = "Changed; a new login token", body = LoginResponse),
        (status = 401, description = "No token, an unknown or expired one, or the current password is wrong", body = ErrorBody),
        (status = 422, description = "The new password is too short", body = ErrorBody),
        (status = 429, description = "Too many wrong passwords: locked for the seconds in Retry-After", body = ErrorBody),
    ))]
pub async fn change_password(
    caller: Caller,
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let now = std::time::Instant::now();
    if let Err(locked) = state.logins.check(&caller.name, address, now) {
        let secs = locked.retry_after.as_secs_f64().ceil() as u64;
        return Err(ApiError::too_many(
            format!("too many wrong passwords for {}: try again in {secs} s", locked.what),
            secs,
        )
        .with_code("login_locked"));
    }
    super::users::check_password(&req.new_password)?;
    let Some(user) = check_login(&state.db, &caller.name, &req.current_password).await? else {
        state.logins.failed(&caller.name, address, now);
        tracing::warn!("user {} from {address} gave a wrong current password", caller.name);
        return Err(ApiError::unauthorized("the current password is wrong"));
    };
    let hash = hash_password_async(&req.new_password).await?;
    state.db.set_user_password_hash(user.id, &hash).await?;
    let revoked = state.db.delete_user_tokens(user.id, Some(TokenKind::Login)).await?;
    tracing::info!(
        "user {} changed their password from {address}; {revoked} login tokens revoked",
        user.name
    );
    login_token(&state, &user, false).await.map(Json)
}

/// Ends the session of the token used for this request (the token stops working).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "Logged out"), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody)))]
pub async fn logout(caller: Caller, State(state): State<AppState>) -> ApiResult<StatusCode> {
    state.db.delete_token(caller.token_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The user the token belongs to.
#[utoipa::path(get, path = "/api/v1/auth/whoami", tag = "auth",
    responses((status = 200, description = "OK", body = UserInfo), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody)))]
pub async fn whoami(caller: Caller) -> Json<UserInfo> {
    Json(UserInfo {
        id: caller.user_id,
        name: caller.name,
        role: caller.role,
    })
}

/// Creates an API token for the calling user (any role); the secret is shown only in this answer.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "auth", request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "Created", body = TokenCreated),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 422, description = "Bad expiry or description", body = ErrorBody),
    ))]
pub async fn create_token(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    if req.description.chars().count() > 200 {
        return Err(ApiError::invalid("description: at most 200 characters"));
    }
    let expires_at = match req.expires_in_days {
        None => None,
        Some(days) if (1..=MAX_TOKEN_DAYS).contains(&days) => Some(
            Timestamp::now()
                .checked_add(SignedDuration::from_hours(days * 24))
                .map_err(|e| ApiError::internal("computing the token expiry", e))?,
        ),
        Some(days) => {
            return Err(ApiError::invalid(format!(
                "expires_in_days {days}: must be between 1 and {MAX_TOKEN_DAYS} (or absent for no expiry)"
            )));
        }
    };
    let (token, secret) = issue_token(
        &state.db,
        caller.user_id,
        TokenKind::Api,
        &req.description,
        expires_at,
        TokenScope::Full,
    )
    .await?;
    tracing::info!("user {} created API token {}", caller.name, token.id);
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id: token.id,
            token: secret,
            kind: TokenKind::Api.as_str().into(),
            description: token.description,
            created_at: token.created_at,
            expires_at: token.expires_at,
        }),
    ))
}

/// The caller's tokens (login and API), without secrets.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "auth",
    responses((status = 200, description = "OK", body = Vec<TokenInfo>), (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody)))]
pub async fn list_tokens(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<Vec<TokenInfo>>> {
    let tokens = state.db.list_tokens(caller.user_id).await?;
    Ok(Json(tokens.into_iter().map(TokenInfo::from).collect()))
}

/// Revokes one of the caller's tokens.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "auth",
    params(("id" = i64, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 404, description = "No such token of the caller", body = ErrorBody),
    ))]
pub async fn delete_token(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    let own = state.db.list_tokens(caller.user_id).await?;
    if !own.iter().any(|t| t.id == id) {
        return Err(ApiError::not_found(format!(
            "token {id} of user {} not found",
            caller.name
        )));
    }
    state.db.delete_token(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
