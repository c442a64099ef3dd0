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

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod identity;
mod launch;
mod read;

pub use read::read_config;

/// The guest agent's virtio-serial port name.
pub const GUEST_AGENT_PORT: &str = "org.qemu.guest_agent.0";

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
