//! NBD (network block device) for cairn: a client that reads point-in-time
//! views exported by QEMU, and a server that exports restore points for
//! instant recovery. Synchronous, on std threads (cairn's engine is threaded).
//!
//! The pieces:
//!
//! - [`proto`]: the wire protocol (fixed newstyle negotiation, options, simple
//!   and structured replies, metadata contexts) as constants and pure
//!   encode/decode functions. Every decoder caps length fields and returns an
//!   error on bad bytes; the decoders are property-tested and fuzzed.
//! - [`NbdClient`]: one connection to an export over a Unix socket or TCP.
//!   It negotiates structured replies and metadata contexts
//!   (`base:allocation`, `qemu:dirty-bitmap:NAME`), splits reads into pieces
//!   (at most the server's maximum block size) and pipelines them, assembles
//!   data and hole chunks (checking each lies inside its request and that the whole range
//!   is covered), and loops `NBD_CMD_BLOCK_STATUS` until a range is covered.
//! - [`NbdDisk`]: a [`cairn_disk::DiskSource`] over an export, backed by a
//!   pool of clients so reads run in parallel; its allocation comes from
//!   `base:allocation` and [`NbdDisk::dirty_extents`] gives the extents a dirty
//!   bitmap context marks (QEMU's changed block tracking).
//! - [`NbdServer`]: exports by name over Unix sockets or TCP, a thread per
//!   connection (plus a few workers so one connection's requests overlap).
//!   Backends implement [`ExportBackend`]: [`SourceExport`] serves any
//!   `DiskSource` read-only (holes from its allocation map), [`CowExport`]
//!   adds a copy-on-write scratch file so a VM can boot from, and write to, a
//!   restore point without changing it.
//!
//! ```no_run
//! use cairn_nbd::{ClientOptions, Endpoint, NbdClient};
//! let ep = Endpoint::Unix("/run/cairn/view.sock".into());
//! let opts = ClientOptions {
//!     export: "cairn-0".into(),
//!     meta_contexts: vec!["base:allocation".into()],
//!     timeout: Some(std::time::Duration::from_secs(30)),
//! };
//! let mut client = NbdClient::connect(&ep, &opts).unwrap();
//! let mut buf = vec![0u8; 1 << 20];
//! client.read(0, &mut buf).unwrap();
//! let map = client.block_status("base:allocation", 0, client.size()).unwrap();
//! client.disconnect().unwrap();
//! # let _ = map;
//! ```
#![warn(missing_docs)]

pub mod proto;

mod client;
mod cow;
mod disk;
mod export;
mod server;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use client::NbdClient;
pub use cow::CowExport;
pub use disk::NbdDisk;
pub use export::{ExportBackend, SourceExport};
pub use server::{NbdServer, ServerHandle};

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix domain socket.
    Unix(PathBuf),
    /// A TCP address, `host:port`.
    Tcp(String),
}

impl Endpoint {
    /// The NBD URI of `export` at this endpoint, as QEMU and libnbd tools take
    /// it (`nbd+unix:///NAME?socket=PATH`, `nbd://HOST:PORT/NAME`).
    pub fn uri(&self, export: &str) -> String {
        match self {
            Endpoint::Unix(p) => format!("nbd+unix:///{export}?socket={}", p.display()),
            Endpoint::Tcp(a) => format!("nbd://{a}/{export}"),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// What a client asks for when it connects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientOptions {
    /// The export name ("" = the server's default export).
    pub export: String,
    /// Metadata contexts to negotiate (`"base:allocation"`,
    /// `"qemu:dirty-bitmap:NAME"`); the server may accept only some of them.
    pub meta_contexts: Vec<String>,
    /// Timeout for connecting and for each socket read or write; `None` waits forever.
    pub timeout: Option<Duration>,
}

/// One block status extent: `length` bytes at `offset` with the context's `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusExtent {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
    /// Context-defined flags: for `base:allocation` [`proto::STATE_HOLE`] and
    /// [`proto::STATE_ZERO`]; for `qemu:dirty-bitmap:NAME` [`proto::STATE_DIRTY`].
    pub flags: u32,
}

impl StatusExtent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Errors of the NBD client, server and exports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket or file operation failed.
    #[error("NBD export {export:?} at {endpoint}: {op}: {source}")]
    Io {
        /// The export ("" when none is chosen yet).
        export: String,
        /// The server address or file.
        endpoint: String,
        /// What was being done ("connect", "read reply", ...).
        op: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The peer broke the protocol.
    #[error("NBD export {export:?}: protocol error: {reason}")]
    Protocol {
        /// The export.
        export: String,
        /// What the peer did wrong.
        reason: String,
    },
    /// The server refused an option during negotiation.
    #[error("NBD export {export:?}: the server refused {option}: {reason}{}", message_suffix(.message))]
    Refused {
        /// The export.
        export: String,
        /// The option ("NBD_OPT_GO").
        option: String,
        /// The reply type, named (`NBD_REP_ERR_UNKNOWN (no such export)`).
        reason: String,
        /// The server's message.
        message: String,
    },
    /// The server answered a command with an error.
    #[error("NBD export {export:?}: {command} of {length} bytes at offset {offset} failed: {errno}{}", message_suffix(.message))]
    Command {
        /// The export.
        export: String,
        /// The command ("NBD_CMD_READ").
        command: String,
        /// Offset of the request.
        offset: u64,
        /// Length of the request.
        length: u64,
        /// The NBD error number.
        code: u32,
        /// Its name ("EIO (input/output error)").
        errno: String,
        /// The server's message, if it sent one.
        message: String,
    },
    /// A request lies (partly) outside the export.
    #[error("NBD export {export:?}: {length} bytes at offset {offset} lie outside the export's {size} bytes")]
    OutOfRange {
        /// The export.
        export: String,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        length: u64,
        /// The export's size.
        size: u64,
    },
    /// A metadata context was asked for that the server did not accept.
    #[error("NBD export {export:?}: metadata context {context:?} was not negotiated (accepted: {accepted:?})")]
    NoContext {
        /// The export.
        export: String,
        /// The context asked for.
        context: String,
        /// The contexts the server accepted.
        accepted: Vec<String>,
    },
    /// The connection failed earlier and cannot be used.
    #[error("NBD export {export:?}: connection unusable after an earlier error: {reason}")]
    Broken {
        /// The export.
        export: String,
        /// The earlier error.
        reason: String,
    },
    /// A caller passed an invalid argument (a cluster size, a socket path).
    #[error("{what}: {reason}")]
    Invalid {
        /// The argument.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A disk source failed.
    #[error(transparent)]
    Disk(#[from] cairn_disk::DiskError),
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
