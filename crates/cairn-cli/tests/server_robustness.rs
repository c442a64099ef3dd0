//! The backup server killed with SIGKILL in the middle of a session: after a restart the session
//! is failed, the repository is intact and the next run succeeds; schedules missed while it was
//! down run once, not once per missed time. Runs the real `cairn server` binary over HTTPS against
//! SQLite and PostgreSQL.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ADMIN_PASSWORD: &str = "robust-admin-password";

/// A running `cairn server` process.
struct Server {
    child: Child,
    url: String,
    client: reqwest::blocking::Client,
    token: String,
}

impl Server {
    /// Starts `cairn server` on a free port and logs in as admin.
    fn start(data: &Path, extra: &[String]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("server")
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--restore-folder")
            .arg(data.parent().expect("the data folder is in the test's folder"))
            .args(extra)
            .env("CAIRN_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("CAIRN_PASSWORD")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cairn server");
        let stdout = child.stdout.take().expect("server stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("server: {line}");
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(120)).is_err() {
            let _ = child.kill();
            panic!("cairn server did not print its `listening on` line within 120 s");
        }
        let ca = std::fs::read(data.join("ca.pem")).expect("DATA/ca.pem after start");
        let client = reqwest::blocking::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("CA PEM")])
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        let url = format!("https://127.0.0.1:{port}");
        let mut server = Server {
            child,
            url,
            client,
            token: String::new(),
        };
        let login = server.call(
            "POST",
            "/api/v1/auth/login",
            Some(json!({"user": "admin", "password": ADMIN_PASSWORD})),
        );
        server.token = login["token"].as_str().expect("token in login answer").to_string();
        server
    }

    /// Calls the API; panics with the server's answer on a non-2xx status.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.try_call(method, path, body);
        assert!(status.is_success(), "{method} {path}: {status}: {value}");
        value
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> (reqwest::StatusCode, Value) {
        let mut req = self
            .client
            .request(method.parse().expect("method"), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let text = resp.text().expect("response body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// Polls `check` every 100 ms until it returns a value, or fails after `secs`.
    fn wait_for<T>(&self, what: &str, secs: u64, mut check: impl FnMut(&Server) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn session(&self, id: i64) -> Value {
        self.call("GET", &format!("/api/v1/sessions/{id}"), None)
    }

    fn wait_session_end(&self, id: i64) -> Value {
        self.wait_for("the session to end", 300, |s| {
            let v = s.session(id);
            let state = v["session"]["state"].as_str().unwrap_or("").to_string();
            (state != "waiting" && state != "running").then_some(v)
        })
    }

    /// SIGKILL, no chance to clean up.
    fn kill9(mut self) {
        self.child.kill().expect("kill -9 the server");
        let _ = self.child.wait();
    }

    /// SIGTERM and wait.
    fn stop(mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cairn` with `args`, which must succeed.
fn cairn(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env_remove("CAIRN_PASSWORD")
        .output()
        .expect("run cairn");
    assert!(
        out.status.success(),
        "cairn {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A raw disk of `mib` MiB of pseudo-random bytes (incompressible, so a backup takes a while
/// under a write rate limit).
fn random_disk(path: &Path, mib: usize, seed: u64) {
    let mut f = std::fs::File::create(path).expect("create disk");
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).expect("write disk");
    }
}

/// The PostgreSQL URL of a fresh database for one test, from CAIRN_TEST_POSTGRES_URL.
fn postgres_database(name: &str) -> String {
    let admin = std::env::var("CAIRN_TEST_POSTGRES_URL").expect(
        "CAIRN_TEST_POSTGRES_URL is not set: the server tests need PostgreSQL \
         (scripts/test.sh starts one: eval \"$(bash scripts/postgres-for-tests.sh)\")",
    );
    let db = format!("{name}_{}_{}", std::process::id(), rand_suffix());
    let status = Command::new("psql")
        .arg(&admin)
        .arg("-qc")
        .arg(format!("CREATE DATABASE {db}"))
        .status()
        .expect("run psql (Debian package postgresql-client)");
    assert!(status.success(), "psql CREATE DATABASE {db} failed");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{db}")
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64)
}

/// The id of the repository named `name`.
fn repository(server: &Server, name: &str) -> Value {
    let repos = server.call("GET", "/api/v1/repositories", None);
    repos
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no repository {name} in {repos}"))
}

fn kill_mid_session(database: Option<String>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let vms = tmp.path().join("vms");
    std::fs::create_dir_all(vms.join("web")).expect("vm folder");
    random_disk(&vms.join("web/disk0.raw"), 48, 7);
    let mut extra = vec![
        "--default-repository".to_string(),
        tmp.path().join("repo").display().to_string(),
    ];
    if let Some(url) = &database {
        extra.extend(["--database".to_string(), url.clone()]);
    }

    let server = Server::start(&data, &extra);
    let repo = repository(&server, "default");
    let repo_id = repo["id"].as_i64().expect("repository id");
    // 48 MiB of incompressible data at 4 MiB/s: about 12 s, plenty of time to kill it mid-way.
    server.call(
        "PATCH",
        &format!("/api/v1/repositories/{repo_id}"),
        Some(json!({"write_limit_bytes": 4 << 20})),
    );
    let added = server.call(
        "POST",
        "/api/v1/hosts",
        Some(json!({"kind": "image-folder", "path": vms, "name": "folder"})),
    );
    let vm_id = added["vms"][0]["id"].as_i64().expect("a VM found");
    let job = server.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({"name": "nightly", "vm_ids": [vm_id], "repository_id": repo_id, "retries": 0})),
    );
    let job_id = job["id"].as_i64().expect("job id");
    let started = server.call("POST", &format!("/api/v1/jobs/{job_id}/run"), None);
    let session_id = started["session_id"].as_i64().expect("session id");
    server.wait_for("the task to have written data", 120, |s| {
        let v = s.session(session_id);
        let done = v["tasks"][0]["progress"]["done_bytes"].as_u64().unwrap_or(0);
        (done >= 8 << 20).then_some(())
    });
    server.kill9();

    let server = Server::start(&data, &extra);
    let after = server.session(session_id);
    assert_eq!(
        after["session"]["state"], "failed",
        "session after the restart: {after}"
    );
    assert!(after["session"]["ended_at"].is_string(), "ended_at set: {after}");
    for task in after["tasks"].as_array().expect("tasks") {
        assert_eq!(task["state"], "failed", "task after the restart: {task}");
        let log = server.call("GET", &format!("/api/v1/tasks/{}/log", task["id"]), None);
        assert!(
            log.as_array()
                .is_some_and(|l| l.iter().any(|line| line["level"] == "error")),
            "the task log says why it failed: {log}"
        );
    }
    // The repository is intact: a health check passes with the server's own password.
    let password_file = data.join(format!("secrets/repository-{repo_id}.password"));
    let repo_path = repo["path"].as_str().expect("repository path");
    cairn(&[
        "verify",
        "--repo",
        repo_path,
        "--password-file",
        password_file.to_str().expect("utf-8 path"),
    ]);

    // The next run succeeds, and its point restores the disk exactly.
    server.call(
        "PATCH",
        &format!("/api/v1/repositories/{repo_id}"),
        Some(json!({"write_limit_bytes": 0})),
    );
    let again = server.call("POST", &format!("/api/v1/jobs/{job_id}/run"), None);
    let done = server.wait_session_end(again["session_id"].as_i64().expect("session id"));
    assert_eq!(done["session"]["state"], "success", "{done}");
    let restored = tmp.path().join("restored.raw");
    let points = server.call("GET", &format!("/api/v1/repositories/{repo_id}/points"), None);
    let vm_name = points[0]["vm"].as_str().expect("a VM with points").to_string();
    server.call(
        "POST",
        "/api/v1/restores",
        Some(json!({"repository_id": repo_id, "vm": vm_name, "point": "latest", "disk": 0, "target_path": restored})),
    );
    let a = std::fs::read(vms.join("web/disk0.raw")).expect("source");
    let b = std::fs::read(&restored).expect("restored");
    assert!(a == b, "the restored disk differs from the source");
    server.stop();
}

#[test]
fn kill_9_mid_session_sqlite() {
    kill_mid_session(None);
}

#[test]
fn kill_9_mid_session_postgres() {
    kill_mid_session(Some(postgres_database("cairn_robust")));
}

/// Sets a row of the server's `settings` table behind its back (the server is stopped).
fn set_setting(data: &Path, database: Option<&str>, key: &str, value: &str) {
    let sql = format!(
        "INSERT INTO settings (key, value) VALUES ('{key}', '{value}') \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    );
    let status = match database {
        Some(url) => Command::new("psql").arg(url).arg("-qc").arg(&sql).status(),
        None => Command::new("python3")
            .arg("-c")
            .arg("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()")
            .arg(data.join("cairn.db"))
            .arg(&sql)
            .status(),
    }
    .expect("run psql / python3");
    assert!(status.success(), "setting {key} failed");
}

/// The UTC time `secs_ago` seconds ago, formatted by `date +FORMAT`.
fn utc_time(secs_ago: u64, format: &str) -> String {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time after 1970")
        .as_secs()
        - secs_ago;
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{at}"), format])
        .output()
        .expect("run date");
    String::from_utf8(out.stdout).expect("date output").trim().to_string()
}

/// `HH:MM` in UTC, `secs_ago` seconds ago.
fn utc_hh_mm(secs_ago: u64) -> String {
    utc_time(secs_ago, "+%H:%M")
}

fn missed_schedules_run_once(database: Option<String>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let vms = tmp.path().join("vms");
    std::fs::create_dir_all(vms.join("db")).expect("vm folder");
    random_disk(&vms.join("db/disk0.raw"), 2, 11);
    let mut extra = vec![
        "--default-repository".to_string(),
        tmp.path().join("repo").display().to_string(),
    ];
    if let Some(url) = &database {
        extra.extend(["--database".to_string(), url.clone()]);
    }
    let server = Server::start(&data, &extra);
    let repo_id = repository(&server, "default")["id"].as_i64().expect("repository id");
    let added = server.call(
        "POST",
        "/api/v1/hosts",
        Some(json!({"kind": "image-folder", "path": vms, "name": "folder"})),
    );
    let vm_id = added["vms"][0]["id"].as_i64().expect("a VM found");
    // Hourly from 5½ hours ago until half an hour ago (UTC): six runs fall into the five and a
    // half hours of "downtime" below, and none is due while the test runs.
    let schedule = format!(
        "every 1h from {} to {} tz UTC",
        utc_hh_mm(5 * 3600 + 1800),
        utc_hh_mm(1800)
    );
    let job = server.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({"name": "hourly", "vm_ids": [vm_id], "repository_id": repo_id, "schedule": schedule})),
    );
    let job_id = job["id"].as_i64().expect("job id");
    server.kill9();

    // Pretend the server was down for six hours.
    let value = utc_time(6 * 3600, "+%Y-%m-%dT%H:%M:%SZ");
    set_setting(
        &data,
        database.as_deref(),
        &format!("scheduler.last_checked.{job_id}"),
        &value,
    );

    let server = Server::start(&data, &extra);
    let sessions_of_job = |s: &Server| -> Vec<Value> {
        let page = s.call("GET", &format!("/api/v1/sessions?job={job_id}"), None);
        page["sessions"].as_array().cloned().unwrap_or_default()
    };
    let first = server.wait_for("the missed run to start", 60, |s| sessions_of_job(s).into_iter().next());
    let id = first["id"].as_i64().expect("session id");
    let ended = server.wait_session_end(id);
    assert_eq!(ended["session"]["state"], "success", "{ended}");
    // Nothing to poll for when checking that something did not happen: give the scheduler a
    // moment to (wrongly) start further catch-up runs.
    std::thread::sleep(Duration::from_secs(2));
    let all = sessions_of_job(&server);
    assert_eq!(
        all.len(),
        1,
        "six missed runs start one session, not {}: {all:?}",
        all.len()
    );
    assert_eq!(all[0]["statistics"]["trigger"]["kind"], "missed", "{all:?}");
    server.stop();
}

#[test]
fn missed_schedules_run_once_sqlite() {
    missed_schedules_run_once(None);
}

#[test]
fn missed_schedules_run_once_postgres() {
    missed_schedules_run_once(Some(postgres_database("cairn_missed")));
}
