//! libvirt hosts for cairn: the KVM domains that libvirt runs (virsh, virt-manager, OpenStack,
//! oVirt), which cairn reaches through libvirt's own API rather than a QMP socket of its own.
//!
//! - [`domain`]: a domain's XML read into its identity, disks (with the reason for each disk a
//!   backup skips), guest agent channel, MAC addresses and the user its QEMU runs as.
//! - [`backup`]: the XML of libvirt's backup API — a pull-mode backup whose NBD server listens on
//!   a unix socket, the checkpoint made at the same instant, what libvirt exports.
//! - `client` (feature `client`, on by default): a connection to a daemon through libvirt's C
//!   library: domains, their state and XML, backup jobs, checkpoints.
//!
//! ```
//! let d = cairn_libvirt::DomainXml::parse(
//!     "<domain type='kvm'><name>web01</name><devices>\
//!        <disk type='file' device='disk'><source file='/srv/web01.qcow2'/><target dev='vda'/></disk>\
//!        <disk type='network' device='disk'><source protocol='rbd' name='rbd/logs'/><target dev='vdb'/></disk>\
//!      </devices></domain>",
//! )?;
//! assert_eq!(d.backed_up_disks().count(), 1);
//! assert!(d.disks[1].skip_reason().unwrap().starts_with("a network disk (rbd rbd/logs)"));
//! # Ok::<(), cairn_libvirt::XmlError>(())
//! ```

#![warn(missing_docs)]

pub mod backup;
#[cfg(feature = "client")]
pub mod client;
pub mod domain;
pub mod error;
mod xml;

#[cfg(feature = "client")]
pub use client::{DomainEntry, DomainState, Libvirt, LibvirtDomain};
pub use domain::{Disk, DiskDevice, DiskSource, DomainXml};
pub use error::Error;
pub use xml::{XmlError, escape};
