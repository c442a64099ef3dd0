//! A fresh database on the test PostgreSQL server named by `CAIRN_TEST_POSTGRES_URL`.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{AssertSqlSafe, Connection};

/// The variable that holds the test server's administrator URL.
pub const URL_VARIABLE: &str = "CAIRN_TEST_POSTGRES_URL";

/// The administrator URL of the test server; panics, naming `needed_by` (such as "the server
/// API tests") and how to start a server, when it is not set.
pub fn admin_url(needed_by: &str) -> String {
    std::env::var(URL_VARIABLE).unwrap_or_else(|_| {
        panic!(
            "{URL_VARIABLE} is not set: {needed_by} need PostgreSQL. Run them through scripts/test.sh, \
             or start a server with `eval \"$(scripts/postgres-for-tests.sh)\"` first."
        )
    })
}

/// A database name no other test (of this or another process) uses: `{prefix}_{pid}_{n}_{ms}`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    )
}

/// Creates database `name` through `admin_url`.
pub async fn create_database(admin_url: &str, name: &str) {
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect to CAIRN_TEST_POSTGRES_URL");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .expect("create database");
    admin.close().await.expect("close admin connection");
}

/// Creates a database with a [`unique_name`] starting with `prefix` and returns its URL; panics
/// as [`admin_url`] does without a test server.
pub async fn fresh_database(prefix: &str, needed_by: &str) -> String {
    let admin = admin_url(needed_by);
    let name = unique_name(prefix);
    create_database(&admin, &name).await;
    with_database(&admin, &name)
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(with_database("postgres://u@h:5/postgres", "x"), "postgres://u@h:5/x");
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(
            with_database("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}
