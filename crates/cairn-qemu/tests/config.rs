//! VM configuration read through QMP, and a second VM started from `command_line`.

mod common;

use std::path::{Path, PathBuf};

use cairn_qemu::config::{LaunchDisk, LaunchSpec, VmConfig, read_config};
use cairn_qemu::process::QemuProcess;
use common::*;

/// The configuration with what legitimately differs between the original and the copy
/// blanked: image files and auto-generated node names.
fn comparable(config: &VmConfig) -> VmConfig {
    let mut c = config.clone();
    for d in &mut c.disks {
        d.file.clear();
        if d.node.starts_with('#') {
            d.node.clear();
        }
    }
    c
}

#[tokio::test]
async fn config_round_trips_through_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (vm, img0) = start_original(d).await;
    let config = read_config(&vm.qmp).await.expect("read_config");
    check_original(&config, &img0);

    // Stable JSON.
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), config);

    let (new0, new1) = restore_daemonized(&config, d).await;
    copy_beside_from_nbd(&config, d, &new0, &new1).await;
    drop(vm);
}

/// Starts the original VM in `d`: a name, a UUID, two vCPUs, a virtio disk given with
/// `-drive`, an IDE disk given with `-blockdev`, a NIC and a guest agent port. Returns it and
/// its first disk's image.
async fn start_original(d: &Path) -> (TestVm, PathBuf) {
    let img0 = d.join("d0.qcow2");
    let img1 = d.join("d1.qcow2");
    qcow2(&img0, 16 * MIB, None);
    qcow2(&img1, 32 * MIB, None);
    let socket = d.join("qmp.sock");
    let mut argv = base_argv(&socket, true);
    argv.extend(
        [
            "-name",
            "web01",
            "-uuid",
            "6f1c2a4e-1111-4222-8333-944455556666",
            "-smp",
            "2",
        ]
        .map(String::from),
    );
    argv.extend([
        "-drive".into(),
        format!("if=none,id=drive0,file={},format=qcow2", img0.display()),
        "-device".into(),
        "virtio-blk-pci,drive=drive0,id=disk0,bootindex=1,serial=SER-0".into(),
    ]);
    argv.extend(blockdev_ide_args(&img1, "fmt1", "disk1", 0));
    argv.extend([
        "-netdev".into(),
        "user,id=net0".into(),
        "-device".into(),
        "virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:12:34:56".into(),
    ]);
    argv.extend(qga_args(&d.join("qga.sock")));
    let vm = start(argv, &socket).await;
    (vm, img0)
}

/// Checks what `read_config` read of the VM [`start_original`] started.
fn check_original(config: &VmConfig, img0: &Path) {
    assert_eq!(config.name.as_deref(), Some("web01"));
    assert_eq!(config.uuid.as_deref(), Some("6f1c2a4e-1111-4222-8333-944455556666"));
    assert!(config.machine.starts_with("pc-i440fx-"), "{}", config.machine);
    assert_eq!(config.accel, "tcg");
    assert_eq!(config.cpus, 2);
    assert_eq!(config.memory, 128 * MIB);
    assert_eq!((config.kernel.as_ref(), config.append.as_ref()), (None, None));
    assert_eq!(config.disks.len(), 2, "{:?}", config.disks);
    let d0 = &config.disks[0];
    assert_eq!((d0.device.as_str(), d0.driver.as_str()), ("disk0", "virtio-blk-pci"));
    assert_eq!(
        (d0.bootindex, d0.serial.as_deref(), d0.backend.as_deref()),
        (Some(1), Some("SER-0"), Some("drive0"))
    );
    assert_eq!(d0.address.get("bus").map(String::as_str), Some("pci.0"));
    assert!(d0.address.contains_key("addr"));
    assert_eq!(
        (d0.size, d0.format.as_str(), d0.file.as_str()),
        (16 * MIB, "qcow2", img0.to_str().unwrap())
    );
    let d1 = &config.disks[1];
    assert_eq!(
        (d1.device.as_str(), d1.driver.as_str(), d1.node.as_str()),
        ("disk1", "ide-hd", "fmt1")
    );
    assert_eq!(d1.address.get("bus").map(String::as_str), Some("ide.0"));
    assert_eq!(d1.address.get("unit").map(String::as_str), Some("0"));
    assert_eq!(d1.bootindex, None);
    assert_eq!(config.nics.len(), 1);
    let nic = &config.nics[0];
    assert_eq!(
        (nic.id.as_str(), nic.model.as_str(), nic.mac.as_str()),
        ("nic0", "virtio-net-pci", "52:54:00:12:34:56")
    );
    assert_eq!(
        (nic.netdev.as_deref(), nic.netdev_type.as_deref()),
        (Some("net0"), Some("user"))
    );
    assert!(config.guest_agent);
    assert_eq!(config.guest_agent_bus.as_deref(), Some("vser0.0"));
    assert_eq!(config.controllers.len(), 1, "{:?}", config.controllers);
    assert_eq!(
        (config.controllers[0].id.as_str(), config.controllers[0].driver.as_str()),
        ("vser0", "virtio-serial-pci")
    );
}

/// Starts a second VM from `config`, on new disks, daemonized, and checks that it reads back
/// as the original. Returns the new disks' images.
async fn restore_daemonized(config: &VmConfig, d: &Path) -> (PathBuf, PathBuf) {
    // A second VM from the configuration, on new disks, daemonized.
    let new0 = d.join("n0.qcow2");
    let new1 = d.join("n1.raw");
    qcow2(&new0, 16 * MIB, None);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "raw",
            new1.to_str().unwrap(),
            &(32 * MIB).to_string(),
        ],
    );
    let socket2 = d.join("qmp2.sock");
    let spec = LaunchSpec {
        name: "web01-restored".into(),
        disks: vec![
            LaunchDisk::File {
                path: new0.clone(),
                format: "qcow2".into(),
            },
            LaunchDisk::File {
                path: new1.clone(),
                format: "raw".into(),
            },
        ],
        qmp: socket2.clone(),
        qga: Some(d.join("qga2.sock")),
        accel: Some("tcg".into()),
        daemonize: true,
        pidfile: Some(d.join("vm2.pid")),
        serial_log: Some(d.join("serial.log")),
        new_macs: false,
    };
    let argv2 = config.command_line(&spec).unwrap();
    assert!(argv2.windows(2).any(|w| w[0] == "-accel" && w[1] == "tcg"), "{argv2:?}");
    assert!(argv2.iter().any(|a| a == "-daemonize"));
    let process = QemuProcess::spawn(&argv2, &socket2, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{argv2:?}"));
    assert!(process.is_daemon());
    let qmp2 = process.connect(TIMEOUT).await.unwrap();
    let copy = read_config(&qmp2).await.unwrap();
    assert_eq!(copy.disks[0].file, new0.to_str().unwrap());
    assert_eq!(copy.disks[1].file, new1.to_str().unwrap());
    assert_eq!(copy.disks[1].format, "raw");
    let mut expected = comparable(config);
    expected.disks[1].format = "raw".into();
    expected.name = Some("web01-restored".into());
    assert_eq!(comparable(&copy), expected, "{argv2:?}");
    assert!(d.join("qga2.sock").exists(), "the copy has its own agent socket");
    assert!(d.join("serial.log").exists(), "serial output goes to the file");
    // Dropping it kills the daemon; the next step opens its disk, so wait until the process is
    // gone and has let go of the image's write lock.
    let pid = cairn_qemu::process::running_pid(&d.join("vm2.pid")).expect("the daemon's pid file");
    drop(process);
    eventually("the restored VM's QEMU to end", async || {
        !cairn_qemu::process::pid_alive(pid)
    })
    .await;
    (new0, new1)
}

/// Starts a copy beside the original: new MACs and UUID, the first disk from an NBD export.
async fn copy_beside_from_nbd(config: &VmConfig, d: &Path, new0: &Path, new1: &Path) {
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let nbd_socket = d.join("nbd.sock");
    let _nbd = Kill(
        std::process::Command::new("qemu-nbd")
            .args([
                "-t",
                "-f",
                "qcow2",
                "-x",
                "disk0",
                "-k",
                nbd_socket.to_str().unwrap(),
                new0.to_str().unwrap(),
            ])
            .spawn()
            .unwrap(),
    );
    // The socket file appears at bind(), before listen(): wait until a connection is accepted
    // (and close it at once; `-t` keeps the server running for the next client).
    eventually("qemu-nbd listening", async || {
        std::os::unix::net::UnixStream::connect(&nbd_socket).is_ok()
    })
    .await;
    let socket3 = d.join("qmp3.sock");
    let spec = LaunchSpec {
        name: "web01-copy".into(),
        disks: vec![
            LaunchDisk::Nbd {
                socket: nbd_socket.clone(),
                export: "disk0".into(),
                node: "ir-disk0".into(),
            },
            LaunchDisk::File {
                path: new1.to_path_buf(),
                format: "raw".into(),
            },
        ],
        qmp: socket3.clone(),
        qga: None,
        accel: Some("tcg".into()),
        new_macs: true,
        ..LaunchSpec::default()
    };
    let argv3 = config.command_line(&spec).unwrap();
    let process = QemuProcess::spawn(&argv3, &socket3, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{argv3:?}"));
    assert!(!process.is_daemon());
    let qmp3 = process.connect(TIMEOUT).await.unwrap();
    let copy = read_config(&qmp3).await.unwrap();
    assert_eq!(copy.disks[0].node, "ir-disk0");
    assert_eq!(
        (copy.disks[0].device.as_str(), copy.disks[0].driver.as_str()),
        ("disk0", "virtio-blk-pci")
    );
    assert_eq!(copy.disks[0].bootindex, Some(1));
    assert_ne!(copy.nics[0].mac, config.nics[0].mac);
    assert!(copy.nics[0].mac.starts_with("52:54:00:"));
    assert_ne!(copy.uuid, config.uuid);
    assert!(!copy.guest_agent, "no agent socket asked");
    let disks = cairn_qemu::disks::list_disks(&qmp3).await.unwrap();
    assert!(disks[0].file.contains("nbd"), "{:?}", disks[0]);
}

#[tokio::test]
async fn empty_cdroms_are_skipped_and_discs_are_removable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("d0.qcow2");
    qcow2(&img, 16 * MIB, None);
    let iso = d.join("disc.iso");
    std::fs::write(&iso, vec![0u8; 1 << 20]).unwrap();
    let socket = d.join("qmp.sock");
    let mut argv = base_argv(&socket, true);
    argv.extend(drive_args(&img, "drive0", "disk0"));
    argv.extend([
        "-device".into(),
        "ide-cd,id=cd0,bus=ide.1,unit=0".into(),
        "-drive".into(),
        format!(
            "if=none,id=cdrom1,media=cdrom,file={},format=raw,readonly=on",
            iso.display()
        ),
        "-device".into(),
        "ide-cd,id=cd1,drive=cdrom1,bus=ide.1,unit=1".into(),
    ]);
    let vm = start(argv, &socket).await;
    let disks = cairn_qemu::disks::list_disks(&vm.qmp).await.unwrap();
    let ids: Vec<&str> = disks.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(ids, vec!["disk0", "cd1"]);
    assert!(!disks[0].removable && !disks[0].read_only);
    assert!(disks[1].removable && disks[1].read_only, "{:?}", disks[1]);
    assert_eq!((disks[1].format.as_str(), disks[1].virtual_size), ("raw", 1 << 20));
    let config = read_config(&vm.qmp).await.unwrap();
    assert_eq!(config.disks[1].driver, "ide-cd");
    assert!(config.disks[1].removable);
}
