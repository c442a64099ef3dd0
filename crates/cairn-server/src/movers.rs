//! What the job manager needs to move data through agents: the control channel
//! ([`AgentHub`]), the server's own data mover identity (when the server itself is the source
//! for a repository on an agent), the heartbeat rule that says when an agent is lost, and the
//! number of parallel streams per transfer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_configdb::{Agent, AgentRole};
use cairn_transfer::TlsIdentity;
use jiff::Timestamp;

use crate::agent_hub::AgentHub;
use crate::agent_tls::{AgentCa, new_key_and_csr, parse_csr};
use crate::tls::{CA_CERT_FILE, TlsError, write_atomic};
use cairn_api::agent::OFFLINE_AFTER_MISSED;

/// The server's data mover certificate (a client certificate of its own CA).
pub const MOVER_CERT_FILE: &str = "mover.pem";
/// Its private key.
pub const MOVER_KEY_FILE: &str = "mover-key.pem";

/// Data movers as the job manager sees them.
pub struct Movers {
    /// Instructions to agents and their reports.
    pub hub: Arc<AgentHub>,
    /// How often agents send heartbeats.
    pub heartbeat: Duration,
    /// Parallel TCP streams per transfer.
    pub streams: u16,
    identity: Option<(Arc<TlsIdentity>, String)>,
}

impl Movers {
    /// Loads the server's data mover identity from `data_dir` (creating it on first use).
    pub fn load(data_dir: &Path, heartbeat: Duration, streams: u16) -> Result<Movers, TlsError> {
        let cert_path = data_dir.join(MOVER_CERT_FILE);
        let key_path = data_dir.join(MOVER_KEY_FILE);
        if !cert_path.exists() || !key_path.exists() {
            let (key_pem, csr_pem) = new_key_and_csr("cairn-server")?;
            let csr = parse_csr(&csr_pem).map_err(|reason| TlsError::Bad {
                path: cert_path.clone(),
                reason,
            })?;
            let cert = AgentCa::load(data_dir)?.sign(&csr, "cairn-server", 0)?;
            write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
            write_atomic(&cert_path, cert.pem.as_bytes(), 0o600)?;
        }
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Io {
                path: p.to_path_buf(),
                op: "read",
                source,
            })
        };
        let identity = TlsIdentity::from_pem(
            &read(&data_dir.join(CA_CERT_FILE))?,
            &read(&cert_path)?,
            &read(&key_path)?,
        )
        .map_err(|e| TlsError::Bad {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
        let fingerprint = identity.fingerprint().to_string();
        Ok(Movers {
            identity: Some((Arc::new(identity), fingerprint)),
            ..Movers::without_identity(heartbeat, streams)
        })
    }

    /// Movers without a data mover identity of the server's own: the server cannot be the
    /// source of a transfer to a repository agent (for job manager tests without a CA).
    pub fn without_identity(heartbeat: Duration, streams: u16) -> Movers {
        Movers {
            hub: Arc::new(AgentHub::default()),
            heartbeat,
            streams,
            identity: None,
        }
    }

    /// The server's own data mover identity and its certificate's fingerprint.
    pub fn identity(&self) -> Option<&(Arc<TlsIdentity>, String)> {
        self.identity.as_ref()
    }

    /// How long an agent may stay silent before it counts as lost.
    pub fn timeout(&self) -> Duration {
        self.heartbeat * OFFLINE_AFTER_MISSED as u32
    }

    /// Why `agent` cannot take work now (revoked, or silent for longer than the timeout).
    pub fn unavailable(&self, agent: &Agent, now: Timestamp) -> Option<String> {
        if agent.revoked_at.is_some() {
            return Some(format!("agent {} is revoked", agent.name));
        }
        let limit = self.timeout();
        match agent.last_seen_at {
            None => Some(format!("agent {} has not sent a heartbeat yet", agent.name)),
            Some(seen) => {
                let silent = now.duration_since(seen).unsigned_abs();
                (silent > limit).then(|| {
                    format!(
                        "agent {} is lost: no heartbeat for {:.0} s (the limit is {} missed heartbeats, {} s)",
                        agent.name,
                        silent.as_secs_f64(),
                        OFFLINE_AFTER_MISSED,
                        limit.as_secs()
                    )
                })
            }
        }
    }
}

/// Whether `agent` has `role`.
pub fn has_role(agent: &Agent, role: AgentRole) -> bool {
    agent.roles.contains(&role)
}

/// The proxy agents that can take work now (proxy role, online), each with its row in the
/// proxies table (created on first use, named after the agent; its task slots follow the
/// agent's heartbeats).
pub async fn agent_proxies(
    db: &cairn_configdb::ConfigDb,
    movers: &Movers,
) -> Result<Vec<(cairn_configdb::Proxy, Agent)>, cairn_configdb::Error> {
    let now = Timestamp::now();
    let mut rows = db.list_proxies().await?;
    let mut out = Vec::new();
    for agent in db.list_agents().await? {
        if !has_role(&agent, AgentRole::Proxy) {
            continue;
        }
        let row = match rows.iter().find(|p| p.settings.agent_id == Some(agent.id)) {
            Some(row) if row.settings.max_tasks == agent.max_tasks && row.settings.address == agent.address => {
                row.clone()
            }
            Some(row) => {
                let mut settings = row.settings.clone();
                settings.max_tasks = agent.max_tasks;
                settings.address = agent.address.clone();
                db.update_proxy(row.id, &settings).await?
            }
            None => {
                let taken = rows.iter().any(|p| p.settings.name == agent.name);
                let settings = cairn_configdb::NewProxy {
                    name: if taken {
                        format!("agent-{}", agent.name)
                    } else {
                        agent.name.clone()
                    },
                    address: agent.address.clone(),
                    max_tasks: agent.max_tasks,
                    agent_id: Some(agent.id),
                };
                let row = db.create_proxy(&settings).await?;
                rows.push(row.clone());
                row
            }
        };
        if movers.unavailable(&agent, now).is_none() {
            out.push((row, agent));
        }
    }
    Ok(out)
}
