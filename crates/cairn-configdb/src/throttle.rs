//! Network throttling rules: a limit on the data-channel traffic between two address ranges.
//!
//! The database stores the rules as typed (CIDR text, a limit in bytes per second, an optional
//! backup-window text); parsing and matching them is the server's job (`cairn_server::throttle`).
//! The only check here is that the limit is positive and the ranges are not empty, so a rule that
//! cannot mean anything is never stored.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::ConfigDb;
use crate::db::{from_us, on_pool, to_us};
use crate::error::{Error, Result, one_row, write_err};

/// A throttling rule to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewThrottleRule {
    /// One address range (`10.0.1.0/24`, `fd00::/64`, or a bare address).
    pub from_cidr: String,
    /// The other address range; traffic is matched in both directions.
    pub to_cidr: String,
    /// Bytes per second shared by the transfers the rule applies to (> 0).
    pub limit_bytes: i64,
    /// A backup-window text (`mon-fri 08:00-18:00`); `None`: always.
    pub window: Option<String>,
}

/// A stored throttling rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleRule {
    /// Database id.
    pub id: i64,
    /// The rule as created.
    #[serde(flatten)]
    pub rule: NewThrottleRule,
    /// When it was created.
    pub created_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct ThrottleRuleRow {
    id: i64,
    from_cidr: String,
    to_cidr: String,
    limit_bytes: i64,
    time_window: Option<String>,
    created_at: i64,
}

impl TryFrom<ThrottleRuleRow> for ThrottleRule {
    type Error = Error;
    fn try_from(r: ThrottleRuleRow) -> Result<Self> {
        Ok(ThrottleRule {
            id: r.id,
            rule: NewThrottleRule {
                from_cidr: r.from_cidr,
                to_cidr: r.to_cidr,
                limit_bytes: r.limit_bytes,
                window: r.time_window,
            },
            created_at: from_us(r.created_at)?,
        })
    }
}

macro_rules! rule_columns {
    () => {
        "id, from_cidr, to_cidr, limit_bytes, time_window, created_at"
    };
}

impl ConfigDb {
    /// Stores a throttling rule; [`Error::Invalid`] for a limit below 1 or an empty range.
    pub async fn create_throttle_rule(&self, rule: &NewThrottleRule) -> Result<ThrottleRule> {
        if rule.limit_bytes < 1 {
            return Err(Error::Invalid {
                what: format!(
                    "throttling rule limit {}: give at least 1 byte per second",
                    rule.limit_bytes
                ),
            });
        }
        for (name, value) in [("from", &rule.from_cidr), ("to", &rule.to_cidr)] {
            if value.trim().is_empty() {
                return Err(Error::Invalid {
                    what: format!("throttling rule {name} range: it is empty"),
                });
            }
        }
        let now = to_us(Timestamp::now());
        on_pool!(self, |pool| {
            let row: ThrottleRuleRow = sqlx::query_as(concat!(
                "INSERT INTO throttle_rules (from_cidr, to_cidr, limit_bytes, time_window, created_at) ",
                "VALUES ($1, $2, $3, $4, $5) RETURNING ",
                rule_columns!()
            ))
            .bind(&rule.from_cidr)
            .bind(&rule.to_cidr)
            .bind(rule.limit_bytes)
            .bind(&rule.window)
            .bind(now)
            .fetch_one(pool)
            .await
            .map_err(write_err(format!(
                "throttling rule {} <-> {}",
                rule.from_cidr, rule.to_cidr
            )))?;
            row.try_into()
        })
    }

    /// Every throttling rule, by id.
    pub async fn list_throttle_rules(&self) -> Result<Vec<ThrottleRule>> {
        on_pool!(self, |pool| {
            let rows: Vec<ThrottleRuleRow> =
                sqlx::query_as(concat!("SELECT ", rule_columns!(), " FROM throttle_rules ORDER BY id"))
                    .fetch_all(pool)
                    .await?;
            rows.into_iter().map(ThrottleRule::try_from).collect()
        })
    }

    /// Deletes throttling rule `id`; [`Error::NotFound`] naming it when there is none.
    pub async fn delete_throttle_rule(&self, id: i64) -> Result<()> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM throttle_rules WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
            one_row(done.rows_affected(), || format!("throttling rule {id}"))
        })
    }
}
