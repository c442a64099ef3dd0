//! `cairn agent` processes of a test server, and the sessions of the jobs they run.

use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use super::{Server, ok, ok_json};

/// A one-time enrolment token for an agent with `roles`.
pub fn agent_token(srv: &Server, roles: &str) -> String {
    let v = ok_json(srv.cairn(["agent", "token", "--roles", roles, "--json"]));
    v["token"].as_str().expect("token").to_owned()
}

/// Starts `cairn agent` `name` with `roles` and `extra` arguments, enrolled with a new token; its
/// data folder is `TMP/agent-NAME`, its log `TMP/agent-NAME.log`.
pub fn spawn_agent(srv: &Server, name: &str, roles: &str, extra: &[&str]) -> Child {
    let dir = srv.tmp.path().join(format!("agent-{name}"));
    let log = srv.tmp.path().join(format!("agent-{name}.log"));
    let mut cmd: Command = srv.cairn(["agent", "--server", &srv.url, "--name", name]);
    cmd.arg("--token")
        .arg(agent_token(srv, roles))
        .arg("--ca-cert")
        .arg(&srv.ca)
        .arg("--data")
        .arg(&dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("agent log"));
    cmd.spawn().expect("cannot start `cairn agent`")
}

/// Agent `name` as `cairn agent list --json` shows it.
pub fn agent_state(srv: &Server, name: &str) -> Option<Value> {
    let all = ok_json(srv.cairn(["agent", "list", "--json"]));
    all.as_array()?.iter().find(|a| a["name"] == name).cloned()
}

/// What a `cairn job run … --wait` printed, then the whole session with every log line as
/// `cairn session show` prints it; and the session's number.
pub fn job_run_report(srv: &Server, out: &Output) -> (String, String) {
    let mut text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let session = text
        .split("session ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no session number in: {text}"));
    text.push_str(&ok(srv.cairn(["session", "show", &session])));
    (text, session)
}
