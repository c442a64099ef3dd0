//! The audit trail: who did what and when, through the API (and so the CLI and the console) or
//! the scheduler.
//!
//! Every request that may change something (any method but GET, HEAD and OPTIONS) on a route of
//! the API is recorded by [`middleware`] after it was answered: the action (named for the route,
//! [`action_name`]), the user (set by the [`crate::auth::Caller`] extractor, or by the login
//! handler for the name tried), the client's address, the target (the path, or what the handler
//! [`AuditNote::target`]s), the outcome (`ok` or the status and error message) and details the
//! handler adds (a restore's target file, a job's name). Agents' heartbeats, work polls and task
//! reports are not recorded: they change nothing a person asked for. Jobs started by the
//! scheduler are recorded by it as user `(scheduler)`.
//!
//! Entries go to the configuration database ([`cairn_configdb::ConfigDb::append_audit`]:
//! append-only, hash-chained). The newest entry's id and hash are also written to `DATA/audit.head`,
//! so that removing entries from the end of the log (which leaves a valid chain) is detected by
//! [`Auditor::verify`] as well.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use cairn_configdb::{AuditCheck, ConfigDb, NewAuditEntry};
use serde::{Deserialize, Serialize};

use crate::state::AppState;

/// File in the data folder with the id and hash of the newest entry.
pub const HEAD_FILE: &str = "audit.head";
/// The user of entries the server makes on its own.
pub const SCHEDULER_USER: &str = "(scheduler)";

/// Writes audit entries and checks the chain.
#[derive(Debug)]
pub struct Auditor {
    db: ConfigDb,
    head_file: PathBuf,
    /// Serialises appends with the head file's writes.
    order: tokio::sync::Mutex<()>,
}

/// What [`Auditor::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditReport {
    /// Entries checked.
    pub entries: u64,
    /// Whether the chain holds and its newest entry is the one the data folder recorded.
    pub intact: bool,
    /// What is wrong, when something is.
    pub problem: Option<String>,
}

impl Auditor {
    /// An auditor writing to `db` and keeping the head in `data_dir`.
    pub fn new(db: ConfigDb, data_dir: &Path) -> Auditor {
        Auditor {
            db,
            head_file: data_dir.join(HEAD_FILE),
            order: tokio::sync::Mutex::new(()),
        }
    }

    /// Appends `entry`. A failure is logged, never returned: the action it records has happened.
    pub async fn record(&self, entry: NewAuditEntry) {
        let _order = self.order.lock().await;
        match self.db.append_audit(&entry).await {
            Ok(stored) => {
                let text = format!("{} {}\n", stored.id, stored.hash);
                if let Err(e) = crate::secrets::write_private(&self.head_file, text.as_bytes()) {
                    tracing::error!("writing the audit head {}: {e}", self.head_file.display());
                }
            }
            Err(e) => tracing::error!(
                "the audit log could not record {} by {} on {}: {e}",
                entry.action,
                entry.user.as_deref().unwrap_or("-"),
                entry.target
            ),
        }
    }

    /// Walks the chain and compares its newest entry with the head kept in the data folder.
    pub async fn verify(&self) -> Result<AuditReport, cairn_configdb::Error> {
        let AuditCheck { entries, head, problem } = self.db.verify_audit().await?;
        let problem = problem.or_else(|| self.head_problem(head.as_ref()));
        Ok(AuditReport {
            entries,
            intact: problem.is_none(),
            problem,
        })
    }

    fn head_problem(&self, head: Option<&(i64, String)>) -> Option<String> {
        let text = match std::fs::read_to_string(&self.head_file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return head.map(|(id, _)| {
                    format!(
                        "{} is missing although the log has {id} entries",
                        self.head_file.display()
                    )
                });
            }
            Err(e) => return Some(format!("reading {}: {e}", self.head_file.display())),
        };
        let mut parts = text.split_whitespace();
        let (Some(id), Some(hash)) = (parts.next().and_then(|i| i.parse::<i64>().ok()), parts.next()) else {
            return Some(format!("{} is damaged", self.head_file.display()));
        };
        match head {
            None => Some(format!(
                "the log is empty but its newest entry was {id}: every entry was removed"
            )),
            Some((last, _)) if *last < id => Some(format!(
                "entries {} to {id} were removed from the end of the log",
                last + 1
            )),
            Some((last, last_hash)) if *last == id && last_hash != hash => {
                Some(format!("entry {id} is not the entry that was written last"))
            }
            // A newer entry than the head: the server stopped between the two writes.
            Some(_) => None,
        }
    }
}

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

/// The error message of an answered error, put on the response by [`crate::api::error::ApiError`].
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
