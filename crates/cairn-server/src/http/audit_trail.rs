//! What the HTTP layer records in the audit trail ([`crate::audit`]): the entry of each request
//! that may change something, named for its route ([`action_name`]), with the user (set by the
//! [`crate::auth::Caller`] extractor, or by the login handler for the name tried), the client's
//! address, the target (the path, or what the handler [`AuditNote::target`]s), the outcome and
//! the details the handler adds; written by [`middleware`] once the request was answered.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use cairn_configdb::NewAuditEntry;

use crate::state::AppState;

/// What a handler adds to its request's audit entry.
#[derive(Debug, Default)]
pub struct AuditNote {
    skip: bool,
    user: Option<String>,
    target: Option<String>,
    details: serde_json::Map<String, serde_json::Value>,
}

/// The audit entry of one request, filled in while it is handled (an extractor).
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(Arc<Mutex<AuditNote>>);

impl AuditSlot {
    fn with(&self, f: impl FnOnce(&mut AuditNote)) {
        if let Ok(mut note) = self.0.lock() {
            f(&mut note);
        }
    }

    /// Leaves this request out of the log (a login refused while locked: a flood of them
    /// would only fill the log; the lock itself was recorded).
    pub fn skip(&self) {
        self.with(|n| n.skip = true);
    }

    /// Sets who acted.
    pub fn user(&self, name: &str) {
        self.with(|n| n.user = Some(name.to_owned()));
    }

    /// Sets what was acted on.
    pub fn target(&self, target: impl Into<String>) {
        let target = target.into();
        self.with(|n| n.target = Some(target));
    }

    /// Adds a detail.
    pub fn detail(&self, key: &str, value: impl Into<serde_json::Value>) {
        let value = value.into();
        self.with(|n| {
            n.details.insert(key.to_owned(), value);
        });
    }

    fn take(&self) -> AuditNote {
        self.0.lock().map(|mut n| std::mem::take(&mut *n)).unwrap_or_default()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuditSlot {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<AuditSlot, Self::Rejection> {
        // Outside the middleware (GET routes) notes go nowhere.
        Ok(parts.extensions.get::<AuditSlot>().cloned().unwrap_or_default())
    }
}

/// The error message of an answered error, put on the response by [`crate::http::error::ApiError`].
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

/// The action recorded for `method` on the route `template`; `None` for routes that are not
/// recorded (agents' data-plane traffic).
pub fn action_name(method: &Method, template: &str) -> Option<&'static str> {
    let m = method.as_str();
    Some(match (m, template) {
        ("POST", "/api/v1/auth/login") => "login",
        ("POST", "/api/v1/auth/logout") => "logout",
        ("POST", "/api/v1/auth/password") => "password.change",
        ("POST", "/api/v1/auth/totp") => "totp.setup",
        ("POST", "/api/v1/auth/totp/confirm") => "totp.enable",
        ("POST", "/api/v1/auth/totp/disable") => "totp.disable",
        ("POST", "/api/v1/tokens") => "token.create",
        ("DELETE", "/api/v1/tokens/{id}") => "token.delete",
        ("POST", "/api/v1/users") => "user.create",
        ("PATCH", "/api/v1/users/{id}") => "user.update",
        ("DELETE", "/api/v1/users/{id}") => "user.delete",
        ("DELETE", "/api/v1/users/{id}/totp") => "user.totp.reset",
        ("POST", "/api/v1/hosts") => "host.add",
        ("DELETE", "/api/v1/hosts/{id}") => "host.remove",
        ("POST", "/api/v1/hosts/{id}/rescan") => "host.rescan",
        ("POST", "/api/v1/vms/{id}/start") => "vm.start",
        ("POST", "/api/v1/vms/{id}/stop") => "vm.stop",
        ("POST", "/api/v1/vms/{id}/forget-checkpoints") => "vm.checkpoints.forget",
        ("POST", "/api/v1/repositories") => "repository.create",
        ("PATCH", "/api/v1/repositories/{id}") => "repository.update",
        ("DELETE", "/api/v1/repositories/{id}") => "repository.remove",
        ("PATCH", "/api/v1/proxies/{id}") => "proxy.update",
        ("PATCH", "/api/v1/settings") => "settings.update",
        ("POST", "/api/v1/jobs") => "job.create",
        ("PUT", "/api/v1/jobs/{id}") => "job.update",
        ("DELETE", "/api/v1/jobs/{id}") => "job.remove",
        ("POST", "/api/v1/jobs/{id}/enable") => "job.enable",
        ("POST", "/api/v1/jobs/{id}/disable") => "job.disable",
        ("POST", "/api/v1/jobs/{id}/run") => "job.run",
        ("POST", "/api/v1/jobs/{id}/stop") => "job.stop",
        ("POST", "/api/v1/sessions/{id}/stop") => "session.stop",
        ("POST", "/api/v1/restores") => "restore.disk",
        ("POST", "/api/v1/restores/vm") => "restore.vm",
        ("POST", "/api/v1/instant-recoveries") => "instant-recovery.start",
        ("DELETE", "/api/v1/instant-recoveries/{name}") => "instant-recovery.stop",
        ("POST", "/api/v1/instant-recoveries/{name}/migrate") => "instant-recovery.migrate",
        ("POST", "/api/v1/agents/tokens") => "agent.token.create",
        ("POST", "/api/v1/agents/enroll") => "agent.enrol",
        ("POST", "/api/v1/agents/renew") => "agent.renew",
        ("POST", "/api/v1/agents/{id}/renew") => "agent.renew.request",
        ("DELETE", "/api/v1/agents/{id}") => "agent.revoke",
        ("POST", "/api/v1/throttle-rules") => "throttle.add",
        ("DELETE", "/api/v1/throttle-rules/{id}") => "throttle.remove",
        _ => return None,
    })
}

/// Routes that change nothing a person asked for and are never recorded.
pub fn unrecorded(method: &Method, template: &str) -> bool {
    matches!(
        (method.as_str(), template),
        ("POST", "/api/v1/agents/heartbeat")
            | ("POST", "/api/v1/agents/work")
            | ("POST", "/api/v1/agents/tasks/{task}/events")
    )
}

/// Records every request that may change something (see the module documentation).
pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    if unrecorded(&method, &template) {
        return next.run(request).await;
    }
    let action = action_name(&method, &template).map_or_else(|| format!("{method} {template}"), str::to_owned);
    let path = request.uri().path().to_owned();
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let slot = AuditSlot::default();
    let mut request = request;
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    let note = slot.take();
    let status = response.status();
    // Requests without a valid token never reached an action: recording each would let anyone
    // fill the log. Failed logins name their user and are recorded.
    if note.skip || (status == axum::http::StatusCode::UNAUTHORIZED && note.user.is_none()) {
        return response;
    }
    let outcome = if status.is_success() || status.is_redirection() {
        "ok".to_owned()
    } else {
        let message = response
            .extensions()
            .get::<ErrorMessage>()
            .map(|m| m.0.clone())
            .unwrap_or_default();
        format!("failed: {} {message}", status.as_u16()).trim_end().to_owned()
    };
    let entry = NewAuditEntry {
        user: note.user,
        address,
        action,
        target: note.target.unwrap_or(path),
        outcome,
        details: serde_json::Value::Object(note.details),
    };
    state.audit.record(entry).await;
    response
}
