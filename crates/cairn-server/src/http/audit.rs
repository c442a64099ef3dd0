//! Reading the audit log and checking its chain (administrators).

use axum::Json;
use axum::extract::State;
use cairn_configdb::{AuditEntry, AuditQuery};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiQuery;
use super::error::{ApiError, ApiResult, ErrorBody};
use crate::audit::AuditReport;
use crate::auth::Caller;
use crate::state::AppState;

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

/// One entry of the audit log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEntryDto {
    /// Position in the log (1, 2, 3…).
    pub id: i64,
    /// When it was recorded.
    pub at: Timestamp,
    /// Who acted (`(scheduler)` for the server itself; null for an agent or anonymous request).
    pub user: Option<String>,
    /// The client's address.
    pub address: Option<String>,
    /// What was done, e.g. `job.run`, `login`, `restore.disk`.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// `ok`, or `failed: STATUS MESSAGE`.
    pub outcome: String,
    /// More about it.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// This entry's hash (BLAKE3 of the previous entry's hash and this entry's fields).
    pub hash: String,
}

impl From<AuditEntry> for AuditEntryDto {
    fn from(e: AuditEntry) -> AuditEntryDto {
        AuditEntryDto {
            id: e.id,
            at: e.at,
            user: e.user,
            address: e.address,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            details: e.details,
            hash: e.hash,
        }
    }
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
