//! The QMP client and QEMU processes against a real `qemu-system-x86_64` (no guest OS, TCG).

mod common;

use std::time::Duration;

use cairn_qemu::process::QemuProcess;
use cairn_qemu::qmp::{Qmp, QmpError, wait_for};
use common::*;

fn pid_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[tokio::test]
async fn commands_errors_events_and_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qmp.sock");
    let vm = start(base_argv(&socket, true), &socket).await;
    let qmp = &vm.qmp;
    assert_eq!((qmp.version().0, qmp.version().1), (7, 2));
    let status = qmp.query_status().await.unwrap();
    assert_eq!((status.status.as_str(), status.running), ("prelaunch", false));

    let err = qmp
        .execute("no-such-command", serde_json::Value::Null)
        .await
        .unwrap_err();
    match &err {
        QmpError::Command { command, class, desc } => {
            assert_eq!(command, "no-such-command");
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("no-such-command"), "{desc}");
        }
        other => panic!("expected a command error, got {other:?}"),
    }
    assert!(err.to_string().contains("no-such-command"));

    // Many commands at once from clones: every reply reaches its caller.
    let mut tasks = Vec::new();
    for i in 0..32 {
        let q = qmp.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                q.query_status().await.map(|s| s.status)
            } else {
                q.qom_get("/machine", "type")
                    .await
                    .map(|v| v.as_str().unwrap_or("").to_owned())
            }
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let answer = t.await.unwrap().unwrap();
        if i % 2 == 0 {
            assert_eq!(answer, "prelaunch");
        } else {
            assert!(answer.starts_with("pc-i440fx-"), "{answer}");
        }
    }

    // Events: subscribe, act, wait.
    let mut events = qmp.events();
    qmp.cont().await.unwrap();
    let resume = wait_for(&mut events, "RESUME", |_| true, TIMEOUT).await.unwrap();
    assert!(resume.timestamp.seconds > 0);
    qmp.stop().await.unwrap();
    let stop = wait_for(&mut events, "STOP", |_| true, TIMEOUT).await.unwrap();
    assert_eq!(stop.event, "STOP");
    let waited = qmp
        .wait_event("RESUME", |_| true, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(waited, QmpError::EventTimeout { .. }), "{waited}");

    // One client per monitor: a second connection gets no greeting.
    let second = Qmp::connect(&socket, Duration::from_millis(500)).await.unwrap_err();
    assert!(second.to_string().contains("another client"), "{second}");
    assert!(second.is_busy(), "{second:?}");
}

#[tokio::test]
async fn timeouts_name_the_command_and_a_dead_qemu_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qmp.sock");
    let mut vm = start(base_argv(&socket, true), &socket).await;
    let pid = vm.process.pid();
    // A frozen QEMU does not answer.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let err = vm
        .qmp
        .execute_timeout("query-status", serde_json::Value::Null, Duration::from_millis(300))
        .await
        .unwrap_err();
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    match &err {
        QmpError::Timeout { command, .. } => assert_eq!(command, "query-status"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The late reply is dropped; the connection goes on.
    assert_eq!(vm.qmp.query_status().await.unwrap().status, "prelaunch");
    assert_eq!(vm.qmp.query_status().await.unwrap().status, "prelaunch");

    let qmp = vm.qmp.clone();
    let pending = tokio::spawn(async move {
        qmp.execute_timeout("query-status", serde_json::Value::Null, Duration::from_secs(60))
            .await
    });
    vm.process.kill().await.unwrap();
    let after = vm.qmp.query_status().await.unwrap_err();
    assert!(after.is_closed(), "{after}");
    // The command in flight either got its answer before the kill or "connection closed".
    if let Err(e) = pending.await.unwrap() {
        assert!(e.is_closed(), "{e}");
    }
    eventually("qmp closed", async || vm.qmp.is_closed()).await;
}

#[tokio::test]
async fn processes_daemonized_quit_and_killed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let pidfile = dir.path().join("d.pid");
    let mut argv = base_argv(&socket, true);
    argv.extend([
        "-daemonize".into(),
        "-pidfile".into(),
        pidfile.to_string_lossy().into_owned(),
    ]);
    let mut daemon = QemuProcess::spawn(&argv, &socket, TIMEOUT).await.unwrap();
    assert!(daemon.is_daemon());
    let pid = daemon.pid();
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), pid.to_string());
    assert!(daemon.is_running());
    daemon.quit(None, TIMEOUT).await.unwrap();
    assert!(!daemon.is_running());
    eventually("daemon gone", async || pid_gone(pid)).await;

    let socket = dir.path().join("c.sock");
    let child = QemuProcess::spawn(&base_argv(&socket, true), &socket, TIMEOUT)
        .await
        .unwrap();
    let pid = child.pid();
    assert!(!pid_gone(pid));
    drop(child);
    eventually("child killed on drop", async || pid_gone(pid)).await;

    // Detached: runs on after the handle is gone.
    let socket = dir.path().join("e.sock");
    let pidfile = dir.path().join("e.pid");
    let mut argv = base_argv(&socket, true);
    argv.extend([
        "-daemonize".into(),
        "-pidfile".into(),
        pidfile.to_string_lossy().into_owned(),
    ]);
    let pid = QemuProcess::spawn(&argv, &socket, TIMEOUT).await.unwrap().detach();
    assert!(!pid_gone(pid), "detached daemon keeps running");
    let qmp = Qmp::connect(&socket, TIMEOUT).await.unwrap();
    qmp.quit().await.unwrap();
    eventually("detached daemon quit", async || pid_gone(pid)).await;

    // A start failure reports QEMU's own words.
    let socket = dir.path().join("f.sock");
    let mut argv = base_argv(&socket, true);
    argv.extend([
        "-drive".into(),
        format!("file={}/missing.qcow2,if=none,id=x", dir.path().display()),
    ]);
    let err = QemuProcess::spawn(&argv, &socket, TIMEOUT).await.unwrap_err();
    assert!(err.to_string().contains("missing.qcow2"), "{err}");
}
