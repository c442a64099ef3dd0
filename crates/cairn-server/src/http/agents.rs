//! Agents: enrolment tokens, enrolment, heartbeats, certificate renewal, the list and
//! revocation.
//!
//! An administrator creates a one-time enrolment token; the agent sends it once with a
//! certificate signing request and gets a client certificate from the server's CA (see
//! [`crate::agent_tls`]). From then on agent routes authenticate the agent by that certificate
//! only (no bearer token). An agent that has not sent a heartbeat for
//! [`OFFLINE_AFTER_MISSED`] heartbeat intervals (default [`HEARTBEAT_INTERVAL_SECS`] s) is offline.
//!
//! Each heartbeat's answer says whether the agent should renew its certificate
//! ([`renewal_due`]: less than [`AGENT_CERT_RENEW_DAYS`] days left, or an administrator asked for
//! it with `POST /api/v1/agents/{id}/renew`). The agent then makes a new key and sends a
//! certificate signing request to `POST /api/v1/agents/renew`, presenting its current
//! certificate.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cairn_configdb::{Agent, AgentRole, AgentStatus, EnrolRefusal, IssuedCertificate, NewAgent, NewEnrolmentToken};
use jiff::{SignedDuration, Timestamp};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::AgentIdentity;
use super::{ApiJson, ApiPath};
use crate::agent_tls::{AGENT_CERT_RENEW_DAYS, AgentCa, parse_csr};
use crate::auth::{Caller, generate_token, looks_like_token, token_hash};
use crate::state::AppState;

pub use cairn_api::agent::{HEARTBEAT_INTERVAL_SECS, OFFLINE_AFTER_MISSED};
pub use cairn_api::agents::{
    AgentDto, AgentState, CreateEnrolmentToken, EnrolRequest, EnrolResponse, EnrolmentTokenCreated, Heartbeat,
    RenewRequest, RenewResponse,
};
/// Lifetime of an enrolment token unless the request says otherwise.
pub const DEFAULT_TOKEN_SECS: u64 = 3600;
/// Longest lifetime of an enrolment token.
pub const MAX_TOKEN_SECS: u64 = 30 * 86_400;

/// Whether `agent` should renew its certificate at `now`: an administrator asked for it, or it
/// ends within [`AGENT_CERT_RENEW_DAYS`] days. A revoked agent never renews.
pub fn renewal_due(agent: &Agent, now: Timestamp) -> bool {
    let window = SignedDuration::from_hours(24 * AGENT_CERT_RENEW_DAYS);
    agent.revoked_at.is_none()
        && (agent.renew_requested_at.is_some() || agent.cert_not_after.duration_since(now) < window)
}

/// The state of `agent` at `now`, with heartbeats expected every `heartbeat`.
pub fn agent_state(agent: &Agent, now: Timestamp, heartbeat: std::time::Duration) -> AgentState {
    if agent.revoked_at.is_some() {
        return AgentState::Revoked;
    }
    let window = SignedDuration::try_from(heartbeat * OFFLINE_AFTER_MISSED as u32).unwrap_or(SignedDuration::MAX);
    match agent.last_seen_at {
        Some(seen) if now.duration_since(seen) <= window => AgentState::Online,
        _ => AgentState::Offline,
    }
}

/// `agent` as seen at `now`, with heartbeats expected every `heartbeat`.
pub fn agent_dto(agent: Agent, now: Timestamp, heartbeat: std::time::Duration) -> AgentDto {
    AgentDto {
        heartbeat_secs: heartbeat.as_secs().max(1),
        renew_certificate: renewal_due(&agent, now),
        renew_requested_at: agent.renew_requested_at,
        state: agent_state(&agent, now, heartbeat),
        id: agent.id,
        name: agent.name,
        roles: agent.roles,
        version: agent.version,
        max_tasks: agent.max_tasks,
        free_bytes: agent.free_bytes,
        address: agent.address,
        last_seen_at: agent.last_seen_at,
        cert_fingerprint: agent.cert_fingerprint,
        cert_not_after: agent.cert_not_after,
        created_at: agent.created_at,
        revoked_at: agent.revoked_at,
    }
}

/// A database error on an agent's own request: revoked between the identity check and the
/// update (a conflict) is 403, like a revoked agent's certificate.
fn refused_agent(e: cairn_configdb::Error) -> ApiError {
    match e {
        cairn_configdb::Error::Conflict { what } => ApiError::forbidden(what),
        e => e.into(),
    }
}

fn check_agent_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "agent name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-'"
        )))
    }
}

fn roles(names: &[AgentRole]) -> Vec<AgentRole> {
    let mut out: Vec<AgentRole> = Vec::new();
    for r in names {
        let r = *r;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// Creates a one-time enrolment token (administrator).
#[utoipa::path(post, path = "/api/v1/agents/tokens", tag = "agents", request_body = CreateEnrolmentToken,
    responses((status = 201, description = "Created; the secret is shown only now", body = EnrolmentTokenCreated),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "The caller is not an administrator", body = ErrorBody),
        (status = 422, description = "No roles, or a lifetime out of range", body = ErrorBody)))]
pub async fn create_token(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateEnrolmentToken>,
) -> ApiResult<(StatusCode, Json<EnrolmentTokenCreated>)> {
    caller.require_admin()?;
    let secs = body.expires_in_secs.unwrap_or(DEFAULT_TOKEN_SECS);
    if !(1..=MAX_TOKEN_SECS).contains(&secs) {
        return Err(ApiError::invalid(format!(
            "expires_in_secs {secs}: from 1 to {MAX_TOKEN_SECS} (30 days)"
        )));
    }
    let wanted = roles(&body.roles);
    if wanted.is_empty() {
        return Err(ApiError::invalid(
            "roles: give at least one of proxy, repository, gateway",
        ));
    }
    let secret = generate_token();
    let token = state
        .db
        .create_enrolment_token(&NewEnrolmentToken {
            token_hash: token_hash(&secret),
            roles: wanted,
            created_by: Some(caller.user_id),
            expires_at: Timestamp::now() + SignedDuration::from_secs(secs as i64),
        })
        .await?;
    tracing::info!(
        "user {} created agent enrolment token {} for roles {}",
        caller.name,
        token.id,
        cairn_configdb::roles_to_text(&token.roles)
    );
    Ok((
        StatusCode::CREATED,
        Json(EnrolmentTokenCreated {
            token: secret,
            roles: token.roles,
            expires_at: token.expires_at,
        }),
    ))
}

/// Enrols an agent: the one-time token in the body authenticates it (no bearer token); the
/// answer holds its client certificate, signed by the server's CA, and the CA to pin.
#[utoipa::path(post, path = "/api/v1/agents/enroll", tag = "agents", request_body = EnrolRequest, security(()),
    responses((status = 201, description = "Enrolled", body = EnrolResponse),
        (status = 401, description = "Unknown, expired or already used enrolment token", body = ErrorBody),
        (status = 403, description = "The token does not grant the roles asked for", body = ErrorBody),
        (status = 409, description = "An agent of this name exists", body = ErrorBody),
        (status = 422, description = "Bad name, counts or certificate signing request", body = ErrorBody)))]
pub async fn enroll(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<EnrolRequest>,
) -> ApiResult<(StatusCode, Json<EnrolResponse>)> {
    if !looks_like_token(body.token.trim()) {
        return Err(ApiError::unauthorized(EnrolRefusal::Unknown.to_string()));
    }
    check_agent_name(&body.name)?;
    let data_dir = state.data_dir.clone();
    let ca = tokio::task::spawn_blocking(move || AgentCa::load(&data_dir))
        .await?
        .map_err(|e| ApiError::internal("the server's CA cannot be read (see the server log)", e))?;
    let new = NewAgent {
        name: body.name.clone(),
        roles: body.roles.as_deref().map(roles),
        version: body.version.clone(),
        max_tasks: body.max_tasks,
        free_bytes: body.free_bytes,
        address: body.address.clone(),
    };
    let name = body.name.clone();
    let outcome = state
        .db
        .enrol_agent(&token_hash(body.token.trim()), Timestamp::now(), &new, |id| {
            // Read only once the token was accepted: a stranger learns nothing from the CSR check.
            let csr = parse_csr(&body.csr_pem)?;
            let cert = ca.sign(&csr, &name, id).map_err(|e| e.to_string())?;
            Ok(IssuedCertificate {
                fingerprint: cert.fingerprint.clone(),
                not_after: cert.not_after,
                extra: cert.pem,
            })
        })
        .await?;
    let (agent, issued) = match outcome {
        Ok(done) => done,
        Err(refusal @ EnrolRefusal::RolesNotGranted) => return Err(ApiError::forbidden(refusal.to_string())),
        Err(refusal) => return Err(ApiError::unauthorized(refusal.to_string())),
    };
    tracing::info!(
        "agent {} (id {}) enrolled with roles {}; certificate SHA-256 {}",
        agent.name,
        agent.id,
        cairn_configdb::roles_to_text(&agent.roles),
        agent.cert_fingerprint
    );
    Ok((
        StatusCode::CREATED,
        Json(EnrolResponse {
            agent_id: agent.id,
            name: agent.name,
            roles: agent.roles,
            certificate_pem: issued.extra,
            ca_pem: ca.ca_pem,
            cert_fingerprint: agent.cert_fingerprint,
            cert_not_after: agent.cert_not_after,
        }),
    ))
}

/// An agent reports that it is alive, with its version, task slots and free space. The agent is
/// recognised by its TLS client certificate only (no bearer token).
#[utoipa::path(post, path = "/api/v1/agents/heartbeat", tag = "agents", request_body = Heartbeat, security(()),
    responses((status = 200, description = "Recorded; the agent as the server now sees it", body = AgentDto),
        (status = 401, description = "No client certificate", body = ErrorBody),
        (status = 403, description = "The certificate belongs to no agent, or the agent is revoked", body = ErrorBody),
        (status = 422, description = "Bad counts, or roles that were not granted", body = ErrorBody)))]
pub async fn heartbeat(
    AgentIdentity(agent): AgentIdentity,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Heartbeat>,
) -> ApiResult<Json<AgentDto>> {
    if let Some(asked) = &body.roles {
        let extra: Vec<String> = roles(asked)
            .into_iter()
            .filter(|r| !agent.roles.contains(r))
            .map(|r| r.to_string())
            .collect();
        if !extra.is_empty() {
            return Err(ApiError::invalid(format!(
                "agent {} was not granted the role(s) {}",
                agent.name,
                extra.join(", ")
            )));
        }
    }
    if let Some(instance) = &body.instance {
        state.movers.hub.saw_instance(agent.id, instance);
    }
    let now = Timestamp::now();
    let status = AgentStatus {
        version: body.version,
        max_tasks: body.max_tasks,
        free_bytes: body.free_bytes,
        address: body.address,
    };
    let updated = state
        .db
        .record_heartbeat(agent.id, &status, now)
        .await
        .map_err(refused_agent)?;
    Ok(Json(agent_dto(updated, now, state.movers.heartbeat)))
}

/// Every agent (revoked ones too) with its state.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    responses((status = 200, description = "OK", body = Vec<AgentDto>),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody)))]
pub async fn list_agents(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<Vec<AgentDto>>> {
    caller.require(cairn_configdb::Role::Viewer)?;
    let now = Timestamp::now();
    Ok(Json(
        state
            .db
            .list_agents()
            .await?
            .into_iter()
            .map(|a| agent_dto(a, now, state.movers.heartbeat))
            .collect(),
    ))
}

/// Revokes an agent (administrator): its certificate is refused from now on; the agent stays in
/// the list as revoked.
#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = i64, Path, description = "Agent id")),
    responses((status = 200, description = "Revoked", body = AgentDto),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "The caller is not an administrator", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody)))]
pub async fn revoke_agent(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<AgentDto>> {
    caller.require_admin()?;
    let now = Timestamp::now();
    let agent = state.db.revoke_agent(id, now).await?;
    tracing::info!("user {} revoked agent {} (id {})", caller.name, agent.name, agent.id);
    Ok(Json(agent_dto(agent, now, state.movers.heartbeat)))
}

/// An agent renews its certificate: it presents its current one and sends a request for a new
/// key; the answer is a new certificate from the server's CA (same name and id). The current
/// certificate is accepted until the first request made with the new one; from then on only the
/// new one is.
#[utoipa::path(post, path = "/api/v1/agents/renew", tag = "agents", request_body = RenewRequest, security(()),
    responses((status = 200, description = "Issued; pinned once the agent uses it", body = RenewResponse),
        (status = 401, description = "No client certificate", body = ErrorBody),
        (status = 403, description = "The certificate belongs to no agent, or the agent is revoked", body = ErrorBody),
        (status = 422, description = "Bad certificate signing request", body = ErrorBody)))]
pub async fn renew_certificate(
    AgentIdentity(agent): AgentIdentity,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RenewRequest>,
) -> ApiResult<Json<RenewResponse>> {
    let csr = parse_csr(&body.csr_pem).map_err(ApiError::invalid)?;
    let data_dir = state.data_dir.clone();
    let (name, id) = (agent.name.clone(), agent.id);
    let cert = tokio::task::spawn_blocking(move || AgentCa::load(&data_dir).and_then(|ca| ca.sign(&csr, &name, id)))
        .await?
        .map_err(|e| ApiError::internal("the server's CA cannot sign (see the server log)", e))?;
    let staged = state
        .db
        .stage_agent_certificate(agent.id, &cert.fingerprint, cert.not_after)
        .await
        .map_err(refused_agent)?;
    tracing::info!(
        "agent {} (id {}) renewed its certificate: new SHA-256 {}, valid until {}; accepted once it is used",
        staged.name,
        staged.id,
        cert.fingerprint,
        cert.not_after
    );
    Ok(Json(RenewResponse {
        certificate_pem: cert.pem,
        cert_fingerprint: cert.fingerprint,
        cert_not_after: cert.not_after,
    }))
}

/// Asks an agent to renew its certificate and key at its next heartbeat (administrator), e.g.
/// when its key may have been exposed. Its current certificate is refused once it uses the new.
#[utoipa::path(post, path = "/api/v1/agents/{id}/renew", tag = "agents", params(("id" = i64, Path, description = "Agent id")),
    responses((status = 200, description = "Asked; the agent renews at its next heartbeat", body = AgentDto),
        (status = 401, description = "No token, or an unknown or expired one", body = ErrorBody),
        (status = 403, description = "The caller is not an administrator", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "The agent is revoked", body = ErrorBody)))]
pub async fn request_renewal(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<AgentDto>> {
    caller.require_admin()?;
    let now = Timestamp::now();
    let agent = state.db.request_agent_renewal(id, now).await?;
    tracing::info!(
        "user {} asked agent {} (id {}) to renew its certificate",
        caller.name,
        agent.name,
        agent.id
    );
    Ok(Json(agent_dto(agent, now, state.movers.heartbeat)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(ends_in_days: i64) -> Agent {
        let now = Timestamp::now();
        Agent {
            id: 1,
            name: "prx01".into(),
            roles: vec![AgentRole::Proxy],
            cert_fingerprint: "ab".repeat(32),
            cert_not_after: now + SignedDuration::from_hours(24 * ends_in_days),
            version: "1".into(),
            max_tasks: 1,
            free_bytes: 0,
            address: None,
            last_seen_at: Some(now),
            revoked_at: None,
            created_at: now,
            next_cert_fingerprint: None,
            next_cert_not_after: None,
            renew_requested_at: None,
        }
    }

    #[test]
    fn a_certificate_is_renewed_in_its_last_30_days_or_when_asked() {
        let now = Timestamp::now();
        assert!(!renewal_due(&agent(365), now));
        assert!(!renewal_due(&agent(31), now));
        assert!(renewal_due(&agent(29), now));
        assert!(renewal_due(&agent(-1), now), "an expired one too");
        let mut asked = agent(300);
        asked.renew_requested_at = Some(now);
        assert!(renewal_due(&asked, now));
        let mut revoked = agent(1);
        revoked.revoked_at = Some(now);
        assert!(!renewal_due(&revoked, now), "a revoked agent never renews");
    }
}
