//! End to end with a real Debian guest (scripts/guest-image.sh, booted under TCG) and a real
//! `cairn server`: the guest writes files with known checksums, an online backup freezes it
//! through its agent, more files, an incremental backup reads only the dirty extents, then
//!
//! - `cairn restore vm` brings the VM back as a new QEMU process: the files present at the
//!   backup instant have their checksums, a file written after it is absent, and the guest's
//!   file system mounted without journal recovery or errors (the freeze made it consistent);
//! - `cairn instant-recovery start` boots the first restore point from cairn's NBD export, the
//!   guest agent answers, the guest writes into the copy-on-write scratch, and `migrate` moves
//!   it onto a qcow2 file while it runs (the file passes `qemu-img check` and holds what the
//!   guest wrote); `instant-recovery stop` then only forgets it: the guest runs on;
//! - `cairn restore vm --replace-original` stops the original, puts its disk back to the
//!   restore point, and starts it again.

mod server_common;

#[path = "../../cairn-qemu/tests/common/guest.rs"]
mod guest;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_qemu::process::QemuProcess;
use cairn_qemu::qga::GuestAgent;
use serde_json::Value;
use server_common::*;

/// Opens the guest agent on `socket` and waits until it answers (the VM was started by cairn,
/// so there is no process handle to watch); `serial` is its serial log, shown if it does not.
async fn agent_of(socket: &Path, serial: &Path, what: &str) -> GuestAgent {
    let deadline = Instant::now() + guest::boot_timeout();
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if let Ok(agent) = GuestAgent::open(socket, guest::AGENT_TIMEOUT).await {
            match tokio::time::timeout(Duration::from_secs(3), agent.sync()).await {
                Ok(Ok(())) if agent.ping().await.is_ok() => return agent,
                Ok(Ok(())) => last = "guest-ping failed".into(),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "guest-sync-delimited: no reply".into(),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "{what}: the guest agent on {} did not answer within {:?} ({last})\n{}",
        socket.display(),
        guest::boot_timeout(),
        guest::serial_tail(serial, 40)
    );
}

/// Runs a shell script in the guest; panics with its output when it fails.
async fn sh(agent: &GuestAgent, script: &str) -> String {
    let out = agent
        .exec("/bin/sh", &["-c", script], None)
        .await
        .unwrap_or_else(|e| panic!("guest-exec {script:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.success(),
        "{script:?} failed in the guest: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Writes `mib` MiB of random data to `path` in the guest and returns its SHA-256.
async fn random_file(agent: &GuestAgent, path: &str, mib: u32) -> String {
    let out = sh(
        agent,
        &format!("head -c {mib}M /dev/urandom > {path} && sync && sha256sum {path}"),
    )
    .await;
    out.split_whitespace().next().unwrap_or_default().to_string()
}

async fn checksums(agent: &GuestAgent, files: &BTreeMap<String, String>) {
    for (path, sum) in files {
        let out = sh(agent, &format!("sha256sum {path} 2>/dev/null || echo missing")).await;
        assert_eq!(
            out.split_whitespace().next(),
            Some(sum.as_str()),
            "{path} in the guest: {out}"
        );
    }
}

/// The guest's root file system mounted cleanly: no ext4 errors, no journal replay.
async fn fs_clean(agent: &GuestAgent, what: &str) {
    let dmesg = sh(agent, "dmesg").await;
    let bad: Vec<&str> = dmesg
        .lines()
        .filter(|l| {
            l.contains("EXT4-fs") && (l.contains("error") || l.contains("recovery") || l.contains("recovering"))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: the file system was not clean:\n{}",
        bad.join("\n")
    );
}

fn session_of(run_output: &str) -> Value {
    serde_json::from_str(run_output).unwrap_or_else(|e| panic!("job run --json output {run_output:?}: {e}"))
}

fn task_read_bytes(srv: &Server, session: i64) -> u64 {
    let s = ok_json(srv.cairn(["session", "show", &session.to_string(), "--json"]));
    s["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("session without tasks: {s}"))
        .iter()
        .map(|t| t["statistics"]["read_bytes"].as_u64().unwrap_or(0))
        .sum()
}

fn session_log(srv: &Server, session: i64) -> String {
    ok(srv.cairn(["session", "show", &session.to_string()]))
}

#[test]
fn live_vm_backup_restore_and_instant_recovery() {
    guest::require_tool("qemu-system-x86_64", "qemu-system-x86");
    let image = guest::guest_image();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let srv = Server::start(Backend::Sqlite, "live_vm");
    srv.login_admin();
    let vms = srv.tmp.path().join("vms");
    std::fs::create_dir_all(vms.join("web01")).unwrap();
    let disk = vms.join("web01/disk.qcow2");
    guest::create_overlay(&image, &disk);
    let qmp = vms.join("web01.qmp");
    let qga = vms.join("web01.qga");
    let serial = vms.join("web01.serial.log");
    let args = guest::guest_args(
        &format!("file={},format=qcow2", disk.display()),
        &qmp,
        &qga,
        &serial,
        &["-name".into(), "web01".into()],
    );

    rt.block_on(async {
        let mut original = QemuProcess::spawn(&args, &qmp, Duration::from_secs(60))
            .await
            .expect("start the guest");
        let agent = guest::wait_for_agent(&qga, &mut original, &serial, guest::boot_timeout()).await;
        let mut at_first = BTreeMap::new();
        for i in 0..3 {
            let path = format!("/root/first-{i}.bin");
            let sum = random_file(&agent, &path, 4).await;
            at_first.insert(path, sum);
        }
        // cairn needs the agent's socket for itself (one client at a time).
        drop(agent);

        let added = ok_json({
            let mut c = srv.cairn(["host", "add", "qemu", "--name", "kvm01", "--json", "--qmp"]);
            c.arg(&vms);
            c
        });
        assert_eq!(added["vms"].as_array().map(Vec::len), Some(1), "{added}");
        // The README's example: no --repository, so the server's default one.
        let created = ok(srv.cairn([
            "job",
            "create",
            "web",
            "--vm",
            "web01",
            "--consistency",
            "online",
            "--retain",
            "5",
        ]));
        assert!(created.contains("the server's default repository default"), "{created}");

        // Full, online: the guest is frozen for the view.
        let run1 = session_of(&ok(srv.cairn(["job", "run", "web", "--wait", "--json"])));
        let s1 = run1["session"]["id"].as_i64().expect("session id");
        let log1 = session_log(&srv, s1);
        assert!(log1.contains("froze") || log1.contains("frozen"), "{log1}");
        let full_read = task_read_bytes(&srv, s1);

        // 2 % of the disk changes; the incremental reads about that much.
        let agent = agent_of(&qga, &serial, "original").await;
        let mut at_second = at_first.clone();
        for i in 0..2 {
            let path = format!("/root/second-{i}.bin");
            let sum = random_file(&agent, &path, 10).await;
            at_second.insert(path, sum);
        }
        drop(agent);
        let run2 = session_of(&ok(srv.cairn(["job", "run", "web", "--wait", "--json"])));
        let s2 = run2["session"]["id"].as_i64().expect("session id");
        let incremental_read = task_read_bytes(&srv, s2);
        let log2 = session_log(&srv, s2);
        assert!(log2.contains("dirty extents"), "{log2}");
        assert!(
            incremental_read < 64 << 20 && incremental_read * 4 < full_read,
            "the incremental read {incremental_read} bytes (full: {full_read})\n{log2}"
        );

        // Written after the second point: must not be in any restore.
        let agent = agent_of(&qga, &serial, "original").await;
        let late = random_file(&agent, "/root/late.bin", 1).await;
        assert!(!late.is_empty());
        drop(agent);

        // Whole VM restore beside the original.
        let restored = ok_json(srv.cairn([
            "restore",
            "vm",
            "web01",
            "--name",
            "web01-restored",
            "--accel",
            "tcg",
            "--json",
        ]));
        let rqga = std::path::PathBuf::from(restored["qga"].as_str().expect("restored VM has an agent socket"));
        // Its serial log is beside its disks, not in the host's socket folder.
        let rserial = std::path::PathBuf::from(restored["serial_log"].as_str().expect("a serial log"));
        let rdisk = std::path::PathBuf::from(restored["disks"][0].as_str().expect("a disk"));
        assert_eq!(rserial.parent(), rdisk.parent(), "{restored}");
        assert!(!vms.join("web01-restored.serial.log").exists());
        let ragent = agent_of(&rqga, &rserial, "restored VM").await;
        checksums(&ragent, &at_second).await;
        let late_there = sh(&ragent, "test -e /root/late.bin && echo yes || echo no").await;
        assert_eq!(
            late_there.trim(),
            "no",
            "a file written after the backup is in the restore"
        );
        fs_clean(&ragent, "restored VM").await;
        let _ = ragent.shutdown().await;
        drop(ragent);

        // Instant recovery of the first point, then migration to a qcow2 file while it runs.
        let points = ok_json(srv.cairn(["points", "--repository", "default", "--json"]));
        let first_point = points[0]["points"][0]["id"].as_str().expect("first point").to_string();
        let ir = ok_json(srv.cairn([
            "instant-recovery",
            "start",
            "web01",
            "--point",
            &first_point,
            "--name",
            "web01-ir",
            "--accel",
            "tcg",
            "--json",
        ]));
        let iqga = std::path::PathBuf::from(ir["qga"].as_str().expect("agent socket"));
        let iserial = std::path::PathBuf::from(ir["serial_log"].as_str().expect("a serial log"));
        let iagent = agent_of(&iqga, &iserial, "instant recovery").await;
        checksums(&iagent, &at_first).await;
        let gone = sh(&iagent, "test -e /root/second-0.bin && echo yes || echo no").await;
        assert_eq!(
            gone.trim(),
            "no",
            "the first point must not hold the second point's files"
        );
        let mut written = BTreeMap::new();
        written.insert(
            "/root/during-ir.bin".to_string(),
            random_file(&iagent, "/root/during-ir.bin", 2).await,
        );
        let listed = ok_json(srv.cairn(["instant-recovery", "list", "--json"]));
        assert!(listed[0]["written_bytes"].as_u64().unwrap_or(0) >= 2 << 20, "{listed}");
        let target = srv.tmp.path().join("web01-prod.qcow2");
        // Production files go only beneath the restore folders, never into the data folder.
        for escape in [
            std::path::PathBuf::from("/etc/cairn-test-prod.qcow2"),
            srv.data.join("secrets/prod.qcow2"),
            srv.tmp.path().join("no/../web01-prod.qcow2"),
        ] {
            let mut c = srv.cairn(["instant-recovery", "migrate", "web01-ir", "--to"]);
            c.arg(&escape);
            let out = c.output().expect("cairn instant-recovery migrate");
            assert_eq!(out.status.code(), Some(1), "{}: {out:?}", escape.display());
            assert!(!escape.exists(), "{}", escape.display());
        }
        let migrated = ok({
            let mut c = srv.cairn(["instant-recovery", "migrate", "web01-ir", "--to"]);
            c.arg(&target);
            c
        });
        assert!(migrated.contains("normal VM of host kvm01"), "{migrated}");
        // Still running, now from the production file; stopping the instant recovery only forgets
        // it, and the guest runs on (its serial log too).
        checksums(&iagent, &written).await;
        let forgotten = ok(srv.cairn(["instant-recovery", "stop", "web01-ir"]));
        assert!(forgotten.contains("forgotten"), "{forgotten}");
        sh(&iagent, "sync").await;
        assert!(iserial.exists(), "{}", iserial.display());
        let _ = iagent.shutdown().await;
        drop(iagent);
        guest::host("qemu-img", &["check", "-U", &target.display().to_string()]);

        // Replace the original with the second point.
        ok(srv.cairn(["restore", "vm", "web01", "--replace-original", "--accel", "tcg"]));
        let agent = agent_of(&qga, &vms.join("web01/web01.serial.log"), "replaced original").await;
        checksums(&agent, &at_second).await;
        let late_there = sh(&agent, "test -e /root/late.bin && echo yes || echo no").await;
        assert_eq!(late_there.trim(), "no", "the replaced VM must be at the restore point");
        let _ = agent.shutdown().await;
        let _ = original.kill().await;
    });
}
