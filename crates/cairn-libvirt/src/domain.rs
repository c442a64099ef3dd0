//! What cairn reads from a libvirt domain's XML: its identity, its disks (and which of them a
//! backup can read, with the reason for each one it cannot), its guest agent channel, its network
//! cards' MAC addresses and the user its QEMU runs as.
//!
//! The XML comes from libvirt (`virDomainGetXMLDesc`), which is outside input: every element and
//! attribute is optional here, and what cannot be understood is an [`XmlError`] naming it, never
//! a panic.

use std::path::PathBuf;

use crate::xml::{XmlError, attr, child, children, parse, text};

/// A domain as its XML describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainXml {
    /// The domain's name (unique on its host).
    pub name: String,
    /// Its UUID (unique on its host, kept across restarts).
    pub uuid: String,
    /// The hypervisor type (`kvm`, `qemu`…).
    pub hypervisor: String,
    /// Its disks, in the XML's order.
    pub disks: Vec<Disk>,
    /// Whether it has a QEMU guest agent channel (`org.qemu.guest_agent.0`).
    pub guest_agent: bool,
    /// The MAC addresses of its network cards.
    pub macs: Vec<String>,
    /// The user and group ids its QEMU runs as (the DAC label `+UID:+GID`), when the XML says
    /// (the live XML of a running domain does).
    pub qemu_owner: Option<(u32, u32)>,
}

/// One `<disk>` of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The guest's name for it (`vda`, `sdb`…): libvirt's key for the disk in backup and
    /// checkpoint XML.
    pub target: String,
    /// What the guest sees.
    pub device: DiskDevice,
    /// Where its data is.
    pub source: DiskSource,
    /// The image format of a file or block source (`qcow2`, `raw`…), when given.
    pub format: Option<String>,
    /// Marked read-only.
    pub readonly: bool,
    /// Marked shareable (attached to several domains at once).
    pub shareable: bool,
}

/// What kind of device a disk is to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskDevice {
    /// A hard disk.
    Disk,
    /// A CD-ROM drive.
    Cdrom,
    /// A floppy drive.
    Floppy,
    /// A SCSI LUN passed through.
    Lun,
}

/// Where a disk's data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// An image file on the host.
    File(PathBuf),
    /// A block device on the host.
    Block(PathBuf),
    /// A disk served over the network (`rbd`, `iscsi`, `nbd`, `gluster`…).
    Network {
        /// The protocol.
        protocol: String,
        /// The image's name on its server, when given.
        name: Option<String>,
    },
    /// A volume of a libvirt storage pool.
    Volume {
        /// The pool.
        pool: String,
        /// The volume.
        volume: String,
    },
    /// No medium (an empty CD-ROM drive) or a source type cairn does not know.
    None {
        /// The `type` attribute as written.
        kind: String,
    },
}

impl Disk {
    /// Why a backup cannot read this disk, or `None` when it can (a file or block device that is
    /// a hard disk, neither read-only nor shared).
    pub fn skip_reason(&self) -> Option<String> {
        match self.device {
            DiskDevice::Cdrom => return Some("a CD-ROM drive, not a disk".into()),
            DiskDevice::Floppy => return Some("a floppy drive, not a disk".into()),
            DiskDevice::Lun => return Some("a passed-through SCSI LUN: libvirt cannot back it up".into()),
            DiskDevice::Disk => {}
        }
        match &self.source {
            DiskSource::Network { protocol, name } => {
                return Some(format!(
                    "a network disk ({protocol}{}): cairn reads file and block disks",
                    name.as_ref().map(|n| format!(" {n}")).unwrap_or_default()
                ));
            }
            DiskSource::Volume { pool, volume } => {
                return Some(format!(
                    "a volume of storage pool {pool} ({volume}): cairn reads file and block disks"
                ));
            }
            DiskSource::None { kind } => return Some(format!("no readable source (type {kind:?})")),
            DiskSource::File(_) | DiskSource::Block(_) => {}
        }
        if self.shareable {
            return Some("shareable (attached to several domains): no consistent point-in-time view".into());
        }
        if self.readonly {
            return Some("read-only: it holds no data of the domain's own".into());
        }
        None
    }

    /// The host path of a file or block source.
    pub fn path(&self) -> Option<&std::path::Path> {
        match &self.source {
            DiskSource::File(p) | DiskSource::Block(p) => Some(p),
            _ => None,
        }
    }
}

impl DomainXml {
    /// Reads a domain's XML.
    pub fn parse(xml: &str) -> Result<DomainXml, XmlError> {
        let doc = parse("domain XML", xml)?;
        let root = doc.root_element();
        if root.tag_name().name() != "domain" {
            return Err(XmlError::new(
                "domain XML",
                format!("the root element is <{}>, not <domain>", root.tag_name().name()),
            ));
        }
        let name = child(root, "name")
            .and_then(text)
            .ok_or_else(|| XmlError::new("domain XML", "no <name>"))?;
        let uuid = child(root, "uuid").and_then(text).unwrap_or_default();
        let hypervisor = attr(root, "type").unwrap_or_default();
        let devices = child(root, "devices");
        let mut disks = Vec::new();
        for d in devices.into_iter().flat_map(|n| children(n, "disk")) {
            disks.push(read_disk(d, &name)?);
        }
        let guest_agent = devices
            .into_iter()
            .flat_map(|n| children(n, "channel"))
            .filter_map(|c| child(c, "target"))
            .any(|t| attr(t, "name").as_deref() == Some("org.qemu.guest_agent.0"));
        let macs = devices
            .into_iter()
            .flat_map(|n| children(n, "interface"))
            .filter_map(|i| child(i, "mac"))
            .filter_map(|m| attr(m, "address"))
            .collect();
        let qemu_owner = children(root, "seclabel")
            .filter(|s| attr(*s, "model").as_deref() == Some("dac"))
            .filter_map(|s| child(s, "label").and_then(text))
            .find_map(|label| dac_ids(&label));
        Ok(DomainXml {
            name,
            uuid,
            hypervisor,
            disks,
            guest_agent,
            macs,
            qemu_owner,
        })
    }

    /// The disks a backup reads (see [`Disk::skip_reason`]).
    pub fn backed_up_disks(&self) -> impl Iterator<Item = &Disk> {
        self.disks.iter().filter(|d| d.skip_reason().is_none())
    }
}

fn read_disk(d: roxmltree::Node<'_, '_>, domain: &str) -> Result<Disk, XmlError> {
    let what = format!("domain {domain}: a <disk>");
    let target = child(d, "target")
        .and_then(|t| attr(t, "dev"))
        .ok_or_else(|| XmlError::new(&what, "no <target dev=…>"))?;
    let device = match attr(d, "device").as_deref() {
        None | Some("disk") => DiskDevice::Disk,
        Some("cdrom") => DiskDevice::Cdrom,
        Some("floppy") => DiskDevice::Floppy,
        Some("lun") => DiskDevice::Lun,
        Some(other) => {
            return Err(XmlError::new(
                &format!("domain {domain}: disk {target}"),
                format!("unknown device {other:?}"),
            ));
        }
    };
    let kind = attr(d, "type").unwrap_or_else(|| "file".into());
    let source = child(d, "source");
    let source = match (kind.as_str(), source) {
        ("file", Some(s)) => attr(s, "file").map(|f| DiskSource::File(f.into())),
        ("block", Some(s)) => attr(s, "dev").map(|f| DiskSource::Block(f.into())),
        ("network", Some(s)) => Some(DiskSource::Network {
            protocol: attr(s, "protocol").unwrap_or_else(|| "unknown".into()),
            name: attr(s, "name"),
        }),
        ("volume", Some(s)) => Some(DiskSource::Volume {
            pool: attr(s, "pool").unwrap_or_default(),
            volume: attr(s, "volume").unwrap_or_default(),
        }),
        _ => None,
    }
    .unwrap_or(DiskSource::None { kind });
    Ok(Disk {
        target,
        device,
        source,
        format: child(d, "driver").and_then(|n| attr(n, "type")),
        readonly: child(d, "readonly").is_some(),
        shareable: child(d, "shareable").is_some(),
    })
}

/// `+64055:+64055` (or `64055:64055`) as ids; a name label (`libvirt-qemu:kvm`) gives `None`.
fn dac_ids(label: &str) -> Option<(u32, u32)> {
    let (u, g) = label.split_once(':')?;
    let id = |s: &str| s.trim().trim_start_matches('+').parse::<u32>().ok();
    Some((id(u)?, id(g)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = r#"<domain type='qemu' id='3'>
  <name>web01</name>
  <uuid>9f1c1a3e-1b7e-4c55-9d43-0d3c9b7b2a11</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web01.qcow2' index='2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/web01-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/web01-logs'><host name='ceph1' port='6789'/></source>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/srv/shared.img'/>
      <target dev='vdd' bus='virtio'/>
      <shareable/>
    </disk>
    <disk type='volume' device='disk'>
      <source pool='default' volume='extra.qcow2'/>
      <target dev='vde' bus='virtio'/>
    </disk>
    <interface type='network'><mac address='52:54:00:12:34:56'/></interface>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
    </channel>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+64055:+994</label>
    <imagelabel>+64055:+994</imagelabel>
  </seclabel>
</domain>"#;

    #[test]
    fn reads_identity_disks_agent_macs_and_owner() {
        let d = DomainXml::parse(RUNNING).expect("parses");
        assert_eq!(d.name, "web01");
        assert_eq!(d.uuid, "9f1c1a3e-1b7e-4c55-9d43-0d3c9b7b2a11");
        assert_eq!(d.hypervisor, "qemu");
        assert!(d.guest_agent);
        assert_eq!(d.macs, ["52:54:00:12:34:56"]);
        assert_eq!(d.qemu_owner, Some((64055, 994)));
        let targets: Vec<&str> = d.disks.iter().map(|d| d.target.as_str()).collect();
        assert_eq!(targets, ["vda", "vdb", "vdc", "sda", "vdd", "vde"]);
        assert_eq!(
            d.disks[0].source,
            DiskSource::File("/var/lib/libvirt/images/web01.qcow2".into())
        );
        assert_eq!(d.disks[0].format.as_deref(), Some("qcow2"));
        assert_eq!(d.disks[1].source, DiskSource::Block("/dev/vg0/web01-data".into()));
        let backed: Vec<&str> = d.backed_up_disks().map(|d| d.target.as_str()).collect();
        assert_eq!(backed, ["vda", "vdb"]);
    }

    #[test]
    fn every_skipped_disk_says_why() {
        let d = DomainXml::parse(RUNNING).expect("parses");
        let reason = |t: &str| {
            d.disks
                .iter()
                .find(|d| d.target == t)
                .and_then(Disk::skip_reason)
                .unwrap_or_default()
        };
        assert_eq!(
            reason("vdc"),
            "a network disk (rbd pool/web01-logs): cairn reads file and block disks"
        );
        assert_eq!(reason("sda"), "a CD-ROM drive, not a disk");
        assert!(reason("vdd").starts_with("shareable"), "{}", reason("vdd"));
        assert!(reason("vde").contains("storage pool default"), "{}", reason("vde"));
    }

    #[test]
    fn bad_xml_names_what_is_wrong() {
        let e = DomainXml::parse("<domain><name>x</name").expect_err("truncated");
        assert!(e.to_string().starts_with("domain XML: "), "{e}");
        let e = DomainXml::parse("<network><name>x</name></network>").expect_err("not a domain");
        assert!(e.to_string().contains("not <domain>"), "{e}");
        let e = DomainXml::parse("<domain><uuid>u</uuid></domain>").expect_err("no name");
        assert!(e.to_string().contains("no <name>"), "{e}");
        let e = DomainXml::parse(
            "<domain><name>a</name><devices><disk type='file'><source file='/x'/></disk></devices></domain>",
        )
        .expect_err("no target");
        assert_eq!(e.to_string(), "domain a: a <disk>: no <target dev=…>");
    }

    #[test]
    fn dac_labels() {
        assert_eq!(dac_ids("+0:+0"), Some((0, 0)));
        assert_eq!(dac_ids("107:110"), Some((107, 110)));
        assert_eq!(dac_ids("libvirt-qemu:kvm"), None);
        assert_eq!(dac_ids("+1"), None);
    }

    proptest::proptest! {
        /// Any text, XML or not, gives a domain or an error: never a panic.
        #[test]
        fn never_panics(s in ".{0,400}") {
            let _ = DomainXml::parse(&s);
        }

        /// Disks built from arbitrary names and paths read back as written (escaped XML).
        #[test]
        fn disks_round_trip(name in "[a-zA-Z0-9_.&<>'\"-]{1,20}", path in "/[a-zA-Z0-9 _./&<>'\"-]{0,40}") {
            let xml = format!(
                "<domain type='qemu'><name>{}</name><devices><disk type='file' device='disk'>\
                 <source file='{}'/><target dev='vda'/></disk></devices></domain>",
                crate::xml::escape(&name),
                crate::xml::escape(&path)
            );
            let d = DomainXml::parse(&xml).expect("parses");
            proptest::prop_assert_eq!(d.name, name);
            proptest::prop_assert_eq!(&d.disks[0].source, &DiskSource::File(path.into()));
        }
    }
}
