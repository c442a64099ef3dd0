//! The server's security rules, tried the way an attacker would: restore targets that try to
//! leave the restore folders, paths of administrators, repeated wrong passwords, the second
//! factor, token revocation and the audit log's tamper evidence. Both configuration databases.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::time::{Duration, Instant};

use common::{ADMIN_PASSWORD, Backend, TestServer, make_images};
use reqwest::Method;
use serde_json::{Value, json};

/// Adds the test images as a host, backs up VM `web` into the default repository; returns the
/// repository id.
async fn backed_up(t: &TestServer) -> i64 {
    let images = t.path("images");
    make_images(&images);
    let (status, host) = t
        .post("/api/v1/hosts", json!({"kind": "image-folder", "path": images}))
        .await;
    assert_eq!(status, 201, "{host}");
    let web = host["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web")
        .unwrap()["id"]
        .clone();
    let repos = t.get("/api/v1/repositories").await;
    let repo = repos
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["is_default"] == true)
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let (status, job) = t
        .post(
            "/api/v1/jobs",
            json!({"name": "nightly", "vm_ids": [web], "repository_id": repo}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let (status, started) = t.post(&format!("/api/v1/jobs/{}/run", job["id"]), json!(null)).await;
    assert_eq!(status, 202, "{started}");
    let session = started["session_id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let detail = t.get(&format!("/api/v1/sessions/{session}")).await;
        let state = detail["session"]["state"].as_str().unwrap().to_owned();
        if state == "success" {
            return repo;
        }
        assert!(["waiting", "running"].contains(&state.as_str()), "{detail}");
        assert!(Instant::now() < deadline, "the backup did not end: {detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

async fn restores_stay_beneath_the_restore_folders(backend: Backend) {
    let t = TestServer::start(backend, "confine").await;
    let repo = backed_up(&t).await;
    let operator = t.user("otto", "restore-operator").await;
    // A restore of the backed-up disk to `target` by the operator, with `extra` fields.
    let restore = async |target: Value, extra: Value| {
        let mut body = json!({"repository_id": repo, "vm": "images/web", "disk": 1, "target_path": target});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        t.call(Method::POST, "/api/v1/restores", Some(&operator), Some(&body))
            .await
    };
    let root = t.root.path().to_path_buf();
    let data = root.join("data");
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    symlink(outside.path(), root.join("sub/link")).unwrap();
    std::fs::write(outside.path().join("victim"), b"keep me").unwrap();
    symlink(outside.path().join("victim"), root.join("victim-link")).unwrap();
    std::fs::write(root.join("existing.raw"), b"old").unwrap();

    let refused: Vec<(String, u16, &str)> = vec![
        ("/etc/cron.d/cairn-test".into(), 403, "not beneath an allowed folder"),
        ("/dev/shm/cairn-test".into(), 403, "not beneath an allowed folder"),
        (data.join("secrets/x").display().to_string(), 403, "protected folder"),
        (data.join("cairn.db-new").display().to_string(), 403, "protected folder"),
        (
            root.join("default-repository/x.raw").display().to_string(),
            403,
            "protected folder",
        ),
        (format!("{}/a/b/../x.raw", root.display()), 403, "`..`"),
        (format!("{}/../escape.raw", root.display()), 403, "`..`"),
        ("restored.raw".into(), 422, "absolute"),
        (root.join("sub/link/x.raw").display().to_string(), 403, "symbolic link"),
        (root.join("victim-link").display().to_string(), 409, "already exists"),
        (root.join("existing.raw").display().to_string(), 409, "already exists"),
        (root.join("missing/x.raw").display().to_string(), 404, "does not exist"),
    ];
    for (target, want, says) in &refused {
        let (status, body) = restore(json!(target), json!({})).await;
        assert_eq!(status, *want, "{target}: {body}");
        assert!(error_of(&body).contains(says), "{target}: {body}");
    }
    assert!(!std::path::Path::new("/etc/cron.d/cairn-test").exists());
    assert!(!std::path::Path::new("/dev/shm/cairn-test").exists());
    assert!(!data.join("secrets/x").exists());
    assert_eq!(std::fs::read(outside.path().join("victim")).unwrap(), b"keep me");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    assert_eq!(std::fs::read(root.join("existing.raw")).unwrap(), b"old");

    // Allowed: beneath the folder, 0600 unless asked, byte-identical.
    let original = std::fs::read(t.path("images/web/disk1.raw")).unwrap();
    let target = root.join("sub/restored.raw");
    let (status, body) = restore(json!(target), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o600);
    assert!(std::fs::read(&target).unwrap() == original);
    let shared = root.join("sub/shared.raw");
    let (status, body) = restore(json!(shared), json!({"file_mode": "0640"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(std::fs::metadata(&shared).unwrap().mode() & 0o7777, 0o640);
    let (status, body) = restore(json!(root.join("sub/setuid.raw")), json!({"file_mode": "4755"})).await;
    assert_eq!(status, 422, "{body}");
    assert!(!root.join("sub/setuid.raw").exists());

    // A whole-VM restore's folder is held to the same rules (refused before anything is read).
    for folder in ["/etc/cairn-vm".to_string(), data.join("vm").display().to_string()] {
        let (status, body) = t
            .call(
                Method::POST,
                "/api/v1/restores/vm",
                Some(&operator),
                Some(&json!({"repository_id": repo, "vm": "images/web", "folder": folder})),
            )
            .await;
        assert_eq!(status, 403, "{folder}: {body}");
        assert!(!std::path::Path::new(&folder).exists(), "{folder}");
    }

    // Only administrators set the restore folders, and only to sound folders.
    let (status, _) = t
        .call(
            Method::PATCH,
            "/api/v1/settings",
            Some(&operator),
            Some(&json!({"restore_folders": ["/"]})),
        )
        .await;
    assert_eq!(status, 403);
    let open = root.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    for (folders, want, says) in [
        (json!(["relative/folder"]), 422, "absolute"),
        (json!([root.join("nope")]), 404, "does not exist"),
        (json!([data.clone()]), 403, "protected"),
        (json!([data.join("secrets")]), 403, "protected"),
        (json!([open]), 403, "writable by other users"),
        (json!([format!("{}/sub/../sub", root.display())]), 403, "`..`"),
    ] {
        let (status, body) = t.patch("/api/v1/settings", json!({ "restore_folders": folders })).await;
        assert_eq!(status, want, "{folders}: {body}");
        assert!(error_of(&body).contains(says), "{folders}: {body}");
    }
    let only = root.join("only-here");
    std::fs::create_dir(&only).unwrap();
    let (status, body) = t.patch("/api/v1/settings", json!({ "restore_folders": [only] })).await;
    assert_eq!(
        (status, body["restore_folders"].clone()),
        (200, json!([only])),
        "{body}"
    );
    let (status, body) = restore(json!(root.join("sub/again.raw")), json!({})).await;
    assert_eq!(status, 403, "the old folder is not allowed any more: {body}");
    let (status, body) = restore(json!(only.join("again.raw")), json!({})).await;
    assert_eq!(status, 200, "{body}");
    t.stop().await;
}
both_backends!(restores_stay_beneath_the_restore_folders);

async fn folders_administrators_name_are_checked(backend: Backend) {
    let t = TestServer::start(backend, "adminpaths").await;
    let data = t.path("data");
    let file = t.path("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    for (path, want, says) in [
        (file.display().to_string(), 409, "not a folder"),
        (
            data.join("repo").display().to_string(),
            403,
            "inside the server's data folder",
        ),
        (data.display().to_string(), 403, "inside the server's data folder"),
        (
            t.root.path().display().to_string(),
            403,
            "contains the server's data folder",
        ),
        (format!("{}/x/../repo", t.root.path().display()), 403, "`..`"),
        ("relative/repo".to_string(), 422, "absolute"),
    ] {
        let (status, body) = t.post("/api/v1/repositories", json!({"name": "r", "path": path})).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(error_of(&body).contains(says), "{path}: {body}");
    }
    assert!(!data.join("repo").exists());
    for path in [data.clone(), data.join("secrets"), t.root.path().to_path_buf()] {
        let (status, body) = t
            .post("/api/v1/hosts", json!({"kind": "image-folder", "path": path}))
            .await;
        assert_eq!(status, 403, "{}: {body}", path.display());
    }
    let (status, body) = t
        .post("/api/v1/hosts", json!({"kind": "qemu", "path": data.join("x.qmp")}))
        .await;
    assert_eq!(status, 403, "{body}");
    t.stop().await;
}
both_backends!(folders_administrators_name_are_checked);

async fn login(t: &TestServer, user: &str, password: &str, code: Option<&str>) -> (u16, Value) {
    let mut body = json!({"user": user, "password": password});
    if let Some(code) = code {
        body["code"] = json!(code);
    }
    t.call(Method::POST, "/api/v1/auth/login", None, Some(&body)).await
}

async fn audit(t: &TestServer, query: &str) -> Vec<Value> {
    t.get(&format!("/api/v1/audit{query}"))
        .await
        .as_array()
        .unwrap()
        .clone()
}

async fn wrong_passwords_are_throttled_and_logged(backend: Backend) {
    let t = TestServer::start(backend, "throttle").await;
    t.user("ann", "viewer").await;
    for i in 1..=6 {
        let (status, body) = login(&t, "ann", "guess", None).await;
        assert_eq!(status, 401, "attempt {i}: {body}");
        assert_eq!(error_of(&body), "wrong user name or password");
    }
    // Locked now: not even the right password is checked.
    let resp = t
        .client
        .post(format!("{}/api/v1/auth/login", t.base))
        .json(&json!({"user": "ann", "password": "ann-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "login_locked", "{body}");
    assert!(error_of(&body).contains("user ann from 127.0.0.1"), "{body}");
    // Another user from the same address is not locked by ann's failures.
    let (status, _) = login(&t, "admin", ADMIN_PASSWORD, None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(retry * 1000 + 100)).await;
    let (status, body) = login(&t, "ann", "ann-password", None).await;
    assert_eq!(status, 200, "after the lock: {body}");

    // Every failure is in the audit log with its user and address; the refusals while locked are not.
    let entries = audit(&t, "?user=ann").await;
    let failed: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "login" && e["outcome"].as_str().unwrap().starts_with("failed: 401"))
        .collect();
    assert_eq!(failed.len(), 6, "{entries:#?}");
    assert!(failed.iter().all(|e| e["address"] == "127.0.0.1"));
    assert!(!entries.iter().any(|e| e["outcome"].as_str().unwrap().contains("429")));
    assert!(
        entries.iter().any(|e| e["action"] == "login" && e["outcome"] == "ok"),
        "{entries:#?}"
    );
    t.stop().await;
}
both_backends!(wrong_passwords_are_throttled_and_logged);

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn a_second_factor_guards_logins(backend: Backend) {
    use cairn_server::auth::totp::code_at;
    let t = TestServer::start(backend, "totp").await;
    let ann = t.user("ann", "restore-operator").await;
    let (status, setup) = t.call(Method::POST, "/api/v1/auth/totp", Some(&ann), None).await;
    assert_eq!(status, 200, "{setup}");
    let secret = setup["secret"].as_str().unwrap().to_owned();
    assert!(
        setup["otpauth_url"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/cairn:ann?")
    );
    // Not in force before it is confirmed.
    let (status, _) = login(&t, "ann", "ann-password", None).await;
    assert_eq!(status, 200);
    let (status, body) = t
        .call(
            Method::POST,
            "/api/v1/auth/totp/confirm",
            Some(&ann),
            Some(&json!({"code": "000000"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let now = now_secs();
    let first = code_at(&secret, now - 30).unwrap();
    let (status, body) = t
        .call(
            Method::POST,
            "/api/v1/auth/totp/confirm",
            Some(&ann),
            Some(&json!({"code": first})),
        )
        .await;
    assert_eq!((status, body["enabled"].as_bool()), (200, Some(true)), "{body}");

    let (status, body) = login(&t, "ann", "ann-password", None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("totp_required")), "{body}");
    let (status, body) = login(&t, "ann", "ann-password", Some(&first)).await;
    assert_eq!(status, 401, "a used code is refused: {body}");
    let current = code_at(&secret, now).unwrap();
    let (status, body) = login(&t, "ann", "wrong-password", Some(&current)).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = login(&t, "ann", "ann-password", Some(&current)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = login(&t, "ann", "ann-password", Some(&current)).await;
    assert_eq!(status, 401, "the same code twice");

    // An administrator resets it (a lost phone): the user's logins end, no code is needed.
    let (status, _) = t.call(Method::GET, "/api/v1/auth/whoami", Some(&ann), None).await;
    assert_eq!(status, 200);
    let ann_id = t
        .get("/api/v1/users")
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "ann")
        .unwrap()["id"]
        .clone();
    let (status, _) = t.delete(&format!("/api/v1/users/{ann_id}/totp")).await;
    assert_eq!(status, 204);
    let (status, _) = t.call(Method::GET, "/api/v1/auth/whoami", Some(&ann), None).await;
    assert_eq!(status, 401, "the reset revoked ann's login tokens");
    let (status, _) = login(&t, "ann", "ann-password", None).await;
    assert_eq!(status, 200);

    // Required for administrators: one without a second factor can only set it up.
    let (status, body) = t
        .patch("/api/v1/settings", json!({"require_totp_for_administrators": true}))
        .await;
    assert_eq!(
        (status, body["require_totp_for_administrators"].as_bool()),
        (200, Some(true))
    );
    let (status, body) = login(&t, "admin", ADMIN_PASSWORD, None).await;
    assert_eq!(
        (status, body["totp_setup_required"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let limited = body["token"].as_str().unwrap().to_owned();
    let (status, body) = t.call(Method::GET, "/api/v1/jobs", Some(&limited), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("totp_setup_required")),
        "{body}"
    );
    let (status, setup) = t.call(Method::POST, "/api/v1/auth/totp", Some(&limited), None).await;
    assert_eq!(status, 200, "{setup}");
    let secret = setup["secret"].as_str().unwrap().to_owned();
    let code = code_at(&secret, now_secs()).unwrap();
    let (status, body) = t
        .call(
            Method::POST,
            "/api/v1/auth/totp/confirm",
            Some(&limited),
            Some(&json!({"code": code})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let full = body["login"]["token"].as_str().unwrap().to_owned();
    let (status, _) = t.call(Method::GET, "/api/v1/jobs", Some(&full), None).await;
    assert_eq!(status, 200);
    let (status, _) = t.call(Method::GET, "/api/v1/auth/whoami", Some(&limited), None).await;
    assert_eq!(status, 401, "the setup token ends with the setup");
    // While required, an administrator cannot drop it.
    let next = code_at(&secret, now_secs() + 30).unwrap();
    let (status, body) = t
        .call(
            Method::POST,
            "/api/v1/auth/totp/disable",
            Some(&full),
            Some(&json!({"code": next})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    t.stop().await;
}
both_backends!(a_second_factor_guards_logins);

async fn password_changes_and_removals_revoke_tokens(backend: Backend) {
    let t = TestServer::start(backend, "revoke").await;
    let first = t.user("bob", "viewer").await;
    let second = t.login("bob", "bob-password").await;
    let (status, api) = t
        .call(Method::POST, "/api/v1/tokens", Some(&first), Some(&json!({})))
        .await;
    assert_eq!(status, 201);
    let api = api["token"].as_str().unwrap().to_owned();
    let whoami = |token: String| {
        let t = &t;
        async move { t.call(Method::GET, "/api/v1/auth/whoami", Some(&token), None).await.0 }
    };
    let mut body = Value::Null;
    for (current, new, want) in [
        ("wrong", "bob-new-password", 401),
        ("bob-password", "short", 422),
        ("bob-password", "bob-new-password", 200),
    ] {
        let change = json!({"current_password": current, "new_password": new});
        let status;
        (status, body) = t
            .call(Method::POST, "/api/v1/auth/password", Some(&first), Some(&change))
            .await;
        assert_eq!(status, want, "{change}: {body}");
    }
    let fresh = body["token"].as_str().unwrap().to_owned();
    assert_eq!(whoami(first.clone()).await, 401, "the login token used for the change");
    assert_eq!(whoami(second.clone()).await, 401, "another login of the user");
    assert_eq!(whoami(api.clone()).await, 200, "API tokens are for scripts: they stay");
    assert_eq!(whoami(fresh.clone()).await, 200);
    let (status, _) = login(&t, "bob", "bob-password", None).await;
    assert_eq!(status, 401);

    // An administrator's new password for bob ends bob's logins too.
    let bob_id = t
        .get("/api/v1/users")
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "bob")
        .unwrap()["id"]
        .clone();
    let (status, _) = t
        .patch(&format!("/api/v1/users/{bob_id}"), json!({"password": "set-by-admin"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(whoami(fresh).await, 401);
    // Removing the user ends every token, API tokens too.
    let (status, _) = t.delete(&format!("/api/v1/users/{bob_id}")).await;
    assert_eq!(status, 204);
    assert_eq!(whoami(api).await, 401);
    t.stop().await;
}
both_backends!(password_changes_and_removals_revoke_tokens);

/// Runs `sql` on the server's configuration database directly (what someone with access to the
/// database could do behind the server's back).
async fn tamper(t: &TestServer, sql: &str) -> Result<(), String> {
    use sqlx::{AssertSqlSafe, Connection};
    match &t.database_url {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.map_err(|e| e.to_string())?;
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        None => {
            let path = t.path("data/cairn.db");
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .map_err(|e| e.to_string())?;
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

async fn the_audit_log_records_changes_and_shows_tampering(backend: Backend) {
    let t = TestServer::start(backend, "audit").await;
    let repo = backed_up(&t).await;
    let operator = t.user("otto", "restore-operator").await;
    let target = t.path("audited.raw");
    let (status, _) = t
        .call(
            Method::POST,
            "/api/v1/restores",
            Some(&operator),
            Some(&json!({"repository_id": repo, "vm": "images/web", "disk": 1, "target_path": target})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = t
        .call(
            Method::POST,
            "/api/v1/restores",
            Some(&operator),
            Some(&json!({"repository_id": repo, "vm": "images/web", "disk": 1, "target_path": "/etc/x"})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = t.post("/api/v1/agents/tokens", json!({"roles": ["proxy"]})).await;
    assert_eq!(status, 201);
    let (status, _) = t.call(Method::GET, "/api/v1/audit", Some(&operator), None).await;
    assert_eq!(status, 403, "only administrators read the audit log");

    let entries = audit(&t, "").await;
    let actions: Vec<&str> = entries.iter().rev().map(|e| e["action"].as_str().unwrap()).collect();
    for wanted in [
        "login",
        "host.add",
        "job.create",
        "job.run",
        "user.create",
        "restore.disk",
        "agent.token.create",
    ] {
        assert!(actions.contains(&wanted), "{wanted} missing from {actions:?}");
    }
    let restores: Vec<&Value> = entries.iter().filter(|e| e["action"] == "restore.disk").collect();
    assert_eq!(restores.len(), 2);
    assert_eq!(restores[1]["user"], "otto");
    assert_eq!(restores[1]["outcome"], "ok");
    assert_eq!(restores[1]["details"]["target_path"], json!(target));
    assert!(
        restores[0]["outcome"].as_str().unwrap().starts_with("failed: 403"),
        "{:?}",
        restores[0]
    );
    assert_eq!(restores[0]["details"]["target_path"], "/etc/x");
    let run = entries.iter().find(|e| e["action"] == "job.run").unwrap();
    assert_eq!(
        (run["user"].as_str(), run["target"].as_str()),
        (Some("admin"), Some("job 1 (nightly)")),
        "{run}"
    );
    assert!(
        entries.windows(2).all(|w| w[0]["id"].as_i64() > w[1]["id"].as_i64()),
        "newest first"
    );
    let only_otto = audit(&t, "?user=otto").await;
    assert!(only_otto.iter().all(|e| e["user"] == "otto") && !only_otto.is_empty());
    let page = audit(&t, &format!("?limit=2&before={}", entries[0]["id"])).await;
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["id"], entries[1]["id"]);
    let future = audit(&t, "?since=2999-01-01T00:00:00Z").await;
    assert!(future.is_empty());
    let report = t.get("/api/v1/audit/verify").await;
    assert_eq!(report["intact"], true, "{report}");
    assert!(report["entries"].as_u64().unwrap() >= entries.len() as u64);

    // The database refuses changes to the log.
    let err = tamper(&t, "UPDATE audit_log SET user_name = 'nobody' WHERE id = 1")
        .await
        .unwrap_err();
    assert!(err.contains("append-only"), "{err}");
    let err = tamper(&t, "DELETE FROM audit_log WHERE id = 1").await.unwrap_err();
    assert!(err.contains("append-only"), "{err}");
    // Behind the triggers' back: the chain shows it.
    let drop = if t.database_url.is_some() {
        "DROP TRIGGER audit_log_no_change ON audit_log"
    } else {
        "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete"
    };
    tamper(&t, drop).await.unwrap();
    let last = t.get("/api/v1/audit?limit=1").await[0]["id"].as_i64().unwrap();
    tamper(&t, &format!("DELETE FROM audit_log WHERE id = {last}"))
        .await
        .unwrap();
    let report = t.get("/api/v1/audit/verify").await;
    assert_eq!(report["intact"], false, "{report}");
    assert!(
        report["problem"].as_str().unwrap().contains("removed from the end"),
        "{report}"
    );
    tamper(&t, "UPDATE audit_log SET target = 'something else' WHERE id = 3")
        .await
        .unwrap();
    let report = t.get("/api/v1/audit/verify").await;
    assert_eq!(
        report["problem"], "entry 3 was changed after it was written",
        "{report}"
    );
    tamper(&t, "DELETE FROM audit_log WHERE id = 2").await.unwrap();
    let report = t.get("/api/v1/audit/verify").await;
    assert!(
        report["problem"]
            .as_str()
            .unwrap()
            .contains("entries 2 to 2 are missing"),
        "{report}"
    );
    t.stop().await;
}
both_backends!(the_audit_log_records_changes_and_shows_tampering);

async fn the_data_folder_is_private(backend: Backend) {
    let t = TestServer::start(backend, "modes").await;
    backed_up(&t).await;
    let (status, _) = t.post("/api/v1/agents/tokens", json!({"roles": ["proxy"]})).await;
    assert_eq!(status, 201);
    let mut pending = vec![t.path("data")];
    let mut seen = 0;
    while let Some(p) = pending.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(
            meta.mode() & 0o077,
            0,
            "{} is mode {:o}",
            p.display(),
            meta.mode() & 0o7777
        );
        seen += 1;
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(seen >= 8, "only {seen} entries in the data folder");
    t.stop().await;
}
both_backends!(the_data_folder_is_private);

async fn refusals_over_http2_are_clean_answers(backend: Backend) {
    // curl, not reqwest: hyper's client quietly accepts a stream reset after the answer, curl
    // reports it ("Stream error in the HTTP/2 framing layer") as users of the API saw.
    let t = TestServer::start(backend, "http2").await;
    let body_file = t.path("body.json");
    std::fs::write(
        &body_file,
        format!("{{\"name\": \"x\", \"path\": \"{}\"}}", "a".repeat(300 << 10)),
    )
    .unwrap();
    let huge_file = t.path("huge.json");
    std::fs::write(&huge_file, "b".repeat(3 << 20)).unwrap();
    let curl = |token: Option<&str>, body: &std::path::Path| {
        let mut c = std::process::Command::new("curl");
        c.args([
            "-sS",
            "--http2",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{http_version}",
            "-X",
            "POST",
        ])
        .args(["-H", "content-type: application/json", "--cacert"])
        .arg(t.server.ca_path())
        .arg("--data-binary")
        .arg(format!("@{}", body.display()));
        if let Some(token) = token {
            c.args(["-H", &format!("authorization: Bearer {token}")]);
        }
        let out = c
            .arg(format!("{}/api/v1/repositories", t.base))
            .output()
            .expect("curl is needed for this test (apt install curl)");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for i in 0..30 {
        let (code, out, err) = curl(None, &body_file);
        assert_eq!(code, Some(0), "request {i}: curl failed: {err}");
        assert!(out.ends_with("401 2"), "request {i}: {out}");
        assert!(out.contains("no token"), "request {i}: {out}");
    }
    let (code, out, err) = curl(Some(&t.admin), &huge_file);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.ends_with("413 2"), "{out}");
    t.stop().await;
}
both_backends!(refusals_over_http2_are_clean_answers);
