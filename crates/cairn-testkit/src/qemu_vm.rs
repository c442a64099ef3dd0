//! A guestless VM: `qemu-system-x86_64` under TCG without a guest OS (nothing needs one, so
//! nothing boots), with one qcow2 disk. Guest writes are made with `qemu-io` through the
//! monitor, which writes through the same block layer a guest's writes take.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_qemu::disks::LiveDisk;
use cairn_qemu::process::QemuProcess;
use cairn_qemu::qmp::Qmp;

/// How long QEMU may take to start, and to quit.
const START: Duration = Duration::from_secs(60);
/// How long a QMP connection may take.
const CONNECT: Duration = Duration::from_secs(30);

/// The command line of the guestless VM `web01`: one qcow2 disk `disk` (drive `drive0`, device
/// `vblk0`, virtio), its QMP socket at `qmp`.
pub fn web01_argv(qmp: &Path, disk: &Path) -> Vec<String> {
    [
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-m",
        "64",
        "-nodefaults",
        "-display",
        "none",
        "-name",
        "web01",
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp.display()),
        "-drive",
        &format!("file={},if=none,id=drive0,format=qcow2", disk.display()),
        "-device",
        "virtio-blk-pci,drive=drive0,id=vblk0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `argv` with a guest agent channel whose socket is `socket` (no agent in the guest opens it).
pub fn with_guest_agent_channel(mut argv: Vec<String>, socket: &Path) -> Vec<String> {
    argv.extend([
        "-chardev".to_owned(),
        format!("socket,path={},server=on,wait=off,id=qga0", socket.display()),
        "-device".to_owned(),
        "virtio-serial".to_owned(),
        "-device".to_owned(),
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0".to_owned(),
    ]);
    argv
}

/// A running guestless VM (see [`web01_argv`]); QEMU is killed when it is dropped.
pub struct GuestlessVm {
    process: Option<QemuProcess>,
    argv: Vec<String>,
    /// The QMP socket.
    pub qmp_path: PathBuf,
    /// The disk image.
    pub disk: PathBuf,
}

impl GuestlessVm {
    /// Starts VM `web01` on `disk` with its QMP socket at `vms/web01.qmp` (creating `vms`);
    /// `with_agent_channel` adds a guest agent channel at `vms/web01.qga`.
    pub async fn start_web01(vms: &Path, disk: &Path, with_agent_channel: bool) -> GuestlessVm {
        std::fs::create_dir_all(vms).expect("create the VMs' folder");
        let qmp_path = vms.join("web01.qmp");
        let mut argv = web01_argv(&qmp_path, disk);
        if with_agent_channel {
            argv = with_guest_agent_channel(argv, &qmp_path.with_extension("qga"));
        }
        let process = spawn(&argv, &qmp_path).await;
        GuestlessVm {
            process: Some(process),
            argv,
            qmp_path,
            disk: disk.to_path_buf(),
        }
    }

    /// A new QMP connection to the VM.
    pub async fn qmp(&self) -> Qmp {
        Qmp::connect(&self.qmp_path, CONNECT).await.expect("QMP")
    }

    /// Runs the `qemu-io` command `what` on `drive0` through the monitor and returns the
    /// monitor's answer (qemu-io reports to QEMU's standard output; the monitor answers only
    /// errors).
    pub async fn qemu_io(&self, what: &str) -> String {
        self.qmp()
            .await
            .human_monitor_command(&format!("qemu-io drive0 \"{what}\""))
            .await
            .expect("qemu-io through the monitor")
    }

    /// Stops QEMU (`kill -9` when `kill`, else a clean quit that saves persistent bitmaps) and
    /// starts it again with the same command line.
    pub async fn restart(&mut self, kill: bool) {
        let mut p = self.process.take().expect("running");
        if kill {
            p.kill().await.expect("kill -9");
        } else {
            let qmp = self.qmp().await;
            p.quit(Some(&qmp), START).await.expect("quit");
        }
        let _ = std::fs::remove_file(&self.qmp_path);
        self.process = Some(spawn(&self.argv, &self.qmp_path).await);
    }

    /// Quits QEMU cleanly, ignoring a failure.
    pub async fn quit(mut self) {
        if let Some(mut p) = self.process.take() {
            let qmp = self.qmp().await;
            let _ = p.quit(Some(&qmp), START).await;
        }
    }

    /// Asserts that QEMU holds no export, block job or block node of cairn's and that the VM
    /// runs; returns the VM's disks, for checks of the bitmaps left.
    pub async fn assert_no_cairn_objects(&self) -> Vec<LiveDisk> {
        let qmp = self.qmp().await;
        let exports = qmp.query_block_exports().await.expect("query-block-exports");
        assert!(exports.is_empty(), "exports left: {exports:?}");
        let jobs = qmp.query_block_jobs().await.expect("query-block-jobs");
        assert!(jobs.is_empty(), "block jobs left: {jobs:?}");
        let nodes = qmp
            .execute("query-named-block-nodes", serde_json::json!({}))
            .await
            .expect("query-named-block-nodes");
        let names: Vec<&str> = nodes
            .as_array()
            .expect("a list of nodes")
            .iter()
            .filter_map(|n| n["node-name"].as_str())
            .filter(|n| n.starts_with("cairn"))
            .collect();
        assert!(names.is_empty(), "nodes left: {names:?}");
        let status = qmp.query_status().await.expect("query-status");
        assert!(status.running, "the VM must be running after a backup: {status:?}");
        cairn_qemu::disks::list_disks(&qmp).await.expect("list the VM's disks")
    }
}

/// Starts QEMU with `argv`, its QMP socket at `qmp_path`.
async fn spawn(argv: &[String], qmp_path: &Path) -> QemuProcess {
    QemuProcess::spawn(argv, qmp_path, START)
        .await
        .expect("start qemu-system-x86_64 (apt-get install qemu-system-x86)")
}
