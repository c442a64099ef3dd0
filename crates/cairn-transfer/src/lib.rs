//! cairn's data channel: blocks from a source data mover (a proxy reading VM disks) to a
//! target data mover (the agent that owns a repository), directly, over parallel TCP streams
//! with mutual TLS. The backup server only plans the transfer: it picks a [`TransferId`], tells
//! the target to [`Receiver::expect`] it and the source to [`Sender::connect`] to the target.
//!
//! # Protocol
//!
//! One *transfer* (one task's data) runs over N streams (default 5, may be 1), each a TCP
//! connection with TLS 1.3 and client certificates. On every connection the sender first sends
//! HELLO (magic, protocol version, transfer id, stream index and count, window, largest block,
//! and `acked_below`: every seq below it is acknowledged to the sender); the receiver answers
//! HELLO_OK with `received_below` (it has consumed every seq below it) or ERROR. Then:
//!
//! - The sender numbers blocks densely from 0 (*seq*) and sends each as
//!   `BLOCK {seq, disk, offset, len, crc32c, bytes}` on whichever stream is free first.
//! - The receiver checks the CRC-32C: a mismatch is answered `NACK {seq}` and the sender
//!   re-sends that block (without failing; a block that fails [`SenderConfig::max_resends`]
//!   times fails the transfer). A good block goes to the transfer's [`BlockConsumer`] exactly
//!   once (duplicates after a reconnect are recognised by seq and only acknowledged), and after
//!   the consumer returns, the receiver answers `ACK {seq}`: per block, not cumulative, because
//!   blocks of one transfer are spread over streams and complete out of order.
//! - The sender keeps every unacknowledged block (sharing its buffer, no copy) in a window that
//!   spans at most [`SenderConfig::window`] seqs from the oldest unacknowledged one; memory is
//!   bounded by window × block size on the sender and by the window's seq range on the receiver.
//! - When every block is acknowledged the sender sends `END {total}` on each stream; the
//!   receiver checks it has all `total` blocks and confirms with `END {total}`.
//! - Either side may send `ERROR {code, message}` and close; the transfer then fails on both
//!   sides with that cause.
//!
//! # Resume
//!
//! A dropped connection (reset, timeout, link down) costs only that stream: the sender puts the
//! blocks that were in flight on it back at the front of the queue, so other streams may carry
//! them, and reconnects the stream with exponential backoff up to
//! [`ReconnectPolicy::give_up_after`]. Its new HELLO_OK tells it what the receiver already has
//! (`received_below`), which counts as acknowledged; anything sent twice is acknowledged again
//! but not handed to the consumer again. A new connection for a stream index supersedes the
//! receiver's old one. The transfer fails only when no stream can be re-established.
//!
//! # Security
//!
//! [`receiver_tls_config`] and [`sender_tls_config`] build rustls configurations from a
//! [`TlsIdentity`] (the server's CA, own certificate and key) and a [`PeerPolicy`]: the peer's
//! chain must lead to the CA and be valid now, its fingerprint must not be revoked and, if a
//! pin list is given, must be on it. Frames from a peer are decoded by [`wire::decode_frame`],
//! which caps every length before allocating.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo(pki: cairn_transfer::TlsIdentity, proxy: cairn_transfer::TlsIdentity)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! use cairn_transfer::*;
//! // Target data mover.
//! let tls = receiver_tls_config(&pki, PeerPolicy::default())?;
//! let receiver = Receiver::bind("0.0.0.0:8521".parse()?, ReceiverConfig::new(tls)).await?;
//! let id = TransferId::random();
//! let incoming = receiver.expect(id, |block: ReceivedBlock| async move {
//!     // write block.data for (block.disk, block.offset) into the repository
//!     Ok::<(), ConsumerError>(())
//! })?;
//! // Source data mover.
//! let tls = sender_tls_config(&proxy, PeerPolicy::default())?;
//! let name = ServerName::try_from("repo01")?;
//! let sender = Sender::connect(SenderConfig::new("10.0.0.9:8521".parse()?, name, tls, id)).await?;
//! sender.send(Block { disk: 0, offset: 0, data: Bytes::from(vec![0u8; 1 << 20]) }).await?;
//! let stats = sender.finish().await?;
//! incoming.wait().await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod error;
mod net;
mod receiver;
mod sender;
mod throttle;
mod tls;
pub mod wire;

pub use error::Error;
pub use net::SocketOptions;
pub use receiver::{
    BlockConsumer, ConsumerError, IncomingTransfer, ReceivedBlock, Receiver, ReceiverConfig, ReceiverStats,
};
pub use sender::{Block, ReconnectPolicy, Sender, SenderConfig, SenderStats};
pub use throttle::{AllOf, FaultInjector, Throttle};
pub use tls::{Fingerprint, PeerPolicy, TlsIdentity, TlsSetupError, receiver_tls_config, sender_tls_config};
pub use wire::TransferId;

/// Block payloads are shared, reference-counted buffers.
pub use bytes::Bytes;
/// The name a receiver's certificate must carry ([`SenderConfig::server_name`]).
pub use rustls::pki_types::ServerName;
