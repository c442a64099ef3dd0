//! A running QEMU VM backed up into a repository on a repository agent, with real processes: a
//! `cairn server`, a `cairn agent` (proxy and repository roles) and a guestless
//! `qemu-system-x86_64` under TCG whose disk is written through the block layer with `qemu-io`
//! in its monitor. The server makes the point-in-time view (its QMP socket is on the server's
//! host) and sends it to the agent; the agent tells the previous point's checkpoint so the
//! incremental reads only the dirty extents. Each point restores (on the agent) equal to the
//! same writes applied to a fresh image, each carries the VM's configuration, and nothing but
//! one checkpoint bitmap stays in QEMU. A backup stopped mid-transfer commits nothing and keeps
//! the previous checkpoint, so the next one still reads only what changed since the last point.

mod server_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use cairn_testkit::qemu_vm::GuestlessVm;
use serde_json::Value;
use server_common::agents::*;
use server_common::*;

/// Kills the agent when the test ends, passed or not.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cairn job run NAME --wait`: (exit code, what it printed and the whole session's log, the
/// session's JSON with its tasks' statistics).
fn run_job(srv: &Server, job: &str) -> (i32, String, Value) {
    let out = srv.cairn(["job", "run", job, "--wait"]).output().expect("job run");
    let (text, session) = job_run_report(srv, &out);
    let json = ok_json(srv.cairn(["session", "show", &session, "--json"]));
    (out.status.code().unwrap_or(-1), text, json)
}

/// What the session's tasks read from the VM's disks.
fn read_bytes(session: &Value) -> u64 {
    session["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("session without tasks: {session}"))
        .iter()
        .map(|t| t["statistics"]["read_bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// A `qemu-io` write of `len` bytes at `offset` from a file of seeded pseudo-random bytes
/// (xorshift64*): no two writes share data and none compresses or deduplicates away.
fn seeded_write(dir: &Path, offset: u64, len: u64, seed: u64) -> String {
    let path = dir.join(format!("data-{seed}.bin"));
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(len as usize);
    while (data.len() as u64) < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        data.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    data.truncate(len as usize);
    std::fs::write(&path, &data).expect("write the data file");
    format!("write -s {} {offset} {len}", path.display())
}

/// A guestless VM `web01` with one 64 MiB qcow2 disk (device `vblk0`).
struct Vm(GuestlessVm);

impl Vm {
    async fn start(vms: &Path, disk: &Path) -> Vm {
        Vm(GuestlessVm::start_web01(vms, disk, false).await)
    }

    /// A guest write through the block layer.
    async fn write(&self, what: &str) {
        let out = self.0.qemu_io(what).await;
        // qemu-io reports to QEMU's stdout; the monitor answers only errors (the restores check
        // that the data landed).
        assert!(out.trim().is_empty(), "qemu-io {what}: {out}");
    }

    /// Between backups QEMU holds nothing of cairn's but one checkpoint bitmap, and runs.
    async fn assert_clean(&self) {
        let disks = self.0.assert_no_cairn_objects().await;
        assert_eq!(disks.len(), 1, "{disks:?}");
        let bitmaps: Vec<&str> = disks[0].bitmaps.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            bitmaps.iter().filter(|b| b.starts_with("cairn-")).count(),
            1,
            "one checkpoint bitmap and no other of cairn's: {bitmaps:?}"
        );
        assert!(bitmaps.iter().any(|b| b.starts_with("cairn-r")), "{bitmaps:?}");
    }

    async fn quit(self) {
        self.0.quit().await;
    }
}

/// The guest-visible disk after `writes`: the same writes applied to a fresh qcow2.
fn expected(dir: &Path, name: &str, writes: &[String]) -> PathBuf {
    let path = dir.join(name);
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path.to_str().unwrap(), "64M"],
    );
    for w in writes {
        tool("qemu-io", &["-c", w, path.to_str().unwrap()]);
    }
    path
}

/// Restores the VM's disk at `point` (`latest` or an id) through the server: the repository
/// agent writes the image (on this machine).
fn restore(srv: &Server, point: &str, to: &Path) {
    ok(srv.cairn([
        "restore",
        "--repository",
        "remote",
        "--vm",
        "kvm01/web01",
        "--point",
        point,
        "--disk",
        "0",
        "--to",
        to.to_str().expect("UTF-8 path"),
    ]));
}

#[test]
fn a_running_vm_is_backed_up_into_a_repository_on_an_agent() {
    let srv = Server::start_with(Backend::Sqlite, "agent_live", &["--agent-heartbeat", "1"]);
    srv.login_admin();
    let _agent = Agent(spawn_agent(
        &srv,
        "rep01",
        "proxy,repository",
        &["--listen", "127.0.0.1:0"],
    ));
    wait_for("agent rep01 online with its address", 60, || {
        let a = agent_state(&srv, "rep01")?;
        (a["state"] == "online" && a["address"].is_string()).then_some(())
    });
    let backups = srv.tmp.path().join("backups");
    ok(srv.cairn([
        "repository",
        "add",
        "remote",
        "--agent",
        "rep01",
        "--path",
        backups.to_str().unwrap(),
    ]));
    let pw = format!(
        "--password-file={}",
        srv.data.join("secrets").join("repository-2.password").display()
    );
    let path = backups.to_str().unwrap();
    let points = || {
        let chains = ok_json(srv.cairn(["points", "--json", "--repo", path, &pw]));
        chains[0]["points"].as_array().cloned().unwrap_or_default()
    };

    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let tmp = srv.tmp.path();
    let images = tmp.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let disk = images.join("web01.qcow2");
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "64M"],
    );
    let vms = tmp.join("vms");
    let vm = rt.block_on(Vm::start(&vms, &disk));
    const M: u64 = 1 << 20;
    // 20 MiB in two extents, written by the running VM before the first backup.
    let first = [seeded_write(tmp, 0, 16 * M, 1), seeded_write(tmp, 40 * M, 4 * M, 2)];
    rt.block_on(async {
        for w in &first {
            vm.write(w).await;
        }
    });

    let mut add = srv.cairn(["host", "add", "qemu", "--name", "kvm01", "--json", "--qmp"]);
    add.arg(&vms);
    let added = ok_json(add);
    assert_eq!(added["vms"].as_array().map(Vec::len), Some(1), "{added}");
    ok(srv.cairn([
        "job",
        "create",
        "web",
        "--vm",
        "kvm01/web01",
        "--repository",
        "remote",
        "--consistency",
        "crash",
        "--retries",
        "0",
    ]));

    // Full: the server reads its view and sends every allocated block to the agent.
    let (code, log1, s1) = run_job(&srv, "web");
    assert_eq!(code, 0, "{log1}");
    assert!(log1.contains("data path: proxy"), "{log1}");
    assert!(log1.contains("(this server) reads, repository agent rep01"), "{log1}");
    assert!(log1.contains("first backup of disk"), "{log1}");
    assert!(
        !log1.contains("no changed block tracking for disk"),
        "a first backup is not a lost CBT: {log1}"
    );
    assert!(!log1.contains("dirty extents"), "{log1}");
    assert!(log1.contains(": read 20.0 MiB in"), "the 20 MiB written: {log1}");
    assert_eq!(read_bytes(&s1), 20 * M, "{s1}");
    assert!(
        log1.contains("(full) of kvm01/web01 committed to repository remote by agent rep01"),
        "{log1}"
    );
    rt.block_on(vm.assert_clean());
    let after1 = points();
    assert_eq!(after1.len(), 1, "{after1:?}");
    let point1 = after1[0]["id"].as_str().expect("point id").to_owned();
    let e1 = expected(tmp, "e1.qcow2", &first);
    let r1 = tmp.join("r1.raw");
    restore(&srv, "latest", &r1);
    assert_same_image(&r1, &e1);

    // Incremental: the agent names the previous checkpoint; only the 2 MiB written are read
    // (1 MiB over the first data, 1 MiB where nothing was).
    let second = [seeded_write(tmp, 8 * M, M, 3), seeded_write(tmp, 50 * M, M, 4)];
    rt.block_on(async {
        for w in &second {
            vm.write(w).await;
        }
    });
    let (code, log2, s2) = run_job(&srv, "web");
    assert_eq!(code, 0, "{log2}");
    assert!(log2.contains("data path: proxy"), "{log2}");
    assert!(log2.contains("only its dirty extents are read"), "{log2}");
    assert!(log2.contains("dirty extents ("), "{log2}");
    assert!(!log2.contains("no changed block tracking"), "{log2}");
    let read2 = read_bytes(&s2);
    assert!((2 * M..=4 * M).contains(&read2), "read {read2} bytes: {s2}");
    assert!(log2.contains("(incremental) of kvm01/web01 committed"), "{log2}");
    rt.block_on(vm.assert_clean());
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    let e2 = expected(tmp, "e2.qcow2", &all);
    let r2 = tmp.join("r2.raw");
    restore(&srv, "latest", &r2);
    assert_same_image(&r2, &e2);
    let r1again = tmp.join("r1-again.raw");
    restore(&srv, &point1, &r1again);
    assert_same_image(&r1again, &e1);

    // A backup stopped mid-transfer (a 1 MB/s network rule makes it slow) commits nothing and
    // keeps the previous checkpoint recording, so the next backup still reads only what changed.
    let third = [seeded_write(tmp, 16 * M, 8 * M, 5)];
    rt.block_on(async {
        for w in &third {
            vm.write(w).await;
        }
    });
    ok(srv.cairn([
        "throttle",
        "add",
        "--from",
        "127.0.0.1/32",
        "--to",
        "127.0.0.1/32",
        "--limit",
        "1MB/s",
    ]));
    let follower = srv
        .cairn(["job", "run", "web", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairn job run --wait");
    let stopped = wait_for("the throttled session to send", 60, || {
        let list = ok_json(srv.cairn(["session", "list", "--job", "web", "--json"]));
        let s = list["sessions"].get(0)?.clone();
        let id = s["id"].to_string();
        let sending = s["state"] == "running" && ok(srv.cairn(["session", "show", &id])).contains("sending ");
        sending.then_some(id)
    });
    ok(srv.cairn(["job", "stop", "web"]));
    let out = follower.wait_with_output().expect("job run --wait");
    let (stdout, stderr) = check_code("job run web --wait (stopped)", &out, 3);
    assert!(stdout.contains(": stopped"), "{stdout}\n{stderr}");
    let s3 = ok_json(srv.cairn(["session", "show", &stopped, "--json"]));
    assert_eq!(s3["session"]["state"], "stopped", "{s3}");
    assert!(s3.to_string().contains("no restore point was committed"), "{s3}");
    rt.block_on(vm.assert_clean());
    assert_eq!(points().len(), 2, "the stopped backup committed nothing");
    ok(srv.cairn(["throttle", "remove", "1"]));
    let (code, log4, s4) = run_job(&srv, "web");
    assert_eq!(code, 0, "{log4}");
    assert!(log4.contains("only its dirty extents are read"), "{log4}");
    assert_eq!(read_bytes(&s4), 8 * M, "the 8 MiB written before the stop: {log4}");
    rt.block_on(vm.assert_clean());
    let r4 = tmp.join("r4.raw");
    restore(&srv, "latest", &r4);
    let all4: Vec<String> = all.iter().chain(&third).cloned().collect();
    assert_same_image(&r4, &expected(tmp, "e4.qcow2", &all4));

    // The three points are in the agent's repository, which checks out.
    let points = points();
    assert_eq!(points.len(), 3, "{points:?}");
    assert_eq!(points[0]["id"], point1.as_str(), "{points:?}");
    assert_eq!(points[0]["kind"], "full", "{points:?}");
    assert_eq!(points[1]["kind"], "incremental", "{points:?}");
    assert_eq!(points[1]["stats"]["read_bytes"], read2, "{points:?}");
    assert_eq!(points[2]["stats"]["read_bytes"], 8 * M, "{points:?}");
    // Each point carries the VM's configuration, read at its view.
    for p in &points {
        assert!(p["vm_config"].to_string().contains("virtio-blk-pci"), "{p}");
        let source = p["disks"][0]["source_id"].as_str().unwrap_or_default();
        assert!(source.starts_with("qemu-bitmap:cairn-r"), "{p}");
    }
    let verify = ok_json(srv.cairn(["verify", "--json", "--repo", path, &pw]));
    assert_eq!(verify["ok"], true, "{verify}");
    rt.block_on(vm.quit());
}
