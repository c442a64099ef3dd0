//! Agents (data movers on proxies, repository servers and gateways) and their one-time
//! enrolment tokens.
//!
//! An administrator creates an enrolment token ([`ConfigDb::create_enrolment_token`]; only its
//! hash is stored). The agent sends the token with a certificate signing request;
//! [`ConfigDb::enrol_agent`] consumes the token and creates the agent in one transaction, so a
//! token enrols at most one agent even when two requests race. From then on the agent is known
//! only by the SHA-256 fingerprint of the certificate it was issued
//! ([`ConfigDb::find_agent_by_fingerprint`]); revoking ([`ConfigDb::revoke_agent`]) keeps the row
//! and sets `revoked_at`, so the fingerprint can never be used again.
//!
//! A certificate is renewed in two steps so that a lost answer cannot lock the agent out:
//! [`ConfigDb::stage_agent_certificate`] stores the new fingerprint beside the current one (both
//! are accepted), and [`ConfigDb::promote_agent_certificate`], on the first request made with the
//! new certificate, makes it current; the old one is refused from then on.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use cairn_api::AgentRole;

use crate::ConfigDb;
use crate::db::{from_us, from_us_opt, on_pool, to_us};
use crate::error::{Error, Result, write_err};
use crate::rows::found;

/// Roles as stored: comma-separated names in [`AgentRole::ALL`] order, without duplicates.
pub fn roles_to_text(roles: &[AgentRole]) -> String {
    AgentRole::ALL
        .iter()
        .filter(|r| roles.contains(r))
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses comma-separated role names (as stored, or as typed on a command line).
pub fn roles_from_text(text: &str) -> Result<Vec<AgentRole>> {
    let mut roles = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let role: AgentRole = name.parse()?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    roles.sort_by_key(|r| AgentRole::ALL.iter().position(|a| a == r));
    Ok(roles)
}

/// An enrolment token to create. Only a hash of the secret is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnrolmentToken {
    /// Hash of the secret (hex BLAKE3, like user tokens); unique.
    pub token_hash: String,
    /// The roles the enrolled agent gets (at most these).
    pub roles: Vec<AgentRole>,
    /// The user who created it.
    pub created_by: Option<i64>,
    /// After this the token is refused.
    pub expires_at: Timestamp,
}

/// A stored enrolment token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolmentToken {
    /// Database id.
    pub id: i64,
    /// The roles the enrolled agent gets.
    pub roles: Vec<AgentRole>,
    /// The user who created it (`None` once that user is deleted).
    pub created_by: Option<i64>,
    /// When it was created.
    pub created_at: Timestamp,
    /// After this the token is refused.
    pub expires_at: Timestamp,
    /// When an agent enrolled with it (`None`: still usable).
    pub used_at: Option<Timestamp>,
    /// The agent that enrolled with it.
    pub agent_id: Option<i64>,
}

/// Why [`ConfigDb::enrol_agent`] refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrolRefusal {
    /// No token has this hash.
    Unknown,
    /// An agent already enrolled with it.
    Used,
    /// It expired before it was used.
    Expired,
    /// The agent asked for roles the token does not grant.
    RolesNotGranted,
}

impl std::fmt::Display for EnrolRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EnrolRefusal::Unknown => "unknown enrolment token",
            EnrolRefusal::Used => "enrolment token already used",
            EnrolRefusal::Expired => "enrolment token expired",
            EnrolRefusal::RolesNotGranted => "the enrolment token does not grant the roles asked for",
        })
    }
}

/// An agent to create at enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAgent {
    /// Unique name (also the certificate's common name).
    pub name: String,
    /// Roles asked for; `None` takes every role of the token.
    pub roles: Option<Vec<AgentRole>>,
    /// The agent's software version.
    pub version: String,
    /// How many tasks it runs at once (≥ 1).
    pub max_tasks: i64,
    /// Free bytes where it keeps data (≥ 0).
    pub free_bytes: i64,
    /// The address it connected from or advertises.
    pub address: Option<String>,
}

/// What an agent reports in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    /// The agent's software version.
    pub version: String,
    /// How many tasks it runs at once (≥ 1).
    pub max_tasks: i64,
    /// Free bytes where it keeps data (≥ 0).
    pub free_bytes: i64,
    /// The address it connected from or advertises.
    pub address: Option<String>,
}

/// The certificate issued to an agent being enrolled (see [`ConfigDb::enrol_agent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate<T> {
    /// SHA-256 of the DER certificate, lower-case hex: how the agent is recognised from now on.
    pub fingerprint: String,
    /// End of the certificate's validity.
    pub not_after: Timestamp,
    /// Anything else the signer hands back to the caller (e.g. the PEM text).
    pub extra: T,
}

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// Database id (also in its certificate as the URI name `cairn-agent:<id>`).
    pub id: i64,
    /// Unique name (the certificate's common name).
    pub name: String,
    /// Roles granted at enrolment.
    pub roles: Vec<AgentRole>,
    /// SHA-256 of its DER client certificate, lower-case hex (pinned).
    pub cert_fingerprint: String,
    /// End of its certificate's validity.
    pub cert_not_after: Timestamp,
    /// Software version last reported.
    pub version: String,
    /// Task slots last reported.
    pub max_tasks: i64,
    /// Free bytes last reported.
    pub free_bytes: i64,
    /// Address last seen.
    pub address: Option<String>,
    /// Time of the last heartbeat (`None`: none yet).
    pub last_seen_at: Option<Timestamp>,
    /// When it was revoked (`None`: it may connect).
    pub revoked_at: Option<Timestamp>,
    /// When it enrolled.
    pub created_at: Timestamp,
    /// A renewed certificate issued but not used yet: its fingerprint, accepted beside the
    /// current one until the first request made with it.
    pub next_cert_fingerprint: Option<String>,
    /// End of that renewed certificate's validity.
    pub next_cert_not_after: Option<Timestamp>,
    /// When an administrator asked for a new certificate before the current one is due.
    pub renew_requested_at: Option<Timestamp>,
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    id: i64,
    name: String,
    roles: String,
    cert_fingerprint: String,
    cert_not_after: i64,
    version: String,
    max_tasks: i64,
    free_bytes: i64,
    address: Option<String>,
    last_seen_at: Option<i64>,
    revoked_at: Option<i64>,
    created_at: i64,
    next_cert_fingerprint: Option<String>,
    next_cert_not_after: Option<i64>,
    renew_requested_at: Option<i64>,
}

impl TryFrom<AgentRow> for Agent {
    type Error = Error;
    fn try_from(r: AgentRow) -> Result<Self> {
        Ok(Agent {
            id: r.id,
            name: r.name,
            roles: roles_from_text(&r.roles)?,
            cert_fingerprint: r.cert_fingerprint,
            cert_not_after: from_us(r.cert_not_after)?,
            version: r.version,
            max_tasks: r.max_tasks,
            free_bytes: r.free_bytes,
            address: r.address,
            last_seen_at: from_us_opt(r.last_seen_at)?,
            revoked_at: from_us_opt(r.revoked_at)?,
            created_at: from_us(r.created_at)?,
            next_cert_fingerprint: r.next_cert_fingerprint,
            next_cert_not_after: from_us_opt(r.next_cert_not_after)?,
            renew_requested_at: from_us_opt(r.renew_requested_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct EnrolmentTokenRow {
    id: i64,
    roles: String,
    created_by: Option<i64>,
    created_at: i64,
    expires_at: i64,
    used_at: Option<i64>,
    agent_id: Option<i64>,
}

impl TryFrom<EnrolmentTokenRow> for EnrolmentToken {
    type Error = Error;
    fn try_from(r: EnrolmentTokenRow) -> Result<Self> {
        Ok(EnrolmentToken {
            id: r.id,
            roles: roles_from_text(&r.roles)?,
            created_by: r.created_by,
            created_at: from_us(r.created_at)?,
            expires_at: from_us(r.expires_at)?,
            used_at: from_us_opt(r.used_at)?,
            agent_id: r.agent_id,
        })
    }
}

macro_rules! agent_columns {
    () => {
        "id, name, roles, cert_fingerprint, cert_not_after, version, max_tasks, free_bytes, address, \
         last_seen_at, revoked_at, created_at, next_cert_fingerprint, next_cert_not_after, renew_requested_at"
    };
}
macro_rules! agent_select {
    ($($rest:literal),+) => {
        concat!("SELECT ", agent_columns!(), " FROM agents ", $($rest),+)
    };
}
macro_rules! token_columns {
    () => {
        "id, roles, created_by, created_at, expires_at, used_at, agent_id"
    };
}

fn check_counts(max_tasks: i64, free_bytes: i64) -> Result<()> {
    if max_tasks < 1 {
        return Err(Error::Invalid {
            what: format!("max_tasks {max_tasks}: an agent needs at least 1 task slot"),
        });
    }
    if free_bytes < 0 {
        return Err(Error::Invalid {
            what: format!("free_bytes {free_bytes}: cannot be negative"),
        });
    }
    Ok(())
}

impl ConfigDb {
    /// The agent an `UPDATE … WHERE id = $1 AND revoked_at IS NULL` returned; without a row,
    /// [`Error::Conflict`] for a revoked agent and [`Error::NotFound`] for a missing one.
    async fn updated_unless_revoked(&self, id: i64, row: Option<AgentRow>) -> Result<Agent> {
        match row {
            Some(row) => row.try_into(),
            None => {
                let agent = self.get_agent(id).await?;
                Err(Error::Conflict {
                    what: format!("agent {} is revoked", agent.name),
                })
            }
        }
    }

    /// Stores a one-time enrolment token; [`Error::Invalid`] without roles, [`Error::Duplicate`]
    /// if the hash exists.
    pub async fn create_enrolment_token(&self, token: &NewEnrolmentToken) -> Result<EnrolmentToken> {
        if token.roles.is_empty() {
            return Err(Error::Invalid {
                what: "enrolment token: give at least one role (proxy, repository, gateway)".into(),
            });
        }
        let now = to_us(Timestamp::now());
        on_pool!(self, |pool| {
            let row: EnrolmentTokenRow = sqlx::query_as(concat!(
                "INSERT INTO agent_enrolment_tokens (token_hash, roles, created_by, created_at, expires_at) ",
                "VALUES ($1, $2, $3, $4, $5) RETURNING ",
                token_columns!()
            ))
            .bind(&token.token_hash)
            .bind(roles_to_text(&token.roles))
            .bind(token.created_by)
            .bind(now)
            .bind(to_us(token.expires_at))
            .fetch_one(pool)
            .await
            .map_err(write_err("enrolment token"))?;
            row.try_into()
        })
    }

    /// Every enrolment token, newest first (used and expired ones included).
    pub async fn list_enrolment_tokens(&self) -> Result<Vec<EnrolmentToken>> {
        self.get_all::<EnrolmentTokenRow, _>(concat!(
            "SELECT ",
            token_columns!(),
            " FROM agent_enrolment_tokens ORDER BY id DESC"
        ))
        .await
    }

    /// Enrols an agent with the token whose hash is `token_hash`, at time `now`, in one
    /// transaction: the token must exist, be unexpired and unused, and grant every role asked
    /// for; it is then marked used, the agent is created, and `sign(agent_id)` issues its
    /// certificate, whose fingerprint is stored. Two requests with the same token cannot both
    /// succeed.
    ///
    /// Returns `Ok(Err(refusal))` when the token is refused (nothing changes),
    /// [`Error::Duplicate`] when the name is taken (the token stays usable),
    /// [`Error::Invalid`] for bad counts or when `sign` fails (its message is kept).
    pub async fn enrol_agent<T>(
        &self,
        token_hash: &str,
        now: Timestamp,
        agent: &NewAgent,
        sign: impl FnOnce(i64) -> std::result::Result<IssuedCertificate<T>, String>,
    ) -> Result<std::result::Result<(Agent, IssuedCertificate<T>), EnrolRefusal>> {
        check_counts(agent.max_tasks, agent.free_bytes)?;
        let now_us = to_us(now);
        on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin.write).await?;
            // Consume the token first: the conditional update is what makes it one-time, on
            // PostgreSQL too (a second transaction waits for the row lock, then sees used_at).
            let taken: Option<(i64, String)> = sqlx::query_as(concat!(
                "UPDATE agent_enrolment_tokens SET used_at = $2 ",
                "WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING id, roles"
            ))
            .bind(token_hash)
            .bind(now_us)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((token_id, granted)) = taken else {
                let found: Option<(Option<i64>, i64)> =
                    sqlx::query_as("SELECT used_at, expires_at FROM agent_enrolment_tokens WHERE token_hash = $1")
                        .bind(token_hash)
                        .fetch_optional(&mut *tx)
                        .await?;
                tx.rollback().await?;
                return Ok(Err(match found {
                    None => EnrolRefusal::Unknown,
                    Some((Some(_), _)) => EnrolRefusal::Used,
                    Some((None, _)) => EnrolRefusal::Expired,
                }));
            };
            let granted = roles_from_text(&granted)?;
            let roles = match &agent.roles {
                Some(asked) if asked.iter().any(|r| !granted.contains(r)) => {
                    tx.rollback().await?;
                    return Ok(Err(EnrolRefusal::RolesNotGranted));
                }
                Some(asked) if !asked.is_empty() => asked.clone(),
                _ => granted,
            };
            // The certificate names the agent's id, so the row comes first with a placeholder
            // fingerprint that no certificate can have; nobody sees it before the commit.
            let id: i64 = sqlx::query_scalar(concat!(
                "INSERT INTO agents (name, roles, cert_fingerprint, cert_not_after, version, max_tasks, ",
                "free_bytes, address, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $4) RETURNING id"
            ))
            .bind(&agent.name)
            .bind(roles_to_text(&roles))
            .bind(format!("pending enrolment with token {token_id}"))
            .bind(now_us)
            .bind(&agent.version)
            .bind(agent.max_tasks)
            .bind(agent.free_bytes)
            .bind(&agent.address)
            .fetch_one(&mut *tx)
            .await
            .map_err(write_err(format!("agent {:?}", agent.name)))?;
            let issued = match sign(id) {
                Ok(issued) => issued,
                Err(e) => {
                    tx.rollback().await?;
                    return Err(Error::Invalid {
                        what: format!("certificate of agent {:?}: {e}", agent.name),
                    });
                }
            };
            let row: AgentRow = sqlx::query_as(concat!(
                "UPDATE agents SET cert_fingerprint = $2, cert_not_after = $3 WHERE id = $1 RETURNING ",
                agent_columns!()
            ))
            .bind(id)
            .bind(&issued.fingerprint)
            .bind(to_us(issued.not_after))
            .fetch_one(&mut *tx)
            .await
            .map_err(write_err(format!("certificate of agent {:?}", agent.name)))?;
            sqlx::query("UPDATE agent_enrolment_tokens SET agent_id = $2 WHERE id = $1")
                .bind(token_id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Ok((Agent::try_from(row)?, issued)))
        })
    }

    /// The agent whose certificate has this fingerprint (revoked ones too: the caller says why
    /// it refuses), if any.
    pub async fn find_agent_by_fingerprint(&self, fingerprint: &str) -> Result<Option<Agent>> {
        on_pool!(self, |pool| {
            let row: Option<AgentRow> = sqlx::query_as(agent_select!(
                "WHERE cert_fingerprint = $1 OR next_cert_fingerprint = $1"
            ))
            .bind(fingerprint)
            .fetch_optional(pool)
            .await?;
            row.map(Agent::try_from).transpose()
        })
    }

    /// The agent with `id`.
    pub async fn get_agent(&self, id: i64) -> Result<Agent> {
        self.get_by_id::<AgentRow, _>(agent_select!("WHERE id = $1"), id, "agent")
            .await
    }

    /// Every agent (revoked ones too), ordered by name.
    pub async fn list_agents(&self) -> Result<Vec<Agent>> {
        self.get_all::<AgentRow, _>(agent_select!("ORDER BY name")).await
    }

    /// Records a heartbeat of agent `id` at `now`: what it reports and when it was seen.
    /// [`Error::NotFound`] for an unknown agent, [`Error::Conflict`] for a revoked one.
    pub async fn record_heartbeat(&self, id: i64, status: &AgentStatus, now: Timestamp) -> Result<Agent> {
        check_counts(status.max_tasks, status.free_bytes)?;
        on_pool!(self, |pool| {
            let row: Option<AgentRow> = sqlx::query_as(concat!(
                "UPDATE agents SET version = $2, max_tasks = $3, free_bytes = $4, ",
                "address = COALESCE($5, address), last_seen_at = $6 WHERE id = $1 AND revoked_at IS NULL RETURNING ",
                agent_columns!()
            ))
            .bind(id)
            .bind(&status.version)
            .bind(status.max_tasks)
            .bind(status.free_bytes)
            .bind(&status.address)
            .bind(to_us(now))
            .fetch_optional(pool)
            .await?;
            self.updated_unless_revoked(id, row).await
        })
    }

    /// Revokes agent `id` at `now`: its certificate is refused from then on; the row stays (with
    /// its name and fingerprint). Revoking a revoked agent keeps the first time.
    pub async fn revoke_agent(&self, id: i64, now: Timestamp) -> Result<Agent> {
        on_pool!(self, |pool| {
            let row: Option<AgentRow> = sqlx::query_as(concat!(
                "UPDATE agents SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING ",
                agent_columns!()
            ))
            .bind(id)
            .bind(to_us(now))
            .fetch_optional(pool)
            .await?;
            found(row, || format!("agent {id}"))
        })
    }

    /// Deletes enrolment tokens that expired unused before `now`; returns how many.
    pub async fn delete_expired_enrolment_tokens(&self, now: Timestamp) -> Result<u64> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM agent_enrolment_tokens WHERE used_at IS NULL AND expires_at <= $1")
                .bind(to_us(now))
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }

    /// Stores a renewed certificate of agent `id` (fingerprint and end of validity) beside its
    /// current one; both are accepted until [`ConfigDb::promote_agent_certificate`]. A renewal
    /// staged earlier and never used is replaced. [`Error::NotFound`] for an unknown agent,
    /// [`Error::Conflict`] for a revoked one.
    pub async fn stage_agent_certificate(&self, id: i64, fingerprint: &str, not_after: Timestamp) -> Result<Agent> {
        on_pool!(self, |pool| {
            let row: Option<AgentRow> = sqlx::query_as(concat!(
                "UPDATE agents SET next_cert_fingerprint = $2, next_cert_not_after = $3 ",
                "WHERE id = $1 AND revoked_at IS NULL RETURNING ",
                agent_columns!()
            ))
            .bind(id)
            .bind(fingerprint)
            .bind(to_us(not_after))
            .fetch_optional(pool)
            .await
            .map_err(write_err("agent certificate"))?;
            self.updated_unless_revoked(id, row).await
        })
    }

    /// Makes the staged certificate with `fingerprint` agent `id`'s current one (the agent has
    /// used it): the old fingerprint is forgotten and refused from now on, and a renewal an
    /// administrator asked for is done. `None` when that certificate is not staged (any more).
    pub async fn promote_agent_certificate(&self, id: i64, fingerprint: &str) -> Result<Option<Agent>> {
        on_pool!(self, |pool| {
            let row: Option<AgentRow> = sqlx::query_as(concat!(
                "UPDATE agents SET cert_fingerprint = next_cert_fingerprint, cert_not_after = next_cert_not_after, ",
                "next_cert_fingerprint = NULL, next_cert_not_after = NULL, renew_requested_at = NULL ",
                "WHERE id = $1 AND next_cert_fingerprint = $2 AND next_cert_not_after IS NOT NULL RETURNING ",
                agent_columns!()
            ))
            .bind(id)
            .bind(fingerprint)
            .fetch_optional(pool)
            .await
            .map_err(write_err("agent certificate"))?;
            row.map(Agent::try_from).transpose()
        })
    }

    /// Asks agent `id` to renew its certificate (and key) at its next heartbeat, from `now`.
    /// Asking again keeps the first time. [`Error::NotFound`] for an unknown agent,
    /// [`Error::Conflict`] for a revoked one.
    pub async fn request_agent_renewal(&self, id: i64, now: Timestamp) -> Result<Agent> {
        on_pool!(self, |pool| {
            let row: Option<AgentRow> = sqlx::query_as(concat!(
                "UPDATE agents SET renew_requested_at = COALESCE(renew_requested_at, $2) ",
                "WHERE id = $1 AND revoked_at IS NULL RETURNING ",
                agent_columns!()
            ))
            .bind(id)
            .bind(to_us(now))
            .fetch_optional(pool)
            .await?;
            self.updated_unless_revoked(id, row).await
        })
    }
}
