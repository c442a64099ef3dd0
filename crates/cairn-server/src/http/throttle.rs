//! Network throttling rules: list, create, delete (see [`crate::throttle`] for what they do).
//!
//! Every change is read back into [`AppState::throttles`] at once, so running transfers get their
//! new share the next time they ask.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cairn_configdb::NewThrottleRule;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::{ApiJson, ApiPath};
use crate::auth::Caller;
use crate::state::AppState;
use crate::throttle::{Rule, parse_range, validate};
pub use cairn_api::throttle::{CreateThrottleRule, ThrottleRuleDto};

/// Reads the stored rules into force after a change.
async fn reload(state: &AppState) -> ApiResult<()> {
    state.throttles.reload(&state.db).await?;
    Ok(())
}

/// Every network throttling rule, by id.
#[utoipa::path(get, path = "/api/v1/throttle-rules", tag = "throttling",
    responses((status = 200, description = "OK", body = Vec<ThrottleRuleDto>),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody)))]
pub async fn list_rules(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<Vec<ThrottleRuleDto>>> {
    caller.require(cairn_configdb::Role::Viewer)?;
    Ok(Json(
        state
            .db
            .list_throttle_rules()
            .await?
            .into_iter()
            .map(ThrottleRuleDto::from)
            .collect(),
    ))
}

/// Creates a network throttling rule (administrator); it applies to running transfers at once.
#[utoipa::path(post, path = "/api/v1/throttle-rules", tag = "throttling", request_body = CreateThrottleRule,
    responses((status = 201, description = "Created", body = ThrottleRuleDto),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "The caller is not an administrator", body = ErrorBody),
        (status = 422, description = "A bad address range, limit or window (the field is named)", body = ErrorBody)))]
pub async fn create_rule(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateThrottleRule>,
) -> ApiResult<(StatusCode, Json<ThrottleRuleDto>)> {
    caller.require_admin()?;
    let mut new = NewThrottleRule {
        from_cidr: body.from,
        to_cidr: body.to,
        limit_bytes: body.limit_bytes,
        window: body.window.map(|w| w.trim().to_owned()).filter(|w| !w.is_empty()),
    };
    validate(&new).map_err(ApiError::invalid)?;
    // Stored in the canonical form (`192.0.2.7` → `192.0.2.7/32`), as the rule matches.
    new.from_cidr = parse_range("from", &new.from_cidr)
        .map_err(ApiError::invalid)?
        .to_string();
    new.to_cidr = parse_range("to", &new.to_cidr).map_err(ApiError::invalid)?.to_string();
    let stored = state.db.create_throttle_rule(&new).await?;
    reload(&state).await?;
    match Rule::parse(&stored) {
        Ok(rule) => tracing::info!("user {} added network throttling {rule}", caller.name),
        Err(e) => tracing::warn!(
            "user {} added a network throttling rule that does not parse: {e}",
            caller.name
        ),
    }
    Ok((StatusCode::CREATED, Json(stored.into())))
}

/// Deletes a network throttling rule (administrator); transfers it limited are freed at once.
#[utoipa::path(delete, path = "/api/v1/throttle-rules/{id}", tag = "throttling",
    params(("id" = i64, Path, description = "Rule id")),
    responses((status = 204, description = "Deleted"),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "The caller is not an administrator", body = ErrorBody),
        (status = 404, description = "No such rule", body = ErrorBody)))]
pub async fn delete_rule(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    state.db.delete_throttle_rule(id).await?;
    reload(&state).await?;
    tracing::info!("user {} deleted network throttling rule {id}", caller.name);
    Ok(StatusCode::NO_CONTENT)
}
