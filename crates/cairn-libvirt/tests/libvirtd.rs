//! cairn-libvirt against a real libvirt daemon (`qemu:///system`, started here when none runs):
//! discovery of domains and disks, a full and an incremental pull-mode backup read over NBD,
//! checkpoints that survive a domain restart, a libvirtd restart and the loss of libvirt's
//! records of them, and clear errors. Domains are `<domain type='qemu'>` (TCG) without an OS:
//! the test writes into a running domain's disk through QEMU's monitor.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_libvirt::backup::{BackupDisk, PullBackup, checkpoint_xml, parents_first};
use cairn_libvirt::{DiskSource, DomainState, DomainXml, Error, Libvirt, LibvirtDomain};
use cairn_nbd::proto::STATE_DIRTY;
use cairn_nbd::{ClientOptions, Endpoint, NbdClient};
use cairn_testkit::tools::{installed, run};

const URI: &str = "qemu:///system";
const MIB: u64 = 1 << 20;
/// The qdev path of the first virtio disk's block backend (HMP `qemu-io -d` takes it).
const VDA: &str = "virtio-disk0/virtio-backend";

/// The tests share one daemon, and one of them restarts it.
static DAEMON: Mutex<()> = Mutex::new(());

/// Starts virtlogd and libvirtd unless a daemon answers; waits until one does.
fn ensure_daemon() {
    for tool in [
        "libvirtd",
        "virtlogd",
        "virsh",
        "qemu-img",
        "qemu-io",
        "qemu-system-x86_64",
    ] {
        assert!(
            installed(tool, &["/usr/sbin"]),
            "{tool} is missing: install libvirt-daemon-system, libvirt-clients, qemu-utils and qemu-system-x86 \
             (scripts/test.sh does)"
        );
    }
    if Libvirt::connect(URI).is_ok() {
        return;
    }
    // No systemd here: the daemons run directly, and end when idle for ten minutes. On the test
    // machines KVM hangs guests, and a libvirtd that sees /dev/kvm probes QEMU's capabilities
    // again (30 s or more) at every domain definition: it runs with /dev/kvm hidden, in a mount
    // namespace of its own, and the test domains use TCG (`<domain type='qemu'>`).
    let _ = Command::new("virtlogd").args(["-d", "--timeout", "600"]).status();
    run(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "if [ -e /dev/kvm ]; then mount --bind /dev/null /dev/kvm; fi; exec libvirtd -d --timeout 600",
    ]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Libvirt::connect(URI) {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => panic!("libvirtd did not answer within 30 s: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Restarts libvirtd (not the domains: they run on without it).
fn restart_daemon() {
    run(Command::new("pkill").args(["-x", "libvirtd"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while Command::new("pgrep")
        .args(["-x", "libvirtd"])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < deadline, "libvirtd did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure_daemon();
}

/// A domain defined for one test, destroyed and undefined at the end (also when the test fails).
struct TestDomain {
    name: String,
    dir: tempfile::TempDir,
}

impl TestDomain {
    fn new(tag: &str) -> TestDomain {
        let dir = tempfile::tempdir().expect("temp dir");
        // QEMU runs as another user: it must reach the images.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let name = format!("cairn-test-{tag}-{}", std::process::id());
        let _ = Command::new("virsh").args(["-c", URI, "destroy", &name]).output();
        let _ = Command::new("virsh")
            .args(["-c", URI, "undefine", &name, "--checkpoints-metadata"])
            .output();
        TestDomain { name, dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes `len` bytes of `byte` at `offset` of the running domain's disk `device`.
    fn guest_write(&self, device: &str, byte: u8, offset: u64, len: u64) {
        let hmp = format!("qemu-io -d {device} \"write -P {byte} {offset} {len}\"");
        let out = run(Command::new("virsh").args(["-c", URI, "qemu-monitor-command", &self.name, "--hmp", &hmp]));
        assert!(!out.contains("rror"), "qemu-io in {}: {out}", self.name);
    }
}

impl Drop for TestDomain {
    fn drop(&mut self) {
        let _ = Command::new("virsh").args(["-c", URI, "destroy", &self.name]).output();
        let _ = Command::new("virsh")
            .args(["-c", URI, "undefine", &self.name, "--checkpoints-metadata"])
            .output();
    }
}

fn domain_xml(name: &str, disks: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>96</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{disks}\
         <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
         <interface type='user'><mac address='52:54:00:aa:bb:01'/><model type='virtio'/></interface>\
         </devices></domain>"
    )
}

fn file_disk(path: &Path, format: &str, dev: &str) -> String {
    format!(
        "<disk type='file' device='disk'><driver name='qemu' type='{format}'/><source file='{}'/>\
         <target dev='{dev}' bus='virtio'/></disk>",
        path.display()
    )
}

/// Reads all of export `export` at `socket`.
fn read_all(socket: &Path, export: &str) -> Vec<u8> {
    let mut c = NbdClient::connect(
        &Endpoint::Unix(socket.to_path_buf()),
        &ClientOptions {
            export: export.into(),
            meta_contexts: vec![],
            timeout: Some(Duration::from_secs(60)),
        },
    )
    .unwrap_or_else(|e| panic!("NBD export {export}: {e}"));
    let mut buf = vec![0; c.size() as usize];
    c.read(0, &mut buf).expect("read the export");
    buf
}

/// The dirty ranges of `bitmap` in export `export`.
fn dirty(socket: &Path, export: &str, bitmap: &str) -> Vec<(u64, u64)> {
    let context = format!("qemu:dirty-bitmap:{bitmap}");
    let mut c = NbdClient::connect(
        &Endpoint::Unix(socket.to_path_buf()),
        &ClientOptions {
            export: export.into(),
            meta_contexts: vec![context.clone()],
            timeout: Some(Duration::from_secs(60)),
        },
    )
    .unwrap_or_else(|e| panic!("NBD export {export}: {e}"));
    assert_eq!(
        c.meta_contexts(),
        std::slice::from_ref(&context),
        "the server exports the bitmap"
    );
    let size = c.size();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut at = 0;
    while at < size {
        let extents = c.block_status(&context, at, size - at).expect("block status");
        assert!(!extents.is_empty(), "block status made no progress at {at}");
        for e in extents {
            if e.flags & STATE_DIRTY != 0 {
                match out.last_mut() {
                    Some(last) if last.0 + last.1 == e.offset => last.1 += e.length,
                    _ => out.push((e.offset, e.length)),
                }
            }
            at = e.offset + e.length;
        }
    }
    out
}

/// A folder for the backup's socket and scratch files that only root and the domain's QEMU user
/// can enter.
fn backup_dir(dom: &LibvirtDomain, parent: &Path, tag: &str) -> PathBuf {
    let live = DomainXml::parse(&dom.xml().expect("live XML")).expect("parses");
    let (uid, gid) = live.qemu_owner.expect("a running domain's XML names its QEMU user");
    let dir = parent.join(tag);
    std::fs::create_dir(&dir).expect("backup dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown to QEMU's user");
    dir
}

fn backup(dom: &LibvirtDomain, dir: &Path, since: Option<&str>, checkpoint: &str) -> PathBuf {
    let socket = dir.join("nbd.sock");
    let plan = PullBackup {
        socket: socket.clone(),
        disks: vec![
            BackupDisk {
                target: "vda".into(),
                scratch: dir.join("vda.scratch"),
                full: false,
            },
            BackupDisk {
                target: "vdb".into(),
                scratch: dir.join("vdb.scratch"),
                full: true,
            },
        ],
        incremental: since.map(str::to_string),
    };
    dom.begin_backup(&plan, Some(&checkpoint_xml(checkpoint, &["vda"], &["vdb"])))
        .unwrap_or_else(|e| panic!("{e}"));
    socket
}

fn expected(size: u64, fills: &[(u64, u64, u8)]) -> Vec<u8> {
    let mut v = vec![0; size as usize];
    for &(offset, len, byte) in fills {
        v[offset as usize..(offset + len) as usize].fill(byte);
    }
    v
}

#[test]
fn discovery_names_every_disk_and_errors_are_clear() {
    let _daemon = DAEMON.lock().unwrap_or_else(|e| e.into_inner());
    ensure_daemon();
    let t = TestDomain::new("disc");
    let qcow = t.path("os.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow)
        .arg("16M"));
    let disks = format!(
        "{}<disk type='network' device='disk'><driver name='qemu' type='raw'/>\
         <source protocol='rbd' name='pool/logs'><host name='192.0.2.10' port='6789'/></source><target dev='vdb' bus='virtio'/></disk>\
         <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/srv/cairn-shared.img'/>\
         <target dev='vdc' bus='virtio'/><shareable/></disk>",
        file_disk(&qcow, "qcow2", "vda")
    );
    let lv = Libvirt::connect(URI).expect("connect");
    lv.define(&domain_xml(&t.name, &disks)).expect("define");
    let all = lv.domains().expect("domains");
    let d = all
        .iter()
        .find(|d| d.xml.name == t.name)
        .expect("the new domain is listed");
    assert_eq!(d.state, DomainState::ShutOff);
    assert!(d.xml.guest_agent);
    assert_eq!(d.xml.macs, ["52:54:00:aa:bb:01"]);
    assert_eq!(d.xml.disks.len(), 4);
    assert_eq!(d.xml.disks[0].source, DiskSource::File(qcow.clone()));
    let reason = |target: &str| {
        let disk = d.xml.disks.iter().find(|k| k.target == target);
        disk.unwrap_or_else(|| panic!("disk {target} listed")).skip_reason()
    };
    assert_eq!(reason("vda"), None);
    assert_eq!(
        reason("vdb").as_deref(),
        Some("a network disk (rbd pool/logs): cairn reads file and block disks")
    );
    assert_eq!(reason("sda").as_deref(), Some("a CD-ROM drive, not a disk"));
    assert!(
        reason("vdc").is_some_and(|r| r.starts_with("shareable")),
        "{:?}",
        reason("vdc")
    );

    // Errors name the URI, the domain and libvirt's cause.
    let e = Libvirt::connect("qemu+tcp://127.0.0.1:1/system")
        .err()
        .expect("nothing listens on port 1");
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with("connecting to libvirt at qemu+tcp://127.0.0.1:1/system: "),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
    let e = Libvirt::connect("nosuchdriver:///x").err().expect("no such driver");
    assert!(
        e.to_string()
            .starts_with("connecting to libvirt at nosuchdriver:///x: "),
        "{e}"
    );
    let e = lv.domain("cairn-no-such-domain").err().expect("no such domain");
    assert_eq!(
        e.to_string(),
        "libvirt host qemu:///system has no domain named \"cairn-no-such-domain\""
    );
    // A shut-off domain has no backup job to start.
    let dom = lv.domain(&t.name).expect("domain");
    let e = dom
        .begin_backup(
            &PullBackup {
                socket: t.path("x.sock"),
                disks: vec![],
                incremental: None,
            },
            None,
        )
        .expect_err("not running");
    assert!(
        e.to_string()
            .starts_with(&format!("domain {}: starting the backup: ", t.name)),
        "{e}"
    );
}

#[test]
fn backups_read_the_point_and_checkpoints_survive_restarts() {
    let _daemon = DAEMON.lock().unwrap_or_else(|e| e.into_inner());
    ensure_daemon();
    let t = TestDomain::new("backup");
    let (vda, vdb) = (t.path("vda.qcow2"), t.path("vdb.raw"));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&vda)
        .arg("64M"));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&vdb)
        .arg("16M"));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 171 0 4M"])
        .arg(&vda));
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 17 0 1M"])
        .arg(&vdb));
    let lv = Libvirt::connect(URI).expect("connect");
    let disks = file_disk(&vda, "qcow2", "vda") + &file_disk(&vdb, "raw", "vdb");
    let dom = lv.define(&domain_xml(&t.name, &disks)).expect("define");
    dom.start().expect("start");
    assert_eq!(dom.state().expect("state"), DomainState::Running);

    // Full: every byte of both disks, and checkpoint c1 on the qcow2 disk.
    let dir = backup_dir(&dom, t.dir.path(), "b1");
    let socket = backup(&dom, &dir, None, "c1");
    let exports = dom.backup_exports().expect("exports");
    assert_eq!(
        exports.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
        ["vda", "vdb"]
    );
    assert!(exports.iter().all(|e| e.bitmap.is_none()), "{exports:?}");
    // The guest writes during the backup: the backup still reads the point in time.
    t.guest_write(VDA, 0xee, 0, 64 << 10);
    assert!(
        read_all(&socket, "vda") == expected(64 * MIB, &[(0, 4 * MIB, 171)]),
        "vda at the full backup"
    );
    assert!(
        read_all(&socket, "vdb") == expected(16 * MIB, &[(0, MIB, 17)]),
        "vdb at the full backup"
    );
    dom.end_backup().expect("end");
    let cps = dom.checkpoints().expect("checkpoints");
    assert_eq!(cps.iter().map(|(c, _)| c.name.as_str()).collect::<Vec<_>>(), ["c1"]);
    assert_eq!(cps[0].0.disks, ["vda"]);

    // Incremental since c1: the dirty bitmap holds exactly the guest's writes since c1.
    t.guest_write(VDA, 0xcd, MIB, 64 << 10);
    let dir = backup_dir(&dom, t.dir.path(), "b2");
    let socket = backup(&dom, &dir, Some("c1"), "c2");
    let exports = dom.backup_exports().expect("exports");
    let vda_export = exports.iter().find(|e| e.target == "vda").expect("vda exported");
    assert_eq!(vda_export.since.as_deref(), Some("c1"));
    let bitmap = vda_export
        .bitmap
        .clone()
        .expect("an incremental export carries a bitmap");
    assert_eq!(dirty(&socket, "vda", &bitmap), [(0, 64 << 10), (MIB, 64 << 10)]);
    let now = read_all(&socket, "vda");
    assert!(
        now[..64 << 10].iter().all(|&b| b == 0xee)
            && now[MIB as usize..(MIB + (64 << 10)) as usize]
                .iter()
                .all(|&b| b == 0xcd)
    );
    assert!(
        read_all(&socket, "vdb") == expected(16 * MIB, &[(0, MIB, 17)]),
        "the raw disk is read whole"
    );
    dom.end_backup().expect("end");

    // The domain restarts: its checkpoints and bitmaps stay.
    dom.destroy().expect("stop");
    dom.start().expect("start again");
    t.guest_write(VDA, 0x5a, 8 * MIB, 128 << 10);
    // libvirtd restarts: it finds them again.
    restart_daemon();
    let lv = Libvirt::connect(URI).expect("reconnect");
    let dom = lv.domain(&t.name).expect("domain after the restart");
    let cps = dom.checkpoints().expect("checkpoints");
    assert_eq!(
        cps.iter().map(|(c, _)| c.name.as_str()).collect::<Vec<_>>().len(),
        2,
        "{cps:?}"
    );
    let c2 = cps.iter().find(|(c, _)| c.name == "c2").expect("c2 kept");
    assert_eq!(c2.0.parent.as_deref(), Some("c1"));

    // libvirt loses its records (as after a host reinstall): redefined from the saved XML, the
    // chain goes on from the bitmaps still in the image.
    let saved: Vec<String> = cps.iter().map(|(_, x)| x.clone()).collect();
    dom.delete_checkpoint("c2", true).expect("forget c2");
    dom.delete_checkpoint("c1", true).expect("forget c1");
    assert!(dom.checkpoints().expect("checkpoints").is_empty());
    let e = dom.delete_checkpoint("c1", true).expect_err("gone");
    assert!(
        e.to_string()
            .starts_with(&format!("domain {}: deleting checkpoint c1: ", t.name)),
        "{e}"
    );
    for x in parents_first(&saved).expect("ordered") {
        dom.redefine_checkpoint(x).expect("redefine");
    }
    let dir = backup_dir(&dom, t.dir.path(), "b3");
    let socket = backup(&dom, &dir, Some("c2"), "c3");
    let bitmap = dom
        .backup_exports()
        .expect("exports")
        .into_iter()
        .find(|e| e.target == "vda")
        .and_then(|e| e.bitmap)
        .expect("bitmap");
    assert_eq!(dirty(&socket, "vda", &bitmap), [(8 * MIB, 128 << 10)]);
    dom.end_backup().expect("end");
}
