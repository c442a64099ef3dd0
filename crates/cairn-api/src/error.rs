//! The body of every error answer.

use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, naming the object and the cause.
    #[schema(example = "job 7 not found")]
    pub error: String,
    /// A machine-readable reason, for the answers that have one (`totp_required`: the login
    /// needs the second factor's code; `totp_setup_required`; `login_locked`; `role_too_low`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}
