//! Users and their login and API tokens.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use cairn_api::{Role, TokenKind, TokenScope};

use crate::ConfigDb;
use crate::db::{from_us, from_us_opt, on_pool, to_us};
use crate::error::{Error, Result, one_row, write_err};

/// A user of the server's API and web console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Database id.
    pub id: i64,
    /// Unique login name.
    pub name: String,
    /// Argon2id hash of the password in PHC string form (hashing is the caller's job).
    #[serde(skip_serializing)]
    pub password_hash: String,
    /// What the user may do.
    pub role: Role,
    /// When the user was created.
    pub created_at: Timestamp,
    /// The TOTP secret (base32), set from the start of a second-factor setup.
    #[serde(skip_serializing)]
    pub totp_secret: Option<String>,
    /// Whether the second factor is confirmed and asked for at every login.
    pub totp_enabled: bool,
    /// The last TOTP time step accepted (codes of it and earlier steps are refused).
    #[serde(skip_serializing)]
    pub totp_last_step: Option<i64>,
}

/// A token to create. Only a hash of the secret is stored, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// Owner.
    pub user_id: i64,
    /// Login or API token.
    pub kind: TokenKind,
    /// Hash of the secret (e.g. hex BLAKE3); unique.
    pub token_hash: String,
    /// Free text shown to the owner.
    pub description: String,
    /// Expiry; `None` never expires.
    pub expires_at: Option<Timestamp>,
    /// What it may be used for.
    pub scope: TokenScope,
}

/// A stored token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Database id.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// Login or API token.
    pub kind: TokenKind,
    /// Hash of the secret.
    #[serde(skip_serializing)]
    pub token_hash: String,
    /// Free text shown to the owner.
    pub description: String,
    /// When the token was created.
    pub created_at: Timestamp,
    /// Expiry; `None` never expires.
    pub expires_at: Option<Timestamp>,
    /// What it may be used for.
    pub scope: TokenScope,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    name: String,
    password_hash: String,
    role: String,
    created_at: i64,
    totp_secret: Option<String>,
    totp_enabled: bool,
    totp_last_step: Option<i64>,
}

impl TryFrom<UserRow> for User {
    type Error = Error;
    fn try_from(r: UserRow) -> Result<Self> {
        Ok(User {
            id: r.id,
            name: r.name,
            password_hash: r.password_hash,
            role: r.role.parse()?,
            created_at: from_us(r.created_at)?,
            totp_secret: r.totp_secret,
            totp_enabled: r.totp_enabled,
            totp_last_step: r.totp_last_step,
        })
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: i64,
    user_id: i64,
    kind: String,
    token_hash: String,
    description: String,
    created_at: i64,
    expires_at: Option<i64>,
    scope: String,
}

impl TryFrom<TokenRow> for Token {
    type Error = Error;
    fn try_from(r: TokenRow) -> Result<Self> {
        Ok(Token {
            id: r.id,
            user_id: r.user_id,
            kind: r.kind.parse()?,
            token_hash: r.token_hash,
            description: r.description,
            created_at: from_us(r.created_at)?,
            expires_at: from_us_opt(r.expires_at)?,
            scope: r.scope.parse()?,
        })
    }
}

macro_rules! user_select {
    ($($rest:literal),+) => {
        concat!(
            "SELECT id, name, password_hash, role, created_at, totp_secret, totp_enabled, totp_last_step FROM users ",
            $($rest),+
        )
    };
}
macro_rules! token_select {
    ($($rest:literal),+) => {
        concat!(
            "SELECT id, user_id, kind, token_hash, description, created_at, expires_at, scope FROM tokens ",
            $($rest),+
        )
    };
}

impl ConfigDb {
    /// Creates a user; [`Error::Duplicate`] if the name is taken.
    pub async fn create_user(&self, name: &str, password_hash: &str, role: Role) -> Result<User> {
        let now = to_us(Timestamp::now());
        on_pool!(self, |pool| {
            let row: UserRow = sqlx::query_as(concat!(
                "INSERT INTO users (name, password_hash, role, created_at) VALUES ($1, $2, $3, $4) ",
                "RETURNING id, name, password_hash, role, created_at, totp_secret, totp_enabled, totp_last_step"
            ))
            .bind(name)
            .bind(password_hash)
            .bind(role.as_str())
            .bind(now)
            .fetch_one(pool)
            .await
            .map_err(write_err(format!("user {name:?}")))?;
            row.try_into()
        })
    }

    /// The user with `id`.
    pub async fn get_user(&self, id: i64) -> Result<User> {
        on_pool!(self, |pool| {
            let row: Option<UserRow> = sqlx::query_as(user_select!("WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.ok_or_else(|| Error::NotFound {
                what: format!("user {id}"),
            })?
            .try_into()
        })
    }

    /// The user named `name`, if any (for logins).
    pub async fn find_user_by_name(&self, name: &str) -> Result<Option<User>> {
        on_pool!(self, |pool| {
            let row: Option<UserRow> = sqlx::query_as(user_select!("WHERE name = $1"))
                .bind(name)
                .fetch_optional(pool)
                .await?;
            row.map(User::try_from).transpose()
        })
    }

    /// Every user, ordered by name.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        on_pool!(self, |pool| {
            let rows: Vec<UserRow> = sqlx::query_as(user_select!("ORDER BY name")).fetch_all(pool).await?;
            rows.into_iter().map(User::try_from).collect()
        })
    }

    /// Replaces a user's password hash.
    pub async fn set_user_password_hash(&self, id: i64, password_hash: &str) -> Result<()> {
        on_pool!(self, |pool| {
            let done = sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                .bind(id)
                .bind(password_hash)
                .execute(pool)
                .await?;
            one_row(done.rows_affected(), || format!("user {id}"))
        })
    }

    /// Changes a user's role.
    pub async fn set_user_role(&self, id: i64, role: Role) -> Result<()> {
        on_pool!(self, |pool| {
            let done = sqlx::query("UPDATE users SET role = $2 WHERE id = $1")
                .bind(id)
                .bind(role.as_str())
                .execute(pool)
                .await?;
            one_row(done.rows_affected(), || format!("user {id}"))
        })
    }

    /// Deletes a user and their tokens.
    pub async fn delete_user(&self, id: i64) -> Result<()> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
            one_row(done.rows_affected(), || format!("user {id}"))
        })
    }

    /// Stores a token; [`Error::Duplicate`] if the hash exists, [`Error::NotFound`] if the owner does not.
    pub async fn create_token(&self, token: &NewToken) -> Result<Token> {
        let now = to_us(Timestamp::now());
        on_pool!(self, |pool| {
            let row: TokenRow = sqlx::query_as(concat!(
                "INSERT INTO tokens (user_id, kind, token_hash, description, created_at, expires_at, scope) ",
                "VALUES ($1, $2, $3, $4, $5, $6, $7) ",
                "RETURNING id, user_id, kind, token_hash, description, created_at, expires_at, scope"
            ))
            .bind(token.user_id)
            .bind(token.kind.as_str())
            .bind(&token.token_hash)
            .bind(&token.description)
            .bind(now)
            .bind(token.expires_at.map(to_us))
            .bind(token.scope.as_str())
            .fetch_one(pool)
            .await
            .map_err(write_err(format!("token of user {}", token.user_id)))?;
            row.try_into()
        })
    }

    /// The unexpired token whose hash is `token_hash` at time `now`, with its owner; `None` if there
    /// is no such token or it has expired.
    pub async fn find_valid_token(&self, token_hash: &str, now: Timestamp) -> Result<Option<(Token, User)>> {
        on_pool!(self, |pool| {
            let row: Option<TokenRow> = sqlx::query_as(token_select!(
                "WHERE token_hash = $1 AND (expires_at IS NULL OR expires_at > $2)"
            ))
            .bind(token_hash)
            .bind(to_us(now))
            .fetch_optional(pool)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let token = Token::try_from(row)?;
            let user: Option<UserRow> = sqlx::query_as(user_select!("WHERE id = $1"))
                .bind(token.user_id)
                .fetch_optional(pool)
                .await?;
            // The owner may have been deleted between the two reads: the token went with it.
            match user {
                Some(user) => Ok(Some((token, user.try_into()?))),
                None => Ok(None),
            }
        })
    }

    /// The tokens of a user, oldest first.
    pub async fn list_tokens(&self, user_id: i64) -> Result<Vec<Token>> {
        on_pool!(self, |pool| {
            let rows: Vec<TokenRow> = sqlx::query_as(token_select!("WHERE user_id = $1 ORDER BY id"))
                .bind(user_id)
                .fetch_all(pool)
                .await?;
            rows.into_iter().map(Token::try_from).collect()
        })
    }

    /// Deletes (revokes) a token.
    pub async fn delete_token(&self, id: i64) -> Result<()> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM tokens WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
            one_row(done.rows_affected(), || format!("token {id}"))
        })
    }

    /// Deletes (revokes) every token of a user, or only those of `kind`; returns how many.
    pub async fn delete_user_tokens(&self, user_id: i64, kind: Option<TokenKind>) -> Result<u64> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM tokens WHERE user_id = $1 AND ($2 IS NULL OR kind = $2)")
                .bind(user_id)
                .bind(kind.map(TokenKind::as_str))
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }

    /// Sets a user's TOTP secret and whether it is in force (`None`, `false`: no second factor).
    /// Forgets the last accepted step.
    pub async fn set_user_totp(&self, id: i64, secret: Option<&str>, enabled: bool) -> Result<()> {
        on_pool!(self, |pool| {
            let done = sqlx::query(
                "UPDATE users SET totp_secret = $2, totp_enabled = $3, totp_last_step = NULL WHERE id = $1",
            )
            .bind(id)
            .bind(secret)
            .bind(enabled)
            .execute(pool)
            .await?;
            one_row(done.rows_affected(), || format!("user {id}"))
        })
    }

    /// Records that a TOTP code of time step `step` was used by the user, unless a code of this
    /// step or a later one was used before: `false` then (the code is a replay).
    pub async fn accept_totp_step(&self, id: i64, step: i64) -> Result<bool> {
        on_pool!(self, |pool| {
            let done = sqlx::query(
                "UPDATE users SET totp_last_step = $2 WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
            )
            .bind(id)
            .bind(step)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Deletes the tokens expired at `now`; returns how many.
    pub async fn delete_expired_tokens(&self, now: Timestamp) -> Result<u64> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM tokens WHERE expires_at <= $1")
                .bind(to_us(now))
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }
}
