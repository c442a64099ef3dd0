//! The guest agent client's protocol handling against a scripted peer on a socket pair
//! (framing, resync, exec polling, file chunking). The real agent in a real guest is
//! exercised by the guest*.rs end-to-end tests.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cairn_qemu::qga::{AgentError, FreezeStatus, GuestAgent};
use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn connect_skips_stale_replies_left_in_the_channel() {
    let stale = b"{\"return\": 999}\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"old\"}}\n{\"retu";
    let handler: Handler = Arc::new(|command, _| match command {
        "guest-info" => (
            Some(json!({"return": {"version": "7.2.0", "supported_commands": [
                {"name": "guest-ping", "enabled": true, "success-response": true},
                {"name": "guest-exec", "enabled": false, "success-response": true}]}})),
            Duration::ZERO,
        ),
        "guest-fsfreeze-status" => (Some(json!({"return": "frozen"})), Duration::ZERO),
        _ => (Some(json!({"return": {}})), Duration::ZERO),
    });
    let (stream, log) = fake_agent(handler, stale);
    let agent = GuestAgent::from_stream(stream, T);
    agent.sync().await.expect("sync past stale data");
    agent.ping().await.unwrap();
    let info = agent.info().await.unwrap();
    assert_eq!(info.version, "7.2.0");
    assert!(info.supports("guest-ping"));
    assert!(!info.supports("guest-exec"), "disabled commands are not supported");
    assert_eq!(agent.fsfreeze_status().await.unwrap(), FreezeStatus::Frozen);
    assert_eq!(
        log.commands(),
        vec!["guest-ping", "guest-info", "guest-fsfreeze-status"]
    );
}

#[tokio::test]
async fn a_late_reply_is_not_taken_for_the_next_command() {
    let calls = AtomicUsize::new(0);
    let handler: Handler = Arc::new(move |command, _| match command {
        // The first freeze answers after the client gave up.
        "guest-fsfreeze-freeze" if calls.fetch_add(1, Ordering::SeqCst) == 0 => {
            (Some(json!({"return": 111})), Duration::from_millis(600))
        }
        "guest-fsfreeze-freeze" => (Some(json!({"return": 3})), Duration::ZERO),
        "guest-fsfreeze-thaw" => (Some(json!({"return": 3})), Duration::ZERO),
        _ => (Some(json!({"return": {}})), Duration::ZERO),
    });
    let (stream, log) = fake_agent(handler, b"");
    let agent = GuestAgent::from_stream(stream, T);
    let err = agent
        .fsfreeze_freeze_timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    match &err {
        AgentError::Timeout { command, .. } => assert_eq!(command, "guest-fsfreeze-freeze"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The next command resynchronises; the late `111` is dropped.
    assert_eq!(agent.fsfreeze_thaw().await.unwrap(), 3);
    assert_eq!(agent.fsfreeze_freeze().await.unwrap(), 3);
    assert_eq!(
        log.commands(),
        vec!["guest-fsfreeze-freeze", "guest-fsfreeze-thaw", "guest-fsfreeze-freeze"]
    );
}

#[tokio::test]
async fn errors_carry_class_and_description_and_closed_connections_are_reported() {
    let handler: Handler = Arc::new(|_, _| {
        (
            Some(json!({"error": {"class": "GenericError", "desc": "freeze is disabled"}})),
            Duration::ZERO,
        )
    });
    let (stream, _log) = fake_agent(handler, b"");
    let agent = GuestAgent::from_stream(stream, T);
    let err = agent.fsfreeze_freeze().await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Command { command, class, desc }
            if command == "guest-fsfreeze-freeze" && class == "GenericError" && desc == "freeze is disabled"),
        "{err:?}"
    );
    assert!(err.to_string().contains("freeze is disabled"));

    let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
    drop(theirs);
    let agent = GuestAgent::from_stream(ours, T);
    let err = agent.ping().await.unwrap_err();
    assert!(
        matches!(err, AgentError::Closed { .. } | AgentError::Io { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn exec_polls_until_exit_and_decodes_output() {
    let polls = AtomicUsize::new(0);
    let handler: Handler = Arc::new(move |command, _| match command {
        "guest-exec" => (Some(json!({"return": {"pid": 42}})), Duration::ZERO),
        "guest-exec-status" if polls.fetch_add(1, Ordering::SeqCst) < 2 => {
            (Some(json!({"return": {"exited": false}})), Duration::ZERO)
        }
        "guest-exec-status" => (
            Some(json!({"return": {"exited": true, "exitcode": 3,
                "out-data": B64.encode("hello\n"), "err-data": B64.encode("oops")}})),
            Duration::ZERO,
        ),
        _ => (None, Duration::ZERO),
    });
    let (stream, log) = fake_agent(handler, b"");
    let agent = GuestAgent::from_stream(stream, T);
    let out = agent.exec("/usr/bin/env", &["-i", "sh"], Some(b"input")).await.unwrap();
    assert_eq!((out.code, out.signal), (3, None));
    assert!(!out.success());
    assert_eq!(out.stdout, b"hello\n");
    assert_eq!(out.stderr, b"oops");
    let entries = log.0.lock().unwrap().clone();
    let (_, args, _) = &entries[0];
    assert_eq!(args["path"], "/usr/bin/env");
    assert_eq!(args["arg"], json!(["-i", "sh"]));
    assert_eq!(args["capture-output"], true);
    assert_eq!(B64.decode(args["input-data"].as_str().unwrap()).unwrap(), b"input");
    assert_eq!(
        entries
            .iter()
            .filter(|(c, a, _)| c == "guest-exec-status" && a["pid"] == 42)
            .count(),
        3
    );
}

#[tokio::test]
async fn files_are_read_and_written_in_chunks_and_always_closed() {
    let content: Vec<u8> = (0..(5 << 19)).map(|i: u32| (i % 251) as u8).collect(); // 2.5 MiB
    let written = Arc::new(Mutex::new(Vec::new()));
    let read_pos = Arc::new(AtomicUsize::new(0));
    let (w, r, c) = (written.clone(), read_pos.clone(), content.clone());
    let handler: Handler = Arc::new(move |command, args: &Value| {
        let ret = match command {
            "guest-file-open" if args["path"] == "/missing" => {
                return (
                    Some(json!({"error": {"class": "GenericError", "desc": "No such file"}})),
                    Duration::ZERO,
                );
            }
            "guest-file-open" => json!(5),
            "guest-file-write" => {
                let data = B64.decode(args["buf-b64"].as_str().unwrap()).unwrap();
                w.lock().unwrap().extend_from_slice(&data);
                json!({"count": data.len(), "eof": false})
            }
            "guest-file-read" => {
                let start = r.load(Ordering::SeqCst);
                let end = (start + args["count"].as_u64().unwrap() as usize).min(c.len());
                r.store(end, Ordering::SeqCst);
                json!({"count": end - start, "buf-b64": B64.encode(&c[start..end]), "eof": end == c.len()})
            }
            _ => json!({}),
        };
        (Some(json!({"return": ret})), Duration::ZERO)
    });
    let (stream, log) = fake_agent(handler, b"");
    let agent = GuestAgent::from_stream(stream, T);
    agent.write_file("/tmp/x", &content).await.unwrap();
    assert_eq!(*written.lock().unwrap(), content);
    assert_eq!(agent.read_file("/tmp/x").await.unwrap(), content);
    let err = agent.read_file("/missing").await.unwrap_err();
    assert!(err.to_string().contains("No such file"), "{err}");
    let commands = log.commands();
    assert_eq!(
        commands.iter().filter(|c| *c == "guest-file-write").count(),
        3,
        "{commands:?}"
    );
    assert_eq!(
        commands.iter().filter(|c| *c == "guest-file-read").count(),
        3,
        "{commands:?}"
    );
    assert_eq!(
        commands.iter().filter(|c| *c == "guest-file-close").count(),
        2,
        "{commands:?}"
    );
    assert!(commands.contains(&"guest-file-flush".to_string()));
}

#[tokio::test]
async fn shutdown_needs_no_reply() {
    let (stream, log) = fake_agent(Arc::new(|_, _| (None, Duration::ZERO)), b"");
    let agent = GuestAgent::from_stream(stream, T);
    agent.shutdown().await.unwrap();
    let entries = log.0.lock().unwrap().clone();
    assert_eq!(entries[0].0, "guest-shutdown");
    assert_eq!(entries[0].1["mode"], "powerdown");
}

#[tokio::test]
async fn an_agent_channel_without_an_agent_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qmp.sock");
    let qga = dir.path().join("qga.sock");
    let mut argv = base_argv(&socket, true);
    argv.extend(qga_args(&qga));
    let _vm = start(argv, &socket).await;
    let err = GuestAgent::connect(&qga, Duration::from_millis(500)).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Timeout { command, .. } if command == "guest-sync-delimited"),
        "{err:?}"
    );
    let lazy = GuestAgent::open(&qga, Duration::from_millis(300))
        .await
        .expect("the socket itself opens");
    let err = lazy.ping().await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Timeout { command, .. } if command == "guest-ping"),
        "{err:?}"
    );
}
