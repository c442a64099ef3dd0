//! `cairn agent` against a real `cairn server` process: a one-time token, the agent process
//! enrolling over TLS and sending heartbeats over mutual TLS, a restart that reuses the stored
//! identity, and revocation ending the agent with an error that names it.

mod server_common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use server_common::*;

/// Starts `cmd` as a background agent with its stderr in `log`.
fn spawn_agent(mut cmd: Command, log: &Path) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("agent log file"));
    cmd.spawn().expect("cannot start `cairn agent`")
}

fn agents(srv: &Server) -> Value {
    ok_json(srv.cairn(["agent", "list", "--json"]))
}

/// Waits until `cairn agent list` shows `name` online and heard from after `after` (if given).
fn wait_online(srv: &Server, name: &str, after: Option<&str>) -> Value {
    wait_for(&format!("agent {name} online"), 60, || {
        let all = agents(srv);
        let a = all.as_array()?.iter().find(|a| a["name"] == name)?.clone();
        let seen: jiff::Timestamp = a["last_seen_at"].as_str()?.parse().ok()?;
        let fresh = after.is_none_or(|t| t.parse::<jiff::Timestamp>().is_ok_and(|t| seen > t));
        (a["state"] == "online" && fresh).then_some(a)
    })
}

/// Waits for `child` to exit; returns its exit code.
fn wait_exit(child: &mut Child, what: &str) -> Option<i32> {
    wait_for(what, 60, || child.try_wait().expect("try_wait")).code()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn enrol_heartbeat_restart_revoke(backend: Backend) {
    let srv = Server::start(backend, "agent");
    srv.login_admin();

    let (token, hint) = run_code(
        srv.cairn(["agent", "token", "--roles", "proxy,repository", "--expires", "10m"]),
        0,
    );
    let token = token.trim().to_owned();
    assert!(token.starts_with("cairn_") && token.len() == 70, "{token:?}");
    assert!(
        hint.contains(&format!("cairn agent --server {}", srv.url)) && hint.contains(&token),
        "prints the command to run on the agent host: {hint}"
    );

    // First start, in the form (no `run`): enrols with the token, then heartbeats.
    let dir = srv.tmp.path().join("agent-data");
    let log1 = srv.tmp.path().join("agent1.log");
    let mut cmd = srv.cairn(["agent", "--server", &srv.url, "--token", &token, "--name", "proxy01"]);
    cmd.arg("--ca-cert")
        .arg(&srv.ca)
        .arg("--data")
        .arg(&dir)
        .args(["--max-tasks", "3"])
        // A repository agent listens for data; tests run side by side, so not on the default port.
        .args(["--listen", "127.0.0.1:0"]);
    let mut agent = spawn_agent(cmd, &log1);
    let seen = wait_online(&srv, "proxy01", None);
    assert_eq!(seen["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(seen["max_tasks"], 3);
    assert_eq!(seen["roles"], serde_json::json!(["proxy", "repository"]));
    assert!(seen["free_bytes"].as_u64().is_some_and(|b| b > 0), "{seen}");
    assert_eq!(mode(&dir), 0o700);
    for file in ["agent-key.pem", "agent.pem", "ca.pem", "agent.json"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    assert_eq!(
        std::fs::read(dir.join("ca.pem")).unwrap(),
        std::fs::read(&srv.ca).unwrap(),
        "the server's CA is pinned"
    );
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("agent.json")).unwrap()).unwrap();
    assert_eq!(stored["cert_fingerprint"], seen["cert_fingerprint"]);

    // SIGTERM stops it cleanly.
    rustix::process::kill_process(rustix::process::Pid::from_child(&agent), rustix::process::Signal::TERM).unwrap();
    assert_eq!(wait_exit(&mut agent, "the agent to stop on SIGTERM"), Some(0));
    let text = std::fs::read_to_string(&log1).unwrap();
    assert!(
        text.contains("enrolled as proxy01") && text.contains("SIGTERM"),
        "{text}"
    );

    // The token was used up: a second agent cannot enrol with it.
    let other = srv.tmp.path().join("other-data");
    let mut cmd = srv.cairn([
        "agent", "run", "--server", &srv.url, "--token", &token, "--name", "proxy02",
    ]);
    cmd.arg("--ca-cert").arg(&srv.ca).arg("--data").arg(&other);
    let (_, err) = run_code(cmd, 1);
    assert!(err.contains("enrolment token already used"), "{err}");

    // Restart: no token, no --ca-cert, no --server; the stored identity is used.
    let log2 = srv.tmp.path().join("agent2.log");
    let before = seen["last_seen_at"].as_str().unwrap().to_owned();
    let mut cmd = srv.cairn(["agent", "run", "--listen", "127.0.0.1:0", "--data"]);
    cmd.arg(&dir);
    let mut agent = spawn_agent(cmd, &log2);
    wait_online(&srv, "proxy01", Some(&before));
    assert_eq!(
        agents(&srv).as_array().unwrap().len(),
        1,
        "the same agent, not a new one"
    );

    // Revocation: the running agent is refused at its next heartbeat and exits with an error.
    let (out, _) = run_code(srv.cairn(["agent", "revoke", "proxy01"]), 0);
    assert!(out.contains("revoked agent proxy01"), "{out}");
    let code = wait_exit(&mut agent, "the revoked agent to exit");
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}");
    let text = std::fs::read_to_string(&log2).unwrap();
    assert!(text.contains("proxy01") && text.contains("revoked"), "{text}");
    let all = agents(&srv);
    assert_eq!(all[0]["state"], "revoked");

    // A restart of a revoked agent is refused at once.
    let mut cmd = srv.cairn(["agent", "run", "--data"]);
    cmd.arg(&dir);
    let (_, err) = run_code(cmd, 1);
    assert!(err.contains("revoked"), "{err}");
    // Revoking an unknown agent names it (a usage error: exit code 2).
    let (_, err) = run_code(srv.cairn(["agent", "revoke", "nosuch"]), 2);
    assert!(err.contains("nosuch"), "{err}");
}
both_backends!(enrol_heartbeat_restart_revoke);

#[test]
fn first_start_without_a_token_or_ca_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cairn = || {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("cairn"));
        c.env_remove("CAIRN_SERVER")
            .env_remove("CAIRN_CA_CERT")
            .env_remove("CAIRN_AGENT_TOKEN")
            .env("CAIRN_CONFIG_DIR", tmp.path().join("client"));
        c
    };
    let mut c = cairn();
    c.args(["agent", "run", "--server", "https://127.0.0.1:1", "--data"])
        .arg(tmp.path().join("a"));
    let (_, err) = run_code(c, 2);
    assert!(err.contains("--token"), "{err}");
    let mut c = cairn();
    c.args([
        "agent",
        "--server",
        "https://127.0.0.1:1",
        "--token",
        "cairn_x",
        "--data",
    ])
    .arg(tmp.path().join("a"));
    let (_, err) = run_code(c, 2);
    assert!(err.contains("--ca-cert"), "{err}");
    let mut c = cairn();
    c.args(["agent", "run"]);
    let (_, err) = run_code(c, 2);
    assert!(err.contains("--data"), "{err}");
}
