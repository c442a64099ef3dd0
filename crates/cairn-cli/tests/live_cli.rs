//! The CLI's view of a qemu host, against a real `cairn server` and guestless
//! `qemu-system-x86_64` processes under TCG (no guest OS: nothing here needs one, so no boot):
//!
//! - `host list` prints a qemu host's location readably; `job create` without `--repository`
//!   uses the server's default repository and says so; an unknown job or host name exits 2;
//! - a first backup says it is the first, and the session's summary tells what it read apart
//!   from what deduplication saved;
//! - `vm forget-checkpoints` removes cairn's bitmaps from a running VM; `job remove` removes
//!   those no job needs any more; `host remove` those it could not reach then;
//! - a restored VM's pid file and serial log lie beside its disks; `vm stop` and `vm start`
//!   stop it and start it again from its saved command line, and `vm list` follows without
//!   `host rescan`;
//! - a migrated instant recovery keeps its files while it runs, `instant-recovery stop` only
//!   forgets it, and it is then a normal VM of the host: `vm stop`, `vm start` from its
//!   production disk.

mod server_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_qemu::process::QemuProcess;
use cairn_qemu::qmp::Qmp;
use cairn_testkit::qemu_vm::web01_argv;
use serde_json::Value;
use server_common::*;

/// Kills, when the test ends, the QEMU processes the server started (by their pid files).
struct Started(Vec<PathBuf>);

impl Drop for Started {
    fn drop(&mut self) {
        for pidfile in &self.0 {
            if let Some(pid) =
                cairn_qemu::process::running_pid(pidfile).and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

async fn qmp(socket: &Path) -> Qmp {
    Qmp::connect(socket, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("QMP {}: {e}", socket.display()))
}

/// cairn's bitmaps on the VM's disks.
async fn cairn_bitmaps(socket: &Path) -> Vec<String> {
    let disks = cairn_qemu::disks::list_disks(&qmp(socket).await).await.unwrap();
    disks
        .iter()
        .flat_map(|d| d.bitmaps.iter().map(|b| b.name.clone()))
        .filter(|b| b.starts_with("cairn-"))
        .collect()
}

/// The image file of the VM's first disk.
async fn disk_file(socket: &Path) -> String {
    cairn_qemu::disks::list_disks(&qmp(socket).await).await.unwrap()[0]
        .file
        .clone()
}

/// `present` of VM `name` in `vm list --json` (without a rescan).
fn present(srv: &Server, name: &str) -> Option<bool> {
    let all = ok_json(srv.cairn(["vm", "list", "--json"]));
    all.as_array()?
        .iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["present"].as_bool())
}

fn run_web(srv: &Server) -> String {
    let out = ok(srv.cairn(["job", "run", "web", "--wait"]));
    let session = out
        .split_whitespace()
        .skip_while(|w| *w != "session")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    ok(srv.cairn(["session", "show", &session]))
}

#[test]
fn a_qemu_host_through_the_cli() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let srv = Server::start(Backend::Sqlite, "live_cli");
    srv.login_admin();
    let vms = srv.tmp.path().join("vms");
    std::fs::create_dir_all(&vms).unwrap();
    let disk = srv.tmp.path().join("images/web01.qcow2");
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    make_image(&disk, "qcow2", 64 * MIB, &[(0x11, 0, 8 * MIB)]);
    let qmp_path = vms.join("web01.qmp");
    let mut started = Started(Vec::new());

    rt.block_on(async {
        let mut original = QemuProcess::spawn(&web01_argv(&qmp_path, &disk), &qmp_path, Duration::from_secs(60))
            .await
            .expect("start qemu-system-x86_64 (apt-get install qemu-system-x86)");

        // The host's location reads as a path, not as the JSON the API keeps.
        let mut add = srv.cairn(["host", "add", "qemu", "--name", "kvm01", "--qmp"]);
        add.arg(&vms);
        let added = ok(add);
        assert!(added.contains(&format!("QMP {}", vms.display())), "{added}");
        let hosts = ok(srv.cairn(["host", "list"]));
        assert!(
            hosts.contains(&format!("QMP {}", vms.display())) && !hosts.contains('{'),
            "{hosts}"
        );

        // No --repository: the default one, and the output says so.
        let created = ok(srv.cairn(["job", "create", "web", "--vm", "web01", "--consistency", "crash"]));
        assert!(created.contains("the server's default repository default"), "{created}");
        let (_, err) = run_code(srv.cairn(["job", "run", "nosuch"]), 2);
        assert!(err.contains("there is no job named \"nosuch\""), "{err}");
        let (_, err) = run_code(srv.cairn(["host", "rescan", "kvm1"]), 2);
        assert!(err.contains("did you mean kvm01"), "{err}");

        // A first backup says so; the summary tells reading from deduplication.
        let first = run_web(&srv);
        assert!(first.contains("first backup of disk vblk0"), "{first}");
        assert!(!first.contains("compared with the previous"), "{first}");
        // 8 MiB of one pattern: 8 blocks read, 1 stored, 7 duplicates of it.
        assert!(
            first.contains("read 8.0× more than it stored new (0 unchanged, 0 zero, 7 duplicate blocks); dedup 8.00x"),
            "{first}"
        );
        let second = run_web(&srv);
        assert!(
            second.contains("stored nothing new") && second.contains("dirty extents"),
            "an incremental without writes: {second}"
        );
        assert_eq!(cairn_bitmaps(&qmp_path).await.len(), 1);

        // By hand: the bitmaps go, and the job that still backs the VM up is named.
        let forgot = ok(srv.cairn(["vm", "forget-checkpoints", "kvm01/web01"]));
        assert!(
            forgot.contains("removed cairn's checkpoint bitmaps from VM kvm01/web01: cairn-r")
                && forgot.contains("jobs web still back it up"),
            "{forgot}"
        );
        assert_eq!(cairn_bitmaps(&qmp_path).await, Vec::<String>::new());
        // The next backup reads everything, warns, stores nothing (nothing changed).
        let third = run_web(&srv);
        let lost = third
            .lines()
            .find(|l| l.contains("changed block tracking of disk vblk0 is lost"))
            .unwrap_or_else(|| panic!("{third}"));
        assert!(
            lost.contains("warning") && lost.contains("else it was removed"),
            "{lost}"
        );
        assert!(third.contains("stored nothing new (8 unchanged"), "{third}");
        assert_eq!(cairn_bitmaps(&qmp_path).await.len(), 1);

        // A restored VM: its pid file and serial log beside its disks, none in the socket folder.
        let restored = ok_json(srv.cairn([
            "restore",
            "vm",
            "web01",
            "--name",
            "web01-copy",
            "--accel",
            "tcg",
            "--json",
        ]));
        let copy_disk = PathBuf::from(restored["disks"][0].as_str().expect("a disk"));
        let copy_dir = copy_disk.parent().unwrap().to_path_buf();
        started.0.push(copy_dir.join("web01-copy.pid"));
        assert_eq!(
            restored["serial_log"].as_str().map(PathBuf::from),
            Some(copy_dir.join("web01-copy.serial.log"))
        );
        assert!(copy_dir.join("web01-copy.pid").exists());
        let in_socket_folder: Vec<String> = std::fs::read_dir(&vms)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| !n.ends_with(".qmp"))
            .collect();
        assert!(
            in_socket_folder.is_empty(),
            "only sockets in {}: {in_socket_folder:?}",
            vms.display()
        );
        let copy_qmp = vms.join("web01-copy.qmp");
        assert_eq!(present(&srv, "web01-copy"), Some(true));

        // Stop and start it as a VM of the host; the inventory follows without a rescan.
        let stopped = ok(srv.cairn(["vm", "stop", "kvm01/web01-copy"]));
        assert!(stopped.contains("stopped VM kvm01/web01-copy"), "{stopped}");
        assert!(Qmp::connect(&copy_qmp, Duration::from_secs(2)).await.is_err());
        assert_eq!(present(&srv, "web01-copy"), Some(false));
        let (_, err) = run_code(srv.cairn(["vm", "stop", "kvm01/web01-copy"]), 1);
        assert!(err.contains("is not running"), "{err}");
        let again = ok(srv.cairn(["vm", "start", "kvm01/web01-copy"]));
        assert!(again.contains("started VM kvm01/web01-copy"), "{again}");
        assert_eq!(present(&srv, "web01-copy"), Some(true));
        assert_eq!(disk_file(&copy_qmp).await, copy_disk.display().to_string());
        let (_, err) = run_code(srv.cairn(["vm", "start", "kvm01/web01-copy"]), 1);
        assert!(err.contains("is running"), "{err}");
        let (_, err) = run_code(srv.cairn(["vm", "start", "kvm01/web01"]), 1);
        assert!(err.contains("cairn did not start VM kvm01/web01"), "{err}");
        let (_, err) = run_code(srv.cairn(["vm", "stop", "kvm01/nosuch"]), 2);
        assert!(err.contains("there is no VM named"), "{err}");

        // A migrated instant recovery: a normal VM of the host.
        let ir = ok_json(srv.cairn([
            "instant-recovery",
            "start",
            "web01",
            "--name",
            "web01-ir",
            "--accel",
            "tcg",
            "--json",
        ]));
        assert_eq!(ir["host"], "kvm01");
        let ir_dir = srv.data.join("instant/web01-ir");
        started.0.push(ir_dir.join("qemu.pid"));
        let prod = srv.tmp.path().join("prod/web01-ir.qcow2");
        std::fs::create_dir_all(prod.parent().unwrap()).unwrap();
        let mut migrate = srv.cairn(["instant-recovery", "migrate", "web01-ir", "--to"]);
        migrate.arg(&prod);
        let migrated = ok(migrate);
        assert!(
            migrated.contains("VM web01-ir now runs from its production disks")
                && migrated.contains("normal VM of host kvm01")
                && migrated.contains("cairn vm stop|start kvm01/web01-ir"),
            "{migrated}"
        );
        let ir_qmp = vms.join("web01-ir.qmp");
        assert_eq!(disk_file(&ir_qmp).await, prod.display().to_string());
        assert!(ir_dir.join("serial.log").exists(), "kept while the VM runs");
        assert!(!ir_dir.join("disk0.cow").exists(), "the scratch file is gone");
        let forgotten = ok(srv.cairn(["instant-recovery", "stop", "web01-ir"]));
        assert!(
            forgotten.contains("forgotten") && forgotten.contains("runs on"),
            "{forgotten}"
        );
        assert!(qmp(&ir_qmp).await.query_status().await.unwrap().running, "it runs on");
        assert_eq!(present(&srv, "web01-ir"), Some(true));
        let (_, err) = run_code(srv.cairn(["instant-recovery", "stop", "web01-ir"]), 2);
        assert!(err.contains("there is no instant recovery named"), "{err}");
        ok(srv.cairn(["vm", "stop", "kvm01/web01-ir"]));
        assert!(!ir_dir.exists(), "its instant recovery folder goes once it has ended");
        started.0.push(prod.with_file_name("web01-ir.pid"));
        ok(srv.cairn(["vm", "start", "kvm01/web01-ir"]));
        assert_eq!(disk_file(&ir_qmp).await, prod.display().to_string());
        assert!(prod.with_file_name("web01-ir.serial.log").exists());
        ok(srv.cairn(["vm", "stop", "kvm01/web01-ir"]));
        ok(srv.cairn(["vm", "stop", "kvm01/web01-copy"]));

        // `job remove` while the VM's socket is held: the bitmap stays and the server says why;
        // `host remove` then removes it.
        let holder = qmp(&qmp_path).await;
        ok(srv.cairn(["job", "remove", "web"]));
        drop(holder);
        assert!(
            srv.stderr().contains("cairn vm forget-checkpoints kvm01/web01"),
            "{}",
            srv.stderr()
        );
        assert_eq!(cairn_bitmaps(&qmp_path).await.len(), 1, "unreachable during job remove");
        ok(srv.cairn(["host", "remove", "kvm01"]));
        assert_eq!(cairn_bitmaps(&qmp_path).await, Vec::<String>::new());
        let _ = original.quit(None, Duration::from_secs(30)).await;
    });
}

/// `job remove` of a reachable VM removes the checkpoint bitmap no job needs any more.
#[test]
fn removing_a_job_removes_its_checkpoints() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let srv = Server::start(Backend::Sqlite, "live_cli_job_remove");
    srv.login_admin();
    let vms = srv.tmp.path().join("vms");
    std::fs::create_dir_all(&vms).unwrap();
    let disk = srv.tmp.path().join("web01.qcow2");
    make_image(&disk, "qcow2", 16 * MIB, &[(0x22, 0, MIB)]);
    let qmp_path = vms.join("web01.qmp");
    rt.block_on(async {
        let mut vm = QemuProcess::spawn(&web01_argv(&qmp_path, &disk), &qmp_path, Duration::from_secs(60))
            .await
            .expect("start qemu-system-x86_64");
        let mut add = srv.cairn(["host", "add", "qemu", "--name", "kvm01", "--qmp"]);
        add.arg(&vms);
        ok(add);
        for job in ["a", "b"] {
            ok(srv.cairn(["job", "create", job, "--vm", "web01", "--consistency", "crash"]));
            ok(srv.cairn(["job", "run", job, "--wait"]));
        }
        // Both jobs write into the default repository: its checkpoint is still needed.
        let before = cairn_bitmaps(&qmp_path).await;
        assert_eq!(before.len(), 1, "one checkpoint per repository: {before:?}");
        ok(srv.cairn(["job", "remove", "a"]));
        assert_eq!(cairn_bitmaps(&qmp_path).await, before, "job b still needs it");
        ok(srv.cairn(["job", "remove", "b"]));
        assert_eq!(cairn_bitmaps(&qmp_path).await, Vec::<String>::new());
        let value: Value = ok_json(srv.cairn(["vm", "forget-checkpoints", "web01", "--json"]));
        assert_eq!(value["removed"], serde_json::json!([]), "{value}");
        let _ = vm.quit(None, Duration::from_secs(30)).await;
    });
}
