//! The REST API against a real server in this process: real TLS (a client trusting only the
//! server's `ca.pem`), real SQLite and PostgreSQL, real qemu-img images and repositories.
//! Every test body runs on both database backends.

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN_PASSWORD, Backend, TestServer, default_repository, make_images, vm_id};
use reqwest::Method;
use serde_json::{Value, json};

/// Every route of the API contract (method, path).
const CONTRACT: &[(&str, &str)] = &[
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/auth/whoami"),
    ("post", "/api/v1/auth/password"),
    ("post", "/api/v1/auth/totp"),
    ("post", "/api/v1/auth/totp/confirm"),
    ("post", "/api/v1/auth/totp/disable"),
    ("post", "/api/v1/tokens"),
    ("get", "/api/v1/tokens"),
    ("delete", "/api/v1/tokens/{id}"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/users"),
    ("patch", "/api/v1/users/{id}"),
    ("delete", "/api/v1/users/{id}"),
    ("delete", "/api/v1/users/{id}/totp"),
    ("get", "/api/v1/audit"),
    ("get", "/api/v1/audit/verify"),
    ("get", "/api/v1/hosts"),
    ("post", "/api/v1/hosts"),
    ("post", "/api/v1/hosts/{id}/rescan"),
    ("delete", "/api/v1/hosts/{id}"),
    ("get", "/api/v1/vms"),
    ("get", "/api/v1/vms/{id}"),
    ("post", "/api/v1/vms/{id}/start"),
    ("post", "/api/v1/vms/{id}/stop"),
    ("post", "/api/v1/vms/{id}/forget-checkpoints"),
    ("get", "/api/v1/repositories"),
    ("post", "/api/v1/repositories"),
    ("patch", "/api/v1/repositories/{id}"),
    ("delete", "/api/v1/repositories/{id}"),
    ("get", "/api/v1/repositories/{id}/points"),
    ("get", "/api/v1/proxies"),
    ("patch", "/api/v1/proxies/{id}"),
    ("get", "/api/v1/settings"),
    ("patch", "/api/v1/settings"),
    ("get", "/api/v1/jobs"),
    ("post", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{id}"),
    ("put", "/api/v1/jobs/{id}"),
    ("delete", "/api/v1/jobs/{id}"),
    ("post", "/api/v1/jobs/{id}/enable"),
    ("post", "/api/v1/jobs/{id}/disable"),
    ("post", "/api/v1/jobs/{id}/run"),
    ("post", "/api/v1/jobs/{id}/stop"),
    ("get", "/api/v1/sessions"),
    ("get", "/api/v1/sessions/{id}"),
    ("get", "/api/v1/tasks/{id}/log"),
    ("post", "/api/v1/sessions/{id}/stop"),
    ("post", "/api/v1/restores"),
    ("post", "/api/v1/restores/vm"),
    ("get", "/api/v1/instant-recoveries"),
    ("post", "/api/v1/instant-recoveries"),
    ("delete", "/api/v1/instant-recoveries/{name}"),
    ("post", "/api/v1/instant-recoveries/{name}/migrate"),
    ("post", "/api/v1/agents/tokens"),
    ("post", "/api/v1/agents/enroll"),
    ("post", "/api/v1/agents/heartbeat"),
    ("post", "/api/v1/agents/work"),
    ("post", "/api/v1/agents/tasks/{task}/events"),
    ("post", "/api/v1/agents/renew"),
    ("get", "/api/v1/agents"),
    ("post", "/api/v1/agents/{id}/renew"),
    ("delete", "/api/v1/agents/{id}"),
    ("get", "/api/v1/throttle-rules"),
    ("post", "/api/v1/throttle-rules"),
    ("delete", "/api/v1/throttle-rules/{id}"),
    ("get", "/api/v1/health"),
    ("get", "/api/openapi.json"),
];

/// Routes that need no token.
fn is_open(method: &str, path: &str) -> bool {
    matches!(
        (method, path),
        ("get", "/api/v1/health") | ("get", "/api/openapi.json") | ("post", "/api/v1/auth/login")
    ) || is_agent_route(method, path)
}

/// Routes that agents call: authenticated by the enrolment token in the body or by the TLS
/// client certificate, never by a bearer token (tests/agents.rs covers them).
fn is_agent_route(method: &str, path: &str) -> bool {
    matches!(
        (method, path),
        ("post", "/api/v1/agents/enroll")
            | ("post", "/api/v1/agents/heartbeat")
            | ("post", "/api/v1/agents/renew")
            | ("post", "/api/v1/agents/work")
            | ("post", "/api/v1/agents/tasks/{task}/events")
    )
}

fn method(name: &str) -> Method {
    Method::from_bytes(name.to_ascii_uppercase().as_bytes()).unwrap()
}

/// Adds the image folder of [`make_images`] as a host; returns (host id, VMs by name).
async fn add_images_host(t: &TestServer) -> (i64, Value) {
    let images = t.path("images");
    make_images(&images);
    let (status, body) = t
        .post("/api/v1/hosts", json!({"kind": "image-folder", "path": images}))
        .await;
    assert_eq!(status, 201, "{body}");
    (body["host"]["id"].as_i64().unwrap(), body)
}

async fn every_route_needs_a_token(backend: Backend) {
    let t = TestServer::start(backend, "routes").await;
    let (status, doc) = t.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for (m, path) in CONTRACT {
        assert!(
            paths.get(*path).and_then(|item| item.get(*m)).is_some(),
            "{m} {path} is missing from the OpenAPI document"
        );
    }
    let bogus = format!("cairn_{}", "0".repeat(64));
    let mut checked = 0;
    for (path, item) in paths {
        for m in ["get", "post", "put", "patch", "delete"] {
            if item.get(m).is_none() {
                continue;
            }
            let concrete = path.replace("{id}", "1").replace("{name}", "x");
            let (status, body) = t.call(method(m), &concrete, None, None).await;
            if is_agent_route(m, path) {
                continue;
            }
            if is_open(m, path) {
                assert_ne!(status, 401, "{m} {path} must work without a token: {body}");
                continue;
            }
            assert_eq!(status, 401, "{m} {path} without a token: {body}");
            assert!(body["error"].as_str().is_some_and(|e| e.contains("token")), "{body}");
            let (status, body) = t.call(method(m), &concrete, Some(&bogus), None).await;
            assert_eq!(status, 401, "{m} {path} with an unknown token: {body}");
            let (status, _) = t.call(method(m), &concrete, Some("not-a-token"), None).await;
            assert_eq!(status, 401, "{m} {path} with a malformed token");
            checked += 1;
        }
    }
    let open = CONTRACT.iter().filter(|(m, p)| is_open(m, p)).count();
    assert_eq!(checked, CONTRACT.len() - open, "every documented route was called");

    let (status, health) = t.call(Method::GET, "/api/v1/health", None, None).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, body) = t.call(Method::GET, "/api/v1/nothing-here", Some(&t.admin), None).await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    t.stop().await;
}
both_backends!(every_route_needs_a_token);

async fn tls_trusts_only_the_servers_ca(backend: Backend) {
    let t = TestServer::start(backend, "tls").await;
    // A client with the system roots only does not trust the server.
    let stranger = reqwest::Client::builder().build().unwrap();
    let err = stranger
        .get(format!("{}/api/v1/health", t.base))
        .send()
        .await
        .expect_err("a client without ca.pem must refuse the server");
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    // With ca.pem, by IP and by the name localhost (both in the certificate).
    let port = t.server.addr().port();
    for host in ["127.0.0.1", "localhost"] {
        let resp = t
            .client
            .get(format!("https://{host}:{port}/api/v1/health"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(resp.status(), 200);
    }
    let data = t.path("data");
    for (file, mode) in [("ca.pem", 0o600), ("ca-key.pem", 0o600), ("server-key.pem", 0o600)] {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(data.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{file}");
    }
    let m = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(m, 0o700, "data folder mode");
    t.stop().await;
}
both_backends!(tls_trusts_only_the_servers_ca);

async fn login_tokens_and_expiry(backend: Backend) {
    let t = TestServer::start(backend, "tokens").await;
    let wrong = json!({"user": "admin", "password": "not it"});
    let (status, body) = t.call(Method::POST, "/api/v1/auth/login", None, Some(&wrong)).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "wrong user name or password");
    let unknown = json!({"user": "nobody", "password": ADMIN_PASSWORD});
    let (status, body) = t.call(Method::POST, "/api/v1/auth/login", None, Some(&unknown)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("wrong user name or password"))
    );

    let (status, me) = t.call(Method::GET, "/api/v1/auth/whoami", Some(&t.admin), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("admin"), Some("administrator"))
    );

    // An API token works like a login token and is listed without its secret.
    let (status, created) = t
        .post(
            "/api/v1/tokens",
            json!({"description": "backup script", "expires_in_days": 30}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let api = created["token"].as_str().unwrap().to_owned();
    assert!(api.starts_with("cairn_") && api.len() == 70, "{api}");
    assert_eq!(created["kind"], "api");
    assert!(created["expires_at"].is_string());
    let (status, _) = t.call(Method::GET, "/api/v1/jobs", Some(&api), None).await;
    assert_eq!(status, 200);
    let listed = t.get("/api/v1/tokens").await;
    let text = listed.to_string();
    assert!(text.contains("backup script") && !text.contains(&api[6..]), "{text}");
    assert_eq!(listed.as_array().unwrap().len(), 2, "login + api: {listed}");
    let (status, _) = t
        .post("/api/v1/tokens", json!({"description": "x", "expires_in_days": 0}))
        .await;
    assert_eq!(status, 422);

    // Revoked: 401.
    let id = created["id"].as_i64().unwrap();
    let (status, _) = t.delete(&format!("/api/v1/tokens/{id}")).await;
    assert_eq!(status, 204);
    let (status, _) = t.call(Method::GET, "/api/v1/jobs", Some(&api), None).await;
    assert_eq!(status, 401);

    // Expired: 401 (a token stored already expired).
    let db = &t.server.state().db;
    let secret = cairn_server::auth::generate_token();
    db.create_token(&cairn_configdb::NewToken {
        user_id: me["id"].as_i64().unwrap(),
        kind: cairn_configdb::TokenKind::Api,
        token_hash: cairn_server::auth::token_hash(&secret),
        description: "old".into(),
        expires_at: Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1)),
        scope: cairn_configdb::TokenScope::Full,
    })
    .await
    .unwrap();
    let (status, body) = t.call(Method::GET, "/api/v1/jobs", Some(&secret), None).await;
    assert_eq!(status, 401, "{body}");

    // Another user's token cannot be revoked by id guessing.
    let vera = t.user("vera", "viewer").await;
    let (status, _) = t
        .call(Method::DELETE, &format!("/api/v1/tokens/{}", 1), Some(&vera), None)
        .await;
    assert_eq!(status, 404);

    // Logout ends the token used; a deleted user's token ends with the user.
    let other = t.login("admin", ADMIN_PASSWORD).await;
    let (status, _) = t.call(Method::POST, "/api/v1/auth/logout", Some(&other), None).await;
    assert_eq!(status, 204);
    let (status, _) = t.call(Method::GET, "/api/v1/auth/whoami", Some(&other), None).await;
    assert_eq!(status, 401);
    let users = t.get("/api/v1/users").await;
    let vera_id = users.as_array().unwrap().iter().find(|u| u["name"] == "vera").unwrap()["id"]
        .as_i64()
        .unwrap();
    let (status, _) = t.delete(&format!("/api/v1/users/{vera_id}")).await;
    assert_eq!(status, 204);
    let (status, _) = t.call(Method::GET, "/api/v1/jobs", Some(&vera), None).await;
    assert_eq!(status, 401);

    // The last administrator stays.
    let admin_id = me["id"].as_i64().unwrap();
    let (status, body) = t.delete(&format!("/api/v1/users/{admin_id}")).await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = t
        .patch(&format!("/api/v1/users/{admin_id}"), json!({"role": "viewer"}))
        .await;
    assert_eq!(status, 409);
    let (status, _) = t
        .post(
            "/api/v1/users",
            json!({"name": "short", "password": "1234", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, 422, "short password");
    let (status, _) = t
        .post(
            "/api/v1/users",
            json!({"name": "admin", "password": "long enough", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, 409, "name taken");
    t.stop().await;
}
both_backends!(login_tokens_and_expiry);

async fn roles_limit_what_users_may_do(backend: Backend) {
    let t = TestServer::start(backend, "roles").await;
    let (_, host) = add_images_host(&t).await;
    let web = vm_id(&host, "web");
    let repo = default_repository(&t).await;
    let (status, job) = t
        .post(
            "/api/v1/jobs",
            json!({"name": "nightly", "vm_ids": [web], "repository_id": repo}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let job_id = job["id"].as_i64().unwrap();
    let viewer = t.user("vera", "viewer").await;
    let operator = t.user("otto", "restore-operator").await;
    let restore = json!({
        "repository_id": repo, "vm": "web", "point": "latest", "disk": 0,
        "target_path": t.path("restored.raw"),
    });

    let admin_only: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            "/api/v1/jobs".into(),
            json!({"name": "x", "vm_ids": [web], "repository_id": repo}),
        ),
        (
            Method::PUT,
            format!("/api/v1/jobs/{job_id}"),
            json!({"version": 1, "name": "nightly", "vm_ids": [web], "repository_id": repo}),
        ),
        (Method::POST, format!("/api/v1/jobs/{job_id}/run"), Value::Null),
        (Method::POST, format!("/api/v1/jobs/{job_id}/disable"), Value::Null),
        (Method::DELETE, format!("/api/v1/jobs/{job_id}"), Value::Null),
        (Method::POST, "/api/v1/hosts".into(), json!({"path": t.path("images")})),
        (
            Method::POST,
            "/api/v1/repositories".into(),
            json!({"name": "r2", "path": t.path("r2")}),
        ),
        (
            Method::PATCH,
            format!("/api/v1/repositories/{repo}"),
            json!({"max_tasks": 1}),
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            json!({"name": "eve", "password": "eve-password", "role": "administrator"}),
        ),
        (Method::GET, "/api/v1/users".into(), Value::Null),
        (
            Method::PATCH,
            "/api/v1/settings".into(),
            json!({"parallel_processing": false}),
        ),
    ];
    for (who, token) in [("viewer", &viewer), ("restore-operator", &operator)] {
        for (m, path, body) in &admin_only {
            let body = (!body.is_null()).then_some(body);
            let (status, answer) = t.call(m.clone(), path, Some(token), body).await;
            assert_eq!(status, 403, "{who}: {m} {path}: {answer}");
            let error = answer["error"].as_str().unwrap();
            assert!(error.contains("administrator") && error.contains(who), "{error}");
        }
    }
    // The viewer may read everything but users, and may not restore.
    for path in [
        "/api/v1/jobs".to_owned(),
        format!("/api/v1/jobs/{job_id}"),
        "/api/v1/hosts".into(),
        "/api/v1/vms".into(),
        format!("/api/v1/vms/{web}"),
        "/api/v1/repositories".into(),
        "/api/v1/proxies".into(),
        "/api/v1/settings".into(),
        "/api/v1/sessions".into(),
        "/api/v1/auth/whoami".into(),
        "/api/v1/tokens".into(),
    ] {
        let (status, body) = t.call(Method::GET, &path, Some(&viewer), None).await;
        assert_eq!(status, 200, "viewer GET {path}: {body}");
    }
    let (status, body) = t
        .call(Method::POST, "/api/v1/restores", Some(&viewer), Some(&restore))
        .await;
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("restore-operator"), "{body}");
    // The restore operator reaches the restore (nothing is backed up yet: 404 from the repository).
    let (status, body) = t
        .call(Method::POST, "/api/v1/restores", Some(&operator), Some(&restore))
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("web"), "{body}");
    assert!(!t.path("restored.raw").exists());
    // The administrator may do it all.
    let (status, body) = t
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{job_id}/disable"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!((status, body["enabled"].as_bool()), (200, Some(false)));
    let (status, _) = t.call(Method::GET, "/api/v1/users", Some(&t.admin), None).await;
    assert_eq!(status, 200);
    let (status, _) = t.delete(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(status, 204);
    t.stop().await;
}
both_backends!(roles_limit_what_users_may_do);

async fn hosts_scan_image_folders(backend: Backend) {
    let t = TestServer::start(backend, "hosts").await;
    let (host_id, added) = add_images_host(&t).await;
    let images = t.path("images");
    assert_eq!(added["host"]["name"], "images");
    assert_eq!(added["host"]["kind"], "image-folder");
    assert_eq!(added["host"]["vms"], 2);
    let vms = added["vms"].as_array().unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["db", "web"]);
    let web = vms.iter().find(|v| v["name"] == "web").unwrap();
    let disks = web["disks"].as_array().unwrap();
    let summary: Vec<(String, String, i64)> = disks
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_owned(),
                d["format"].as_str().unwrap().to_owned(),
                d["capacity_bytes"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("disk0.qcow2".into(), "qcow2".into(), 4 << 20),
            ("disk1.raw".into(), "raw".into(), 8 << 20)
        ]
    );
    let path0 = disks[0]["path"].as_str().unwrap();
    assert!(path0.starts_with('/') && path0.ends_with("web/disk0.qcow2"), "{path0}");
    let db = vms.iter().find(|v| v["name"] == "db").unwrap();
    assert_eq!(db["disks"][0]["format"], "raw");
    assert_eq!(db["host"], "images");

    // GET lists agree.
    let listed = t.get(&format!("/api/v1/vms?host={host_id}")).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let one = t.get(&format!("/api/v1/vms/{}", web["id"])).await;
    assert_eq!(one["disks"].as_array().unwrap().len(), 2);
    let hosts = t.get("/api/v1/hosts").await;
    assert_eq!(hosts[0]["vms"], 2);
    let (status, _) = t.call(Method::GET, "/api/v1/vms/99999", Some(&t.admin), None).await;
    assert_eq!(status, 404);

    // Rescan: a new VM appears, a removed one stays but is not present.
    common::run(
        std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(images.join("mail.qcow2"))
            .arg("2M"),
    );
    std::fs::remove_file(images.join("db.img")).unwrap();
    let (status, rescanned) = t.post(&format!("/api/v1/hosts/{host_id}/rescan"), json!(null)).await;
    assert_eq!(status, 200, "{rescanned}");
    let state: Vec<(String, bool)> = rescanned["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_owned(), v["present"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        state,
        [("db".into(), false), ("mail".into(), true), ("web".into(), true)]
    );

    // Refusals.
    let (status, body) = t.post("/api/v1/hosts", json!({"path": images})).await;
    assert_eq!(status, 409, "same folder twice: {body}");
    let (status, body) = t.post("/api/v1/hosts", json!({"path": t.path("nowhere")})).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nowhere"), "{body}");
    let (status, _) = t.post("/api/v1/hosts", json!({"path": "relative/dir"})).await;
    assert_eq!(status, 422);
    let (status, body) = t.post("/api/v1/hosts", json!({"kind": "vmware", "path": images})).await;
    assert_eq!(status, 422, "{body}");

    // A host whose VM a job uses cannot be removed; then it can.
    let repo = default_repository(&t).await;
    let (status, job) = t
        .post(
            "/api/v1/jobs",
            json!({"name": "j", "vm_ids": [web["id"]], "repository_id": repo}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let (status, body) = t.delete(&format!("/api/v1/hosts/{host_id}")).await;
    assert_eq!(status, 409);
    assert!(body["error"].as_str().unwrap().contains('j'), "{body}");
    let (status, _) = t.delete(&format!("/api/v1/jobs/{}", job["id"])).await;
    assert_eq!(status, 204);
    let (status, _) = t.delete(&format!("/api/v1/hosts/{host_id}")).await;
    assert_eq!(status, 204);
    assert!(t.get("/api/v1/vms").await.as_array().unwrap().is_empty());
    t.stop().await;
}
both_backends!(hosts_scan_image_folders);

async fn repositories_proxies_and_settings(backend: Backend) {
    let t = TestServer::start(backend, "repos").await;
    let resources = t.server.state().resources.clone();
    // The default repository of the first start.
    let repos = t.get("/api/v1/repositories").await;
    assert_eq!(repos.as_array().unwrap().len(), 1);
    assert_eq!(repos[0]["name"], "default");
    assert_eq!(repos[0]["encrypted"], true);
    assert!(repos[0]["free_bytes"].as_u64().unwrap() > 0);
    assert!(t.path("default-repository/config").exists());

    // A new encrypted repository: folder initialised, password kept by the server.
    let path = t.path("repos/second");
    let (status, created) = t
        .post(
            "/api/v1/repositories",
            json!({"name": "second", "path": path, "max_tasks": 3}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert!(path.join("config").exists() && path.join("chains").is_dir());
    assert_eq!(
        (created["encrypted"].as_bool(), created["is_default"].as_bool()),
        (Some(true), Some(false))
    );
    let password_file = created["password_file"].as_str().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(password_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let id = created["id"].as_i64().unwrap();
    let key = cairn_server::repositories::repository_resource(id);
    assert_eq!(resources.repository_load(&key).unwrap().max_tasks, 3);

    // PATCH limits: shown in GET and applied to the resource scheduler.
    let (status, patched) = t
        .patch(
            &format!("/api/v1/repositories/{id}"),
            json!({"max_tasks": 2, "write_limit_bytes": 1_048_576, "read_limit_bytes": 0}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    let listed = t.get("/api/v1/repositories").await;
    let second = listed.as_array().unwrap().iter().find(|r| r["id"] == id).unwrap();
    assert_eq!(second["max_tasks"], 2);
    assert_eq!(second["write_limit_bytes"], 1_048_576);
    assert!(second["read_limit_bytes"].is_null());
    assert_eq!(resources.repository_load(&key).unwrap().max_tasks, 2);
    let (status, patched) = t
        .patch(
            &format!("/api/v1/repositories/{id}"),
            json!({"write_limit_bytes": null}),
        )
        .await;
    assert_eq!(
        (
            status,
            patched["write_limit_bytes"].is_null(),
            patched["max_tasks"].as_i64()
        ),
        (200, true, Some(2))
    );
    let (status, _) = t
        .patch(&format!("/api/v1/repositories/{id}"), json!({"max_tasks": 0}))
        .await;
    assert_eq!(status, 422);

    // Refusals: name taken, folder not empty, relative path, unknown encryption.
    let (status, _) = t
        .post("/api/v1/repositories", json!({"name": "second", "path": t.path("x")}))
        .await;
    assert_eq!(status, 409);
    let full = t.path("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("something"), b"x").unwrap();
    let (status, body) = t
        .post("/api/v1/repositories", json!({"name": "full", "path": full}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(full.join("something").exists() && !full.join("config").exists());
    let (status, _) = t
        .post("/api/v1/repositories", json!({"name": "rel", "path": "rel/dir"}))
        .await;
    assert_eq!(status, 422);
    let (status, _) = t
        .post(
            "/api/v1/repositories",
            json!({"name": "z", "path": t.path("z"), "encryption": "rot13"}),
        )
        .await;
    assert_eq!(status, 422);

    // Unencrypted, removed, then adopted again from its folder.
    let plain = t.path("plain");
    let (status, made) = t
        .post(
            "/api/v1/repositories",
            json!({"name": "plain", "path": plain, "encryption": "none"}),
        )
        .await;
    assert_eq!((status, made["encrypted"].as_bool()), (201, Some(false)), "{made}");
    let plain_id = made["id"].as_i64().unwrap();
    let (status, _) = t.delete(&format!("/api/v1/repositories/{plain_id}")).await;
    assert_eq!(status, 204);
    assert!(plain.join("config").exists(), "files stay");
    assert!(
        resources
            .repository_load(&cairn_server::repositories::repository_resource(plain_id))
            .is_none()
    );
    let (status, adopted) = t
        .post("/api/v1/repositories", json!({"name": "plain", "path": plain}))
        .await;
    assert_eq!(
        (status, adopted["encrypted"].as_bool()),
        (201, Some(false)),
        "{adopted}"
    );
    // An encrypted one is adopted only with its password.
    let (status, _) = t.delete(&format!("/api/v1/repositories/{id}")).await;
    assert_eq!(status, 204);
    let kept = std::fs::read_dir(t.path("data/secrets"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("repository-{id}-removed-"))
        });
    assert!(kept, "the password of a removed repository is kept aside");
    let (status, body) = t
        .post("/api/v1/repositories", json!({"name": "again", "path": path}))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = t
        .post(
            "/api/v1/repositories",
            json!({"name": "again", "path": path, "password": "wrong"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("wrong password"), "{body}");

    // A repository a job uses cannot be removed.
    let (_, host) = add_images_host(&t).await;
    let default_id = default_repository(&t).await;
    let (status, _) = t
        .post(
            "/api/v1/jobs",
            json!({"name": "j", "vm_ids": [vm_id(&host, "db")], "repository_id": default_id}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = t.delete(&format!("/api/v1/repositories/{default_id}")).await;
    assert_eq!(status, 409);
    assert!(body["error"].as_str().unwrap().contains("used by jobs j"), "{body}");

    // Points of an empty repository; an unknown VM is 404.
    let points = t.get(&format!("/api/v1/repositories/{default_id}/points")).await;
    assert_eq!(points, json!([]));
    let (status, _) = t
        .call(
            Method::GET,
            &format!("/api/v1/repositories/{default_id}/points?vm=nope"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Proxies: the server itself, editable.
    let proxies = t.get("/api/v1/proxies").await;
    assert_eq!(proxies.as_array().unwrap().len(), 1);
    assert!(proxies[0]["address"].is_null());
    assert_eq!(proxies[0]["running_tasks"], 0);
    let proxy_id = proxies[0]["id"].as_i64().unwrap();
    let (status, proxy) = t
        .patch(&format!("/api/v1/proxies/{proxy_id}"), json!({"max_tasks": 5}))
        .await;
    assert_eq!((status, proxy["max_tasks"].as_i64()), (200, Some(5)));
    let pkey = cairn_server::repositories::proxy_resource(proxy_id);
    assert_eq!(resources.proxy_load(&pkey).unwrap().max_tasks, 5);

    // Settings.
    let settings = t.get("/api/v1/settings").await;
    assert_eq!(
        settings,
        json!({
            "parallel_processing": true,
            "time_zone": "Europe/Berlin",
            "restore_folders": [t.root.path()],
            "require_totp_for_administrators": false,
        })
    );
    let (status, settings) = t.patch("/api/v1/settings", json!({"parallel_processing": false})).await;
    assert_eq!((status, settings["parallel_processing"].as_bool()), (200, Some(false)));
    assert!(!resources.parallel_processing());
    assert_eq!(t.get("/api/v1/settings").await["parallel_processing"], false);
    t.stop().await;
}
both_backends!(repositories_proxies_and_settings);

/// Polls a session until it ends (generous deadline).
async fn wait_for_session(t: &TestServer, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let detail = t.get(&format!("/api/v1/sessions/{id}")).await;
        let state = detail["session"]["state"].as_str().unwrap().to_owned();
        if !["waiting", "running"].contains(&state.as_str()) {
            return detail;
        }
        assert!(Instant::now() < deadline, "session {id} did not end: {detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn jobs_validation_versions_run_and_restore(backend: Backend) {
    let t = TestServer::start(backend, "jobs").await;
    let (_, host) = add_images_host(&t).await;
    let (web, db) = (vm_id(&host, "web"), vm_id(&host, "db"));
    let repo = default_repository(&t).await;
    let job = |extra: Value| {
        let mut body = json!({"name": "nightly", "vm_ids": [web], "repository_id": repo});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };

    // Invalid settings: 422 naming the field and the problem.
    let db_disk = host["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "db")
        .unwrap()["disks"][0]["id"]
        .clone();
    for (extra, expect) in [
        (json!({"schedule": "dayly 22:00"}), "schedule \"dayly 22:00\""),
        (json!({"schedule": "daily 25:00"}), "schedule"),
        (json!({"schedule": "after nosuchjob"}), "404 no job named \"nosuchjob\""),
        (json!({"schedule": "after nightly"}), "after itself"),
        (json!({"backup_window": "mon-fri 20:00-30:00"}), "backup window"),
        (json!({"compression": "zip"}), "compression \"zip\""),
        (json!({"block_size": 1000}), "block_size 1000"),
        (json!({"retention_points": 0}), "retention_points"),
        (json!({"method": "sideways"}), "method"),
        (json!({"encryption": "rot13"}), "encryption"),
        (json!({"vm_ids": [424242]}), "404 VM 424242 does not exist"),
        (json!({"vm_ids": []}), "vm_ids"),
        (
            json!({"excluded_disk_ids": [db_disk]}),
            "which the job does not back up",
        ),
        (json!({"repository_id": 777}), "404 repository 777"),
        (json!({"consistency": "frozen"}), "consistency \"frozen\""),
        (
            json!({"consistency": "crash", "require_app_consistency": true}),
            "require_app_consistency",
        ),
        (
            json!({"consistency": "crash", "pre_freeze_script": "sync"}),
            "pre_freeze_script",
        ),
        (json!({"post_thaw_script": "x".repeat(1025)}), "post_thaw_script"),
    ] {
        // References to what does not exist are 404, the rest 422.
        let (want, expect) = match expect.strip_prefix("404 ") {
            Some(rest) => (404, rest),
            None => (422, expect),
        };
        let (status, body) = t.post("/api/v1/jobs", job(extra.clone())).await;
        assert_eq!(status, want, "{extra}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(expect), "{extra}: {error}");
    }
    // A VM listed twice is backed up once.
    let (status, body) = t
        .post("/api/v1/jobs", job(json!({"name": "twice", "vm_ids": [web, web]})))
        .await;
    assert_eq!((status, body["vm_ids"].clone()), (201, json!([web])), "{body}");
    let (status, _) = t.delete(&format!("/api/v1/jobs/{}", body["id"])).await;
    assert_eq!(status, 204);
    // Malformed and oversized bodies.
    let raw = |body: &'static str| {
        t.client
            .post(format!("{}/api/v1/jobs", t.base))
            .bearer_auth(&t.admin)
            .header("content-type", "application/json")
            .body(body)
    };
    let resp = raw("{\"name\": \"x\",").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("malformed JSON"), "{body}");
    let resp = raw("{\"name\": 5}").send().await.unwrap();
    assert_eq!(resp.status(), 422);
    // Over 1 MiB: 413. The server answers before it has read the body and then closes the
    // connection, so the client may see the close while still writing: use a client of its own
    // (the shared one must not reuse that connection) and try again until an answer arrives.
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat((1 << 20) + 1024));
    let own = common::client(t.server.ca_path());
    let mut answer = None;
    for _ in 0..20 {
        let sent = own
            .post(format!("{}/api/v1/jobs", t.base))
            .bearer_auth(&t.admin)
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await;
        if let Ok(resp) = sent {
            answer = Some(resp.status());
            break;
        }
    }
    assert_eq!(answer.map(|s| s.as_u16()), Some(413));
    let (status, _) = t.call(Method::GET, "/api/v1/jobs/abc", Some(&t.admin), None).await;
    assert_eq!(status, 400);

    // Create with defaults.
    let (status, created) = t.post("/api/v1/jobs", job(json!({}))).await;
    assert_eq!(status, 201, "{created}");
    for (field, value) in [
        ("version", json!(1)),
        ("block_size", json!(1_048_576)),
        ("compression", json!("zstd:3")),
        ("encryption", json!(null)),
        ("method", json!("forever-forward")),
        ("retention_points", json!(14)),
        ("schedule", json!(null)),
        ("backup_window", json!(null)),
        ("consistency", json!("online")),
        ("require_app_consistency", json!(false)),
        ("pre_freeze_script", json!(null)),
        ("retries", json!(3)),
        ("retry_wait_seconds", json!(600)),
        ("enabled", json!(true)),
        ("excluded_disk_ids", json!([])),
        ("next_run", json!(null)),
        ("last_session", json!(null)),
    ] {
        assert_eq!(created[field], value, "{field} in {created}");
    }
    let id = created["id"].as_i64().unwrap();
    let (status, _) = t.post("/api/v1/jobs", job(json!({}))).await;
    assert_eq!(status, 409, "name taken");

    // A schedule gives a next run; a chained job may follow it; the followed job cannot go.
    let (status, chained) = t
        .post(
            "/api/v1/jobs",
            // Disabled, so it does not back up db after nightly's run below (the points are checked).
            json!({"name": "copy", "vm_ids": [db], "repository_id": repo, "schedule": "after nightly",
                   "backup_window": "mon-fri 20:00-06:00 sat,sun 00:00-24:00", "enabled": false}),
        )
        .await;
    assert_eq!(status, 201, "{chained}");
    assert!(chained["next_run"].is_null());
    let (status, body) = t.delete(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(status, 409, "{body}");

    // First save wins: a stale version is 409 naming the job and the new version.
    let current = t.get(&format!("/api/v1/jobs/{id}")).await;
    let mut edit = job(json!({"schedule": "daily 22:00 mon-fri", "retention_points": 7}));
    edit["version"] = current["version"].clone();
    let (status, saved) = t
        .call(Method::PUT, &format!("/api/v1/jobs/{id}"), Some(&t.admin), Some(&edit))
        .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(
        (saved["version"].as_i64(), saved["retention_points"].as_i64()),
        (Some(2), Some(7))
    );
    let next: jiff::Timestamp = saved["next_run"].as_str().expect("next_run").parse().unwrap();
    assert!(next > jiff::Timestamp::now());
    let local = next.to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap());
    assert_eq!((local.hour(), local.minute()), (22, 0), "server zone Europe/Berlin");
    let mut stale = edit.clone();
    stale["retention_points"] = json!(30);
    let (status, body) = t
        .call(Method::PUT, &format!("/api/v1/jobs/{id}"), Some(&t.admin), Some(&stale))
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        body["error"],
        "job nightly was changed by someone else (now version 2): reload it and apply your change again"
    );
    let reloaded = t.get(&format!("/api/v1/jobs/{id}")).await;
    stale["version"] = reloaded["version"].clone();
    let (status, saved) = t
        .call(Method::PUT, &format!("/api/v1/jobs/{id}"), Some(&t.admin), Some(&stale))
        .await;
    assert_eq!(
        (status, saved["version"].as_i64(), saved["retention_points"].as_i64()),
        (200, Some(3), Some(30))
    );
    let mut bad = stale.clone();
    bad["version"] = json!(3);
    bad["schedule"] = json!("every 7x");
    let (status, body) = t
        .call(Method::PUT, &format!("/api/v1/jobs/{id}"), Some(&t.admin), Some(&bad))
        .await;
    assert_eq!(status, 422, "{body}");

    // Disable / enable switch the next run and bump the version.
    let (_, disabled) = t.post(&format!("/api/v1/jobs/{id}/disable"), json!(null)).await;
    assert_eq!(
        (disabled["enabled"].as_bool(), disabled["next_run"].is_null()),
        (Some(false), true)
    );
    let (_, enabled) = t.post(&format!("/api/v1/jobs/{id}/enable"), json!(null)).await;
    assert_eq!(enabled["enabled"], true);
    assert!(enabled["next_run"].is_string());
    assert_eq!(enabled["version"], 5);
    let (status, _) = t.post(&format!("/api/v1/jobs/{id}/stop"), json!(null)).await;
    assert_eq!(status, 409, "not running");

    // Run: 202 with the session, which ends; the points are in the repository.
    let (status, started) = t.post(&format!("/api/v1/jobs/{id}/run"), json!(null)).await;
    assert_eq!(status, 202, "{started}");
    let session_id = started["session_id"].as_i64().unwrap();
    let detail = wait_for_session(&t, session_id).await;
    assert_eq!(detail["session"]["state"], "success", "{detail}");
    assert_eq!(detail["session"]["job_name"], "nightly");
    let tasks = detail["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2, "one task per disk of web: {detail}");
    let log = t.get(&format!("/api/v1/tasks/{}/log", tasks[0]["id"])).await;
    assert!(!log.as_array().unwrap().is_empty(), "task log: {log}");
    let page = t.get(&format!("/api/v1/sessions?job={id}&limit=1")).await;
    assert_eq!(page["sessions"][0]["id"], session_id);
    assert_eq!(
        page["sessions"][0]["job_name"], "nightly",
        "the list names the job: {page}"
    );
    let all = t.get("/api/v1/jobs").await;
    let listed = all.as_array().unwrap().iter().find(|j| j["id"] == id).cloned().unwrap();
    assert_eq!(
        listed["last_session"]["id"], session_id,
        "the job list has the last session: {all}"
    );
    assert_eq!(listed["last_session"]["state"], "success");
    assert_eq!(
        t.get(&format!("/api/v1/jobs/{id}")).await["last_session"]["id"],
        session_id
    );
    let (status, _) = t
        .post(&format!("/api/v1/sessions/{session_id}/stop"), json!(null))
        .await;
    assert_eq!(status, 409, "ended sessions cannot be stopped");

    // The runner names chains HOST/VM.
    let points = t
        .get(&format!("/api/v1/repositories/{repo}/points?vm=images%2Fweb"))
        .await;
    let point = &points[0]["points"][0];
    assert_eq!(points[0]["vm"], "images/web");
    let all = t.get(&format!("/api/v1/repositories/{repo}/points")).await;
    assert_eq!(all, points, "only web is backed up");
    assert_eq!(point["disks"].as_array().unwrap().len(), 2, "{points}");
    assert_eq!(point["disks"][1]["virtual_size"], 8 << 20);

    // Restore disk 1 (the raw one) as a restore operator: byte-identical; never overwrites.
    let operator = t.user("otto", "restore-operator").await;
    let target = t.path("restored-disk1.raw");
    let request =
        json!({"repository_id": repo, "vm": "images/web", "point": point["id"], "disk": 1, "target_path": target});
    let (status, stats) = t
        .call(Method::POST, "/api/v1/restores", Some(&operator), Some(&request))
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        (stats["format"].as_str(), stats["virtual_size"].as_u64()),
        (Some("raw"), Some(8 << 20))
    );
    let original = std::fs::read(t.path("images/web/disk1.raw")).unwrap();
    assert!(std::fs::read(&target).unwrap() == original, "restored bytes differ");
    let (status, _) = t
        .call(Method::POST, "/api/v1/restores", Some(&operator), Some(&request))
        .await;
    assert_eq!(status, 409);
    let qcow2 = t.path("restored-disk0.qcow2");
    let request =
        json!({"repository_id": repo, "vm": "images/web", "disk": 0, "target_path": qcow2, "format": "qcow2"});
    let (status, stats) = t
        .call(Method::POST, "/api/v1/restores", Some(&operator), Some(&request))
        .await;
    assert_eq!((status, stats["format"].as_str()), (200, Some("qcow2")), "{stats}");
    common::run(
        std::process::Command::new("qemu-img")
            .arg("compare")
            .arg(t.path("images/web/disk0.qcow2"))
            .arg(&qcow2),
    );
    let (status, _) = t
        .call(
            Method::POST,
            "/api/v1/restores",
            Some(&operator),
            Some(&json!({"repository_id": repo, "vm": "images/web", "disk": 7, "target_path": t.path("d7.raw")})),
        )
        .await;
    assert_eq!(status, 404, "no disk 7");

    // Sessions paging and errors.
    let (status, _) = t
        .call(Method::GET, "/api/v1/sessions?limit=0", Some(&t.admin), None)
        .await;
    assert_eq!(status, 400);
    let (status, _) = t
        .call(Method::GET, "/api/v1/sessions?cursor=garbage", Some(&t.admin), None)
        .await;
    assert_eq!(status, 400);
    let (status, _) = t
        .call(Method::GET, "/api/v1/sessions/424242", Some(&t.admin), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = t
        .call(Method::GET, "/api/v1/tasks/424242/log", Some(&t.admin), None)
        .await;
    assert_eq!(status, 404);
    t.stop().await;
}
both_backends!(jobs_validation_versions_run_and_restore);

async fn first_start_prints_the_password_once(backend: Backend) {
    let root = tempfile::tempdir().unwrap();
    let url = common::database_url(backend, "restart").await;
    let options = cairn_server::server::StartOptions { admin_password: None };
    let first = cairn_server::server::start_with(common::config(root.path(), url.clone()), options.clone())
        .await
        .unwrap();
    let banner = first.banner().to_owned();
    assert!(banner.contains(first.url()), "{banner}");
    assert!(
        banner.ends_with(&format!("cairn server listening on {}\n", first.url())),
        "{banner}"
    );
    assert!(banner.contains(&first.ca_path().display().to_string()), "{banner}");
    assert!(
        banner.contains("(this server itself, named after the machine's host name)"),
        "the proxy's name is explained: {banner}"
    );
    assert!(
        banner.contains(&root.path().join("data/secrets").display().to_string()),
        "{banner}"
    );
    let password = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("password:"))
        .expect("a password line")
        .trim()
        .to_owned();
    assert_eq!(password.len(), 32, "{password:?}");
    let ca_before = std::fs::read(first.ca_path()).unwrap();
    let cert_before = std::fs::read(root.path().join("data/server.pem")).unwrap();
    let client = common::client(first.ca_path());
    let login = |base: String, password: String| {
        let client = client.clone();
        async move {
            client
                .post(format!("{base}/api/v1/auth/login"))
                .json(&json!({"user": "admin", "password": password}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(login(first.url().to_owned(), password.clone()).await, 200);
    first.shutdown().await.unwrap();

    // Second start over the same data folder (and database): nothing new, no password.
    let second = cairn_server::server::start_with(common::config(root.path(), url), options)
        .await
        .unwrap();
    let banner = second.banner();
    assert!(!banner.contains("password"), "{banner}");
    assert_eq!(banner, format!("cairn server listening on {}\n", second.url()));
    assert_eq!(std::fs::read(second.ca_path()).unwrap(), ca_before, "CA reused");
    assert_eq!(
        std::fs::read(root.path().join("data/server.pem")).unwrap(),
        cert_before,
        "certificate reused"
    );
    // The old client (trusting the same CA) reaches the new process; the password still works.
    assert_eq!(login(second.url().to_owned(), password).await, 200);
    let state = second.state();
    assert_eq!(state.db.list_users().await.unwrap().len(), 1);
    assert_eq!(state.db.list_repositories().await.unwrap().len(), 1);
    assert_eq!(state.db.list_proxies().await.unwrap().len(), 1);
    second.shutdown().await.unwrap();
}
both_backends!(first_start_prints_the_password_once);
