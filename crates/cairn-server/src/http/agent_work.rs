//! The control channel of agents: a long poll for instructions and a route for each task's
//! reports. Both authenticate the agent by its pinned client certificate only.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use cairn_mover::protocol::{Control, Instruction, TaskEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::AgentIdentity;
use super::{ApiJson, ApiPath};
use crate::agent_hub::HubError;
use crate::state::AppState;

/// Longest long poll.
pub const MAX_WAIT_SECS: u64 = 30;

/// `POST /api/v1/agents/work` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct WorkRequest {
    /// Seconds to wait for an instruction when none is queued (default and maximum 30).
    #[serde(default)]
    pub wait_secs: Option<u64>,
}

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

/// The steering of a task, answered to each report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ControlDto {
    /// Stop the task, for this reason.
    pub cancel: Option<String>,
    /// Write rate share now (bytes/s), for a repository's data mover.
    pub write_rate: Option<u64>,
    /// Network rate limit now (bytes/s), for a proxy.
    pub network_rate: Option<u64>,
}

impl From<Control> for ControlDto {
    fn from(c: Control) -> Self {
        ControlDto {
            cancel: c.cancel,
            write_rate: c.write_rate,
            network_rate: c.network_rate,
        }
    }
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
        Ok(control) => Ok(Json(control.into())),
        Err(e @ HubError::NoSuchTask(_)) => Err(ApiError::not_found(e.to_string())),
        Err(e @ HubError::NotYours(_)) => Err(ApiError::forbidden(format!("agent {}: {e}", agent.name))),
    }
}
