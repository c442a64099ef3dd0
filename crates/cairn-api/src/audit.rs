//! The audit log: its entries and the check of its hash chain.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One entry of the audit log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEntryDto {
    /// Position in the log (1, 2, 3…).
    pub id: i64,
    /// When it was recorded.
    pub at: Timestamp,
    /// Who acted (`(scheduler)` for the server itself; null for an agent or anonymous request).
    pub user: Option<String>,
    /// The client's address.
    pub address: Option<String>,
    /// What was done, e.g. `job.run`, `login`, `restore.disk`.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// `ok`, or `failed: STATUS MESSAGE`.
    pub outcome: String,
    /// More about it.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// This entry's hash (BLAKE3 of the previous entry's hash and this entry's fields).
    pub hash: String,
}

/// What a check of the audit log's hash chain found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditReport {
    /// Entries checked.
    pub entries: u64,
    /// Whether the chain holds and its newest entry is the one the data folder recorded.
    pub intact: bool,
    /// What is wrong, when something is.
    pub problem: Option<String>,
}
