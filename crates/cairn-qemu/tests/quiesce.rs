//! Consistency modes and their fallbacks against a real QEMU without a guest OS. Where a
//! cooperating agent is needed, a scripted peer stands in for it (protocol order only);
//! the real agent in a real guest is exercised by the guest*.rs end-to-end tests.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_qemu::qga::GuestAgent;
use cairn_qemu::qmp::{QmpEvent, wait_for};
use cairn_qemu::quiesce::{ConsistencyMode, ConsistencyPolicy, snapshot};
use cairn_qemu::view::{self, DiskRequest, ViewRequest};
use cairn_qemu::{Error, Qmp};
use common::*;
use serde_json::json;

fn request(dir: &Path, next: &str) -> ViewRequest {
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    ViewRequest {
        disks: vec![DiskRequest {
            node: "disk0".into(),
            since: None,
            next: next.into(),
            persistent: true,
        }],
        scratch_dir: scratch,
        socket: dir.join("nbd.sock"),
    }
}

fn policy(mode: ConsistencyMode, require_app: bool) -> ConsistencyPolicy {
    ConsistencyPolicy {
        mode,
        require_app,
        freeze_timeout: Duration::from_secs(5),
        ..ConsistencyPolicy::default()
    }
}

async fn vm(dir: &Path, paused: bool, with_qga: bool) -> TestVm {
    let img = dir.join("d0.qcow2");
    qcow2(&img, 16 * MIB, None);
    let socket = dir.join("qmp.sock");
    let mut argv = base_argv(&socket, paused);
    argv.extend(drive_args(&img, "drive0", "disk0"));
    if with_qga {
        argv.extend(qga_args(&dir.join("qga.sock")));
    }
    start(argv, &socket).await
}

fn event_time(ev: &QmpEvent) -> SystemTime {
    UNIX_EPOCH
        + Duration::from_secs(ev.timestamp.seconds as u64)
        + Duration::from_micros(ev.timestamp.microseconds as u64)
}

async fn has_bitmap(qmp: &Qmp, name: &str) -> bool {
    cairn_qemu::disks::list_disks(qmp).await.unwrap()[0]
        .bitmap(name)
        .is_some()
}

#[tokio::test]
async fn online_without_agent_falls_back_and_offline_on_a_paused_vm_does_not_resume_it() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm(dir.path(), true, false).await;
    let qmp = &vm.qmp;

    let prepared = view::prepare(qmp, &request(dir.path(), "cp1")).await.unwrap();
    let (mut live, report) = snapshot(qmp, None, &policy(ConsistencyMode::Online, false), prepared)
        .await
        .unwrap();
    assert_eq!(report.achieved, ConsistencyMode::Crash);
    assert_eq!(report.warnings.len(), 1, "{report:?}");
    assert!(report.warnings[0].contains("no guest agent") && report.warnings[0].contains("crash-consistent"));
    assert_eq!((report.frozen_for, report.paused_for), (Duration::ZERO, Duration::ZERO));
    live.export(qmp).await.unwrap();
    assert_eq!(
        read_export(&live.uri(&live.disks()[0]), dir.path()).len(),
        16 * MIB as usize
    );
    live.finish(qmp, true).await.unwrap();

    let prepared = view::prepare(qmp, &request(dir.path(), "cp2")).await.unwrap();
    let (mut live, report) = snapshot(qmp, None, &policy(ConsistencyMode::Offline, false), prepared)
        .await
        .unwrap();
    assert_eq!(report.achieved, ConsistencyMode::Offline);
    assert!(report.log.iter().any(|l| l.contains("was not running")), "{report:?}");
    assert_eq!(
        qmp.query_status().await.unwrap().status,
        "prelaunch",
        "a paused VM stays paused"
    );
    live.finish(qmp, false).await.unwrap();
}

#[tokio::test]
async fn require_app_without_an_answering_agent_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm(dir.path(), true, true).await;
    let qmp = &vm.qmp;
    let req = request(dir.path(), "cp1");

    let prepared = view::prepare(qmp, &req).await.unwrap();
    let err = snapshot(qmp, None, &policy(ConsistencyMode::Online, true), prepared)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::AppConsistency(cause) if cause.contains("no guest agent")),
        "{err}"
    );
    assert_eq!(cairn_objects(qmp, &[]).await, Vec::<String>::new());
    assert_eq!(files_in(&req.scratch_dir), Vec::<String>::new());
    assert!(!has_bitmap(qmp, "cp1").await);

    // The VM has an agent channel but nothing answers behind it (no guest OS).
    let agent = GuestAgent::open(&dir.path().join("qga.sock"), Duration::from_millis(300))
        .await
        .unwrap();
    let prepared = view::prepare(qmp, &req).await.unwrap();
    let err = snapshot(qmp, Some(&agent), &policy(ConsistencyMode::Offline, true), prepared)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::AppConsistency(cause) if cause.contains("does not answer")),
        "{err}"
    );
    assert_eq!(cairn_objects(qmp, &[]).await, Vec::<String>::new());
    assert_eq!(files_in(&req.scratch_dir), Vec::<String>::new());

    let prepared = view::prepare(qmp, &req).await.unwrap();
    let (mut live, report) = snapshot(qmp, Some(&agent), &policy(ConsistencyMode::Online, false), prepared)
        .await
        .unwrap();
    assert_eq!(report.achieved, ConsistencyMode::Crash);
    assert!(report.warnings[0].contains("does not answer"), "{report:?}");
    live.finish(qmp, true).await.unwrap();
    assert!(has_bitmap(qmp, "cp1").await);
}

#[tokio::test]
async fn offline_pauses_the_running_vm_only_for_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm(dir.path(), false, false).await;
    let qmp = &vm.qmp;
    assert!(qmp.query_status().await.unwrap().running);
    let mut events = qmp.events();
    let prepared = view::prepare(qmp, &request(dir.path(), "cp1")).await.unwrap();
    let (mut live, report) = snapshot(qmp, None, &policy(ConsistencyMode::Offline, false), prepared)
        .await
        .unwrap();
    assert_eq!(report.achieved, ConsistencyMode::Offline);
    assert!(report.paused_for > Duration::ZERO);
    assert!(report.warnings[0].contains("pausing the VM"), "{report:?}");
    assert!(report.log.iter().any(|l| l.contains("VM paused for")), "{report:?}");
    let status = qmp.query_status().await.unwrap();
    assert!(status.running, "running again after the commit: {status:?}");
    let stop = wait_for(&mut events, "STOP", |_| true, TIMEOUT).await.unwrap();
    let created = wait_for(
        &mut events,
        "JOB_STATUS_CHANGE",
        |e| e.data["status"] == "created",
        TIMEOUT,
    )
    .await
    .unwrap();
    let resume = wait_for(&mut events, "RESUME", |_| true, TIMEOUT).await.unwrap();
    assert!(event_time(&stop) <= event_time(&created) && event_time(&created) <= event_time(&resume));
    live.finish(qmp, true).await.unwrap();
}

#[tokio::test]
async fn crash_mode_never_calls_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm(dir.path(), true, false).await;
    let (stream, log) = fake_agent(cooperative_agent(), b"");
    let agent = GuestAgent::from_stream(stream, TIMEOUT);
    let prepared = view::prepare(&vm.qmp, &request(dir.path(), "cp1")).await.unwrap();
    let (mut live, report) = snapshot(&vm.qmp, Some(&agent), &policy(ConsistencyMode::Crash, true), prepared)
        .await
        .unwrap();
    assert_eq!(report.achieved, ConsistencyMode::Crash);
    assert!(report.warnings.is_empty());
    live.finish(&vm.qmp, true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!((log.syncs(), log.commands().len()), (0, 0));
}

#[tokio::test]
async fn online_freezes_only_around_the_commit_and_runs_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm(dir.path(), true, false).await;
    let qmp = &vm.qmp;
    let (stream, log) = fake_agent(cooperative_agent(), b"");
    let agent = GuestAgent::from_stream(stream, TIMEOUT);
    let mut events = qmp.events();
    let prepared = view::prepare(qmp, &request(dir.path(), "cp1")).await.unwrap();
    let mut p = policy(ConsistencyMode::Online, true);
    p.pre_freeze = Some("/etc/cairn/pre".into());
    p.post_thaw = Some("/etc/cairn/post".into());
    let (mut live, report) = snapshot(qmp, Some(&agent), &p, prepared).await.unwrap();
    assert_eq!(report.achieved, ConsistencyMode::Online);
    assert!(report.warnings.is_empty(), "{report:?}");
    assert!(report.frozen_for > Duration::ZERO);
    assert!(
        report.log.iter().any(|l| l.contains("froze 2 guest filesystems")),
        "{report:?}"
    );
    assert_eq!(
        log.commands(),
        vec![
            "guest-ping",
            "guest-fsfreeze-status",
            "guest-exec",
            "guest-exec-status",
            "guest-fsfreeze-freeze",
            "guest-fsfreeze-thaw",
            "guest-exec",
            "guest-exec-status"
        ]
    );
    let execs: Vec<String> = log
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(c, _, _)| c == "guest-exec")
        .map(|(_, a, _)| a["path"].to_string())
        .collect();
    assert_eq!(execs, vec!["\"/etc/cairn/pre\"", "\"/etc/cairn/post\""]);
    // The view's instant (the job's creation) lies between freeze and thaw.
    let created = wait_for(
        &mut events,
        "JOB_STATUS_CHANGE",
        |e| e.data["status"] == "created",
        TIMEOUT,
    )
    .await
    .unwrap();
    let (frozen, thawed) = (
        log.time_of("guest-fsfreeze-freeze").unwrap(),
        log.time_of("guest-fsfreeze-thaw").unwrap(),
    );
    assert!(frozen <= event_time(&created) && event_time(&created) <= thawed);
    live.finish(qmp, true).await.unwrap();
}

#[tokio::test]
async fn a_failed_freeze_is_thawed_and_falls_back_or_fails() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm(dir.path(), true, false).await;
    let qmp = &vm.qmp;
    let failing: Handler = Arc::new(|command, args| match command {
        "guest-fsfreeze-freeze" => (
            Some(json!({"error": {"class": "GenericError", "desc": "fsfreeze hook failed"}})),
            Duration::ZERO,
        ),
        "guest-exec" if args["path"] == "/bad-pre" => (Some(json!({"return": {"pid": 9}})), Duration::ZERO),
        "guest-exec-status" if args["pid"] == 9 => (
            Some(json!({"return": {"exited": true, "exitcode": 1, "err-data": "bm8gZGI="}})),
            Duration::ZERO,
        ),
        _ => cooperative_agent()(command, args),
    });
    let (stream, log) = fake_agent(failing, b"");
    let agent = GuestAgent::from_stream(stream, TIMEOUT);
    let req = request(dir.path(), "cp1");

    let mut p = policy(ConsistencyMode::Online, false);
    p.pre_freeze = Some("/pre".into());
    p.post_thaw = Some("/post".into());
    let prepared = view::prepare(qmp, &req).await.unwrap();
    let (mut live, report) = snapshot(qmp, Some(&agent), &p, prepared).await.unwrap();
    assert_eq!(report.achieved, ConsistencyMode::Crash);
    assert!(
        report.warnings.iter().any(|w| w.contains("fsfreeze hook failed")),
        "{report:?}"
    );
    live.finish(qmp, true).await.unwrap();
    let commands = log.commands();
    let freeze = commands.iter().position(|c| c == "guest-fsfreeze-freeze").unwrap();
    assert_eq!(
        commands[freeze + 1],
        "guest-fsfreeze-thaw",
        "thawed after the failed freeze: {commands:?}"
    );
    assert_eq!(
        commands.iter().filter(|c| *c == "guest-exec").count(),
        2,
        "post-thaw undoes pre-freeze: {commands:?}"
    );

    // With require_app: an error naming the cause, thawed, nothing left.
    let before = log.commands().len();
    let prepared = view::prepare(qmp, &request(dir.path(), "cp2")).await.unwrap();
    let err = snapshot(qmp, Some(&agent), &policy(ConsistencyMode::Online, true), prepared)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fsfreeze hook failed"), "{err}");
    assert_eq!(
        log.commands()[before..],
        [
            "guest-ping",
            "guest-fsfreeze-status",
            "guest-fsfreeze-freeze",
            "guest-fsfreeze-thaw"
        ]
    );
    assert_eq!(cairn_objects(qmp, &["cp1"]).await, Vec::<String>::new());
    assert!(!has_bitmap(qmp, "cp2").await);

    // A failing pre-freeze script: no freeze at all.
    let before = log.commands().len();
    let mut p = policy(ConsistencyMode::Online, true);
    p.pre_freeze = Some("/bad-pre".into());
    let prepared = view::prepare(qmp, &request(dir.path(), "cp2")).await.unwrap();
    let err = snapshot(qmp, Some(&agent), &p, prepared).await.unwrap_err();
    assert!(err.to_string().contains("/bad-pre exited with code 1: no db"), "{err}");
    assert!(
        !log.commands()[before..].iter().any(|c| c == "guest-fsfreeze-freeze"),
        "no freeze after a failed pre-freeze script"
    );
    assert_eq!(files_in(&req.scratch_dir), Vec::<String>::new());
}

#[tokio::test]
async fn a_cancelled_snapshot_still_thaws_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm(dir.path(), true, false).await;
    let qmp = &vm.qmp;
    let slow: Handler = Arc::new(|command, args| match command {
        "guest-fsfreeze-freeze" => (Some(json!({"return": 1})), Duration::from_millis(800)),
        _ => cooperative_agent()(command, args),
    });
    let (stream, log) = fake_agent(slow, b"");
    let agent = GuestAgent::from_stream(stream, TIMEOUT);
    let prepared = view::prepare(qmp, &request(dir.path(), "cp1")).await.unwrap();
    let policy = policy(ConsistencyMode::Online, true);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        snapshot(qmp, Some(&agent), &policy, prepared),
    )
    .await;
    assert!(cancelled.is_err(), "the snapshot was still freezing");
    eventually("thaw from the guard", async || {
        log.commands().contains(&"guest-fsfreeze-thaw".to_string())
    })
    .await;
    // The dropped prepared view left its scratch node: the crash path cleans it.
    let removed = view::cleanup_leftovers(qmp, &[]).await.unwrap();
    assert!(removed.iter().any(|r| r == "node cairn-scratch-0"), "{removed:?}");
    assert_eq!(cairn_objects(qmp, &[]).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_guest_left_frozen_by_an_earlier_run_is_thawed_first() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm(dir.path(), true, false).await;
    let frozen = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let state = frozen.clone();
    let handler: Handler = Arc::new(move |command, args| {
        use std::sync::atomic::Ordering::SeqCst;
        match command {
            "guest-fsfreeze-status" => {
                let s = if state.load(SeqCst) { "frozen" } else { "thawed" };
                (Some(json!({ "return": s })), Duration::ZERO)
            }
            "guest-fsfreeze-thaw" => {
                state.store(false, SeqCst);
                (Some(json!({ "return": 1 })), Duration::ZERO)
            }
            "guest-fsfreeze-freeze" => {
                state.store(true, SeqCst);
                (Some(json!({ "return": 1 })), Duration::ZERO)
            }
            _ => cooperative_agent()(command, args),
        }
    });
    let (stream, log) = fake_agent(handler, b"");
    let agent = GuestAgent::from_stream(stream, TIMEOUT);
    let prepared = view::prepare(&vm.qmp, &request(dir.path(), "cp1")).await.unwrap();
    let (mut live, report) = snapshot(&vm.qmp, Some(&agent), &policy(ConsistencyMode::Online, true), prepared)
        .await
        .unwrap();
    assert_eq!(report.achieved, ConsistencyMode::Online);
    assert!(report.warnings[0].contains("left frozen"), "{report:?}");
    assert_eq!(
        log.commands(),
        [
            "guest-ping",
            "guest-fsfreeze-status",
            "guest-fsfreeze-thaw",
            "guest-fsfreeze-freeze",
            "guest-fsfreeze-thaw"
        ]
    );
    assert!(!frozen.load(std::sync::atomic::Ordering::SeqCst));
    live.finish(&vm.qmp, true).await.unwrap();
}
