//! The errors of libvirt hosts.

use crate::xml::XmlError;

/// A libvirt call or document that failed, naming the host, the domain and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The daemon could not be reached or refused the connection (a bad URI, an unreachable host,
    /// failed authentication).
    #[error("connecting to libvirt at {uri}: {cause}")]
    Connect {
        /// The connection URI.
        uri: String,
        /// libvirt's message.
        cause: String,
    },
    /// The host has no such domain.
    #[error("libvirt host {uri} has no domain named {name:?}")]
    NoDomain {
        /// The connection URI.
        uri: String,
        /// The domain asked for.
        name: String,
    },
    /// A call on a domain failed.
    #[error("domain {domain}: {what}: {cause}")]
    Call {
        /// The domain.
        domain: String,
        /// What was being done (`starting the backup`).
        what: String,
        /// libvirt's message.
        cause: String,
    },
    /// libvirt answered a document cairn cannot read.
    #[error(transparent)]
    Xml(#[from] XmlError),
}
