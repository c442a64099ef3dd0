//! Runs one test body against SQLite (always) and PostgreSQL (the server in `CAIRN_TEST_POSTGRES_URL`).

use cairn_configdb::ConfigDb;
use cairn_testkit::postgres::fresh_database;

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
    let url = fresh_database(&format!("cairn_{test}"), "the configuration database tests").await;
    let db = ConfigDb::open(&url).await.expect("open PostgreSQL");
    Fixture { db, url, _dir: None }
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
