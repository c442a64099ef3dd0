//! The target data mover's side: accepts the streams of expected transfers, checks each
//! block's CRC-32C, hands every block to the transfer's consumer exactly once and
//! acknowledges it after the consumer has taken it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rustls::ServerConfig;
use tokio::io::WriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::Error;
use crate::net::{FrameReader, FrameWriter, SocketOptions};
use crate::tls::Fingerprint;
use crate::wire::{
    BlockHeader, ErrorCode, Frame, Hello, HelloOk, Limits, MAX_BLOCK_LEN, MAX_STREAMS, MAX_WINDOW, NackReason,
    PROTOCOL_VERSION, TransferId, TransferStatus, block_crc,
};

/// A block as the receiver hands it to the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedBlock {
    /// The block's position in the transfer (dense from 0, unique: each seq arrives once).
    pub seq: u64,
    /// Which disk of the task.
    pub disk: u32,
    /// Byte offset in that disk.
    pub offset: u64,
    /// The payload, its CRC-32C checked.
    pub data: Bytes,
}

/// What a consumer's failure carries.
pub type ConsumerError = Box<dyn std::error::Error + Send + Sync>;

/// Takes the blocks of one transfer on the target (think: the repository writer).
///
/// Blocks come in any order and, with several streams, concurrently; each seq exactly once.
/// A block is acknowledged to the sender only after `consume` returned `Ok`, so a block that was
/// acknowledged must be durable enough for the caller's purpose. An `Err` fails the transfer on
/// both sides.
pub trait BlockConsumer: Send + Sync + 'static {
    /// Takes one block.
    fn consume(&self, block: ReceivedBlock) -> impl Future<Output = Result<(), ConsumerError>> + Send;
}

impl<F, Fut> BlockConsumer for F
where
    F: Fn(ReceivedBlock) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ConsumerError>> + Send,
{
    fn consume(&self, block: ReceivedBlock) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        self(block)
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe form of [`BlockConsumer`], so transfers with different consumers share a map.
trait DynConsumer: Send + Sync {
    fn consume_boxed(&self, block: ReceivedBlock) -> BoxFuture<'_, Result<(), ConsumerError>>;
}

impl<C: BlockConsumer> DynConsumer for C {
    fn consume_boxed(&self, block: ReceivedBlock) -> BoxFuture<'_, Result<(), ConsumerError>> {
        Box::pin(self.consume(block))
    }
}

/// Receiver settings. Build with [`ReceiverConfig::new`], then adjust fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct ReceiverConfig {
    /// TLS server configuration, from [`receiver_tls_config`](crate::receiver_tls_config).
    pub tls: Arc<ServerConfig>,
    /// Longest block payload accepted (default 8 MiB, at most 16 MiB). Memory bound per
    /// connection: one block.
    pub max_block_len: u32,
    /// Largest sender window accepted (default 1024 blocks); bounds the de-duplication state.
    pub max_window: u32,
    /// Most streams per transfer (default 16).
    pub max_streams: u16,
    /// Time allowed for a new connection's TLS handshake and HELLO (default 30 s).
    pub handshake_timeout: Duration,
    /// Most simultaneous connections (default 256); more are closed at once.
    pub max_connections: usize,
    /// TCP settings.
    pub socket: SocketOptions,
}

impl ReceiverConfig {
    /// Defaults around the given TLS configuration.
    pub fn new(tls: Arc<ServerConfig>) -> Self {
        Self {
            tls,
            max_block_len: 8 << 20,
            max_window: 1024,
            max_streams: 16,
            handshake_timeout: Duration::from_secs(30),
            max_connections: 256,
            socket: SocketOptions::default(),
        }
    }
}

/// What a transfer did, from the receiver's side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Blocks handed to the consumer (each once).
    pub blocks: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Blocks that arrived again after the consumer had them (acknowledged, not handed over).
    pub duplicates: u64,
    /// Blocks refused because their CRC-32C did not match (NACKs sent).
    pub nacks: u64,
    /// Connections accepted for this transfer (first ones and reconnections).
    pub connections: u64,
}

enum Slot {
    InProgress,
    Done,
}

#[derive(Default)]
struct Progress {
    /// Every block below this seq has been consumed.
    received_below: u64,
    /// Blocks at or above `received_below` being consumed or consumed.
    above: BTreeMap<u64, Slot>,
    /// Per stream index, the signal that supersedes the connection currently serving it.
    streams: HashMap<u16, Arc<Notify>>,
}

type Outcome = Option<Result<u64, Error>>;

struct TransferState {
    id: TransferId,
    /// The only sender accepted, when the transfer is pinned ([`Receiver::expect_from`]).
    sender: Option<Fingerprint>,
    consumer: Box<dyn DynConsumer>,
    progress: Mutex<Progress>,
    slot_changed: Notify,
    outcome: watch::Sender<Outcome>,
    blocks: AtomicU64,
    bytes: AtomicU64,
    duplicates: AtomicU64,
    nacks: AtomicU64,
    connections: AtomicU64,
}

impl TransferState {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> ReceiverStats {
        ReceiverStats {
            blocks: self.blocks.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            nacks: self.nacks.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
        }
    }

    fn failure(&self) -> Option<Error> {
        match &*self.outcome.borrow() {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }
}

/// How a transfer ended, remembered so that a late reconnection gets a meaningful answer.
enum Finished {
    Complete(u64),
    Failed(ErrorCode, String),
}

/// Finished transfers remembered (oldest forgotten first).
const FINISHED_KEPT: usize = 1024;

struct RecvShared {
    config: ReceiverConfig,
    transfers: Mutex<HashMap<TransferId, Arc<TransferState>>>,
    finished: Mutex<VecDeque<(TransferId, Finished)>>,
    shutdown: watch::Sender<bool>,
}

impl RecvShared {
    fn transfers(&self) -> MutexGuard<'_, HashMap<TransferId, Arc<TransferState>>> {
        self.transfers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a transfer's outcome (the first one wins) and forgets it as active.
    fn finish(&self, t: &TransferState, result: Result<u64, Error>) {
        let finished = match &result {
            Ok(total) => Finished::Complete(*total),
            Err(Error::Consumer { .. }) => Finished::Failed(ErrorCode::Consumer, result_message(&result)),
            Err(_) => Finished::Failed(ErrorCode::Cancelled, result_message(&result)),
        };
        let first = t.outcome.send_if_modified(|o| {
            if o.is_none() {
                *o = Some(result);
                true
            } else {
                false
            }
        });
        if !first {
            return;
        }
        let mut transfers = self.transfers();
        if transfers.get(&t.id).is_some_and(|x| std::ptr::eq(Arc::as_ptr(x), t)) {
            transfers.remove(&t.id);
        }
        drop(transfers);
        let mut list = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        if list.len() >= FINISHED_KEPT {
            list.pop_front();
        }
        list.push_back((t.id, finished));
    }
}

fn result_message(result: &Result<u64, Error>) -> String {
    match result {
        Ok(total) => format!("complete after {total} blocks"),
        Err(e) => e.to_string(),
    }
}

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
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(RecvShared {
            config,
            transfers: Mutex::new(HashMap::new()),
            finished: Mutex::new(VecDeque::new()),
            shutdown,
        });
        let accept = tokio::spawn(accept_loop(shared.clone(), listener));
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
        let (outcome, _) = watch::channel(None);
        let state = Arc::new(TransferState {
            id: transfer,
            sender,
            consumer: Box::new(consumer),
            progress: Mutex::new(Progress::default()),
            slot_changed: Notify::new(),
            outcome,
            blocks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            nacks: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
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

async fn accept_loop(shared: Arc<RecvShared>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(shared.config.max_connections));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "data channel accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many data channel connections; refusing one");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve(&shared, tcp, peer).await {
                if e.is_retryable() {
                    tracing::debug!(%peer, error = %e, "data channel connection ended");
                } else {
                    tracing::warn!(%peer, error = %e, "data channel connection refused or failed");
                }
            }
        });
    }
}

type Writer = FrameWriter<WriteHalf<TlsStream<TcpStream>>>;

async fn serve(shared: &RecvShared, tcp: TcpStream, peer: SocketAddr) -> Result<(), Error> {
    let config = &shared.config;
    let t = config.handshake_timeout;
    let timeout_err = |doing| Error::Timeout {
        peer,
        doing,
        timeout: t,
    };
    config
        .socket
        .apply(&tcp)
        .map_err(|e| Error::io(peer, "set socket options for", e))?;
    let tls = tokio::time::timeout(t, TlsAcceptor::from(config.tls.clone()).accept(tcp))
        .await
        .map_err(|_| timeout_err("in the TLS handshake"))?
        .map_err(|e| Error::io(peer, "TLS handshake with", e))?;
    let peer_fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(Fingerprint::of);
    let (r, w) = tokio::io::split(tls);
    let limits = Limits {
        max_block_len: config.max_block_len,
    };
    let mut reader = FrameReader::new(r, limits, peer);
    let mut writer = FrameWriter::new(w, peer);
    let first = tokio::time::timeout(t, reader.next("waiting for HELLO from"))
        .await
        .map_err(|_| timeout_err("waiting for HELLO"))?;
    let hello = match first {
        Ok(Frame::Hello(h)) => h,
        Ok(other) => {
            let cause = format!("sent {} before HELLO", other.kind_name());
            return refuse(&mut writer, ErrorCode::Protocol, Error::Protocol { peer, cause }).await;
        }
        Err(e @ Error::Wire { .. }) => return refuse(&mut writer, ErrorCode::Protocol, e).await,
        Err(e) => return Err(e),
    };
    if let Some((code, cause)) = check_hello(config, &hello) {
        return refuse(&mut writer, code, Error::Protocol { peer, cause }).await;
    }
    let transfer = shared.transfers().get(&hello.transfer).cloned();
    let Some(transfer) = transfer else {
        return answer_finished(shared, &mut reader, &mut writer, &hello, peer).await;
    };
    if let Some(pinned) = transfer.sender
        && peer_fingerprint != Some(pinned)
    {
        tracing::warn!(%peer, transfer = %hello.transfer, "refused a stream from a data mover the transfer is not pinned to");
        let cause = format!(
            "transfer {} accepts streams only from the data mover with certificate {pinned}",
            hello.transfer
        );
        return refuse(&mut writer, ErrorCode::UnknownTransfer, Error::Protocol { peer, cause }).await;
    }
    transfer.connections.fetch_add(1, Ordering::Relaxed);
    let superseded = Arc::new(Notify::new());
    let attached = {
        let mut progress = transfer.lock();
        if hello.acked_below > progress.received_below {
            Err(format!(
                "claims blocks below seq {} were acknowledged, but only those below {} were received",
                hello.acked_below, progress.received_below
            ))
        } else {
            if let Some(old) = progress.streams.insert(hello.stream, superseded.clone()) {
                old.notify_one();
            }
            Ok(progress.received_below)
        }
    };
    let received_below = match attached {
        Ok(n) => n,
        Err(cause) => {
            let e = Error::Protocol { peer, cause };
            shared.finish(&transfer, Err(e.clone()));
            return refuse(&mut writer, ErrorCode::Protocol, e).await;
        }
    };
    tracing::debug!(%peer, transfer = %hello.transfer, stream = hello.stream, received_below, "stream attached");
    writer
        .send(&Frame::HelloOk(HelloOk {
            version: PROTOCOL_VERSION,
            status: TransferStatus::Active,
            received_below,
        }))
        .await?;
    let mut outcome_rx = transfer.outcome.subscribe();
    let mut shutdown_rx = shared.shutdown.subscribe();
    loop {
        let frame = tokio::select! {
            f = reader.next("waiting for blocks from") => f,
            _ = superseded.notified() => {
                tracing::debug!(%peer, stream = hello.stream, "stream superseded by a reconnection");
                return Ok(());
            }
            _ = async { outcome_rx.wait_for(|o| matches!(o, Some(Err(_)))).await.map(|_| ()) } => {
                let e = transfer.failure().unwrap_or(Error::Cancelled { transfer: transfer.id, reason: "failed".into() });
                let code = if matches!(e, Error::Consumer { .. }) { ErrorCode::Consumer } else { ErrorCode::Cancelled };
                return refuse(&mut writer, code, e).await;
            }
            _ = async { shutdown_rx.wait_for(|s| *s).await.map(|_| ()) } => {
                if matches!(&*transfer.outcome.borrow(), Some(Ok(_))) {
                    // Complete already: the sender has its END confirmation on another stream.
                    writer.shutdown().await;
                    return Ok(());
                }
                return refuse(&mut writer, ErrorCode::Cancelled, Error::Cancelled {
                    transfer: transfer.id,
                    reason: "the receiver was shut down".into(),
                }).await;
            }
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e @ Error::Wire { .. }) => {
                shared.finish(&transfer, Err(e.clone()));
                return refuse(&mut writer, ErrorCode::Protocol, e).await;
            }
            Err(e) => return Err(e),
        };
        match frame {
            Frame::Block(header, data) => {
                block(shared, &transfer, &hello, &mut writer, peer, header, data).await?;
            }
            Frame::End(total) => {
                let complete = {
                    let progress = transfer.lock();
                    progress.received_below == total && progress.above.is_empty()
                };
                if !complete {
                    let cause = format!("sent END of {total} blocks before all of them were received");
                    let e = Error::Protocol { peer, cause };
                    shared.finish(&transfer, Err(e.clone()));
                    return refuse(&mut writer, ErrorCode::Protocol, e).await;
                }
                // Confirm first, then report completion: a target that exits as soon as `wait`
                // returns must not leave the sender without its confirmation.
                let confirmed = writer.send(&Frame::End(total)).await;
                shared.finish(&transfer, Ok(total));
                writer.shutdown().await;
                return confirmed;
            }
            Frame::Error(code, message) => {
                let e = Error::Peer { peer, code, message };
                shared.finish(&transfer, Err(e.clone()));
                return Err(e);
            }
            other => {
                let cause = format!("sent an unexpected {} frame", other.kind_name());
                let e = Error::Protocol { peer, cause };
                shared.finish(&transfer, Err(e.clone()));
                return refuse(&mut writer, ErrorCode::Protocol, e).await;
            }
        }
    }
}

/// Checks a HELLO against this receiver's limits.
fn check_hello(config: &ReceiverConfig, hello: &Hello) -> Option<(ErrorCode, String)> {
    if hello.version != PROTOCOL_VERSION {
        let cause = format!(
            "protocol version {} (this receiver speaks {PROTOCOL_VERSION})",
            hello.version
        );
        return Some((ErrorCode::Version, cause));
    }
    let max_streams = config.max_streams.min(MAX_STREAMS);
    let max_window = config.max_window.min(MAX_WINDOW);
    if hello.streams > max_streams {
        return Some((
            ErrorCode::Limits,
            format!("{} streams (at most {max_streams})", hello.streams),
        ));
    }
    if hello.window > max_window {
        return Some((
            ErrorCode::Limits,
            format!("a window of {} blocks (at most {max_window})", hello.window),
        ));
    }
    if hello.max_block_len > config.max_block_len {
        let cause = format!(
            "blocks of up to {} bytes (at most {})",
            hello.max_block_len, config.max_block_len
        );
        return Some((ErrorCode::Limits, cause));
    }
    None
}

/// Sends an ERROR frame (best effort), closes, and returns the error.
async fn refuse(writer: &mut Writer, code: ErrorCode, error: Error) -> Result<(), Error> {
    let frame = Frame::Error(code, error.to_string());
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.send(&frame)).await;
    writer.shutdown().await;
    Err(error)
}

/// A HELLO for a transfer that is not (or no longer) expected.
async fn answer_finished<R: tokio::io::AsyncRead + Unpin>(
    shared: &RecvShared,
    reader: &mut FrameReader<R>,
    writer: &mut Writer,
    hello: &Hello,
    peer: SocketAddr,
) -> Result<(), Error> {
    let found = {
        let list = shared.finished.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter()
            .rev()
            .find(|(id, _)| *id == hello.transfer)
            .map(|(_, f)| match f {
                Finished::Complete(total) => Ok(*total),
                Finished::Failed(code, message) => Err((*code, message.clone())),
            })
    };
    match found {
        Some(Ok(total)) => {
            // The sender missed our END confirmation: tell it the transfer is complete.
            let ok = HelloOk {
                version: PROTOCOL_VERSION,
                status: TransferStatus::Complete,
                received_below: total,
            };
            writer.send(&Frame::HelloOk(ok)).await?;
            writer.shutdown().await;
            let _ = tokio::time::timeout(shared.config.handshake_timeout, reader.next("closing")).await;
            Ok(())
        }
        Some(Err((code, message))) => {
            let e = Error::Peer {
                peer,
                code,
                message: format!("reconnection to a failed transfer {}: {message}", hello.transfer),
            };
            refuse(writer, code, e).await
        }
        None => {
            let cause = format!(
                "asked for transfer {}, which this receiver does not expect",
                hello.transfer
            );
            refuse(writer, ErrorCode::UnknownTransfer, Error::Protocol { peer, cause }).await
        }
    }
}

enum Have {
    New,
    BeyondWindow(u64),
    Already,
    Wait,
}

/// Handles one BLOCK: CRC check, de-duplication, consumption, ACK or NACK.
async fn block(
    shared: &RecvShared,
    t: &TransferState,
    hello: &Hello,
    writer: &mut Writer,
    peer: SocketAddr,
    header: BlockHeader,
    data: Bytes,
) -> Result<(), Error> {
    let seq = header.seq;
    if block_crc(&data) != header.crc32c {
        t.nacks.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%peer, transfer = %t.id, seq, "block failed its CRC-32C; asking for it again");
        return writer.send(&Frame::Nack(seq, NackReason::Crc)).await;
    }
    loop {
        let notified = t.slot_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(e) = t.failure() {
            return Err(e);
        }
        let have = {
            let mut progress = t.lock();
            if seq < progress.received_below {
                Have::Already
            } else if seq - progress.received_below >= u64::from(hello.window) {
                Have::BeyondWindow(progress.received_below)
            } else {
                match progress.above.get(&seq) {
                    Some(Slot::Done) => Have::Already,
                    Some(Slot::InProgress) => Have::Wait,
                    None => {
                        progress.above.insert(seq, Slot::InProgress);
                        Have::New
                    }
                }
            }
        };
        match have {
            Have::Already => {
                t.duplicates.fetch_add(1, Ordering::Relaxed);
                return writer.send(&Frame::Ack(seq)).await;
            }
            // Another stream is handing the same block over (a re-send after a reconnect).
            Have::Wait => notified.await,
            Have::New => break,
            Have::BeyondWindow(received_below) => {
                let cause = format!(
                    "sent block seq {seq}, beyond its window of {} blocks after seq {received_below}",
                    hello.window
                );
                let e = Error::Protocol { peer, cause };
                shared.finish(t, Err(e.clone()));
                return refuse(writer, ErrorCode::Protocol, e).await;
            }
        }
    }
    let len = data.len() as u64;
    let guard = SlotGuard { t, seq, done: false };
    let block = ReceivedBlock {
        seq,
        disk: header.disk,
        offset: header.offset,
        data,
    };
    match t.consumer.consume_boxed(block).await {
        Ok(()) => {
            guard.complete();
            t.blocks.fetch_add(1, Ordering::Relaxed);
            t.bytes.fetch_add(len, Ordering::Relaxed);
            writer.send(&Frame::Ack(seq)).await
        }
        Err(cause) => {
            drop(guard);
            let e = Error::Consumer {
                transfer: t.id,
                seq,
                message: cause.to_string(),
            };
            shared.finish(t, Err(e.clone()));
            refuse(writer, ErrorCode::Consumer, e).await
        }
    }
}

/// Marks a block consumed, or, if dropped before that (consumer failed, task cancelled),
/// frees its slot so that a re-send can be consumed.
struct SlotGuard<'a> {
    t: &'a TransferState,
    seq: u64,
    done: bool,
}

impl SlotGuard<'_> {
    fn complete(mut self) {
        self.done = true;
        let mut progress = self.t.lock();
        progress.above.insert(self.seq, Slot::Done);
        loop {
            let next = progress.received_below;
            match progress.above.get(&next) {
                Some(Slot::Done) => {
                    progress.above.remove(&next);
                    progress.received_below += 1;
                }
                _ => break,
            }
        }
        drop(progress);
        self.t.slot_changed.notify_waiters();
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.t.lock().above.remove(&self.seq);
            self.t.slot_changed.notify_waiters();
        }
    }
}
