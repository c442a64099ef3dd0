//! The control channel of agents: a long poll for instructions and a route for each task's
//! reports. Both authenticate the agent by its pinned client certificate only.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use cairn_mover::protocol::{Instruction, TaskEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::AgentIdentity;
use super::{ApiJson, ApiPath};
use crate::agent_hub::HubError;
use crate::state::AppState;
pub use cairn_api::agents::{ControlDto, WorkRequest};

/// Longest long poll.
pub const MAX_WAIT_SECS: u64 = 30;

/// Instructions for the calling agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkResponse {
    /// In the order they were queued (source, target, read plan, cancel, repository set-up).
    #[schema(value_type = Vec<Object>)]
    pub instructions: Vec<Instruction>,
}

/// `POST /api/v1/agents/tasks/{task}/events` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EventsRequest {
    /// Reports, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<TaskEvent>,
}

/// An agent fetches its instructions, waiting up to `wait_secs` for one.
#[utoipa::path(post, path = "/api/v1/agents/work", tag = "agents", request_body = WorkRequest, security(()),
    responses((status = 200, description = "Instructions (possibly none)", body = WorkResponse),
        (status = 401, description = "No client certificate", body = ErrorBody),
        (status = 403, description = "The certificate belongs to no agent, or the agent is revoked", body = ErrorBody)))]
pub async fn work(
    AgentIdentity(agent): AgentIdentity,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<WorkRequest>,
) -> ApiResult<Json<WorkResponse>> {
    let wait = Duration::from_secs(body.wait_secs.unwrap_or(MAX_WAIT_SECS).min(MAX_WAIT_SECS));
    let instructions = state.movers.hub.poll(agent.id, wait).await;
    Ok(Json(WorkResponse { instructions }))
}

/// An agent reports on a task it runs; the answer is the task's steering.
#[utoipa::path(post, path = "/api/v1/agents/tasks/{task}/events", tag = "agents", request_body = EventsRequest,
    security(()), params(("task" = u64, Path, description = "Task number from the instruction")),
    responses((status = 200, description = "Taken; the task's steering", body = ControlDto),
        (status = 401, description = "No client certificate", body = ErrorBody),
        (status = 403, description = "Not this agent's task, or the agent is revoked", body = ErrorBody),
        (status = 404, description = "No such task (it ended, or the server restarted): stop it", body = ErrorBody)))]
pub async fn events(
    AgentIdentity(agent): AgentIdentity,
    State(state): State<AppState>,
    ApiPath(task): ApiPath<u64>,
    ApiJson(body): ApiJson<EventsRequest>,
) -> ApiResult<Json<ControlDto>> {
    match state.movers.hub.deliver(agent.id, task, body.events) {
        Ok(control) => Ok(Json(control)),
        Err(e @ HubError::NoSuchTask(_)) => Err(ApiError::not_found(e.to_string())),
        Err(e @ HubError::NotYours(_)) => Err(ApiError::forbidden(format!("agent {}: {e}", agent.name))),
    }
}
