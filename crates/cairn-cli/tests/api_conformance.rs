//! The backup server's API against its own OpenAPI document, tried by schemathesis (PyPI): every
//! route with generated good and bad requests, as an administrator. The run fails on any answer
//! of 500 or more, any status or body the document does not describe, a request the document
//! forbids that the server accepts, and a request it allows that the server refuses without a
//! reason of state (401, 403, 404, 409, 429; the exceptions are in `schemathesis.toml`).
//!
//! The server runs as `nobody` in a mount namespace of its own with fresh `/tmp`, `/var/tmp`
//! and `/dev/shm`: generated requests create repositories and hosts at generated paths, and
//! must not leave them on the machine or reach anything `nobody` may not write. Routes that
//! would end the test's own login (log out, password, second factor, the user's own tokens,
//! users) are left out: tests/server_cli.rs and cairn-server's tests/security.rs try them.
//!
//! Needs root, `unshare`, `runuser` and schemathesis (`scripts/test.sh` installs it into
//! `~/.cache/cairn/schemathesis-VERSION`; `CAIRN_SCHEMATHESIS` names another binary). The seed
//! is fixed (`CAIRN_SCHEMATHESIS_SEED` changes it) and the run has a time budget
//! (`CAIRN_SCHEMATHESIS_SECONDS`, default 150).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "conformance-admin-password";

fn schemathesis() -> PathBuf {
    if let Some(bin) = std::env::var_os("CAIRN_SCHEMATHESIS") {
        return PathBuf::from(bin);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let version = include_str!("../../../scripts/schemathesis-version").trim();
    let bin = home.join(format!(".cache/cairn/schemathesis-{version}/bin/schemathesis"));
    assert!(
        bin.exists(),
        "schemathesis is not installed at {}: run scripts/test.sh (it installs schemathesis {version} from PyPI), or \
         set CAIRN_SCHEMATHESIS",
        bin.display()
    );
    bin
}

/// Kills the server's namespace when the test ends.
struct Namespace(std::process::Child);

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Some(group) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl_json(ca: &Path, url: &str, token: Option<&str>, body: &str) -> serde_json::Value {
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail-with-body", "--cacert"])
        .arg(ca)
        .args(["-H", "content-type: application/json", "-d", body]);
    if let Some(t) = token {
        c.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    let out = c.arg(url).output().expect("curl is needed (apt install curl)");
    assert!(out.status.success(), "{url}: {}", String::from_utf8_lossy(&out.stdout));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{url}: {e}"))
}

#[test]
fn the_api_answers_as_its_document_says() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test runs the server as nobody in a mount namespace of its own: it needs root"
    );
    let schemathesis = schemathesis();
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("cairn");
    std::fs::copy(env!("CARGO_BIN_EXE_cairn"), &bin).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Inside the namespace: private /tmp, /var/tmp and /dev/shm; the binary copied in; then the
    // server as nobody on a data folder in the private /tmp.
    let script = format!(
        "set -e; mount -t tmpfs -o mode=1777 cairn-vt /var/tmp; cp {bin} /var/tmp/cairn; chmod 755 /var/tmp/cairn; \
         mount -t tmpfs -o mode=1777 cairn-tmp /tmp; mount -t tmpfs -o mode=1777 cairn-shm /dev/shm; \
         mkdir /tmp/st; chown nobody /tmp/st; \
         exec runuser -u nobody -- env CAIRN_ADMIN_PASSWORD={PASSWORD} /var/tmp/cairn server --data /tmp/st/data \
         --listen 127.0.0.1:{port}",
        bin = bin.display()
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(tmp.path().join("server.stderr")).unwrap())
        .process_group(0)
        .spawn()
        .expect("unshare (util-linux) is needed");
    let stdout = child.stdout.take().unwrap();
    let ns = Namespace(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
        panic!(
            "the server did not start: {}",
            std::fs::read_to_string(tmp.path().join("server.stderr")).unwrap_or_default()
        )
    });
    // The CA, read through the namespace's root.
    let ca = tmp.path().join("ca.pem");
    std::fs::copy(format!("/proc/{}/root/tmp/st/data/ca.pem", ns.0.id()), &ca).unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let login = curl_json(
        &ca,
        &format!("{base}/api/v1/auth/login"),
        None,
        &format!(r#"{{"user": "admin", "password": "{PASSWORD}"}}"#),
    );
    let token = curl_json(
        &ca,
        &format!("{base}/api/v1/tokens"),
        login["token"].as_str(),
        r#"{"description": "schemathesis"}"#,
    )["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let seed = std::env::var("CAIRN_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261207".into());
    let seconds = std::env::var("CAIRN_SCHEMATHESIS_SECONDS").unwrap_or_else(|_| "150".into());
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let started = Instant::now();
    let out = Command::new(&schemathesis)
        .arg("--no-color")
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{base}/api/openapi.json"), "--tls-verify"])
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all"])
        .args([
            "--exclude-checks",
            "ignored_auth,use_after_free,ensure_resource_availability,object_level_authorization",
        ])
        .args([
            "--exclude-path",
            "/api/v1/auth/logout",
            "--exclude-path",
            "/api/v1/auth/password",
        ])
        .args(["--exclude-path-regex", "^/api/v1/auth/totp"])
        .args(["--exclude-path", "/api/v1/tokens/{id}"])
        .args([
            "--exclude-path",
            "/api/v1/users/{id}",
            "--exclude-path",
            "/api/v1/users/{id}/totp",
        ])
        .args([
            // One worker: Python 3.11's `ast` is not safe across threads, and Hypothesis parses
            // lambdas' sources while it generates ("AST constructor recursion depth mismatch").
            "--workers",
            "1",
            "--max-examples",
            "25",
            "--seed",
            &seed,
            "--max-time",
            &seconds,
        ])
        .args(["--output-truncate", "true"])
        .current_dir(tmp.path())
        .output()
        .expect("running schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}\n(schemathesis ran {:.0} s)", started.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "schemathesis found answers the document does not allow (seed {seed}):\n{text}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(tmp.path().join("server.stderr")).unwrap_or_default()
    );
    assert!(text.contains("Tested:"), "schemathesis tested nothing:\n{text}");
    drop(ns);
}
