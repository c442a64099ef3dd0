//! Backups of running QEMU VMs through the job manager, against a real `qemu-system-x86_64`
//! (no guest OS: guest writes are made with `qemu-io` through the monitor, which writes
//! through the same block layer a guest's writes take).
//!
//! - full, then incremental: the second backup reads only the dirty extents, and each restore
//!   point is the disk as it was at its backup, although the VM kept writing meanwhile;
//! - CBT survives a clean restart of QEMU (persistent bitmap), and after `kill -9` the next
//!   backup reads everything, stores only what changed, and warns naming the likely cause (the
//!   bitmap is missing: QEMU never saved it); the first backup says it is the first;
//! - consistency: a guest agent channel without an agent in the guest, or with its socket held
//!   by another client → crash-consistent with a warning naming that cause;
//!   `require_app_consistency` → the VM fails and nothing is left behind; `offline` pauses and
//!   resumes the VM;
//! - a stopped backup leaves no export, job, scratch node, temporary or new bitmap in QEMU.

mod runner_common;

use std::path::Path;
use std::time::Duration;

use cairn_api::spec::Consistency;
use cairn_configdb::{HostKind, NewHost, SessionState};
use cairn_server::live::{QemuLocation, discover};
use cairn_server::runner::{JobManager, Trigger};
use cairn_testkit::qemu_vm::GuestlessVm;
use runner_common::{Backend, Env, assert_state, image_bytes, qcow2_image, restored};

const MIB: u64 = 1 << 20;

fn manual() -> Trigger {
    Trigger::Manual { user: "admin".into() }
}

/// A guestless VM with one qcow2 disk (`drive0`, virtio) whose QMP socket is `DIR/vms/web01.qmp`,
/// and a guest agent channel on `DIR/vms/web01.qga` that no agent in the guest opens.
struct Vm(GuestlessVm);

impl std::ops::Deref for Vm {
    type Target = GuestlessVm;
    fn deref(&self) -> &GuestlessVm {
        &self.0
    }
}

impl Vm {
    async fn start(dir: &Path, disk: &Path) -> Vm {
        Vm(GuestlessVm::start_web01(&dir.join("vms"), disk, true).await)
    }

    /// A guest write through the block layer.
    async fn write(&self, what: &str) {
        let out = self.0.qemu_io(what).await;
        assert!(!out.to_lowercase().contains("error"), "qemu-io {what}: {out}");
    }

    async fn restart(&mut self, kill: bool) {
        self.0.restart(kill).await;
    }

    /// What cairn may leave in QEMU between backups: nothing but its checkpoint bitmaps.
    async fn assert_clean(&self, checkpoints: usize) {
        let disks = self.assert_no_cairn_objects().await;
        let bitmaps: Vec<&str> = disks[0].bitmaps.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            bitmaps.iter().filter(|b| b.starts_with("cairn-r")).count(),
            checkpoints,
            "checkpoint bitmaps: {bitmaps:?}"
        );
        assert!(
            !bitmaps.iter().any(|b| b.starts_with("cairn-tmp")),
            "temporary bitmaps left: {bitmaps:?}"
        );
        let scratch: Vec<_> = std::fs::read_dir(self.disk.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("view-"))
            .map(|e| e.path())
            .collect();
        assert!(scratch.is_empty(), "scratch files left: {scratch:?}");
    }
}

/// Records the qemu host `kvm01` (the `vms` folder) and its VM in the inventory.
async fn qemu_host(env: &Env) -> (i64, Vec<i64>) {
    let location = QemuLocation {
        qmp: env.dir.path().join("vms"),
        qga: None,
    };
    let host = env
        .db
        .create_host(&NewHost {
            name: "kvm01".into(),
            kind: HostKind::Qemu,
            location: location.to_location(),
        })
        .await
        .unwrap();
    let found = discover(&location).await.expect("discover");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "web01");
    assert_eq!(found[0].disks[0].key, "vblk0");
    let vms = env
        .db
        .sync_host_inventory(host.id, &found, jiff::Timestamp::now())
        .await
        .unwrap();
    (host.id, vms.iter().map(|v| v.id).collect())
}

async fn run_once(env: &Env, manager: &std::sync::Arc<JobManager>, job: i64) -> cairn_configdb::Session {
    let sid = manager.run_job(job, manual()).await.expect("run");
    env.wait_session(sid).await
}

async fn task_read(env: &Env, session: i64) -> (u64, String) {
    let tasks = env.tasks(session).await;
    assert_eq!(tasks.len(), 1);
    let read = tasks[0].statistics["read_bytes"].as_u64().unwrap_or(0);
    (read, env.log_text(tasks[0].id).await)
}

/// Expected guest-visible content: the same writes applied to a fresh image.
fn expected(dir: &Path, writes: &[&str]) -> Vec<u8> {
    let path = dir.join("expected.qcow2");
    let _ = std::fs::remove_file(&path);
    qcow2_image(&path, "64M", writes);
    image_bytes(&path, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_incremental_restart_and_crash() {
    let env = Env::new(Backend::Sqlite, "live_cbt").await;
    let dir = env.dir.path();
    let disk = env.images().join("web01.qcow2");
    let first = ["write -P 0x11 0 16M", "write -P 0x12 40M 4M"];
    qcow2_image(&disk, "64M", &first);
    let mut vm = Vm::start(dir, &disk).await;
    let (_host, vm_ids) = qemu_host(&env).await;
    let repo_row = env.repository("r1", 2, None).await;
    let job = env
        .job("web", vm_ids, repo_row.id, |s| s.consistency = Consistency::Crash)
        .await;
    let manager = env.manager(None);

    // Full: every allocated block, and the point is the disk at the view although the VM writes on.
    let s1 = run_once(&env, &manager, job.id).await;
    assert_state(&env, &s1, SessionState::Success).await;
    let (read1, log1) = task_read(&env, s1.id).await;
    assert_eq!(read1, 20 * MIB, "{log1}");
    assert!(log1.contains("[info] first backup of disk vblk0"), "{log1}");
    assert!(
        !log1.contains("previous restore point"),
        "a first backup has none: {log1}"
    );
    vm.assert_clean(1).await;
    let repo = env.open_repo(&repo_row);
    assert!(restored(&repo, "kvm01/web01", 0, dir) == expected(dir, &first));
    // (The chain reader holds a shared lock: it must be gone before the next backup.)
    let config = {
        let chain = repo.chain("kvm01/web01").unwrap();
        chain
            .point("latest")
            .unwrap()
            .vm_config
            .clone()
            .expect("VM configuration kept")
    };
    assert!(config.to_string().contains("virtio-blk"), "{config}");

    // Incremental: two writes after the first point; only their 1 MiB blocks are read.
    let second = ["write -P 0x21 8M 64k", "write -P 0x22 50M 1M"];
    for w in second {
        vm.write(w).await;
    }
    let s2 = run_once(&env, &manager, job.id).await;
    assert_state(&env, &s2, SessionState::Success).await;
    let (read2, log2) = task_read(&env, s2.id).await;
    assert_eq!(read2, 2 * MIB, "{log2}");
    assert!(log2.contains("dirty extents"), "{log2}");
    vm.assert_clean(1).await;
    let all: Vec<&str> = first.iter().chain(second.iter()).copied().collect();
    assert!(restored(&env.open_repo(&repo_row), "kvm01/web01", 0, dir) == expected(dir, &all));

    // A clean restart of QEMU keeps the persistent bitmap: still incremental.
    vm.restart(false).await;
    vm.write("write -P 0x31 30M 512k").await;
    let s3 = run_once(&env, &manager, job.id).await;
    assert_state(&env, &s3, SessionState::Success).await;
    let (read3, log3) = task_read(&env, s3.id).await;
    assert_eq!(read3, MIB, "{log3}");
    vm.assert_clean(1).await;

    // kill -9: the bitmap made since the restart never reached the image (QEMU saves persistent
    // bitmaps when it closes it): everything is read, only the changed block stored, and the log
    // warns naming the likely cause.
    vm.write("write -P 0x41 60M 256k").await;
    vm.restart(true).await;
    let s4 = run_once(&env, &manager, job.id).await;
    assert_state(&env, &s4, SessionState::Success).await;
    let (read4, log4) = task_read(&env, s4.id).await;
    assert!(read4 >= 20 * MIB, "a full read after a crash: {read4}\n{log4}");
    assert!(
        log4.contains("[warning] changed block tracking of disk vblk0 is lost")
            && log4.contains("is missing")
            && log4.contains("without saving its persistent bitmaps (it was killed"),
        "{log4}"
    );
    let tasks = env.tasks(s4.id).await;
    let new_bytes = tasks[0].statistics["new_bytes"].as_u64().unwrap_or(u64::MAX);
    assert_eq!(
        new_bytes, MIB,
        "only the block written before the crash is new: {}",
        tasks[0].statistics
    );
    vm.assert_clean(1).await;
    let mut all4 = all.clone();
    all4.extend(["write -P 0x31 30M 512k", "write -P 0x41 60M 256k"]);
    assert!(restored(&env.open_repo(&repo_row), "kvm01/web01", 0, dir) == expected(dir, &all4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_fallbacks_and_stop() {
    let env = Env::new(Backend::Sqlite, "live_consistency").await;
    let dir = env.dir.path();
    let disk = env.images().join("web01.qcow2");
    qcow2_image(&disk, "64M", &["write -P 0x11 0 24M"]);
    let vm = Vm::start(dir, &disk).await;
    let (_host, vm_ids) = qemu_host(&env).await;
    let repo_row = env.repository("r1", 2, None).await;
    let manager = env.manager(None);

    // Online with an agent channel but no agent in the guest: crash-consistent, with a warning
    // that says so (at once: QEMU tells that the guest never opened the port).
    let online = env.job("online", vm_ids.clone(), repo_row.id, |_| {}).await;
    let started = std::time::Instant::now();
    let s = run_once(&env, &manager, online.id).await;
    assert_state(&env, &s, SessionState::Warning).await;
    let (_, log) = task_read(&env, s.id).await;
    assert!(
        log.contains("[warning] application-consistent view not possible (the guest agent does not run in the guest")
            && log.contains("crash-consistent"),
        "{log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no wait for an agent that cannot answer: {:?}",
        started.elapsed()
    );
    vm.assert_clean(1).await;

    // The agent's socket held by another client (QEMU serves one at a time): the warning names
    // that cause, not a missing agent.
    let holder = tokio::net::UnixStream::connect(vm.qmp_path.with_extension("qga"))
        .await
        .expect("connect to the agent socket");
    let s = run_once(&env, &manager, online.id).await;
    assert_state(&env, &s, SessionState::Warning).await;
    let (_, log) = task_read(&env, s.id).await;
    assert!(log.contains("is held by another client"), "{log}");
    assert!(!log.contains("has no guest agent"), "{log}");
    drop(holder);
    vm.assert_clean(1).await;

    // Requiring application consistency: the VM fails, nothing is left, the checkpoint stays.
    let strict = env
        .job("strict", vm_ids.clone(), repo_row.id, |s| {
            s.require_app_consistency = true
        })
        .await;
    let s = run_once(&env, &manager, strict.id).await;
    assert_state(&env, &s, SessionState::Failed).await;
    let (_, log) = task_read(&env, s.id).await;
    assert!(log.to_lowercase().contains("agent"), "{log}");
    vm.assert_clean(1).await;

    // Offline: the VM is paused while the view is made, and runs again after.
    let offline = env
        .job("offline", vm_ids.clone(), repo_row.id, |s| {
            s.consistency = Consistency::Offline
        })
        .await;
    let s = run_once(&env, &manager, offline.id).await;
    assert_state(&env, &s, SessionState::Success).await;
    let (_, log) = task_read(&env, s.id).await;
    assert!(log.contains("paused"), "{log}");
    vm.assert_clean(1).await;

    // A stopped backup (slow repository writes) leaves nothing behind, and the next run works.
    let slow = env.repository("slow", 1, Some(2 * MIB)).await;
    let stopped = env
        .job("stopped", vm_ids.clone(), slow.id, |s| {
            s.consistency = Consistency::Crash
        })
        .await;
    let sid = manager.run_job(stopped.id, manual()).await.unwrap();
    env.wait_for("the backup to run", || async {
        let tasks = env.db.list_tasks(sid).await.unwrap();
        tasks.iter().any(|t| t.state == SessionState::Running).then_some(())
    })
    .await;
    manager.stop_session(sid).await.unwrap();
    let s = env.wait_session(sid).await;
    assert_state(&env, &s, SessionState::Stopped).await;
    vm.assert_clean(1).await;
}
