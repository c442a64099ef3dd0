//! Logging in, tokens and second factors.

use crate::Role;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/auth/login` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// User name.
    #[schema(example = "admin")]
    pub user: String,
    /// Password.
    pub password: String,
    /// The current code of the user's authenticator app, when the user has a second factor.
    #[serde(default)]
    #[schema(example = "123456", pattern = "^[0-9]{6}$")]
    pub code: Option<String>,
}

/// `POST /api/v1/auth/password` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    /// The current password.
    pub current_password: String,
    /// The new password (at least 8 characters).
    #[schema(min_length = 8)]
    pub new_password: String,
}

/// A user as seen by themselves.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserInfo {
    /// User id.
    pub id: i64,
    /// User name.
    pub name: String,
    /// Role.
    pub role: Role,
}

/// A login token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// The token: send it as `Authorization: Bearer TOKEN`.
    pub token: String,
    /// Always `login`.
    #[schema(example = "login")]
    pub kind: String,
    /// When the token stops working (7 days after the login).
    pub expires_at: Timestamp,
    /// Who logged in.
    pub user: UserInfo,
    /// The token is good only for setting up a second factor (administrators must have one and
    /// this one has none yet): POST /api/v1/auth/totp, then /api/v1/auth/totp/confirm.
    pub totp_setup_required: bool,
}

/// `POST /api/v1/tokens` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateTokenRequest {
    /// What the token is for (shown in the token list; at most 200 characters).
    #[serde(default)]
    #[schema(max_length = 200)]
    pub description: String,
    /// Days until it expires (1–3650); absent or null never expires.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<i64>,
}

/// A new API token, with its secret (shown only in this answer).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    /// Token id.
    pub id: i64,
    /// The secret: send it as `Authorization: Bearer TOKEN`.
    pub token: String,
    /// Always `api`.
    #[schema(example = "api")]
    pub kind: String,
    /// What the token is for.
    pub description: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working; null never.
    pub expires_at: Option<Timestamp>,
}

/// A token of the caller (without its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Token id.
    pub id: i64,
    /// `login` or `api`.
    #[schema(example = "api")]
    pub kind: String,
    /// What the token is for.
    pub description: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working; null never.
    pub expires_at: Option<Timestamp>,
}

/// A second factor being set up: what the authenticator app needs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TotpSetup {
    /// The shared secret (base32), to type into the app.
    pub secret: String,
    /// The `otpauth://totp/…` URL (as a QR code, apps read it directly).
    pub otpauth_url: String,
    /// Digits of a code (6).
    pub digits: u32,
    /// Seconds a code lasts (30).
    pub period: u32,
}

/// `POST /api/v1/auth/totp/confirm` and `/disable` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TotpCode {
    /// The current code of the authenticator app.
    #[schema(example = "123456", pattern = "^[0-9]{6}$")]
    pub code: String,
}

/// A confirmed second factor.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TotpEnabled {
    /// Always true.
    pub enabled: bool,
    /// A new full login token, when the request used a token good only for the setup (that one
    /// stops working).
    pub login: Option<LoginResponse>,
}
