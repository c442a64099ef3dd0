//! Reading the audit log and checking its chain (administrators).

use axum::Json;
use axum::extract::State;
use cairn_configdb::AuditQuery;
use jiff::Timestamp;
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiQuery;
use super::error::{ApiError, ApiResult, ErrorBody};
use crate::audit::AuditReport;
use crate::auth::Caller;
use crate::state::AppState;
pub use cairn_api::audit::AuditEntryDto;

/// `GET /api/v1/audit` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditListQuery {
    /// Only entries at or after this time (RFC 3339).
    pub since: Option<Timestamp>,
    /// Only entries of this user.
    pub user: Option<String>,
    /// Only entries older than this id (the next page).
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// At most this many entries (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Entries of the audit log, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditListQuery),
    responses(
        (status = 200, description = "Entries, newest first", body = Vec<AuditEntryDto>),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "Needs the administrator role", body = ErrorBody),
        (status = 400, description = "A limit or id out of range", body = ErrorBody),
    ))]
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AuditListQuery>,
) -> ApiResult<Json<Vec<AuditEntryDto>>> {
    caller.require_admin()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit {limit}: 1 to 1000")));
    }
    if let Some(before) = q.before
        && before < 1
    {
        return Err(ApiError::bad_request(format!("before {before}: entry ids start at 1")));
    }
    let entries = state
        .db
        .list_audit(&AuditQuery {
            since: q.since,
            user: q.user,
            before_id: q.before,
            limit,
        })
        .await?;
    Ok(Json(entries.into_iter().map(AuditEntryDto::from).collect()))
}

/// Checks the whole chain: every entry present, unchanged, and the newest one the one the server
/// wrote last.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses(
        (status = 200, description = "What the check found", body = AuditReport),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "Needs the administrator role", body = ErrorBody),
    ))]
pub async fn verify(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<AuditReport>> {
    caller.require_admin()?;
    Ok(Json(state.audit.verify().await?))
}
