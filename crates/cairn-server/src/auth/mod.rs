//! Passwords, tokens and roles.
//!
//! - Passwords are hashed with Argon2id (default parameters) and stored as PHC strings.
//! - A token is `cairn_` followed by 64 hex digits (32 random bytes). Only its BLAKE3 hash
//!   (hex) is stored, so a copy of the configuration database does not let anyone log in.
//!   Login tokens last 7 days; API tokens last as long as their owner says (or forever).
//! - Every route except `GET /api/v1/health` and `GET /api/openapi.json` reads the
//!   `Authorization: Bearer TOKEN` header through the `Caller` extractor of the HTTP layer ([`crate::http::extract`]) (401 when it is missing,
//!   unknown or expired) and checks the role with [`Caller::require`] (403 naming the role needed).
//!
//! Roles are ordered: viewer < restore-operator < administrator. A restore operator may read
//! everything and restore; only an administrator may change anything or start and stop jobs.
//!
//! Logins are throttled ([`throttle`]) and may need a second factor ([`totp`]). A login token of
//! scope `totp-setup` (an administrator who must have a second factor and has none yet) is good
//! only for setting one up, `whoami` and `logout`.

pub mod throttle;
pub mod totp;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use cairn_configdb::{ConfigDb, NewToken, Role, Token, TokenKind, TokenScope, User};
use jiff::{SignedDuration, Timestamp};

use crate::error::{ServiceError, ServiceResult};

/// Prefix of every token secret.
pub const TOKEN_PREFIX: &str = "cairn_";
/// How long a login token is valid.
pub const LOGIN_TOKEN_LIFETIME: SignedDuration = SignedDuration::from_hours(7 * 24);

/// Failures of password hashing.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Argon2 refused to hash.
    #[error("hashing a password: {0}")]
    Hash(String),
}

/// Hashes `password` with Argon2id and a random salt; returns the PHC string.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `phc` (false for a malformed hash).
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(password.as_bytes(), &hash).is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the user does not exist, so that a login with an unknown name
/// takes as long as one with a wrong password (no user-name probing by timing).
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

/// Checks a user name and password; `None` when either is wrong. Runs the Argon2 work on a
/// blocking thread.
pub async fn check_login(db: &ConfigDb, name: &str, password: &str) -> ServiceResult<Option<User>> {
    let user = db.find_user_by_name(name).await?;
    let phc = user
        .as_ref()
        .map_or_else(|| dummy_hash().to_owned(), |u| u.password_hash.clone());
    let password = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc)).await?;
    Ok(user.filter(|_| ok))
}

/// [`hash_password`] on a blocking thread, as an API error on failure.
pub async fn hash_password_async(password: &str) -> ServiceResult<String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await?
        .map_err(|e| ServiceError::internal("could not hash the password", e))
}

/// A new token secret: `cairn_` + 64 hex digits from 32 random bytes.
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The stored form of a token secret: hex BLAKE3 of the whole text.
pub fn token_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// Whether `text` has the shape of a token secret (checked before any database lookup).
pub fn looks_like_token(text: &str) -> bool {
    text.strip_prefix(TOKEN_PREFIX)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Creates a token for `user_id` and returns it with its secret (shown to the caller once).
pub async fn issue_token(
    db: &ConfigDb,
    user_id: i64,
    kind: TokenKind,
    description: &str,
    expires_at: Option<Timestamp>,
    scope: TokenScope,
) -> ServiceResult<(Token, String)> {
    let secret = generate_token();
    let token = db
        .create_token(&NewToken {
            user_id,
            kind,
            token_hash: token_hash(&secret),
            description: description.to_owned(),
            expires_at,
            scope,
        })
        .await?;
    Ok((token, secret))
}

/// The authenticated user of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub user_id: i64,
    /// User name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The token used for this request.
    pub token_id: i64,
    /// Its kind.
    pub token_kind: TokenKind,
    /// What it may be used for.
    pub scope: TokenScope,
}

impl Caller {
    /// `Ok` when the caller's role is `need` or higher, else 403 naming the role needed.
    pub fn require(&self, need: Role) -> ServiceResult<()> {
        if self.role.at_least(need) {
            Ok(())
        } else {
            let needed = match need {
                Role::Administrator => "the administrator role".to_owned(),
                other => format!("the {other} role or higher"),
            };
            Err(ServiceError::forbidden(format!(
                "user {} has the {} role; this needs {needed}",
                self.name, self.role
            ))
            .with_code("role_too_low"))
        }
    }

    /// Shortcut for [`Caller::require`]`(Role::Administrator)`.
    pub fn require_admin(&self) -> ServiceResult<()> {
        self.require(Role::Administrator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("correct horsf", &phc));
        assert!(!verify_password("correct horse", "not a phc string"));
        assert_ne!(phc, hash_password("correct horse").unwrap(), "salted");
    }

    #[test]
    fn tokens_have_the_documented_shape_and_are_hashed() {
        let t = generate_token();
        assert!(looks_like_token(&t), "{t}");
        assert_eq!(t.len(), TOKEN_PREFIX.len() + 64);
        assert_ne!(t, generate_token());
        assert_eq!(token_hash(&t).len(), 64);
        assert_ne!(token_hash(&t), t[TOKEN_PREFIX.len()..]);
        assert!(!looks_like_token("cairn_xyz"));
        assert!(!looks_like_token(&t.replace(TOKEN_PREFIX, "other_")));
    }

    #[test]
    fn role_order() {
        use Role::*;
        assert!(Administrator.at_least(RestoreOperator));
        assert!(RestoreOperator.at_least(Viewer));
        assert!(!RestoreOperator.at_least(Administrator));
        assert!(!Viewer.at_least(RestoreOperator));
        let caller = Caller {
            user_id: 1,
            name: "ann".into(),
            role: Viewer,
            token_id: 1,
            token_kind: TokenKind::Login,
            scope: TokenScope::Full,
        };
        let err = caller.require(RestoreOperator).unwrap_err();
        assert_eq!(err.kind, crate::error::ErrorKind::Forbidden);
        assert!(err.message.contains("restore-operator"), "{}", err.message);
        assert!(caller.require(Viewer).is_ok());
    }
}
