//! Test helpers: a real server in this process (real TLS, real SQLite or PostgreSQL, real
//! repositories) and a client that trusts only the server's own CA.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_server::ServerConfig;
use cairn_server::server::{RunningServer, StartOptions, start_with};
use cairn_testkit::postgres::fresh_database;
use reqwest::Method;
use serde_json::Value;

/// Password of the first administrator in tests.
pub const ADMIN_PASSWORD: &str = "admin-password-1";

/// Which configuration database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in the data folder.
    Sqlite,
    /// A fresh database on the server in `CAIRN_TEST_POSTGRES_URL`.
    Postgres,
}

/// `None` for SQLite; a URL of a fresh PostgreSQL database of its own otherwise.
pub async fn database_url(backend: Backend, test: &str) -> Option<String> {
    if backend == Backend::Sqlite {
        return None;
    }
    Some(fresh_database(&format!("cairn_api_{test}"), "the server API tests").await)
}

/// The configuration of a test server: data in `root/data`, the default repository in
/// `root/default-repository` (never on another volume of the machine), `root` as the restore
/// folder, a free port on 127.0.0.1.
pub fn config(root: &Path, database_url: Option<String>) -> ServerConfig {
    let mut config = ServerConfig::new(root.join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = database_url;
    config.default_repository = Some(root.join("default-repository"));
    config.time_zone = Some("Europe/Berlin".into());
    // Restores may go anywhere in the test's own folder (never into its data folder).
    config.restore_folders = vec![root.to_path_buf()];
    config
}

/// A client that trusts only `ca_path` (no system roots).
pub fn client(ca_path: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca_path).expect("read ca.pem");
    let ca = reqwest::Certificate::from_pem(&pem).expect("ca.pem is a certificate");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .expect("build client")
}

/// A running server with an administrator's token.
pub struct TestServer {
    /// The server.
    pub server: RunningServer,
    /// Client trusting the server's CA.
    pub client: reqwest::Client,
    /// `https://127.0.0.1:PORT`.
    pub base: String,
    /// Login token of `admin`.
    pub admin: String,
    /// Holds data folder, repositories and images.
    pub root: tempfile::TempDir,
    /// The PostgreSQL database of the server (`None`: SQLite in the data folder).
    pub database_url: Option<String>,
}

impl TestServer {
    /// Starts a server on `backend` with `admin`/[`ADMIN_PASSWORD`] and logs in.
    pub async fn start(backend: Backend, test: &str) -> TestServer {
        let root = tempfile::tempdir().expect("temporary folder");
        let url = database_url(backend, test).await;
        let server = start_with(
            config(root.path(), url.clone()),
            StartOptions {
                admin_password: Some(ADMIN_PASSWORD.into()),
            },
        )
        .await
        .expect("start the server");
        let client = client(server.ca_path());
        let base = server.url().to_owned();
        let mut t = TestServer {
            server,
            client,
            base,
            admin: String::new(),
            root,
            database_url: url,
        };
        t.admin = t.login("admin", ADMIN_PASSWORD).await;
        t
    }

    /// Logs in and returns the token (panics on failure).
    pub async fn login(&self, user: &str, password: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(&serde_json::json!({"user": user, "password": password})),
            )
            .await;
        assert_eq!(status, 200, "login of {user}: {body}");
        body["token"].as_str().expect("token").to_owned()
    }

    /// Sends a request; returns the status and the JSON body (`Null` when empty).
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("response body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("{path}: not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        (status, value)
    }

    /// GET as admin; asserts 200.
    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, Some(&self.admin), None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// POST as admin; returns status and body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(&self.admin), Some(&body)).await
    }

    /// PATCH as admin; returns status and body.
    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::PATCH, path, Some(&self.admin), Some(&body)).await
    }

    /// DELETE as admin; returns status and body.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(Method::DELETE, path, Some(&self.admin), None).await
    }

    /// Creates a user with `role` and returns a login token of theirs.
    pub async fn user(&self, name: &str, role: &str) -> String {
        let password = format!("{name}-password");
        let (status, body) = self
            .post(
                "/api/v1/users",
                serde_json::json!({"name": name, "password": password, "role": role}),
            )
            .await;
        assert_eq!(status, 201, "create user {name}: {body}");
        self.login(name, &password).await
    }

    /// A folder under the test's root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// Shuts the server down.
    pub async fn stop(self) {
        self.server.shutdown().await.expect("shutdown");
    }
}

/// Runs `cmd`, panicking with its output on failure.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An image folder with two VMs: `web` (a sub-folder with a 4 MiB qcow2 and an 8 MiB raw disk)
/// and `db` (`db.img`, 4 MiB raw), each with some bytes written.
pub fn make_images(dir: &Path) {
    let web = dir.join("web");
    std::fs::create_dir_all(&web).unwrap();
    let qcow2 = web.join("disk0.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("4M"));
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 0 128k",
            "-c",
            "write -P 0x5c 1M 64k",
        ])
        .arg(&qcow2));
    let raw = web.join("disk1.raw");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&raw)
        .arg("8M"));
    write_at(&raw, 3 << 20, &[0x42; 70_000]);
    let db = dir.join("db.img");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&db)
        .arg("4M"));
    write_at(&db, 0, b"database bytes at the start of the disk");
}

/// Writes `bytes` at `offset` of an existing file.
pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Defines `mod $name { sqlite, postgres }`, each running `async fn $name(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await;
            }
        }
    };
}

/// The id of VM `name` in a host as the API answers it.
pub fn vm_id(host_answer: &Value, name: &str) -> i64 {
    host_answer["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no VM {name} in {host_answer}"))["id"]
        .as_i64()
        .unwrap()
}

/// The id of the default repository.
pub async fn default_repository(t: &TestServer) -> i64 {
    let repos = t.get("/api/v1/repositories").await;
    repos
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["is_default"] == true)
        .expect("a default repository")["id"]
        .as_i64()
        .unwrap()
}
