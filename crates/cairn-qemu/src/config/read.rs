//! Reading a running VM's configuration through QMP (and HMP `info network`).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::{DeviceConfig, DiskConfig, GUEST_AGENT_PORT, NicConfig, SmpConfig, VmConfig};
use crate::disks::{LiveDisk, device_path, list_disks};
use crate::qmp::Qmp;
use crate::{Error, Result};

/// Device properties that place a device on its bus (copied as they are).
const ADDRESS_PROPS: &[&str] = &["unit", "scsi-id", "lun", "channel", "chassis", "slot", "port"];

/// Where the QOM tree lists `-device`s: named ones, then anonymous ones.
const PERIPHERAL_ROOTS: [&str; 2] = ["/machine/peripheral", "/machine/peripheral-anon"];

/// Reads the running VM's configuration.
pub async fn read_config(qmp: &Qmp) -> Result<VmConfig> {
    let machine = machine_type(qmp).await?;
    let name = vm_name(qmp).await?;
    let uuid = vm_uuid(qmp).await?;
    let accel = accelerator(qmp).await?;
    let (cpus, cpu_model) = cpus_and_model(qmp).await?;
    let smp = smp_topology(qmp).await;
    let memory = memory_size(qmp).await?;
    let kernel = machine_string(qmp, "kernel").await;
    let initrd = machine_string(qmp, "initrd").await;
    let append = machine_string(qmp, "append").await;
    let firmware = machine_string(qmp, "firmware").await;

    let mut reader = DeviceReader {
        qmp,
        controllers: Vec::new(),
        seen: HashSet::new(),
    };
    let disks = read_disks(&mut reader).await?;
    let Peripherals { nics, guest_agent_bus } = read_peripherals(&mut reader).await?;
    Ok(VmConfig {
        name,
        uuid,
        machine,
        accel,
        cpu_model,
        cpus,
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

/// The machine type without its `-machine` suffix (`pc-i440fx-7.2`).
async fn machine_type(qmp: &Qmp) -> Result<String> {
    let machine_type = qmp.qom_get("/machine", "type").await?;
    Ok(machine_type
        .as_str()
        .ok_or_else(|| Error::Unexpected(format!("machine type is {machine_type}")))?
        .trim_end_matches("-machine")
        .to_owned())
}

/// The VM's `-name`, if it has one.
async fn vm_name(qmp: &Qmp) -> Result<Option<String>> {
    Ok(qmp.execute("query-name", Value::Null).await?["name"]
        .as_str()
        .map(str::to_owned))
}

/// The VM's UUID, `None` when QEMU reports the all-zero one.
async fn vm_uuid(qmp: &Qmp) -> Result<Option<String>> {
    Ok(qmp.execute("query-uuid", Value::Null).await?["UUID"]
        .as_str()
        .filter(|u| !u.chars().all(|c| c == '0' || c == '-'))
        .map(str::to_owned))
}

/// `kvm` when KVM is enabled, else `tcg`.
async fn accelerator(qmp: &Qmp) -> Result<String> {
    let kvm = qmp.execute("query-kvm", Value::Null).await?;
    Ok(if kvm["enabled"].as_bool() == Some(true) {
        "kvm"
    } else {
        "tcg"
    }
    .to_owned())
}

/// The number of online vCPUs and the first one's CPU model (`qemu64`, `host`, ...).
async fn cpus_and_model(qmp: &Qmp) -> Result<(u32, Option<String>)> {
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
    Ok((cpus_fast.len() as u32, cpu_model))
}

/// The CPU topology, when QEMU reports all of it.
async fn smp_topology(qmp: &Qmp) -> Option<SmpConfig> {
    qmp.qom_get("/machine", "smp").await.ok().and_then(|s| {
        let n = |k: &str| s[k].as_u64().map(|v| v as u32);
        Some(SmpConfig {
            sockets: n("sockets")?,
            cores: n("cores")?,
            threads: n("threads")?,
            max_cpus: n("maxcpus")?,
        })
    })
}

/// The VM's base memory in bytes.
async fn memory_size(qmp: &Qmp) -> Result<u64> {
    qmp.execute("query-memory-size-summary", Value::Null).await?["base-memory"]
        .as_u64()
        .ok_or_else(|| Error::Unexpected("query-memory-size-summary without base-memory".into()))
}

/// A non-empty string property of `/machine` (`kernel`, `initrd`, `append`, `firmware`).
async fn machine_string(qmp: &Qmp, prop: &str) -> Option<String> {
    qmp.qom_get("/machine", prop)
        .await
        .ok()
        .and_then(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
}

/// Every disk in `query-block` order, with the guest device it sits on.
async fn read_disks(reader: &mut DeviceReader<'_>) -> Result<Vec<DiskConfig>> {
    let mut disks = Vec::new();
    for (i, disk) in list_disks(reader.qmp).await?.into_iter().enumerate() {
        disks.push(read_disk(reader, i, &disk).await?);
    }
    Ok(disks)
}

/// The configuration of the `i`th disk: its guest device (driver, address, boot index,
/// serial; a firmware flash only has a unit) and its image.
async fn read_disk(reader: &mut DeviceReader<'_>, i: usize, disk: &LiveDisk) -> Result<DiskConfig> {
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
    Ok(DiskConfig {
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
    })
}

/// What [`read_peripherals`] finds among the `-device`s besides disks.
struct Peripherals {
    /// The NICs, named ones first.
    nics: Vec<NicConfig>,
    /// The bus of the guest agent's port, when the VM has one.
    guest_agent_bus: Option<String>,
}

/// Walks the `-device`s for NICs and the guest agent's port.
async fn read_peripherals(reader: &mut DeviceReader<'_>) -> Result<Peripherals> {
    let netdev_types = netdev_types(reader.qmp).await;
    let mut found = Peripherals {
        nics: Vec::new(),
        guest_agent_bus: None,
    };
    for root in PERIPHERAL_ROOTS {
        let children = match reader.qmp.qom_list(root).await {
            Ok(c) => c,
            Err(_) => continue,
        };
        for child in children.iter().filter(|c| c.kind.starts_with("child<")) {
            let path = format!("{root}/{}", child.name);
            let driver = child.kind.trim_start_matches("child<").trim_end_matches('>').to_owned();
            if driver == "virtserialport" {
                if reader.string(&path, "name").await.as_deref() == Some(GUEST_AGENT_PORT) {
                    found.guest_agent_bus = Some(reader.address(&path).await?.remove("bus").unwrap_or_default());
                }
                continue;
            }
            let id = if root == PERIPHERAL_ROOTS[0] {
                child.name.clone()
            } else {
                format!("nic{}", found.nics.len())
            };
            if let Some(nic) = read_nic(reader, &path, id, driver, &netdev_types).await? {
                found.nics.push(nic);
            }
        }
    }
    Ok(found)
}

/// The NIC at QOM `path` (`None` when the device has no `mac` and `netdev`, so is no NIC).
async fn read_nic(
    reader: &mut DeviceReader<'_>,
    path: &str,
    id: String,
    model: String,
    netdev_types: &HashMap<String, String>,
) -> Result<Option<NicConfig>> {
    let props = reader.qmp.qom_list(path).await?;
    let has = |name: &str| props.iter().any(|p| p.name == name);
    if !(has("mac") && has("netdev")) {
        return Ok(None);
    }
    let netdev = reader.string(path, "netdev").await.filter(|s| !s.is_empty());
    Ok(Some(NicConfig {
        id,
        model,
        mac: reader.string(path, "mac").await.unwrap_or_default(),
        netdev_type: netdev.as_ref().and_then(|n| netdev_types.get(n).cloned()),
        netdev,
        address: reader.address(path).await?,
        bootindex: reader.bootindex(path).await,
    }))
}

/// Netdev id → type, from HMP `info network` (QMP has no netdev query in 7.2).
async fn netdev_types(qmp: &Qmp) -> HashMap<String, String> {
    let text = qmp.human_monitor_command("info network").await.unwrap_or_default();
    parse_info_network(&text)
}

/// Netdev id → type from the text of `info network` (NICs left out).
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

/// Reads device properties through QOM, collecting the controllers the devices sit on.
struct DeviceReader<'a> {
    qmp: &'a Qmp,
    controllers: Vec<DeviceConfig>,
    seen: HashSet<String>,
}

impl DeviceReader<'_> {
    /// A string property of the device at `path`.
    async fn string(&self, path: &str, prop: &str) -> Option<String> {
        self.qmp
            .qom_get(path, prop)
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    /// The device's boot index, when it has a non-negative one.
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
}
