//! The target data mover's side: accepts the streams of expected transfers, checks each
//! block's CRC-32C, hands every block to the transfer's consumer exactly once and
//! acknowledges it after the consumer has taken it.
//!
//! [`Receiver`] and [`IncomingTransfer`] are the handles the owner holds; the bookkeeping of
//! transfers is in [`transfer`], the connections that carry their streams in [`stream`].

mod config;
mod consumer;
mod stream;
mod transfer;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::tls::Fingerprint;
use crate::wire::{MAX_BLOCK_LEN, TransferId};
use transfer::{RecvShared, TransferState};

pub use config::ReceiverConfig;
pub use consumer::{BlockConsumer, ConsumerError, ReceivedBlock};
pub use transfer::ReceiverStats;

/// Accepts data channel connections and routes them to expected transfers.
///
/// ```no_run
/// # async fn demo(config: cairn_transfer::ReceiverConfig, id: cairn_transfer::TransferId)
/// #     -> Result<(), cairn_transfer::Error> {
/// use cairn_transfer::{ConsumerError, ReceivedBlock, Receiver};
/// let receiver = Receiver::bind("0.0.0.0:8521".parse().unwrap(), config).await?;
/// let transfer = receiver.expect(id, |block: ReceivedBlock| async move {
///     // write block.data at (block.disk, block.offset) ...
///     Ok::<(), ConsumerError>(())
/// })?;
/// let stats = transfer.wait().await?; // the sender's END, every block consumed once
/// # Ok(()) }
/// ```
///
/// Dropping the receiver stops accepting and cancels every transfer still expected.
pub struct Receiver {
    shared: Arc<RecvShared>,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Receiver {
    /// Listens on `addr` (port 0 picks a free port; see [`local_addr`](Self::local_addr)).
    pub async fn bind(addr: SocketAddr, config: ReceiverConfig) -> Result<Receiver, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(addr, "listen on", e))?;
        Self::from_listener(listener, config)
    }

    /// Serves connections from an already bound listener (say, one created in another network
    /// namespace, or handed over by a service manager).
    pub fn from_listener(listener: TcpListener, config: ReceiverConfig) -> Result<Receiver, Error> {
        if config.max_block_len == 0 || config.max_block_len > MAX_BLOCK_LEN {
            return Err(Error::Config(format!(
                "max_block_len must be 1..={MAX_BLOCK_LEN}, not {}",
                config.max_block_len
            )));
        }
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io(unspecified, "query the address of", e))?;
        let shared = Arc::new(RecvShared::new(config));
        let accept = tokio::spawn(stream::accept_loop(shared.clone(), listener));
        Ok(Receiver {
            shared,
            local_addr,
            accept,
        })
    }

    /// The address the receiver listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Registers a transfer: from now on streams with this id are accepted and their blocks
    /// handed to `consumer`. Fails when the id is already expected.
    pub fn expect<C: BlockConsumer>(&self, transfer: TransferId, consumer: C) -> Result<IncomingTransfer, Error> {
        self.expect_inner(transfer, None, consumer)
    }

    /// [`expect`](Self::expect) for one sender only: streams of this transfer are accepted only
    /// from the data mover whose certificate has the fingerprint `sender` (per-transfer pinning,
    /// on top of the receiver's [`PeerPolicy`](crate::PeerPolicy)).
    pub fn expect_from<C: BlockConsumer>(
        &self,
        transfer: TransferId,
        sender: Fingerprint,
        consumer: C,
    ) -> Result<IncomingTransfer, Error> {
        self.expect_inner(transfer, Some(sender), consumer)
    }

    fn expect_inner<C: BlockConsumer>(
        &self,
        transfer: TransferId,
        sender: Option<Fingerprint>,
        consumer: C,
    ) -> Result<IncomingTransfer, Error> {
        let mut transfers = self.shared.transfers();
        if transfers.contains_key(&transfer) {
            return Err(Error::AlreadyExpected(transfer));
        }
        let state = Arc::new(TransferState::new(transfer, sender, Box::new(consumer)));
        transfers.insert(transfer, state.clone());
        Ok(IncomingTransfer {
            state,
            shared: self.shared.clone(),
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.shutdown.send_replace(true);
        let transfers: Vec<_> = self.shared.transfers().values().cloned().collect();
        for t in transfers {
            self.shared.finish(
                &t,
                Err(Error::Cancelled {
                    transfer: t.id,
                    reason: "the receiver was shut down".into(),
                }),
            );
        }
    }
}

/// A transfer a [`Receiver`] expects. Dropping it before the transfer ended cancels it (its
/// streams get an ERROR).
pub struct IncomingTransfer {
    state: Arc<TransferState>,
    shared: Arc<RecvShared>,
}

impl IncomingTransfer {
    /// The transfer's id.
    pub fn id(&self) -> TransferId {
        self.state.id
    }

    /// Statistics so far.
    pub fn stats(&self) -> ReceiverStats {
        self.state.stats()
    }

    /// Waits until the sender ended the transfer with every block consumed (Ok), or it failed:
    /// the consumer refused a block, the sender sent an ERROR or broke the protocol. Does not time
    /// out by itself: a sender that vanishes is noticed by whoever planned the transfer.
    /// Cancel-safe.
    pub async fn wait(&self) -> Result<ReceiverStats, Error> {
        let mut rx = self.state.outcome.subscribe();
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map(|o| o.clone())
            .unwrap_or_else(|_| None);
        match outcome {
            Some(Ok(_)) => Ok(self.state.stats()),
            Some(Err(e)) => Err(e),
            None => Err(Error::Cancelled {
                transfer: self.state.id,
                reason: "the receiver was shut down".into(),
            }),
        }
    }
}

impl Drop for IncomingTransfer {
    fn drop(&mut self) {
        self.shared.finish(
            &self.state,
            Err(Error::Cancelled {
                transfer: self.state.id,
                reason: "the receiving side stopped expecting it".into(),
            }),
        );
    }
}
