//! Users and their roles.

use crate::Role;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserDto {
    /// User id.
    pub id: i64,
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When the user was created.
    pub created_at: Timestamp,
}

/// `POST /api/v1/users` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateUser {
    /// Login name: 1–64 ASCII letters, digits, `.`, `_`, `-`, `@`.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub name: String,
    /// Password (at least 8 characters).
    #[schema(min_length = 8)]
    pub password: String,
    /// Role.
    pub role: Role,
}

/// `PATCH /api/v1/users/{id}` body; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateUser {
    /// New password (at least 8 characters); the user's login tokens are revoked.
    #[serde(default)]
    #[schema(min_length = 8)]
    pub password: Option<String>,
    /// New role.
    #[serde(default)]
    pub role: Option<Role>,
}
