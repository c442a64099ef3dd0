//! Runs one test body against SQLite (always) and PostgreSQL (the server in `CAIRN_TEST_POSTGRES_URL`).

use std::sync::atomic::{AtomicU32, Ordering};

use cairn_configdb::ConfigDb;
use sqlx::{AssertSqlSafe, Connection};

/// A database for one test; keeps its temporary folder alive.
pub struct Fixture {
    /// The opened database.
    pub db: ConfigDb,
    /// URL to open it again.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh SQLite database in a temporary folder.
pub async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().expect("temporary folder");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("config.db").display());
    let db = ConfigDb::open(&url).await.expect("open SQLite");
    Fixture {
        db,
        url,
        _dir: Some(dir),
    }
}

/// A fresh database of its own on the PostgreSQL server of `CAIRN_TEST_POSTGRES_URL`.
pub async fn postgres(test: &str) -> Fixture {
    let Ok(admin_url) = std::env::var("CAIRN_TEST_POSTGRES_URL") else {
        panic!(
            "CAIRN_TEST_POSTGRES_URL is not set: the configuration database tests need PostgreSQL. \
             Run them through scripts/test.sh, or start a server with \
             `eval \"$(scripts/postgres-for-tests.sh)\"` first."
        );
    };
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "cairn_{test}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to CAIRN_TEST_POSTGRES_URL");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .expect("create database");
    admin.close().await.expect("close admin connection");
    let url = with_database(&admin_url, &name);
    let db = ConfigDb::open(&url).await.expect("open PostgreSQL");
    Fixture { db, url, _dir: None }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// Defines `mod $name { sqlite, postgres }`, each running `async fn $name(&Fixture)`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let fixture = $crate::common::sqlite().await;
                super::$name(&fixture).await;
                fixture.db.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let fixture = $crate::common::postgres(stringify!($name)).await;
                super::$name(&fixture).await;
                fixture.db.close().await;
            }
        }
    };
}

#[test]
fn database_name_replacement() {
    assert_eq!(with_database("postgres://u@h:5/postgres", "x"), "postgres://u@h:5/x");
    assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
    assert_eq!(
        with_database("postgres://u@h/db?host=/tmp", "x"),
        "postgres://u@h/x?host=/tmp"
    );
}
