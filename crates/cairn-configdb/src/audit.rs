//! The audit log: who did what and when, append-only and hash-chained.
//!
//! Each entry holds `hash = BLAKE3(prev_hash ‖ fields)` (hex), where `prev_hash` is the previous
//! entry's hash (64 zeros for the first) and the fields are the entry's id, time, user, address,
//! action, target, outcome and details as stored (see [`entry_hash`]). Ids are 1, 2, 3… without
//! gaps: the writer takes the table's write lock (`BEGIN IMMEDIATE` on SQLite, `LOCK TABLE … IN
//! EXCLUSIVE MODE` on PostgreSQL), reads the last entry and inserts the next. Triggers refuse
//! `UPDATE`, `DELETE` (and `TRUNCATE` on PostgreSQL). Whoever bypasses them (dropping a trigger,
//! editing the file) cannot edit or remove an entry without [`ConfigDb::verify_audit`] noticing:
//! an edited entry no longer matches its hash, a removed one breaks the next entry's link. Only
//! removing entries at the end leaves a valid chain; the caller compares the chain's head with one
//! kept elsewhere ([`AuditCheck::head`]).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::ConfigDb;
use crate::db::{from_us, on_pool, to_us};
use crate::error::{Error, Result};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An entry to append.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewAuditEntry {
    /// The user who acted (`None`: an agent or an anonymous request; `(scheduler)` for the server's
    /// own actions).
    pub user: Option<String>,
    /// The client's address, when the action came over the network.
    pub address: Option<String>,
    /// What was done, e.g. `job.run`, `login`, `restore`.
    pub action: String,
    /// What it was done to, e.g. `job 3 (nightly)`.
    pub target: String,
    /// `ok`, or what went wrong (`refused: 403 …`).
    pub outcome: String,
    /// More about it (JSON object as text; `{}` when nothing).
    pub details: serde_json::Value,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log (1, 2, 3…).
    pub id: i64,
    /// When it was recorded.
    pub at: Timestamp,
    /// Who acted.
    pub user: Option<String>,
    /// From where.
    pub address: Option<String>,
    /// What was done.
    pub action: String,
    /// To what.
    pub target: String,
    /// How it ended.
    pub outcome: String,
    /// More about it.
    pub details: serde_json::Value,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// Which entries [`ConfigDb::list_audit`] returns: newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
    /// Only entries of this user.
    pub user: Option<String>,
    /// Only entries with an id below this one (paging backwards).
    pub before_id: Option<i64>,
    /// At most this many (1 to 1000).
    pub limit: u32,
}

/// The result of walking the whole chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheck {
    /// Entries read.
    pub entries: u64,
    /// The last entry's id and hash, `None` for an empty log.
    pub head: Option<(i64, String)>,
    /// The first problem found, `None` when the chain holds.
    pub problem: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: i64,
    user_name: Option<String>,
    address: Option<String>,
    action: String,
    target: String,
    outcome: String,
    details: String,
    prev_hash: String,
    hash: String,
}

impl AuditRow {
    fn recomputed_hash(&self) -> String {
        entry_hash(
            &self.prev_hash,
            self.id,
            self.at,
            self.user_name.as_deref(),
            self.address.as_deref(),
            &self.action,
            &self.target,
            &self.outcome,
            &self.details,
        )
    }
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = Error;
    fn try_from(r: AuditRow) -> Result<Self> {
        Ok(AuditEntry {
            id: r.id,
            at: from_us(r.at)?,
            user: r.user_name,
            address: r.address,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            details: serde_json::from_str(&r.details).unwrap_or(serde_json::Value::String(r.details)),
            prev_hash: r.prev_hash,
            hash: r.hash,
        })
    }
}

/// The hash of an entry: hex BLAKE3 of `prev_hash`, a newline, and the JSON array of its fields
/// as stored (`[id, at_us, user, address, action, target, outcome, details_text]`).
#[allow(clippy::too_many_arguments)]
pub fn entry_hash(
    prev_hash: &str,
    id: i64,
    at_us: i64,
    user: Option<&str>,
    address: Option<&str>,
    action: &str,
    target: &str,
    outcome: &str,
    details: &str,
) -> String {
    let fields = serde_json::json!([id, at_us, user, address, action, target, outcome, details]);
    let mut h = blake3::Hasher::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(fields.to_string().as_bytes());
    h.finalize().to_hex().to_string()
}

macro_rules! audit_select {
    ($($rest:literal),+) => {
        concat!(
            "SELECT id, at, user_name, address, action, target, outcome, details, prev_hash, hash FROM audit_log ",
            $($rest),+
        )
    };
}

impl ConfigDb {
    /// Appends an entry at the end of the chain and returns it as stored.
    pub async fn append_audit(&self, entry: &NewAuditEntry) -> Result<AuditEntry> {
        let details = if entry.details.is_null() {
            "{}".to_owned()
        } else {
            entry.details.to_string()
        };
        let at = to_us(Timestamp::now());
        on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin.write).await?;
            if self.backend() == crate::Backend::Postgres {
                sqlx::query("LOCK TABLE audit_log IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
            }
            let last: Option<(i64, String)> = sqlx::query_as("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
            let (id, prev_hash) = match last {
                Some((id, hash)) => (id + 1, hash),
                None => (1, GENESIS_HASH.to_owned()),
            };
            let row = AuditRow {
                id,
                at,
                user_name: entry.user.clone(),
                address: entry.address.clone(),
                action: entry.action.clone(),
                target: entry.target.clone(),
                outcome: entry.outcome.clone(),
                details,
                hash: String::new(),
                prev_hash,
            };
            let hash = row.recomputed_hash();
            sqlx::query(
                "INSERT INTO audit_log (id, at, user_name, address, action, target, outcome, details, prev_hash, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(row.id)
            .bind(row.at)
            .bind(&row.user_name)
            .bind(&row.address)
            .bind(&row.action)
            .bind(&row.target)
            .bind(&row.outcome)
            .bind(&row.details)
            .bind(&row.prev_hash)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            AuditEntry::try_from(AuditRow { hash, ..row })
        })
    }

    /// Entries matching `query`, newest first.
    pub async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let limit = i64::from(query.limit.clamp(1, 1000));
        on_pool!(self, |pool| {
            let rows: Vec<AuditRow> = sqlx::query_as(audit_select!(
                "WHERE ($1 IS NULL OR at >= $1) AND ($2 IS NULL OR user_name = $2) ",
                "AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
            ))
            .bind(query.since.map(to_us))
            .bind(query.user.as_deref())
            .bind(query.before_id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.into_iter().map(AuditEntry::try_from).collect()
        })
    }

    /// Walks the whole chain in order: ids without gaps from 1, each entry linked to the previous
    /// one's hash and matching its own. Reads in pages, so memory stays small.
    pub async fn verify_audit(&self) -> Result<AuditCheck> {
        const PAGE: i64 = 1000;
        let mut check = AuditCheck {
            entries: 0,
            head: None,
            problem: None,
        };
        let (mut last_id, mut last_hash) = (0i64, GENESIS_HASH.to_owned());
        loop {
            let rows: Vec<AuditRow> = on_pool!(self, |pool| {
                sqlx::query_as(audit_select!("WHERE id > $1 ORDER BY id LIMIT $2"))
                    .bind(last_id)
                    .bind(PAGE)
                    .fetch_all(pool)
                    .await?
            });
            if rows.is_empty() {
                break;
            }
            for row in rows {
                check.entries += 1;
                let problem = if row.id != last_id + 1 {
                    Some(format!(
                        "entries {} to {} are missing (the entry after {last_id} is {})",
                        last_id + 1,
                        row.id - 1,
                        row.id
                    ))
                } else if row.prev_hash != last_hash {
                    Some(format!(
                        "entry {} does not follow entry {last_id}: an entry was changed or removed",
                        row.id
                    ))
                } else if row.recomputed_hash() != row.hash {
                    Some(format!("entry {} was changed after it was written", row.id))
                } else {
                    None
                };
                if problem.is_some() && check.problem.is_none() {
                    check.problem = problem;
                }
                last_id = row.id;
                last_hash = row.hash;
            }
        }
        if last_id > 0 {
            check.head = Some((last_id, last_hash));
        }
        Ok(check)
    }
}
