//! The error type of the data channel.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::AlertDescription;

use crate::wire::{ErrorCode, TransferId, WireError};

/// Everything that can go wrong on the data channel. Every variant names the peer (or the
/// transfer) and the cause.
///
/// Cloneable so that one failure can be reported to every stream and every waiting caller.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed.
    #[error("{op} {peer}: {source}")]
    Io {
        /// The remote address.
        peer: SocketAddr,
        /// What was being done ("connect to", "read from", "write to", ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },
    /// TLS failed: handshake, certificate checks (ours or the peer's alert), or a damaged record.
    #[error("TLS with {peer}: {source}")]
    Tls {
        /// The remote address.
        peer: SocketAddr,
        /// rustls' description.
        #[source]
        source: rustls::Error,
    },
    /// The peer sent bytes that are not a valid frame.
    #[error("{peer} sent an invalid frame: {source}")]
    Wire {
        /// The remote address.
        peer: SocketAddr,
        /// What was wrong.
        #[source]
        source: WireError,
    },
    /// The peer sent a valid frame at the wrong time or with inconsistent contents.
    #[error("{peer} broke the data channel protocol: {cause}")]
    Protocol {
        /// The remote address.
        peer: SocketAddr,
        /// What was wrong.
        cause: String,
    },
    /// The peer sent an ERROR frame.
    #[error("{peer} ended the transfer: {code}: {message}")]
    Peer {
        /// The remote address.
        peer: SocketAddr,
        /// The ERROR frame's code.
        code: ErrorCode,
        /// The ERROR frame's message.
        message: String,
    },
    /// The peer closed the connection when more was expected.
    #[error("{peer} closed the connection while {doing}")]
    Closed {
        /// The remote address.
        peer: SocketAddr,
        /// What this side was waiting for.
        doing: &'static str,
    },
    /// No progress within the configured I/O timeout.
    #[error("{peer}: nothing for {timeout:?} while {doing}")]
    Timeout {
        /// The remote address.
        peer: SocketAddr,
        /// What this side was waiting for.
        doing: &'static str,
        /// The timeout in force.
        timeout: Duration,
    },
    /// A stream could not be re-established within the reconnect time limit.
    #[error("stream {stream} to {peer}: could not reconnect within {limit:?}; last error: {last}")]
    GaveUp {
        /// The receiver's address.
        peer: SocketAddr,
        /// Index of the stream.
        stream: u16,
        /// The reconnect time limit.
        limit: Duration,
        /// The last connection error.
        #[source]
        last: Box<Error>,
    },
    /// The receiving consumer refused a block; the transfer is over.
    #[error("transfer {transfer}: the consumer failed on block seq {seq}: {message}")]
    Consumer {
        /// The transfer.
        transfer: TransferId,
        /// The block's seq.
        seq: u64,
        /// The consumer's error, rendered.
        message: String,
    },
    /// A block given to the sender is longer than the configured maximum.
    #[error("block seq {seq} of {len} bytes exceeds the configured maximum of {max} bytes")]
    BlockTooLong {
        /// The seq the block would have had.
        seq: u64,
        /// Its length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// A transfer id registered twice with one receiver.
    #[error("transfer {0} is already expected by this receiver")]
    AlreadyExpected(TransferId),
    /// A configuration value out of range.
    #[error("invalid data channel configuration: {0}")]
    Config(String),
    /// The transfer was cancelled locally (dropped handle, receiver shut down, abort).
    #[error("transfer {transfer} cancelled: {reason}")]
    Cancelled {
        /// The transfer.
        transfer: TransferId,
        /// Why.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(peer: SocketAddr, op: &'static str, source: io::Error) -> Self {
        // tokio-rustls reports TLS failures as io::Error wrapping a rustls::Error.
        if let Some(tls) = source.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            return Self::Tls {
                peer,
                source: tls.clone(),
            };
        }
        if source.kind() == io::ErrorKind::UnexpectedEof {
            return Self::Closed { peer, doing: op };
        }
        Self::Io {
            peer,
            op,
            source: Arc::new(source),
        }
    }

    /// Whether reconnecting may help: network errors and timeouts yes; certificate refusals,
    /// protocol violations, peer ERRORs, consumer failures and configuration errors no.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Io { .. } | Self::Closed { .. } | Self::Timeout { .. } => true,
            Self::Tls { source, .. } => !is_certificate_error(source),
            _ => false,
        }
    }
}

/// TLS failures that will not go away by trying again: the peer's identity was refused.
fn is_certificate_error(e: &rustls::Error) -> bool {
    use AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::UnsupportedNameType
        | rustls::Error::InvalidCertRevocationList(_) => true,
        rustls::Error::AlertReceived(alert) => matches!(
            alert,
            A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired
                | A::HandshakeFailure
                | A::DecryptError
                | A::ProtocolVersion
                | A::InsufficientSecurity
        ),
        _ => false,
    }
}
