//! Network throttling rules.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A throttling rule as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ThrottleRuleDto {
    /// Rule id.
    pub id: i64,
    /// One address range (CIDR).
    #[schema(example = "10.0.1.0/24")]
    pub from: String,
    /// The other address range (CIDR); the rule applies in both directions.
    #[schema(example = "10.9.0.0/16")]
    pub to: String,
    /// Bytes per second, shared equally by the transfers the rule applies to.
    #[schema(example = 50_000_000)]
    pub limit_bytes: i64,
    /// When the rule applies (backup-window text); absent: always.
    #[schema(example = "mon-fri 08:00-18:00")]
    pub window: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
}

/// `POST /api/v1/throttle-rules` body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateThrottleRule {
    /// One address range: `10.0.1.0/24`, `fd00::/64` or a bare address.
    #[schema(example = "10.0.1.0/24")]
    pub from: String,
    /// The other address range; traffic is matched in both directions.
    #[schema(example = "10.9.0.0/16")]
    pub to: String,
    /// Bytes per second (≥ 1), shared equally by the transfers the rule applies to.
    #[schema(example = 50_000_000, minimum = 1)]
    pub limit_bytes: i64,
    /// Backup-window text (`mon-fri 08:00-18:00`, optionally `tz ZONE`); absent or blank: always.
    #[serde(default)]
    #[schema(example = "mon-fri 08:00-18:00")]
    pub window: Option<String>,
}
