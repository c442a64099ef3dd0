//! Opening the database and running its migrations; settings.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::error::{Error, Result};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// How long a SQLite connection waits for another writer before failing with "database is locked".
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The database engine behind a [`ConfigDb`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

#[derive(Debug, Clone)]
pub(crate) enum DbPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Handle to the configuration database; cheap to clone (it wraps a connection pool).
#[derive(Debug, Clone)]
pub struct ConfigDb {
    pub(crate) pool: DbPool,
}

/// Statements that open a transaction on one backend.
#[derive(Clone, Copy)]
pub(crate) struct Begin {
    /// Opens a read-write transaction. On SQLite `BEGIN IMMEDIATE` takes the write lock up front,
    /// so a transaction never fails half-way with "database is locked".
    pub(crate) write: &'static str,
    /// Opens a read-only transaction that sees one snapshot for all its statements.
    pub(crate) read: &'static str,
}

/// Runs `$body` with `$pool` bound to the backend's pool (and `$begin` to its [`Begin`]
/// statements). The body is compiled once per backend.
macro_rules! on_pool {
    ($db:expr, |$pool:ident, $begin:ident| $body:expr) => {
        match &$db.pool {
            $crate::db::DbPool::Sqlite($pool) => {
                let $begin = $crate::db::Begin {
                    write: "BEGIN IMMEDIATE",
                    read: "BEGIN",
                };
                $body
            }
            $crate::db::DbPool::Postgres($pool) => {
                let $begin = $crate::db::Begin {
                    write: "BEGIN",
                    read: "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                };
                $body
            }
        }
    };
    ($db:expr, |$pool:ident| $body:expr) => {
        match &$db.pool {
            $crate::db::DbPool::Sqlite($pool) => $body,
            $crate::db::DbPool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Microseconds since the Unix epoch, the stored form of a time.
pub(crate) fn to_us(t: jiff::Timestamp) -> i64 {
    t.as_microsecond()
}

/// A stored time back as a timestamp.
pub(crate) fn from_us(us: i64) -> Result<jiff::Timestamp> {
    jiff::Timestamp::from_microsecond(us).map_err(|_| Error::Invalid {
        what: format!("stored time {us}"),
    })
}

/// An optional stored time back as a timestamp.
pub(crate) fn from_us_opt(us: Option<i64>) -> Result<Option<jiff::Timestamp>> {
    us.map(from_us).transpose()
}

/// Parses stored statistics JSON.
pub(crate) fn json_from_text(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| Error::Invalid {
        what: format!("stored statistics: {e}"),
    })
}

/// Creates `path` empty with mode 0600 when missing; takes group and other permissions from it
/// and from its `-wal` and `-shm` companions when present.
fn make_private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| {
        Error::Database(sqlx::Error::Io(std::io::Error::new(
            e.kind(),
            format!("database file {}: {e}", path.display()),
        )))
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(meta) = std::fs::metadata(&name)
            && meta.permissions().mode() & 0o077 != 0
        {
            let mode = meta.permissions().mode() & 0o600;
            std::fs::set_permissions(&name, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        }
    }
    Ok(())
}

impl ConfigDb {
    /// Opens (creating if needed) the database at `url` and applies pending migrations.
    ///
    /// Accepted: `sqlite://PATH?mode=rwc` (or any sqlx SQLite URL) and `postgres://…` /
    /// `postgresql://…`. Anything else is [`Error::Invalid`].
    pub async fn open(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Self::open_sqlite_with(SqliteConnectOptions::from_str(url)?).await
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Self::open_postgres_with(PgConnectOptions::from_str(url)?).await
        } else {
            Err(Error::Invalid {
                what: "database URL: expected sqlite://… or postgres://…".into(),
            })
        }
    }

    /// Opens (creating if needed) the SQLite database file at `path`, e.g. in the server's data
    /// folder, and applies pending migrations. Unlike a URL, any path works.
    /// The file (and SQLite's `-wal` and `-shm` files beside it, which take its mode) is readable
    /// and writable by its owner only: it holds password hashes.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        make_private_file(path)?;
        Self::open_sqlite_with(SqliteConnectOptions::new().filename(path).create_if_missing(true)).await
    }

    /// Opens a SQLite database with WAL, foreign keys and a busy timeout forced on.
    async fn open_sqlite_with(options: SqliteConnectOptions) -> Result<Self> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        Ok(Self {
            pool: DbPool::Sqlite(pool),
        })
    }

    /// Connects to PostgreSQL and applies pending migrations.
    async fn open_postgres_with(options: PgConnectOptions) -> Result<Self> {
        let pool = PgPoolOptions::new().max_connections(16).connect_with(options).await?;
        POSTGRES_MIGRATIONS.run(&pool).await?;
        Ok(Self {
            pool: DbPool::Postgres(pool),
        })
    }

    /// Which engine this handle talks to.
    pub fn backend(&self) -> Backend {
        match self.pool {
            DbPool::Sqlite(_) => Backend::Sqlite,
            DbPool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Closes every connection (waits for running queries); clones of this handle stop working.
    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await)
    }

    /// The value of setting `key`, if set.
    pub async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        on_pool!(self, |pool| {
            Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?)
        })
    }

    /// Sets (inserts or replaces) setting `key`.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        on_pool!(self, |pool| {
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2")
                .bind(key)
                .bind(value)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// Every setting, ordered by key.
    pub async fn list_settings(&self) -> Result<Vec<(String, String)>> {
        on_pool!(self, |pool| {
            Ok(sqlx::query_as("SELECT key, value FROM settings ORDER BY key")
                .fetch_all(pool)
                .await?)
        })
    }

    /// Removes setting `key`; returns whether it was set.
    pub async fn delete_setting(&self, key: &str) -> Result<bool> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM settings WHERE key = $1")
                .bind(key)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }
}
