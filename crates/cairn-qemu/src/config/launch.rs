//! The `qemu-system-x86_64` command line that starts a VM like a saved [`VmConfig`].

use std::collections::BTreeMap;

use super::identity::{random_mac, random_uuid};
use super::{DiskConfig, GUEST_AGENT_PORT, LaunchDisk, LaunchSpec, VmConfig};
use crate::{Error, Result};

/// Escapes a value for QEMU's `key=value,...` option syntax.
fn opt(value: &str) -> String {
    value.replace(',', ",,")
}

/// Appends a device's bus and address properties to its `-device` line.
fn push_address(line: &mut String, address: &BTreeMap<String, String>) {
    for (k, v) in address {
        line.push_str(&format!(",{k}={}", opt(v)));
    }
}

/// Appends `items` to the argument list.
fn push(argv: &mut Vec<String>, items: &[&str]) {
    argv.extend(items.iter().map(|s| (*s).to_owned()));
}

impl VmConfig {
    /// The arguments (without the binary; see [`crate::process::QEMU_BINARY`]) that start an
    /// equivalent VM as `spec` says: same machine, CPU model and topology, memory, kernel,
    /// device ids, buses and addresses, boot order, serial numbers and MACs (unless
    /// `new_macs`); `spec`'s disks; its own QMP (and guest agent) sockets; every NIC on a
    /// user-mode (slirp) netdev; `-nodefaults -display none`.
    pub fn command_line(&self, spec: &LaunchSpec) -> Result<Vec<String>> {
        self.check_spec(spec)?;
        let mut argv = Vec::new();
        self.push_machine(&mut argv, spec);
        self.push_controllers(&mut argv);
        self.push_disks(&mut argv, spec)?;
        self.push_nics(&mut argv, spec);
        self.push_guest_agent(&mut argv, spec);
        push_process(&mut argv, spec);
        Ok(argv)
    }

    /// Fails when `spec` has another number of disks or daemonizes without a pid file.
    fn check_spec(&self, spec: &LaunchSpec) -> Result<()> {
        if spec.disks.len() != self.disks.len() {
            return Err(Error::Invalid(format!(
                "the configuration has {} disks, the launch spec {}",
                self.disks.len(),
                spec.disks.len()
            )));
        }
        if spec.daemonize && spec.pidfile.is_none() {
            return Err(Error::Invalid(
                "-daemonize needs a pid file to find the QEMU process".into(),
            ));
        }
        Ok(())
    }

    /// Name, UUID, machine, accelerator, CPU, memory, firmware and kernel, no default
    /// devices, and the QMP socket.
    fn push_machine(&self, argv: &mut Vec<String>, spec: &LaunchSpec) {
        if !spec.name.is_empty() {
            push(argv, &["-name", &opt(&spec.name)]);
        }
        let uuid = if spec.new_macs {
            Some(random_uuid())
        } else {
            self.uuid.clone()
        };
        if let Some(uuid) = &uuid {
            push(argv, &["-uuid", uuid]);
        }
        push(argv, &["-machine", &self.machine]);
        let accel = spec.accel.as_deref().unwrap_or(&self.accel);
        push(argv, &["-accel", accel]);
        if let Some(model) = &self.cpu_model {
            let model = if accel == "tcg" && model == "host" {
                "max"
            } else {
                model.as_str()
            };
            push(argv, &["-cpu", model]);
        }
        push(argv, &["-smp", &self.smp_arg()]);
        push(argv, &["-m", &self.memory_arg()]);
        if let Some(f) = &self.firmware {
            push(argv, &["-bios", f]);
        }
        if let Some(k) = &self.kernel {
            push(argv, &["-kernel", k]);
        }
        if let Some(i) = &self.initrd {
            push(argv, &["-initrd", i]);
        }
        if let Some(ap) = &self.append {
            push(argv, &["-append", ap]);
        }
        push(argv, &["-nodefaults", "-display", "none"]);
        push(
            argv,
            &[
                "-qmp",
                &format!("unix:{},server=on,wait=off", opt(&spec.qmp.to_string_lossy())),
            ],
        );
    }

    /// The `-smp` value: the vCPU count, with the topology when known.
    fn smp_arg(&self) -> String {
        match &self.smp {
            Some(s) => format!(
                "cpus={},sockets={},cores={},threads={},maxcpus={}",
                self.cpus, s.sockets, s.cores, s.threads, s.max_cpus
            ),
            None => self.cpus.to_string(),
        }
    }

    /// The `-m` value: whole MiB when exact, else KiB.
    fn memory_arg(&self) -> String {
        if self.memory.is_multiple_of(1 << 20) {
            format!("{}M", self.memory >> 20)
        } else {
            format!("{}k", self.memory >> 10)
        }
    }

    /// One `-device` per controller, parents first.
    fn push_controllers(&self, argv: &mut Vec<String>) {
        for c in &self.controllers {
            let mut line = format!("{},id={}", c.driver, opt(&c.id));
            push_address(&mut line, &c.address);
            push(argv, &["-device", &line]);
        }
    }

    /// Each disk's backend (`-drive` or `-blockdev`) and, unless it is a firmware flash,
    /// its guest device.
    fn push_disks(&self, argv: &mut Vec<String>, spec: &LaunchSpec) -> Result<()> {
        for (d, launch) in self.disks.iter().zip(&spec.disks) {
            let drive = match launch {
                LaunchDisk::File { path, format } => {
                    let file = path.to_string_lossy();
                    if d.driver == "pflash" {
                        push_pflash(argv, d, format, &file);
                        continue;
                    }
                    push_file_backend(argv, d, format, &file)
                }
                LaunchDisk::Nbd { socket, export, node } => {
                    let blockdev = serde_json::json!({
                        "driver": "raw",
                        "node-name": node,
                        "read-only": d.read_only,
                        "file": {
                            "driver": "nbd",
                            "server": { "type": "unix", "path": socket.to_string_lossy() },
                            "export": export,
                        },
                    });
                    push(argv, &["-blockdev", &blockdev.to_string()]);
                    if d.driver == "pflash" {
                        return Err(Error::Invalid(format!(
                            "{}: a firmware flash cannot come from NBD",
                            d.device
                        )));
                    }
                    node.clone()
                }
            };
            push(argv, &["-device", &disk_device(d, &drive)]);
        }
        Ok(())
    }

    /// Each NIC on a user-mode netdev of its old id, with its old MAC unless `new_macs`.
    fn push_nics(&self, argv: &mut Vec<String>, spec: &LaunchSpec) {
        for nic in &self.nics {
            let netdev_id = nic.netdev.clone().unwrap_or_else(|| format!("{}-net", nic.id));
            push(argv, &["-netdev", &format!("user,id={}", opt(&netdev_id))]);
            let mac = if spec.new_macs { random_mac() } else { nic.mac.clone() };
            let mut line = format!("{},id={},mac={mac},netdev={}", nic.model, opt(&nic.id), opt(&netdev_id));
            push_address(&mut line, &nic.address);
            if let Some(b) = nic.bootindex {
                line.push_str(&format!(",bootindex={b}"));
            }
            push(argv, &["-device", &line]);
        }
    }

    /// The guest agent's socket chardev and port, on the original's virtio-serial bus or on
    /// a new controller; nothing when `spec` has no guest agent socket.
    fn push_guest_agent(&self, argv: &mut Vec<String>, spec: &LaunchSpec) {
        let Some(socket) = &spec.qga else {
            return;
        };
        push(
            argv,
            &[
                "-chardev",
                &format!(
                    "socket,id=cairn-qga,path={},server=on,wait=off",
                    opt(&socket.to_string_lossy())
                ),
            ],
        );
        let mut line = format!("virtserialport,chardev=cairn-qga,name={GUEST_AGENT_PORT}");
        match &self.guest_agent_bus {
            Some(bus) if self.guest_agent && !bus.is_empty() => line.push_str(&format!(",bus={}", opt(bus))),
            _ => {
                push(argv, &["-device", "virtio-serial-pci,id=cairn-vser"]);
                line.push_str(",bus=cairn-vser.0");
            }
        }
        push(argv, &["-device", &line]);
    }
}

/// A firmware flash image file: a `-drive if=pflash` of the disk's unit.
fn push_pflash(argv: &mut Vec<String>, d: &DiskConfig, format: &str, file: &str) {
    let unit = d.address.get("unit").cloned().unwrap_or_else(|| "0".into());
    let mut line = format!("if=pflash,unit={unit},format={},file={}", opt(format), opt(file));
    if d.read_only {
        line.push_str(",readonly=on");
    }
    push(argv, &["-drive", &line]);
}

/// An image file's backend: a `-drive` of the old drive name when the disk had one, else a
/// `-blockdev`. Returns the name the guest device's `drive=` refers to.
fn push_file_backend(argv: &mut Vec<String>, d: &DiskConfig, format: &str, file: &str) -> String {
    let user_node = !d.node.is_empty() && !d.node.starts_with('#');
    match &d.backend {
        // Given with -drive: the copy gets the same drive name.
        Some(backend) => {
            let mut line = format!("if=none,id={},format={},file={}", opt(backend), opt(format), opt(file));
            if user_node {
                line.push_str(&format!(",node-name={}", opt(&d.node)));
            }
            if d.read_only {
                line.push_str(",readonly=on");
            }
            push(argv, &["-drive", &line]);
            backend.clone()
        }
        None => {
            let node = if user_node {
                d.node.clone()
            } else {
                format!("{}-format", d.device)
            };
            let blockdev = serde_json::json!({
                "driver": format,
                "node-name": node,
                "read-only": d.read_only,
                "file": { "driver": "file", "filename": file, "read-only": d.read_only },
            });
            push(argv, &["-blockdev", &blockdev.to_string()]);
            node
        }
    }
}

/// The guest device line of disk `d` on backend `drive`.
fn disk_device(d: &DiskConfig, drive: &str) -> String {
    let mut line = format!("{},id={},drive={}", d.driver, opt(&d.device), opt(drive));
    push_address(&mut line, &d.address);
    if let Some(b) = d.bootindex {
        line.push_str(&format!(",bootindex={b}"));
    }
    if let Some(s) = &d.serial {
        line.push_str(&format!(",serial={}", opt(s)));
    }
    line
}

/// Serial log, `-daemonize` and the pid file.
fn push_process(argv: &mut Vec<String>, spec: &LaunchSpec) {
    if let Some(log) = &spec.serial_log {
        push(argv, &["-serial", &format!("file:{}", log.to_string_lossy())]);
    }
    if spec.daemonize {
        push(argv, &["-daemonize"]);
    }
    if let Some(pidfile) = &spec.pidfile {
        push(argv, &["-pidfile", &pidfile.to_string_lossy()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_escapes_commas_and_maps_host_cpu() {
        let config = VmConfig {
            name: Some("a,b".into()),
            uuid: None,
            machine: "pc-i440fx-7.2".into(),
            accel: "kvm".into(),
            cpu_model: Some("host".into()),
            cpus: 2,
            smp: None,
            memory: 128 << 20,
            kernel: None,
            initrd: None,
            append: None,
            firmware: None,
            controllers: vec![],
            disks: vec![DiskConfig {
                device: "disk0".into(),
                driver: "virtio-blk-pci".into(),
                address: BTreeMap::from([("bus".into(), "pci.0".into()), ("addr".into(), "0x4.0".into())]),
                bootindex: Some(1),
                serial: None,
                backend: None,
                node: "#block1".into(),
                file: "/old.qcow2".into(),
                format: "qcow2".into(),
                size: 1 << 20,
                read_only: false,
                removable: false,
            }],
            nics: vec![],
            guest_agent: false,
            guest_agent_bus: None,
        };
        let spec = LaunchSpec {
            accel: Some("tcg".into()),
            qmp: "/run/q.sock".into(),
            disks: vec![LaunchDisk::File {
                path: "/new,1.qcow2".into(),
                format: "qcow2".into(),
            }],
            ..LaunchSpec::default()
        };
        let argv = config.command_line(&spec).unwrap();
        let joined = argv.join(" ");
        assert!(!joined.contains(" -name "), "no name given: {joined}");
        assert!(joined.contains("-accel tcg -cpu max"), "{joined}");
        assert!(joined.contains("\"filename\":\"/new,1.qcow2\""), "{joined}");
        assert!(
            joined.contains("virtio-blk-pci,id=disk0,drive=disk0-format,addr=0x4.0,bus=pci.0,bootindex=1"),
            "{joined}"
        );
        assert!(joined.contains("-m 128M"), "{joined}");
        let named = LaunchSpec {
            name: "a,b".into(),
            new_macs: true,
            ..spec.clone()
        };
        let joined = config.command_line(&named).unwrap().join(" ");
        assert!(joined.contains("-name a,,b"), "{joined}");
        assert!(joined.contains("-uuid "), "a new uuid: {joined}");
        let wrong = LaunchSpec {
            disks: vec![],
            ..spec.clone()
        };
        assert!(config.command_line(&wrong).is_err());
    }
}
