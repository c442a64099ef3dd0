//! Network throttling rules; every test runs on SQLite and on PostgreSQL.

#[allow(dead_code)]
mod common;

use cairn_configdb::{ConfigDb, Error, NewThrottleRule};
use common::Fixture;

fn rule(from: &str, to: &str, limit: i64, window: Option<&str>) -> NewThrottleRule {
    NewThrottleRule {
        from_cidr: from.into(),
        to_cidr: to.into(),
        limit_bytes: limit,
        window: window.map(str::to_owned),
    }
}

async fn rules_are_stored_listed_by_id_and_deleted(f: &Fixture) {
    assert!(f.db.list_throttle_rules().await.unwrap().is_empty());
    let before = jiff::Timestamp::now();
    let first =
        f.db.create_throttle_rule(&rule(
            "10.0.1.0/24",
            "10.9.0.0/16",
            50_000_000,
            Some("mon-fri 08:00-18:00"),
        ))
        .await
        .expect("create the first rule");
    let second =
        f.db.create_throttle_rule(&rule("fd00::/64", "192.0.2.7", 1, None))
            .await
            .expect("create the second rule");
    assert!(second.id > first.id, "ids grow: {} then {}", first.id, second.id);
    assert_eq!(first.rule.from_cidr, "10.0.1.0/24");
    assert_eq!(first.rule.to_cidr, "10.9.0.0/16");
    assert_eq!(first.rule.limit_bytes, 50_000_000);
    assert_eq!(first.rule.window.as_deref(), Some("mon-fri 08:00-18:00"));
    assert_eq!(second.rule.window, None);
    assert!(
        first.created_at >= before - jiff::SignedDuration::from_millis(1),
        "created now"
    );

    // The list is by id and reads back exactly what was returned at creation.
    let listed = f.db.list_throttle_rules().await.unwrap();
    assert_eq!(listed, vec![first.clone(), second.clone()]);

    // The JSON form has the rule's fields at the top level (flattened).
    let json = serde_json::to_value(&first).unwrap();
    assert_eq!(json["from_cidr"], "10.0.1.0/24");
    assert_eq!(json["limit_bytes"], 50_000_000);
    assert_eq!(json["window"], "mon-fri 08:00-18:00");
    assert!(json.get("rule").is_none(), "flattened: {json}");

    f.db.delete_throttle_rule(first.id)
        .await
        .expect("delete the first rule");
    assert_eq!(f.db.list_throttle_rules().await.unwrap(), vec![second.clone()]);

    // Rules survive closing and reopening the database.
    let again = ConfigDb::open(&f.url).await.expect("reopen");
    assert_eq!(again.list_throttle_rules().await.unwrap(), vec![second]);
    again.close().await;
}
both_backends!(rules_are_stored_listed_by_id_and_deleted);

async fn deleting_a_missing_rule_names_it(f: &Fixture) {
    let created =
        f.db.create_throttle_rule(&rule("10.0.0.0/8", "10.0.0.0/8", 10, None))
            .await
            .unwrap();
    f.db.delete_throttle_rule(created.id).await.unwrap();
    match f.db.delete_throttle_rule(created.id).await {
        Err(e @ Error::NotFound { .. }) => {
            assert_eq!(e.to_string(), format!("throttling rule {} not found", created.id));
        }
        other => panic!("deleting a deleted rule: expected NotFound, got {other:?}"),
    }
    match f.db.delete_throttle_rule(987_654).await {
        Err(Error::NotFound { what }) => assert_eq!(what, "throttling rule 987654"),
        other => panic!("deleting an unknown rule: expected NotFound, got {other:?}"),
    }
}
both_backends!(deleting_a_missing_rule_names_it);

async fn a_limit_below_one_or_an_empty_range_is_refused(f: &Fixture) {
    for limit in [0, -5] {
        match f
            .db
            .create_throttle_rule(&rule("10.0.0.0/8", "10.1.0.0/16", limit, None))
            .await
        {
            Err(Error::Invalid { what }) => assert!(what.contains(&limit.to_string()), "{what}"),
            other => panic!("limit {limit}: expected Invalid, got {other:?}"),
        }
    }
    match f.db.create_throttle_rule(&rule("10.0.0.0/8", "  ", 5, None)).await {
        Err(Error::Invalid { what }) => assert!(what.contains("to range"), "{what}"),
        other => panic!("empty to range: expected Invalid, got {other:?}"),
    }
    assert!(
        f.db.list_throttle_rules().await.unwrap().is_empty(),
        "nothing was stored"
    );
}
both_backends!(a_limit_below_one_or_an_empty_range_is_refused);

async fn the_database_refuses_a_non_positive_limit_itself(f: &Fixture) {
    // The CHECK constraint of the schema backs the check in create_throttle_rule.
    const SQL: &str =
        "INSERT INTO throttle_rules (from_cidr, to_cidr, limit_bytes, created_at) VALUES ('a', 'b', 0, 0)";
    /// Runs `SQL` once on a new pool of type `$pool` opened at the fixture's URL.
    macro_rules! insert_once {
        ($pool:ty) => {{
            let pool = <$pool>::connect(&f.url).await.unwrap();
            let r = sqlx::query(SQL).execute(&pool).await;
            pool.close().await;
            r.map(|_| ())
        }};
    }
    let result = match f.db.backend() {
        cairn_configdb::Backend::Sqlite => insert_once!(sqlx::SqlitePool),
        cairn_configdb::Backend::Postgres => insert_once!(sqlx::PgPool),
    };
    assert!(result.is_err(), "a zero limit was stored");
}
both_backends!(the_database_refuses_a_non_positive_limit_itself);
