//! The extractors of the HTTP layer that tell who sent a request: [`Caller`] (a user, by the
//! bearer token of the `Authorization` header) and [`AgentIdentity`] (an agent, by the client
//! certificate of its TLS connection).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum_server::tls::TlsInfo;
use cairn_configdb::{Agent, TokenScope};
use jiff::Timestamp;

use super::error::ApiError;
use crate::agent_tls::fingerprint;
pub use crate::auth::Caller;
use crate::auth::{looks_like_token, token_hash};
use crate::state::AppState;

/// The routes a `totp-setup` token may call.
const SETUP_ROUTES: &[&str] = &[
    "/api/v1/auth/whoami",
    "/api/v1/auth/logout",
    "/api/v1/auth/totp",
    "/api/v1/auth/totp/confirm",
];

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("no token: send `Authorization: Bearer TOKEN` (log in first)"))?;
        let value = header
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
        let secret = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer TOKEN`"))?;
        if !looks_like_token(secret) {
            return Err(ApiError::unauthorized("invalid token: log in again"));
        }
        let (token, user) = state
            .db
            .find_valid_token(&token_hash(secret), Timestamp::now())
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid or expired token: log in again"))?;
        if let Some(slot) = parts.extensions.get::<super::audit_trail::AuditSlot>() {
            slot.user(&user.name);
        }
        if token.scope == TokenScope::TotpSetup && !SETUP_ROUTES.contains(&parts.uri.path()) {
            return Err(ApiError::forbidden(format!(
                "administrators must have a second factor: user {} must set one up first (POST \
                 /api/v1/auth/totp, then /api/v1/auth/totp/confirm)",
                user.name
            ))
            .with_code("totp_setup_required"));
        }
        Ok(Caller {
            user_id: user.id,
            name: user.name,
            role: user.role,
            token_id: token.id,
            token_kind: token.kind,
            scope: token.scope,
        })
    }
}

/// The enrolled, unrevoked agent a request comes from, recognised by the SHA-256 fingerprint of
/// the client certificate of its TLS connection. No certificate: 401; a certificate of no agent
/// or of a revoked one: 403 saying which.
#[derive(Debug, Clone)]
pub struct AgentIdentity(pub Agent);

impl FromRequestParts<AppState> for AgentIdentity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<AgentIdentity, ApiError> {
        let der = parts
            .extensions
            .get::<Arc<TlsInfo>>()
            .and_then(|info| info.peer_certificates.first().cloned())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "no client certificate: agent routes need the certificate the agent got at enrolment",
                )
            })?;
        let fp = fingerprint(&der);
        let agent = state.db.find_agent_by_fingerprint(&fp).await?.ok_or_else(|| {
            ApiError::forbidden(format!(
                "the client certificate (SHA-256 {fp}) belongs to no enrolled agent"
            ))
        })?;
        if let Some(at) = agent.revoked_at {
            return Err(ApiError::forbidden(format!(
                "agent {} was revoked at {at}: enrol it again with a new token",
                agent.name
            )));
        }
        if agent.cert_fingerprint != fp {
            // The first request with a renewed certificate: it becomes the agent's only one.
            return match state.db.promote_agent_certificate(agent.id, &fp).await? {
                Some(renewed) => {
                    tracing::info!(
                        "agent {} (id {}) uses its renewed certificate (SHA-256 {fp}, valid until {}); the \
                         previous one is refused from now on",
                        renewed.name,
                        renewed.id,
                        renewed.cert_not_after
                    );
                    Ok(AgentIdentity(renewed))
                }
                // Another request promoted it in the meantime.
                None => match state.db.find_agent_by_fingerprint(&fp).await? {
                    Some(a) if a.cert_fingerprint == fp && a.revoked_at.is_none() => Ok(AgentIdentity(a)),
                    _ => Err(ApiError::forbidden(format!(
                        "the client certificate (SHA-256 {fp}) belongs to no enrolled agent"
                    ))),
                },
            };
        }
        Ok(AgentIdentity(agent))
    }
}
