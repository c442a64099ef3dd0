//! End-to-end tests with a real Debian guest under TCG (image from scripts/guest-image.sh,
//! cached outside the clone): the guest agent in a real guest, files with known checksums,
//! fsfreeze/thaw that really blocks writers, an online `quiesce::snapshot` with pre-freeze
//! and post-thaw scripts whose NBD view is a clean, point-in-time filesystem, and a clean
//! shutdown through the agent. One boot is shared (boots are slow under TCG).

#[path = "common/guest.rs"]
mod guest;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use cairn_qemu::disks::list_disks;
use cairn_qemu::process::QemuProcess;
use cairn_qemu::qga::{FreezeStatus, GuestAgent};
use cairn_qemu::quiesce::{ConsistencyMode, ConsistencyPolicy, snapshot};
use cairn_qemu::view::{self, DiskRequest, LiveView, ViewRequest};
use guest::*;
use serde_json::json;

const GIB: u64 = 1 << 30;

/// One guest at a time: two TCG guests on a small machine slow each other down.
static GUESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A guest writer: appends to a file in a loop (until /root/ticker.stop exists) and logs the
/// guest's uptime around each write (shell builtins only, no forks in the loop), so a write
/// blocked by a freeze shows as a step in the logged uptimes.
const WRITER: &str = "i=0; while [ $i -lt 200000 ] && [ ! -e /root/ticker.stop ]; do \
    read t0 rest < /proc/uptime; echo $i >> /root/ticker.data; read t1 rest < /proc/uptime; \
    echo \"$t0 $t1\" >> /root/ticker.log; i=$((i+1)); done";

/// A child process killed (and reaped) when dropped, also when the test panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The image is a 1 GiB qcow2 v3 with compressed clusters, stamped with the script's hash,
/// and a second run of the script reuses it.
#[test]
fn guest_image_is_cached_qcow2_v3() {
    require_tool("qemu-img", "qemu-utils");
    let image = guest_image();
    let info = image_info(&image);
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["virtual-size"].as_u64(), Some(GIB), "{info}");
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1", "{info}");
    let allocated = info["actual-size"].as_u64().unwrap_or(0);
    assert!(
        allocated > 0 && allocated < 256 << 20,
        "the image allocates {allocated} bytes (expected under 256 MiB)"
    );
    eprintln!(
        "guest image {}: virtual {} MiB, allocated {:.1} MiB",
        image.display(),
        GIB >> 20,
        allocated as f64 / (1 << 20) as f64
    );

    if std::env::var_os("CAIRN_GUEST_IMAGE").is_none() {
        let script = workspace_root().join("scripts/guest-image.sh");
        let stamp = std::fs::read_to_string(format!("{}.sha256", image.display())).expect("hash stamp next to image");
        let script_hash = host("sha256sum", &[script.to_str().unwrap()]);
        assert_eq!(stamp.trim(), script_hash.split_whitespace().next().unwrap());
        let before = mtime(&image);
        let started = Instant::now();
        let again = host("bash", &[script.to_str().unwrap()]);
        assert_eq!(
            again.trim(),
            image.to_str().unwrap(),
            "the script prints the cached path"
        );
        assert_eq!(mtime(&image), before, "a cached image is not rebuilt");
        eprintln!("cached image lookup took {:.2} s", started.elapsed().as_secs_f64());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_agent_freeze_and_online_snapshot() {
    let _one_guest = GUESTS.lock().await;
    require_tool("qemu-img", "qemu-utils");
    require_tool("sha256sum", "coreutils");
    let image = guest_image();
    let image_mtime = mtime(&image);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();

    // Boot on an overlay; the cached image stays untouched.
    let guest = Guest::boot(&dir.join("vm"), &image, &[]).await;
    eprintln!("boot to first guest-ping: {:.1} s", guest.boot_time.as_secs_f64());
    let agent = guest.agent().clone();

    // The agent and the guest as the tests expect them.
    check_agent_and_guest(&guest, &agent).await;
    // Files with known checksums: through guest-file-write (host-computed sum checked in the
    // guest) and generated in the guest.
    let mut files = write_known_files(&guest, &agent).await;
    // fsfreeze through the agent: frozen, a writer in the guest blocks until the thaw, thawed.
    manual_freeze_blocks_a_writer(&guest, &agent).await;
    // Pre-freeze / post-thaw scripts: each writes a marker with the guest's uptime.
    install_freeze_scripts(&guest).await;

    // Online snapshot with the real agent.
    let scratch = dir.join("scratch");
    let mut live = online_snapshot(&guest, &agent, dir, &scratch).await;

    // The guest runs on after the instant: these changes must not show in the view.
    let changed = guest.overwrite_random("/root/pattern.bin", 1 << 20, 64 << 10).await;
    assert_ne!(Some(&changed), files.get("/root/pattern.bin"));
    guest.write_random_file("/root/after-snapshot.bin", 1 << 20).await;

    // The view: a clean filesystem (frozen at the instant) holding the files as they were.
    check_view(&guest, &mut live, &files, &scratch).await;

    // The guest is fine, then powers off cleanly through the agent.
    files.insert("/root/pattern.bin".into(), changed);
    guest.assert_checksums(&files).await;
    guest.assert_fs_clean().await;
    let overlay = guest.disk.clone().expect("overlay");
    let took = guest.shutdown().await;
    eprintln!("guest-shutdown to QEMU exit: {:.1} s", took.as_secs_f64());
    let fsck = e2fsck_image(&overlay, &scratch);
    assert!(fsck.is_ok(), "the guest's disk is not clean after shutdown: {fsck:?}");
    assert_eq!(mtime(&image), image_mtime, "the cached image was modified");
}

/// The agent answers and supports what the tests use; the guest booted as expected on a
/// clean filesystem.
async fn check_agent_and_guest(guest: &Guest, agent: &GuestAgent) {
    agent.ping().await.expect("guest-ping");
    let info = agent.info().await.expect("guest-info");
    assert!(!info.version.is_empty());
    for command in [
        "guest-fsfreeze-freeze",
        "guest-fsfreeze-thaw",
        "guest-fsfreeze-status",
        "guest-exec",
        "guest-file-write",
        "guest-shutdown",
    ] {
        assert!(info.supports(command), "agent {} lacks {command}", info.version);
    }
    let cmdline = guest.sh("cat /proc/cmdline").await;
    assert!(cmdline.contains("console=ttyS0"), "{cmdline}");
    guest.assert_fs_clean().await;
    assert!(
        !guest.journal_recovered().await,
        "a pristine image needs no journal recovery: {:?}",
        guest.fs_messages().await
    );
}

/// Writes files with known checksums into the guest and checks them there; returns path →
/// SHA-256.
async fn write_known_files(guest: &Guest, agent: &GuestAgent) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    files.insert(
        "/root/pattern.bin".to_owned(),
        guest.write_pattern_file("/root/pattern.bin", 3 << 20, 7).await,
    );
    files.insert(
        "/root/data/random.bin".to_owned(),
        guest.write_random_file("/root/data/random.bin", 16 << 20).await,
    );
    files.insert(
        "/root/small.txt".to_owned(),
        guest.write_file("/root/small.txt", b"cairn guest test\n").await,
    );
    assert_eq!(
        agent.read_file("/root/small.txt").await.expect("guest-file-read"),
        b"cairn guest test\n"
    );
    guest.assert_checksums(&files).await;
    assert_eq!(guest.sha256("/root/absent").await, None);
    guest.sync().await;
    files
}

/// Freezes the guest's filesystems by hand for a second and checks that a writer in the guest
/// blocks through it. The agent refuses guest-exec while frozen, so the writer runs before: it
/// appends to a file in a loop and logs the guest's uptime around each write.
async fn manual_freeze_blocks_a_writer(guest: &Guest, agent: &GuestAgent) {
    let writer = agent
        .execute(
            "guest-exec",
            json!({"path": "/bin/sh", "arg": ["-c", WRITER], "capture-output": true}),
        )
        .await
        .expect("guest-exec writer");
    let writer_pid = writer["pid"].as_i64().expect("pid");
    guest
        .sh("i=0; while [ $(wc -l < /root/ticker.log 2>/dev/null || echo 0) -lt 3 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done")
        .await;
    assert_eq!(agent.fsfreeze_status().await.unwrap(), FreezeStatus::Thawed);
    let freeze_started = Instant::now();
    let frozen = agent.fsfreeze_freeze().await.expect("guest-fsfreeze-freeze");
    let freeze_took = freeze_started.elapsed();
    assert!(frozen >= 1, "froze {frozen} filesystems");
    assert_eq!(agent.fsfreeze_status().await.unwrap(), FreezeStatus::Frozen);
    let refused = agent.exec("/bin/true", &[], None).await;
    assert!(refused.is_err(), "the agent ran a program while frozen: {refused:?}");
    // Hold the freeze for a second: the writer must be blocked through it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let thawed = agent.fsfreeze_thaw().await.expect("guest-fsfreeze-thaw");
    let frozen_for = freeze_started.elapsed();
    assert_eq!(thawed, frozen);
    assert_eq!(agent.fsfreeze_status().await.unwrap(), FreezeStatus::Thawed);
    guest.sh("touch /root/ticker.stop").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = agent
            .execute("guest-exec-status", json!({"pid": writer_pid}))
            .await
            .unwrap();
        if status["exited"] == true {
            assert_eq!(status["exitcode"], 0, "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the writer did not stop after the thaw: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = guest.sh("cat /root/ticker.log").await;
    // Uptimes in order; a write blocked by the freeze shows as the largest step between two.
    let times: Vec<f64> = log
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or_else(|e| panic!("ticker log {v:?}: {e}")))
        .collect();
    let longest_write = times.windows(2).map(|w| w[1] - w[0]).fold(0.0_f64, f64::max);
    assert!(
        longest_write >= 0.5,
        "no write blocked during the 1 s freeze (longest {longest_write:.3} s over {} writes)",
        log.lines().count()
    );
    guest
        .sh("rm -f /root/ticker.log /root/ticker.data /root/ticker.stop")
        .await;
    eprintln!(
        "manual freeze: {frozen} filesystem(s) frozen in {:.1} ms, thawed after {:.1} ms (1 s of it on purpose); \
         a guest write blocked for {:.2} s",
        freeze_took.as_secs_f64() * 1000.0,
        frozen_for.as_secs_f64() * 1000.0,
        longest_write
    );
}

/// Installs the pre-freeze and post-thaw scripts; each writes a marker with the guest's uptime.
async fn install_freeze_scripts(guest: &Guest) {
    for (name, marker) in [
        ("cairn-pre-freeze", "/var/tmp/cairn-pre-freeze.marker"),
        ("cairn-post-thaw", "/var/tmp/cairn-post-thaw.marker"),
    ] {
        let script = format!(
            "#!/bin/sh\nset -e\necho \"$(cut -d' ' -f1 /proc/uptime)\" > {marker}.tmp\nmv {marker}.tmp {marker}\n"
        );
        let path = format!("/usr/local/sbin/{name}");
        guest.write_file(&path, script.as_bytes()).await;
        guest.sh(&format!("chmod 755 {path} && rm -f {marker}")).await;
    }
}

/// Takes an online (application-consistent) view of the guest's disk with the freeze scripts
/// and checks the report and that the scripts ran in order.
async fn online_snapshot(guest: &Guest, agent: &GuestAgent, dir: &Path, scratch: &Path) -> LiveView {
    let disks = list_disks(&guest.qmp).await.expect("list_disks");
    assert_eq!(disks.len(), 1, "{disks:?}");
    assert_eq!(disks[0].virtual_size, GIB);
    std::fs::create_dir_all(scratch).unwrap();
    let request = ViewRequest {
        disks: vec![DiskRequest {
            node: disks[0].node.clone(),
            since: None,
            next: "cairn-guest-cp-1".into(),
            persistent: true,
        }],
        scratch_dir: scratch.to_path_buf(),
        socket: dir.join("nbd.sock"),
    };
    let prepared = view::prepare(&guest.qmp, &request).await.expect("view::prepare");
    let policy = ConsistencyPolicy {
        mode: ConsistencyMode::Online,
        require_app: true,
        pre_freeze: Some("/usr/local/sbin/cairn-pre-freeze".into()),
        post_thaw: Some("/usr/local/sbin/cairn-post-thaw".into()),
        ..ConsistencyPolicy::default()
    };
    let (live, report) = snapshot(&guest.qmp, Some(agent), &policy, prepared)
        .await
        .expect("online snapshot");
    eprintln!(
        "online snapshot: achieved {}, frozen for {:.1} ms; log: {:?}",
        report.achieved,
        report.frozen_for.as_secs_f64() * 1000.0,
        report.log
    );
    assert_eq!(report.achieved, ConsistencyMode::Online, "{report:?}");
    assert!(report.warnings.is_empty(), "{report:?}");
    assert!(report.frozen_for > Duration::ZERO, "{report:?}");
    assert!(report.log.iter().any(|l| l.contains("frozen for")), "{report:?}");
    assert_eq!(agent.fsfreeze_status().await.unwrap(), FreezeStatus::Thawed);
    let pre: f64 = guest
        .sh("cat /var/tmp/cairn-pre-freeze.marker")
        .await
        .trim()
        .parse()
        .expect("pre-freeze marker");
    let post: f64 = guest
        .sh("cat /var/tmp/cairn-post-thaw.marker")
        .await
        .trim()
        .parse()
        .expect("post-thaw marker");
    assert!(pre <= post, "pre-freeze ran at {pre}, post-thaw at {post}");
    live
}

/// Exports the view and checks it holds a clean filesystem with the files as they were at the
/// instant; then finishes it, keeping the checkpoint, and checks nothing is left in `scratch`.
async fn check_view(guest: &Guest, live: &mut LiveView, files: &BTreeMap<String, String>, scratch: &Path) {
    live.export(&guest.qmp).await.expect("export");
    let uri = live.uri(&live.disks()[0]);
    let raw = to_raw(&uri, scratch);
    let fsck = e2fsck_raw(&raw);
    assert!(fsck.is_ok(), "the online view is not a clean filesystem: {fsck:?}");
    for (path, sum) in files {
        let data = read_file_from_raw(&raw, path, scratch).unwrap_or_else(|| panic!("{path} missing in the view"));
        assert_eq!(&sha256_hex(&data), sum, "{path} in the view");
    }
    assert!(read_file_from_raw(&raw, "/var/tmp/cairn-pre-freeze.marker", scratch).is_some());
    assert!(read_file_from_raw(&raw, "/var/tmp/cairn-post-thaw.marker", scratch).is_none());
    assert!(read_file_from_raw(&raw, "/root/after-snapshot.bin", scratch).is_none());
    std::fs::remove_file(&raw).unwrap();
    live.finish(&guest.qmp, true).await.expect("finish the view");
    let disks = list_disks(&guest.qmp).await.unwrap();
    let checkpoint = disks[0].bitmap("cairn-guest-cp-1").expect("checkpoint bitmap");
    assert!(checkpoint.persistent && checkpoint.recording, "{checkpoint:?}");
    let leftovers: Vec<_> = std::fs::read_dir(scratch).unwrap().collect();
    assert!(leftovers.is_empty(), "scratch files left: {leftovers:?}");
}

/// The guest boots from an NBD export (as instant recovery does; qemu-nbd serves a qcow2
/// overlay here) and reaches its agent; its writes land in the exported image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_boots_from_an_nbd_export() {
    let _one_guest = GUESTS.lock().await;
    require_tool("qemu-nbd", "qemu-utils");
    let image = guest_image();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let overlay = dir.join("served.qcow2");
    create_overlay(&image, &overlay);
    let socket = dir.join("nbd.sock");
    let mut server = KillOnDrop(
        std::process::Command::new("qemu-nbd")
            .args([
                "--persistent",
                "--format=qcow2",
                "--export-name=guest",
                "--cache=writeback",
            ])
            .arg(format!("--socket={}", socket.display()))
            .arg(&overlay)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("starting qemu-nbd"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(server.0.try_wait().unwrap().is_none(), "qemu-nbd exited at start");
        assert!(
            Instant::now() < deadline,
            "qemu-nbd did not create {}",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drive = format!("file=nbd+unix:///guest?socket={},format=raw", socket.display());
    // Started the way a cairn restore starts a VM (QEMU first, then someone attaches to it).
    let vm = dir.join("vm");
    std::fs::create_dir_all(&vm).unwrap();
    let (qmp_socket, qga_socket, serial) = (vm.join("qmp.sock"), vm.join("qga.sock"), vm.join("serial.log"));
    let started = Instant::now();
    let args = guest_args(&drive, &qmp_socket, &qga_socket, &serial, &[]);
    let mut process = QemuProcess::spawn(&args, &qmp_socket, Duration::from_secs(60))
        .await
        .expect("starting QEMU");
    let mut guest = Guest::attach(&vm, &qmp_socket, &qga_socket, &serial).await;
    eprintln!(
        "boot from NBD to first guest-ping: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(guest.is_running());
    let sum = guest.write_random_file("/root/over-nbd.bin", 4 << 20).await;
    guest.assert_fs_clean().await;
    guest.shutdown().await;
    assert!(
        process.wait_exit(Duration::from_secs(30)).await,
        "QEMU still runs after the shutdown"
    );
    drop(server);
    let raw = to_raw(overlay.to_str().unwrap(), dir);
    assert!(e2fsck_raw(&raw).is_ok(), "{:?}", e2fsck_raw(&raw));
    let data = read_file_from_raw(&raw, "/root/over-nbd.bin", dir).expect("file written over NBD");
    assert_eq!(sha256_hex(&data), sum);
}
