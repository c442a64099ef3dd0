//! The agents: enrolment, certificates, heartbeats, and the work they ask for.

use crate::AgentRole;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/agents/work` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct WorkRequest {
    /// Seconds to wait for an instruction when none is queued (default and maximum 30).
    #[serde(default)]
    pub wait_secs: Option<u64>,
}

/// The steering of a task, answered to each report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ControlDto {
    /// Stop the task, for this reason.
    pub cancel: Option<String>,
    /// Write rate share now (bytes/s), for a repository's data mover.
    pub write_rate: Option<u64>,
    /// Network rate limit now (bytes/s), for a proxy.
    pub network_rate: Option<u64>,
}

/// Whether an agent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    /// A heartbeat arrived within the last 3 intervals.
    Online,
    /// No heartbeat for 3 intervals (or none yet).
    Offline,
    /// Revoked: its certificate is refused.
    Revoked,
}

/// An agent as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentDto {
    /// Agent id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Roles granted at enrolment.
    pub roles: Vec<AgentRole>,
    /// Online, offline or revoked.
    pub state: AgentState,
    /// Software version last reported.
    pub version: String,
    /// Task slots last reported.
    pub max_tasks: i64,
    /// Free bytes last reported.
    pub free_bytes: i64,
    /// Address last reported.
    pub address: Option<String>,
    /// Time of the last heartbeat.
    pub last_seen_at: Option<Timestamp>,
    /// SHA-256 of its client certificate (hex): the pinned identity.
    pub cert_fingerprint: String,
    /// End of its certificate's validity.
    pub cert_not_after: Timestamp,
    /// When it enrolled.
    pub created_at: Timestamp,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// Seconds between the heartbeats the server expects from agents.
    pub heartbeat_secs: u64,
    /// The agent should renew its certificate (and key) now: it ends within 30 days, or an
    /// administrator asked for it.
    pub renew_certificate: bool,
    /// When an administrator asked for a new certificate (until the agent uses one).
    pub renew_requested_at: Option<Timestamp>,
}

/// `POST /api/v1/agents/tokens` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateEnrolmentToken {
    /// Roles the agent enrolled with this token gets (at least one).
    #[schema(min_items = 1)]
    pub roles: Vec<AgentRole>,
    /// Seconds until the token expires (default 3600, at most 30 days).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2592000)]
    pub expires_in_secs: Option<u64>,
}

/// A new enrolment token; the secret is shown only now.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrolmentTokenCreated {
    /// The one-time secret to give to `cairn agent --token`.
    pub token: String,
    /// The roles it grants.
    pub roles: Vec<AgentRole>,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// `POST /api/v1/agents/enroll` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EnrolRequest {
    /// The one-time enrolment token.
    pub token: String,
    /// Unique agent name: 1–64 letters, digits, `.`, `_`, `-`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// PEM certificate signing request; only its public key is used.
    pub csr_pem: String,
    /// Roles wanted (default: every role of the token; more is refused).
    #[serde(default)]
    pub roles: Option<Vec<AgentRole>>,
    /// The agent's software version.
    pub version: String,
    /// Tasks it runs at once (≥ 1).
    pub max_tasks: i64,
    /// Free bytes where it keeps data.
    pub free_bytes: i64,
    /// Address the agent can be reached at.
    #[serde(default)]
    pub address: Option<String>,
}

/// The enrolled agent's identity.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrolResponse {
    /// Agent id.
    pub agent_id: i64,
    /// Agent name (the certificate's common name).
    pub name: String,
    /// Roles granted.
    pub roles: Vec<AgentRole>,
    /// The agent's client certificate, PEM.
    pub certificate_pem: String,
    /// The server's CA certificate, PEM: the agent trusts only this from now on.
    pub ca_pem: String,
    /// SHA-256 of the certificate (hex), as the server pins it.
    pub cert_fingerprint: String,
    /// End of the certificate's validity.
    pub cert_not_after: Timestamp,
}

/// `POST /api/v1/agents/renew` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RenewRequest {
    /// PEM certificate signing request for the agent's new key; only its public key is used.
    pub csr_pem: String,
}

/// A renewed agent certificate. The current one stays valid until the agent first uses this.
#[derive(Debug, Serialize, ToSchema)]
pub struct RenewResponse {
    /// The new client certificate, PEM.
    pub certificate_pem: String,
    /// Its SHA-256 (hex), as the server will pin it.
    pub cert_fingerprint: String,
    /// End of its validity.
    pub cert_not_after: Timestamp,
}

/// `POST /api/v1/agents/heartbeat` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Heartbeat {
    /// The agent's software version.
    pub version: String,
    /// Tasks it runs at once (≥ 1).
    pub max_tasks: i64,
    /// Free bytes where it keeps data.
    pub free_bytes: i64,
    /// Roles it serves now (must be among those granted).
    #[serde(default)]
    pub roles: Option<Vec<AgentRole>>,
    /// Address the agent can be reached at.
    #[serde(default)]
    pub address: Option<String>,
    /// A random id the agent process picks when it starts: a new one means the agent was
    /// restarted, and the tasks it was running are gone.
    #[serde(default)]
    pub instance: Option<String>,
}
