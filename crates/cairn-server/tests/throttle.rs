//! Network throttling rules through the REST API of a real server in this process (real TLS,
//! real SQLite and PostgreSQL); every test body runs on both backends.

mod common;

use cairn_configdb::NewThrottleRule;
use cairn_server::server::{StartOptions, start_with};
use common::{ADMIN_PASSWORD, Backend, TestServer, config, database_url};
use jiff::Timestamp;
use reqwest::Method;
use serde_json::{Value, json};

const RULES: &str = "/api/v1/throttle-rules";

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// Monday 2 March 2026, 10:00 in Berlin (the test servers' zone).
fn monday_morning() -> Timestamp {
    "2026-03-02T09:00:00Z".parse().unwrap()
}

/// Sunday 8 March 2026, 10:00 in Berlin.
fn sunday_morning() -> Timestamp {
    "2026-03-08T09:00:00Z".parse().unwrap()
}

async fn rules_are_created_listed_and_deleted_and_apply_at_once(backend: Backend) {
    let t = TestServer::start(backend, "throttle_crud").await;
    assert_eq!(t.get(RULES).await, json!([]));
    let throttles = t.server.state().throttles.clone();
    let transfer = throttles.register(ip("10.0.1.5"), ip("10.9.3.4"));
    let reverse = throttles.register(ip("10.9.0.1"), ip("10.0.1.9"));
    assert_eq!(transfer.rate(monday_morning()), None, "no rule yet");

    let (status, first) = t
        .post(
            RULES,
            json!({"from": "10.0.1.0/24", "to": "10.9.0.0/16", "limit_bytes": 50_000_000,
                   "window": " mon-fri 08:00-18:00 "}),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["from"], "10.0.1.0/24");
    assert_eq!(first["to"], "10.9.0.0/16");
    assert_eq!(first["limit_bytes"], 50_000_000);
    assert_eq!(first["window"], "mon-fri 08:00-18:00", "trimmed");
    assert!(first["created_at"].is_string(), "{first}");
    let first_id = first["id"].as_i64().unwrap();

    // In force at once: shared by the two transfers between the ranges, in its window only
    // (which follows the server's zone, Europe/Berlin).
    assert_eq!(transfer.rate(monday_morning()), Some(25_000_000));
    assert_eq!(reverse.rate(monday_morning()), Some(25_000_000));
    assert_eq!(transfer.rate(sunday_morning()), None);
    assert_eq!(
        transfer.rule_text(monday_morning()).as_deref(),
        Some(
            format!("rule {first_id} (10.0.1.0/24 ↔ 10.9.0.0/16, 50 MB/s, mon-fri 08:00-18:00) shared by 2 transfers")
                .as_str()
        )
    );

    // A bare address is stored as its /32; no window means always.
    let (status, second) = t
        .post(
            RULES,
            json!({"from": "10.9.3.4", "to": "10.0.0.0/8", "limit_bytes": 1_000_000}),
        )
        .await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["from"], "10.9.3.4/32");
    assert_eq!(second["window"], Value::Null);
    let second_id = second["id"].as_i64().unwrap();
    assert_eq!(
        transfer.rate(sunday_morning()),
        Some(1_000_000),
        "the smaller share wins"
    );
    assert_eq!(reverse.rate(sunday_morning()), None);

    let listed = t.get(RULES).await;
    let ids: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [first_id, second_id], "by id");
    assert_eq!(listed[0], first);

    let (status, body) = t.delete(&format!("{RULES}/{second_id}")).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(transfer.rate(sunday_morning()), None, "freed at once");
    assert_eq!(t.server.state().throttles.rules().len(), 1);
    let (status, body) = t.delete(&format!("{RULES}/{second_id}")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], format!("throttling rule {second_id} not found"));
    drop((transfer, reverse));
    t.stop().await;
}
both_backends!(rules_are_created_listed_and_deleted_and_apply_at_once);

async fn bad_rules_are_refused_naming_the_field(backend: Backend) {
    let t = TestServer::start(backend, "throttle_invalid").await;
    let good = json!({"from": "10.0.1.0/24", "to": "fd00::/64", "limit_bytes": 1000, "window": "always"});
    let cases = [
        (
            "from",
            json!("10.0.1.0/33"),
            "from \"10.0.1.0/33\": not an IP address range",
        ),
        ("to", json!("backup-lan"), "to \"backup-lan\": not an IP address range"),
        (
            "limit_bytes",
            json!(0),
            "limit_bytes 0: give at least 1 byte per second",
        ),
        ("limit_bytes", json!(-10), "limit_bytes -10"),
        ("window", json!("weekdays 8-18"), "window \"weekdays 8-18\""),
        (
            "window",
            json!("mon-fri 08:00-18:00 tz Mars/Olympus"),
            "window \"mon-fri 08:00-18:00 tz Mars/Olympus\"",
        ),
    ];
    for (field, value, message) in cases {
        let mut body = good.clone();
        body[field] = value;
        let (status, answer) = t.post(RULES, body).await;
        assert_eq!(status, 422, "{field}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.starts_with(message),
            "{field}: {error:?} should start with {message:?}"
        );
    }
    // A missing field or a limit that is not a number does not fit the body at all.
    let (status, answer) = t.post(RULES, json!({"from": "10.0.0.0/8", "limit_bytes": 5})).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("to"), "{answer}");
    assert_eq!(t.get(RULES).await, json!([]), "nothing was stored");
    let (status, answer) = t.post(RULES, good).await;
    assert_eq!(status, 201, "{answer}");
    t.stop().await;
}
both_backends!(bad_rules_are_refused_naming_the_field);

async fn viewers_read_and_only_administrators_change(backend: Backend) {
    let t = TestServer::start(backend, "throttle_roles").await;
    let (status, rule) = t
        .post(
            RULES,
            json!({"from": "10.0.0.0/8", "to": "192.168.0.0/16", "limit_bytes": 5000}),
        )
        .await;
    assert_eq!(status, 201, "{rule}");
    let path = format!("{RULES}/{}", rule["id"]);
    for role in ["viewer", "restore-operator"] {
        let token = t.user(&format!("{role}-user"), role).await;
        let (status, list) = t.call(Method::GET, RULES, Some(&token), None).await;
        assert_eq!(status, 200, "{role}: {list}");
        assert_eq!(list.as_array().unwrap().len(), 1);
        let (status, body) = t
            .call(
                Method::POST,
                RULES,
                Some(&token),
                Some(&json!({"from": "10.0.0.0/8", "to": "10.0.0.0/8", "limit_bytes": 1})),
            )
            .await;
        assert_eq!(status, 403, "{role} creating: {body}");
        let (status, body) = t.call(Method::DELETE, &path, Some(&token), None).await;
        assert_eq!(status, 403, "{role} deleting: {body}");
    }
    let (status, _) = t.call(Method::GET, RULES, None, None).await;
    assert_eq!(status, 401);
    assert_eq!(t.get(RULES).await.as_array().unwrap().len(), 1, "nothing changed");
    t.stop().await;
}
both_backends!(viewers_read_and_only_administrators_change);

async fn stored_rules_are_in_force_after_a_restart(backend: Backend) {
    let root = tempfile::tempdir().unwrap();
    let url = database_url(backend, "throttle_restart").await;
    let options = || StartOptions {
        admin_password: Some(ADMIN_PASSWORD.into()),
    };
    let server = start_with(config(root.path(), url.clone()), options()).await.unwrap();
    assert!(server.state().throttles.rules().is_empty());
    let stored = server
        .state()
        .db
        .create_throttle_rule(&NewThrottleRule {
            from_cidr: "fd00::/64".into(),
            to_cidr: "fd01::/64".into(),
            limit_bytes: 7_000,
            window: None,
        })
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    let server = start_with(config(root.path(), url), options()).await.unwrap();
    let rules = server.state().throttles.rules();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].id, stored.id);
    let transfer = server.state().throttles.register(ip("fd01::5"), ip("fd00::7"));
    assert_eq!(transfer.rate(Timestamp::now()), Some(7_000));
    drop(transfer);
    server.shutdown().await.unwrap();
}
both_backends!(stored_rules_are_in_force_after_a_restart);
