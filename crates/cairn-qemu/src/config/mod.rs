//! What is needed to start a VM again, read from the running VM through QMP, and the
//! `qemu-system-x86_64` command line that starts an equivalent VM on new disks.
//!
//! Read: machine type, accelerator, CPU model and topology, memory, kernel/initrd/append
//! and firmware when set, disks (guest device, driver, bus address, boot index, serial,
//! image), NICs (model, MAC, netdev), the controllers they sit on, and whether the VM
//! has a guest agent channel. Not read: display, USB, sound and other devices, CPU
//! flags, pflash variables beyond the drive itself, netdev details beyond the type.
//!
//! [`VmConfig`] serialises to stable JSON (field names are part of the restore point).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::disks::{device_path, list_disks};
use crate::qmp::Qmp;
use crate::{Error, Result};

mod identity;
use identity::{random_mac, random_uuid};

/// The guest agent's virtio-serial port name.
pub const GUEST_AGENT_PORT: &str = "org.qemu.guest_agent.0";

/// Device properties that place a device on its bus (copied as they are).
const ADDRESS_PROPS: &[&str] = &["unit", "scsi-id", "lun", "channel", "chassis", "slot", "port"];

/// A VM's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// `-name`.
    pub name: Option<String>,
    /// `-uuid` (absent when QEMU reports the all-zero UUID).
    pub uuid: Option<String>,
    /// Machine type (`pc-i440fx-7.2`, `pc-q35-7.2`).
    pub machine: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// CPU model (`qemu64`, `host`, `max`, ...).
    pub cpu_model: Option<String>,
    /// Online vCPUs.
    pub cpus: u32,
    /// Topology, when QEMU reports it.
    pub smp: Option<SmpConfig>,
    /// RAM in bytes.
    pub memory: u64,
    /// `-kernel`.
    pub kernel: Option<String>,
    /// `-initrd`.
    pub initrd: Option<String>,
    /// `-append`.
    pub append: Option<String>,
    /// `-bios`.
    pub firmware: Option<String>,
    /// Controllers the disks, NICs and agent port sit on (emitted first; parents before children).
    pub controllers: Vec<DeviceConfig>,
    /// Disks in `query-block` order.
    pub disks: Vec<DiskConfig>,
    /// Network cards.
    pub nics: Vec<NicConfig>,
    /// True when the VM has a guest agent port (`org.qemu.guest_agent.0`).
    pub guest_agent: bool,
    /// The bus of the guest agent port (`vser0.0`).
    pub guest_agent_bus: Option<String>,
}

/// CPU topology (`-smp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmpConfig {
    /// Sockets.
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
    /// Maximum vCPUs (hotplug).
    pub max_cpus: u32,
}

/// A device that other devices sit on (SCSI/virtio-serial controller, PCIe port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// `-device` id.
    pub id: String,
    /// Driver (`virtio-scsi-pci`, `virtio-serial-pci`, `pcie-root-port`).
    pub driver: String,
    /// Addressing properties (`bus`, `addr`, `chassis`, ...).
    pub address: BTreeMap<String, String>,
}

/// A disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// Guest device id (`-device …,id=`); `LaunchDisk::device` refers to it.
    pub device: String,
    /// Device driver (`virtio-blk-pci`, `ide-hd`, `scsi-hd`; `pflash` for firmware flash).
    pub driver: String,
    /// Addressing properties (`bus`, `addr`, `unit`, ...).
    pub address: BTreeMap<String, String>,
    /// Boot index.
    pub bootindex: Option<i64>,
    /// Serial number the guest sees.
    pub serial: Option<String>,
    /// Drive name when given with `-drive` (kept so the restored VM has the same one).
    pub backend: Option<String>,
    /// Format node name as read (auto names `#block…` are not reused).
    pub node: String,
    /// Image file.
    pub file: String,
    /// Image format.
    pub format: String,
    /// Size in bytes.
    pub size: u64,
    /// Read-only for the guest.
    pub read_only: bool,
    /// Removable media (a CD-ROM with a disc).
    #[serde(default)]
    pub removable: bool,
}

/// A network card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    /// `-device` id.
    pub id: String,
    /// Model / driver (`virtio-net-pci`, `e1000`, ...).
    pub model: String,
    /// MAC address.
    pub mac: String,
    /// The netdev id it is connected to.
    pub netdev: Option<String>,
    /// The netdev's type (`user`, `tap`, `bridge`, ...).
    pub netdev_type: Option<String>,
    /// Addressing properties.
    pub address: BTreeMap<String, String>,
    /// Boot index.
    pub bootindex: Option<i64>,
}

/// What a disk of the started VM reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LaunchDisk {
    /// An image file (format as QEMU names it: `qcow2`, `raw`, `vpc`, `vhdx`).
    File {
        /// Image file.
        path: PathBuf,
        /// Image format.
        format: String,
    },
    /// An NBD export on a Unix socket (instant recovery), attached as a `raw` node named
    /// `node` over an `nbd` protocol node, so it can be mirrored from later.
    Nbd {
        /// The NBD server's socket.
        socket: PathBuf,
        /// Export name.
        export: String,
        /// Node name of the disk's top node.
        node: String,
    },
}

/// How to start a VM from a [`VmConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// `-name`.
    pub name: String,
    /// The disks, in [`VmConfig::disks`] order (one each).
    pub disks: Vec<LaunchDisk>,
    /// The VM's QMP socket (`-qmp unix:…,server=on,wait=off`).
    pub qmp: PathBuf,
    /// The VM's guest agent socket: a chardev and a `virtserialport`
    /// `org.qemu.guest_agent.0` (on the original's virtio-serial bus, else on a new controller).
    pub qga: Option<PathBuf>,
    /// Accelerator override (`tcg`); `None` keeps the saved one. Under TCG a `host` CPU becomes `max`.
    pub accel: Option<String>,
    /// `-daemonize` (needs `pidfile`).
    pub daemonize: bool,
    /// `-pidfile`.
    pub pidfile: Option<PathBuf>,
    /// Serial port output into this file.
    pub serial_log: Option<PathBuf>,
    /// New MAC addresses and a new UUID (a restored copy beside the original).
    pub new_macs: bool,
}

/// Reads the running VM's configuration.
pub async fn read_config(qmp: &Qmp) -> Result<VmConfig> {
    let machine_type = qmp.qom_get("/machine", "type").await?;
    let machine = machine_type
        .as_str()
        .ok_or_else(|| Error::Unexpected(format!("machine type is {machine_type}")))?
        .trim_end_matches("-machine")
        .to_owned();
    let name = qmp.execute("query-name", Value::Null).await?["name"]
        .as_str()
        .map(str::to_owned);
    let uuid = qmp.execute("query-uuid", Value::Null).await?["UUID"]
        .as_str()
        .filter(|u| !u.chars().all(|c| c == '0' || c == '-'))
        .map(str::to_owned);
    let kvm = qmp.execute("query-kvm", Value::Null).await?;
    let accel = if kvm["enabled"].as_bool() == Some(true) {
        "kvm"
    } else {
        "tcg"
    }
    .to_owned();
    let cpus_fast: Vec<Value> = qmp.execute_as("query-cpus-fast", Value::Null).await?;
    let cpu_model = match cpus_fast.first().and_then(|c| c["qom-path"].as_str()) {
        Some(path) => qmp.qom_get(path, "type").await.ok().and_then(|t| {
            t.as_str().map(|s| {
                s.trim_end_matches("-x86_64-cpu")
                    .trim_end_matches("-i386-cpu")
                    .to_owned()
            })
        }),
        None => None,
    };
    let smp = qmp.qom_get("/machine", "smp").await.ok().and_then(|s| {
        let n = |k: &str| s[k].as_u64().map(|v| v as u32);
        Some(SmpConfig {
            sockets: n("sockets")?,
            cores: n("cores")?,
            threads: n("threads")?,
            max_cpus: n("maxcpus")?,
        })
    });
    let memory = qmp.execute("query-memory-size-summary", Value::Null).await?["base-memory"]
        .as_u64()
        .ok_or_else(|| Error::Unexpected("query-memory-size-summary without base-memory".into()))?;
    let machine_str = async |prop: &str| -> Option<String> {
        qmp.qom_get("/machine", prop)
            .await
            .ok()
            .and_then(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
    };
    let kernel = machine_str("kernel").await;
    let initrd = machine_str("initrd").await;
    let append = machine_str("append").await;
    let firmware = machine_str("firmware").await;

    let mut reader = DeviceReader {
        qmp,
        controllers: Vec::new(),
        seen: HashSet::new(),
    };
    let mut disks = Vec::new();
    for (i, disk) in list_disks(qmp).await?.into_iter().enumerate() {
        let path = device_path(&disk.qdev);
        let driver = reader.string(&path, "type").await.unwrap_or_default();
        let (driver, address, bootindex, serial) = if driver == "cfi.pflash01" {
            let unit = disk
                .backend
                .as_deref()
                .and_then(|b| b.strip_prefix("pflash"))
                .unwrap_or("0")
                .to_owned();
            (
                "pflash".to_owned(),
                BTreeMap::from([("unit".to_owned(), unit)]),
                None,
                None,
            )
        } else {
            let address = reader.address(&path).await?;
            let bootindex = reader.bootindex(&path).await;
            let serial = reader.string(&path, "serial").await.filter(|s| !s.is_empty());
            (driver, address, bootindex, serial)
        };
        let device = if disk.device.contains('/') {
            format!("disk{i}")
        } else {
            disk.device.clone()
        };
        disks.push(DiskConfig {
            device,
            driver,
            address,
            bootindex,
            serial,
            backend: disk.backend.clone(),
            node: disk.node.clone(),
            file: disk.file.clone(),
            format: disk.format.clone(),
            size: disk.virtual_size,
            read_only: disk.read_only,
            removable: disk.removable,
        });
    }

    let netdev_types = netdev_types(qmp).await;
    let mut nics = Vec::new();
    let mut guest_agent_bus = None;
    for root in ["/machine/peripheral", "/machine/peripheral-anon"] {
        let children = match qmp.qom_list(root).await {
            Ok(c) => c,
            Err(_) => continue,
        };
        for child in children.iter().filter(|c| c.kind.starts_with("child<")) {
            let path = format!("{root}/{}", child.name);
            let driver = child.kind.trim_start_matches("child<").trim_end_matches('>').to_owned();
            if driver == "virtserialport" {
                if reader.string(&path, "name").await.as_deref() == Some(GUEST_AGENT_PORT) {
                    guest_agent_bus = Some(reader.address(&path).await?.remove("bus").unwrap_or_default());
                }
                continue;
            }
            let props = qmp.qom_list(&path).await?;
            let has = |name: &str| props.iter().any(|p| p.name == name);
            if !(has("mac") && has("netdev")) {
                continue;
            }
            let netdev = reader.string(&path, "netdev").await.filter(|s| !s.is_empty());
            let id = if root == "/machine/peripheral" {
                child.name.clone()
            } else {
                format!("nic{}", nics.len())
            };
            nics.push(NicConfig {
                id,
                model: driver,
                mac: reader.string(&path, "mac").await.unwrap_or_default(),
                netdev_type: netdev.as_ref().and_then(|n| netdev_types.get(n).cloned()),
                netdev,
                address: reader.address(&path).await?,
                bootindex: reader.bootindex(&path).await,
            });
        }
    }
    Ok(VmConfig {
        name,
        uuid,
        machine,
        accel,
        cpu_model,
        cpus: cpus_fast.len() as u32,
        smp,
        memory,
        kernel,
        initrd,
        append,
        firmware,
        controllers: reader.controllers,
        disks,
        nics,
        guest_agent: guest_agent_bus.is_some(),
        guest_agent_bus,
    })
}

/// Netdev id → type, from HMP `info network` (QMP has no netdev query in 7.2).
async fn netdev_types(qmp: &Qmp) -> HashMap<String, String> {
    let text = qmp.human_monitor_command("info network").await.unwrap_or_default();
    parse_info_network(&text)
}

fn parse_info_network(text: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches('\\').trim();
        let Some((id, rest)) = line.split_once(": ") else {
            continue;
        };
        let Some(kind) = rest.split(',').find_map(|kv| kv.strip_prefix("type=")) else {
            continue;
        };
        if kind != "nic" {
            map.insert(id.to_owned(), kind.to_owned());
        }
    }
    map
}

struct DeviceReader<'a> {
    qmp: &'a Qmp,
    controllers: Vec<DeviceConfig>,
    seen: HashSet<String>,
}

impl DeviceReader<'_> {
    async fn string(&self, path: &str, prop: &str) -> Option<String> {
        self.qmp
            .qom_get(path, prop)
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    async fn bootindex(&self, path: &str) -> Option<i64> {
        self.qmp
            .qom_get(path, "bootindex")
            .await
            .ok()
            .and_then(|v| v.as_i64())
            .filter(|&b| b >= 0)
    }

    /// The device's bus and addressing properties; records the controller that owns the
    /// bus (and its own controllers) when it is a `-device` of its own.
    async fn address(&mut self, path: &str) -> Result<BTreeMap<String, String>> {
        let mut address = BTreeMap::new();
        let bus_path = self.string(path, "parent_bus").await.unwrap_or_default();
        if let Some(bus) = bus_path.rsplit('/').next().filter(|b| !b.is_empty()) {
            address.insert("bus".to_owned(), bus.to_owned());
        }
        if let Ok(addr) = self.qmp.qom_get(path, "addr").await
            && let Some(devfn) = addr.as_i64().filter(|&d| d >= 0)
        {
            address.insert("addr".to_owned(), format!("0x{:x}.{:x}", devfn >> 3, devfn & 7));
        }
        for prop in ADDRESS_PROPS {
            if let Ok(v) = self.qmp.qom_get(path, prop).await {
                match v {
                    Value::Number(n) if n.as_i64().is_some_and(|x| x >= 0) => {
                        address.insert((*prop).to_owned(), n.to_string());
                    }
                    Value::String(s) if !s.is_empty() => {
                        address.insert((*prop).to_owned(), s);
                    }
                    _ => {}
                }
            }
        }
        // The controller: the peripheral whose subtree holds the bus.
        if let Some(controller) = controller_path(&bus_path)
            && self.seen.insert(controller.clone())
        {
            let driver = self.string(&controller, "type").await.unwrap_or_default();
            let caddress = Box::pin(self.address(&controller)).await?;
            let id = match controller.strip_prefix("/machine/peripheral/") {
                Some(id) => id.to_owned(),
                // An anonymous controller: name it after its bus so the bus keeps its name.
                None => address
                    .get("bus")
                    .map(|b| b.rsplit_once('.').map(|(stem, _)| stem).unwrap_or(b).to_owned())
                    .unwrap_or_else(|| format!("ctl{}", self.controllers.len())),
            };
            self.controllers.push(DeviceConfig {
                id,
                driver,
                address: caddress,
            });
        }
        Ok(address)
    }
}

/// `/machine/peripheral/vser0/virtio-backend/vser0.0` → `/machine/peripheral/vser0`.
fn controller_path(bus_path: &str) -> Option<String> {
    for root in ["/machine/peripheral/", "/machine/peripheral-anon/"] {
        if let Some(rest) = bus_path.strip_prefix(root) {
            let name = rest.split('/').next()?;
            return Some(format!("{root}{name}"));
        }
    }
    None
}

/// Escapes a value for QEMU's `key=value,...` option syntax.
fn opt(value: &str) -> String {
    value.replace(',', ",,")
}

fn push_address(line: &mut String, address: &BTreeMap<String, String>) {
    for (k, v) in address {
        line.push_str(&format!(",{k}={}", opt(v)));
    }
}

impl VmConfig {
    /// The arguments (without the binary; see [`crate::process::QEMU_BINARY`]) that start an
    /// equivalent VM as `spec` says: same machine, CPU model and topology, memory, kernel,
    /// device ids, buses and addresses, boot order, serial numbers and MACs (unless
    /// `new_macs`); `spec`'s disks; its own QMP (and guest agent) sockets; every NIC on a
    /// user-mode (slirp) netdev; `-nodefaults -display none`.
    pub fn command_line(&self, spec: &LaunchSpec) -> Result<Vec<String>> {
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
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
        if !spec.name.is_empty() {
            push(&["-name", &opt(&spec.name)]);
        }
        let uuid = if spec.new_macs {
            Some(random_uuid())
        } else {
            self.uuid.clone()
        };
        if let Some(uuid) = &uuid {
            push(&["-uuid", uuid]);
        }
        push(&["-machine", &self.machine]);
        let accel = spec.accel.as_deref().unwrap_or(&self.accel);
        push(&["-accel", accel]);
        if let Some(model) = &self.cpu_model {
            let model = if accel == "tcg" && model == "host" {
                "max"
            } else {
                model.as_str()
            };
            push(&["-cpu", model]);
        }
        let smp = match &self.smp {
            Some(s) => format!(
                "cpus={},sockets={},cores={},threads={},maxcpus={}",
                self.cpus, s.sockets, s.cores, s.threads, s.max_cpus
            ),
            None => self.cpus.to_string(),
        };
        push(&["-smp", &smp]);
        let memory = if self.memory.is_multiple_of(1 << 20) {
            format!("{}M", self.memory >> 20)
        } else {
            format!("{}k", self.memory >> 10)
        };
        push(&["-m", &memory]);
        if let Some(f) = &self.firmware {
            push(&["-bios", f]);
        }
        if let Some(k) = &self.kernel {
            push(&["-kernel", k]);
        }
        if let Some(i) = &self.initrd {
            push(&["-initrd", i]);
        }
        if let Some(ap) = &self.append {
            push(&["-append", ap]);
        }
        push(&["-nodefaults", "-display", "none"]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", opt(&spec.qmp.to_string_lossy())),
        ]);

        for c in &self.controllers {
            let mut line = format!("{},id={}", c.driver, opt(&c.id));
            push_address(&mut line, &c.address);
            push(&["-device", &line]);
        }
        for (d, launch) in self.disks.iter().zip(&spec.disks) {
            let user_node = !d.node.is_empty() && !d.node.starts_with('#');
            let drive = match launch {
                LaunchDisk::File { path, format } => {
                    let file = path.to_string_lossy();
                    if d.driver == "pflash" {
                        let unit = d.address.get("unit").cloned().unwrap_or_else(|| "0".into());
                        let mut line = format!("if=pflash,unit={unit},format={},file={}", opt(format), opt(&file));
                        if d.read_only {
                            line.push_str(",readonly=on");
                        }
                        push(&["-drive", &line]);
                        continue;
                    }
                    match &d.backend {
                        // Given with -drive: the copy gets the same drive name.
                        Some(backend) => {
                            let mut line =
                                format!("if=none,id={},format={},file={}", opt(backend), opt(format), opt(&file));
                            if user_node {
                                line.push_str(&format!(",node-name={}", opt(&d.node)));
                            }
                            if d.read_only {
                                line.push_str(",readonly=on");
                            }
                            push(&["-drive", &line]);
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
                            push(&["-blockdev", &blockdev.to_string()]);
                            node
                        }
                    }
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
                    push(&["-blockdev", &blockdev.to_string()]);
                    if d.driver == "pflash" {
                        return Err(Error::Invalid(format!(
                            "{}: a firmware flash cannot come from NBD",
                            d.device
                        )));
                    }
                    node.clone()
                }
            };
            let mut line = format!("{},id={},drive={}", d.driver, opt(&d.device), opt(&drive));
            push_address(&mut line, &d.address);
            if let Some(b) = d.bootindex {
                line.push_str(&format!(",bootindex={b}"));
            }
            if let Some(s) = &d.serial {
                line.push_str(&format!(",serial={}", opt(s)));
            }
            push(&["-device", &line]);
        }
        for nic in &self.nics {
            let netdev_id = nic.netdev.clone().unwrap_or_else(|| format!("{}-net", nic.id));
            push(&["-netdev", &format!("user,id={}", opt(&netdev_id))]);
            let mac = if spec.new_macs { random_mac() } else { nic.mac.clone() };
            let mut line = format!("{},id={},mac={mac},netdev={}", nic.model, opt(&nic.id), opt(&netdev_id));
            push_address(&mut line, &nic.address);
            if let Some(b) = nic.bootindex {
                line.push_str(&format!(",bootindex={b}"));
            }
            push(&["-device", &line]);
        }
        if let Some(socket) = &spec.qga {
            push(&[
                "-chardev",
                &format!(
                    "socket,id=cairn-qga,path={},server=on,wait=off",
                    opt(&socket.to_string_lossy())
                ),
            ]);
            let mut line = format!("virtserialport,chardev=cairn-qga,name={GUEST_AGENT_PORT}");
            match &self.guest_agent_bus {
                Some(bus) if self.guest_agent && !bus.is_empty() => line.push_str(&format!(",bus={}", opt(bus))),
                _ => {
                    push(&["-device", "virtio-serial-pci,id=cairn-vser"]);
                    line.push_str(",bus=cairn-vser.0");
                }
            }
            push(&["-device", &line]);
        }
        if let Some(log) = &spec.serial_log {
            push(&["-serial", &format!("file:{}", log.to_string_lossy())]);
        }
        if spec.daemonize {
            push(&["-daemonize"]);
        }
        if let Some(pidfile) = &spec.pidfile {
            push(&["-pidfile", &pidfile.to_string_lossy()]);
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_network_types() {
        let text = concat!(
            "nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n",
            " \\ net0: index=0,type=user,net=10.0.2.0,restrict=off\r\n"
        );
        let map = parse_info_network(text);
        assert_eq!(map.get("net0").map(String::as_str), Some("user"));
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn controller_paths() {
        assert_eq!(
            controller_path("/machine/peripheral/vser0/virtio-backend/vser0.0").as_deref(),
            Some("/machine/peripheral/vser0")
        );
        assert_eq!(controller_path("/machine/i440fx/pci.0"), None);
        assert_eq!(controller_path("/machine/unattached/device[18]/ide.0"), None);
    }

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
