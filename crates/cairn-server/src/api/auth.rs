//! Login, logout, who am I, API tokens.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cairn_configdb::{Token, TokenKind};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::users::RoleName;
use super::{ApiJson, ApiPath};
use crate::auth::{Caller, LOGIN_TOKEN_LIFETIME, check_login, issue_token};
use crate::state::AppState;

/// Longest lifetime of an API token, in days.
const MAX_TOKEN_DAYS: i64 = 3650;

/// `POST /api/v1/auth/login` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// User name.
    #[schema(example = "admin")]
    pub user: String,
    /// Password.
    pub password: String,
}

/// A user as seen by themselves.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserInfo {
    /// User id.
    pub id: i64,
    /// User name.
    pub name: String,
    /// Role.
    pub role: RoleName,
}

/// A login token.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// The token: send it as `Authorization: Bearer TOKEN`.
    pub token: String,
    /// Always `login`.
    #[schema(example = "login")]
    pub kind: String,
    /// When the token stops working (7 days after the login).
    pub expires_at: Timestamp,
    /// Who logged in.
    pub user: UserInfo,
}

/// `POST /api/v1/tokens` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateTokenRequest {
    /// What the token is for (shown in the token list).
    #[serde(default)]
    pub description: String,
    /// Days until it expires (1–3650); absent or null never expires.
    #[serde(default)]
    pub expires_in_days: Option<i64>,
}

/// A new API token, with its secret (shown only in this answer).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCreated {
    /// Token id.
    pub id: i64,
    /// The secret: send it as `Authorization: Bearer TOKEN`.
    pub token: String,
    /// Always `api`.
    #[schema(example = "api")]
    pub kind: String,
    /// What the token is for.
    pub description: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working; null never.
    pub expires_at: Option<Timestamp>,
}

/// A token of the caller (without its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenInfo {
    /// Token id.
    pub id: i64,
    /// `login` or `api`.
    #[schema(example = "api")]
    pub kind: String,
    /// What the token is for.
    pub description: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working; null never.
    pub expires_at: Option<Timestamp>,
}

impl From<Token> for TokenInfo {
    fn from(t: Token) -> TokenInfo {
        TokenInfo {
            id: t.id,
            kind: t.kind.as_str().into(),
            description: t.description,
            created_at: t.created_at,
            expires_at: t.expires_at,
        }
    }
}

/// Logs in with a user name and password and returns a login token valid for 7 days.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", security(()), request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 401, description = "Wrong user name or password", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let wrong = || ApiError::unauthorized("wrong user name or password");
    if req.user.is_empty() || req.password.is_empty() {
        return Err(wrong());
    }
    let user = check_login(&state.db, &req.user, &req.password)
        .await?
        .ok_or_else(wrong)?;
    let now = Timestamp::now();
    // Housekeeping: logins are rare enough to carry it.
    if let Err(e) = state.db.delete_expired_tokens(now).await {
        tracing::warn!("removing expired tokens: {e}");
    }
    let expires_at = now
        .checked_add(LOGIN_TOKEN_LIFETIME)
        .map_err(|e| ApiError::internal("computing the token expiry", e))?;
    let (_, secret) = issue_token(&state.db, user.id, TokenKind::Login, "login", Some(expires_at)).await?;
    tracing::info!("user {} logged in", user.name);
    Ok(Json(LoginResponse {
        token: secret,
        kind: TokenKind::Login.as_str().into(),
        expires_at,
        user: UserInfo {
            id: user.id,
            name: user.name,
            role: user.role.into(),
        },
    }))
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
        role: caller.role.into(),
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
    let (token, secret) = issue_token(&state.db, caller.user_id, TokenKind::Api, &req.description, expires_at).await?;
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
