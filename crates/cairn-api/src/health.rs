//! Whether the server answers.

use serde::Serialize;
use utoipa::ToSchema;

/// `GET /api/v1/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the server answers.
    #[schema(example = "ok")]
    pub status: String,
    /// Server version.
    pub version: String,
}
