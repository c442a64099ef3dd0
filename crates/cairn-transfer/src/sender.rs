//! The source data mover's side: spreads blocks over parallel TLS streams, keeps the
//! unacknowledged ones in a bounded window, re-sends NACKed blocks and reconnects dropped
//! streams.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::net::SocketOptions;
use crate::throttle::{FaultInjector, Throttle};
mod stream;

use crate::wire::{MAX_BLOCK_LEN, MAX_STREAMS, MAX_WINDOW, TransferId, block_crc};

/// One block to send: where it belongs and its bytes (compressed/encrypted already, or not:
/// the channel does not look inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Which disk of the task.
    pub disk: u32,
    /// Byte offset in that disk.
    pub offset: u64,
    /// The payload; kept (shared, not copied) until the receiver acknowledges it.
    pub data: Bytes,
}

/// How a dropped stream is re-established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Wait before the second attempt; doubles after every failed attempt.
    pub initial_backoff: Duration,
    /// Upper bound of the wait between attempts.
    pub max_backoff: Duration,
    /// A stream that cannot reconnect for this long (from the moment it was lost) is given up;
    /// the transfer fails when every stream is given up.
    pub give_up_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
        }
    }
}

/// Everything a [`Sender`] needs. Build with [`SenderConfig::new`], then adjust fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct SenderConfig {
    /// The receiver's address.
    pub addr: SocketAddr,
    /// The name the receiver's certificate must carry (its agent name or IP address).
    pub server_name: ServerName<'static>,
    /// TLS client configuration, from [`sender_tls_config`](crate::sender_tls_config).
    pub tls: Arc<ClientConfig>,
    /// The transfer, as the receiver was told to expect it.
    pub transfer: TransferId,
    /// Parallel TCP streams (1..=64, default 5).
    pub streams: u16,
    /// Window in blocks (1..=4096, default 64): a block gets a seq only while it is less than
    /// `window` after the oldest unacknowledged one. Memory bound: `window` × the longest block.
    pub window: u32,
    /// Longest block payload (default 8 MiB, at most 16 MiB); the receiver must allow it.
    pub max_block_len: u32,
    /// No progress for this long on a connection that waits for something (connect, handshake,
    /// a write, an ACK while blocks are in flight) drops it and reconnects (default 30 s).
    pub io_timeout: Duration,
    /// Reconnection backoff and time limit.
    pub reconnect: ReconnectPolicy,
    /// A block NACKed more often than this fails the transfer (default 8).
    pub max_resends: u32,
    /// TCP settings.
    pub socket: SocketOptions,
    /// Called per block before it is written; its waits count as throttling.
    pub throttle: Option<Arc<dyn Throttle>>,
    /// Test aid: corrupts chosen blocks after their CRC was computed.
    pub fault_injector: Option<Arc<dyn FaultInjector>>,
}

impl SenderConfig {
    /// A configuration with the defaults: 5 streams, a 64-block window, 8 MiB blocks at most,
    /// 30 s I/O timeout, reconnecting for up to 60 s.
    pub fn new(
        addr: SocketAddr,
        server_name: ServerName<'static>,
        tls: Arc<ClientConfig>,
        transfer: TransferId,
    ) -> Self {
        Self {
            addr,
            server_name,
            tls,
            transfer,
            streams: 5,
            window: 64,
            max_block_len: 8 << 20,
            io_timeout: Duration::from_secs(30),
            reconnect: ReconnectPolicy::default(),
            max_resends: 8,
            socket: SocketOptions::default(),
            throttle: None,
            fault_injector: None,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::Config(what));
        if self.streams == 0 || self.streams > MAX_STREAMS {
            return bad(format!("streams must be 1..={MAX_STREAMS}, not {}", self.streams));
        }
        if self.window == 0 || self.window > MAX_WINDOW {
            return bad(format!("window must be 1..={MAX_WINDOW} blocks, not {}", self.window));
        }
        if self.max_block_len == 0 || self.max_block_len > MAX_BLOCK_LEN {
            return bad(format!(
                "max_block_len must be 1..={MAX_BLOCK_LEN}, not {}",
                self.max_block_len
            ));
        }
        if self.io_timeout.is_zero() {
            return bad("io_timeout must not be zero".into());
        }
        Ok(())
    }
}

/// What a transfer did, from the sender's side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Blocks acknowledged by the receiver.
    pub blocks: u64,
    /// Payload bytes acknowledged (each block counted once).
    pub bytes: u64,
    /// Payload bytes written, re-sends included.
    pub bytes_sent: u64,
    /// Sends of a block beyond its first (after a NACK or a dropped connection).
    pub resent_blocks: u64,
    /// NACKs received (blocks that failed their CRC at the receiver).
    pub nacked_blocks: u64,
    /// Streams re-established after a drop.
    pub reconnects: u64,
    /// Time spent waiting on the throttle, summed over streams.
    pub throttled: Duration,
    /// Time since [`Sender::connect`] began.
    pub elapsed: Duration,
}

pub(super) struct Pending {
    pub(super) block: Block,
    pub(super) crc: u32,
    pub(super) sends: u32,
    pub(super) on_stream: Option<u16>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) next_seq: u64,
    pub(super) pending: BTreeMap<u64, Pending>,
    /// Seqs waiting to be (re)sent by whichever stream is free first.
    pub(super) queue: VecDeque<u64>,
    /// Blocks written and not yet acknowledged, per stream.
    pub(super) inflight: Vec<u32>,
    /// Set by `finish`: the number of blocks in the transfer.
    pub(super) total: Option<u64>,
    pub(super) failed: Option<Error>,
    pub(super) acked_blocks: u64,
    pub(super) acked_bytes: u64,
    /// Streams that connected once or were given up (for `connect`).
    pub(super) settled: u16,
    /// Streams not given up.
    pub(super) alive: u16,
    /// The receiver confirmed END on some stream: the transfer is complete.
    pub(super) end_confirmed: bool,
}

impl State {
    pub(super) fn acked_below(&self) -> u64 {
        self.pending.keys().next().copied().unwrap_or(self.next_seq)
    }

    pub(super) fn ack(&mut self, seq: u64) -> bool {
        let Some(p) = self.pending.remove(&seq) else {
            return false;
        };
        if let Some(s) = p.on_stream {
            self.inflight[usize::from(s)] -= 1;
        }
        self.acked_blocks += 1;
        self.acked_bytes += p.block.data.len() as u64;
        true
    }

    /// Puts the blocks in flight on `stream` back at the front of the queue, in seq order.
    pub(super) fn requeue(&mut self, stream: u16) {
        let mut seqs = Vec::new();
        for (&seq, p) in self.pending.iter_mut() {
            if p.on_stream == Some(stream) {
                p.on_stream = None;
                seqs.push(seq);
            }
        }
        for seq in seqs.into_iter().rev() {
            self.queue.push_front(seq);
        }
        self.inflight[usize::from(stream)] = 0;
    }
}

pub(super) struct Shared {
    pub(super) config: SenderConfig,
    pub(super) state: Mutex<State>,
    pub(super) changed: Notify,
    pub(super) failed_tx: watch::Sender<bool>,
    pub(super) started: Instant,
    pub(super) bytes_sent: AtomicU64,
    pub(super) resent: AtomicU64,
    pub(super) nacked: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) throttled_nanos: AtomicU64,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the transfer's failure (the first one wins) and wakes everyone.
    pub(super) fn fail(&self, error: Error) {
        let mut state = self.lock();
        if state.end_confirmed {
            // The receiver confirmed the transfer complete: nothing that happens to the other
            // streams afterwards (say, the receiver shutting down) can undo that.
            tracing::debug!(transfer = %self.config.transfer, %error, "error after the transfer completed");
            return;
        }
        if state.failed.is_none() {
            tracing::warn!(transfer = %self.config.transfer, %error, "transfer failed");
            state.failed = Some(error);
        }
        drop(state);
        self.failed_tx.send_replace(true);
        self.changed.notify_waiters();
    }

    fn stats(&self) -> SenderStats {
        let state = self.lock();
        SenderStats {
            blocks: state.acked_blocks,
            bytes: state.acked_bytes,
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            resent_blocks: self.resent.load(Ordering::Relaxed),
            nacked_blocks: self.nacked.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            throttled: Duration::from_nanos(self.throttled_nanos.load(Ordering::Relaxed)),
            elapsed: self.started.elapsed(),
        }
    }
}

/// Sends one transfer's blocks to a [`Receiver`](crate::Receiver) over parallel streams.
///
/// ```no_run
/// # async fn demo(config: cairn_transfer::SenderConfig, blocks: Vec<cairn_transfer::Block>)
/// #     -> Result<(), cairn_transfer::Error> {
/// let sender = cairn_transfer::Sender::connect(config).await?;
/// for block in blocks {
///     sender.send(block).await?; // waits while the window is full
/// }
/// let stats = sender.finish().await?; // every block acknowledged
/// println!("{} blocks, {} re-sent", stats.blocks, stats.resent_blocks);
/// # Ok(()) }
/// ```
///
/// Dropping a `Sender` without [`finish`](Self::finish) stops its streams abruptly; use
/// [`abort`](Self::abort) to tell the receiver why.
pub struct Sender {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sender {
    /// Opens all streams (retrying within the reconnect policy) and returns once each stream
    /// has either completed its handshake or been given up; fails when none could connect or a
    /// handshake was refused (certificate, unknown transfer, limits).
    pub async fn connect(config: SenderConfig) -> Result<Sender, Error> {
        config.validate()?;
        let streams = config.streams;
        let (failed_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                inflight: vec![0; usize::from(streams)],
                alive: streams,
                ..State::default()
            }),
            config,
            changed: Notify::new(),
            failed_tx,
            started: Instant::now(),
            bytes_sent: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            throttled_nanos: AtomicU64::new(0),
        });
        let tasks = (0..streams)
            .map(|i| tokio::spawn(stream::run_stream(shared.clone(), i)))
            .collect();
        let sender = Sender { shared, tasks };
        loop {
            let notified = sender.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = sender.shared.lock();
                if let Some(e) = &state.failed {
                    return Err(e.clone());
                }
                if state.settled == streams {
                    break;
                }
            }
            notified.await;
        }
        Ok(sender)
    }

    /// Queues a block and returns its seq; waits while the window is full. Fails once the
    /// transfer has failed.
    pub async fn send(&self, block: Block) -> Result<u64, Error> {
        let max = self.shared.config.max_block_len;
        let crc = block_crc(&block.data);
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.shared.lock();
                if let Some(e) = &state.failed {
                    return Err(e.clone());
                }
                if block.data.len() > max as usize {
                    return Err(Error::BlockTooLong {
                        seq: state.next_seq,
                        len: block.data.len(),
                        max,
                    });
                }
                if state.total.is_some() {
                    return Err(Error::Config("send after finish".into()));
                }
                // The window spans seqs, not just pending blocks: one slow block (a re-send)
                // holds it back, so the receiver's de-duplication state stays bounded too.
                if state.next_seq - state.acked_below() < u64::from(self.shared.config.window) {
                    let seq = state.next_seq;
                    state.next_seq += 1;
                    state.pending.insert(
                        seq,
                        Pending {
                            block,
                            crc,
                            sends: 0,
                            on_stream: None,
                        },
                    );
                    state.queue.push_back(seq);
                    drop(state);
                    self.shared.changed.notify_waiters();
                    return Ok(seq);
                }
            }
            notified.await;
        }
    }

    /// A snapshot of the statistics so far (for progress reports).
    pub fn stats(&self) -> SenderStats {
        self.shared.stats()
    }

    /// Blocks queued so far (the next block's seq).
    pub fn queued(&self) -> u64 {
        self.shared.lock().next_seq
    }

    /// Ends the transfer: waits until the receiver has acknowledged every block and confirmed
    /// the end on each stream, then returns the statistics. Dropping the future before it
    /// finished aborts the streams.
    pub async fn finish(mut self) -> Result<SenderStats, Error> {
        {
            let mut state = self.shared.lock();
            state.total = Some(state.next_seq);
        }
        self.shared.changed.notify_waiters();
        // The stream tasks stay in `self.tasks` while they are awaited, so dropping this future
        // (a cancelled task) still aborts them through `Drop`.
        for task in &mut self.tasks {
            if let Err(e) = task.await {
                self.shared.fail(Error::Cancelled {
                    transfer: self.shared.config.transfer,
                    reason: format!("a stream task ended abnormally: {e}"),
                });
            }
        }
        self.tasks.clear();
        if let Some(e) = self.shared.lock().failed.clone() {
            return Err(e);
        }
        Ok(self.shared.stats())
    }

    /// Cancels the transfer: every connected stream sends an ERROR (cancelled, with `reason`)
    /// so the receiver fails it too, then closes.
    pub async fn abort(mut self, reason: &str) {
        self.shared.fail(Error::Cancelled {
            transfer: self.shared.config.transfer,
            reason: reason.to_string(),
        });
        for task in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
