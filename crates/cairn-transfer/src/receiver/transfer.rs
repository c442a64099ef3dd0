//! The receiver's bookkeeping of transfers: which transfers are expected, which seqs each has
//! consumed (so a block re-sent after a reconnect is handed over only once), which connection
//! serves each stream, how a transfer ended, and its statistics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, watch};

use super::config::ReceiverConfig;
use super::consumer::DynConsumer;
use crate::error::Error;
use crate::tls::Fingerprint;
use crate::wire::{ErrorCode, TransferId};

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

/// How a transfer ended: `None` while it runs, then the total number of blocks or the error.
pub(super) type Outcome = Option<Result<u64, Error>>;

/// Where a block stands when a stream brings it, from [`TransferState::claim`].
pub(super) enum Have {
    /// Nobody had it: the caller now hands it to the consumer.
    New,
    /// Past the sender's window (which starts at the given seq): a protocol violation.
    BeyondWindow(u64),
    /// Consumed already: acknowledge it again.
    Already,
    /// Another stream is handing it over right now.
    Wait,
}

/// One expected transfer.
pub(super) struct TransferState {
    pub(super) id: TransferId,
    /// The only sender accepted, when the transfer is pinned
    /// ([`Receiver::expect_from`](crate::Receiver::expect_from)).
    pub(super) sender: Option<Fingerprint>,
    pub(super) consumer: Box<dyn DynConsumer>,
    progress: Mutex<Progress>,
    /// Signalled whenever a block's slot is completed or freed.
    pub(super) slot_changed: Notify,
    pub(super) outcome: watch::Sender<Outcome>,
    pub(super) blocks: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) nacks: AtomicU64,
    pub(super) connections: AtomicU64,
}

impl TransferState {
    /// A transfer that has received nothing yet.
    pub(super) fn new(id: TransferId, sender: Option<Fingerprint>, consumer: Box<dyn DynConsumer>) -> Self {
        let (outcome, _) = watch::channel(None);
        TransferState {
            id,
            sender,
            consumer,
            progress: Mutex::new(Progress::default()),
            slot_changed: Notify::new(),
            outcome,
            blocks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            nacks: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Statistics so far.
    pub(super) fn stats(&self) -> ReceiverStats {
        ReceiverStats {
            blocks: self.blocks.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            nacks: self.nacks.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
        }
    }

    /// The error the transfer failed with, if it did.
    pub(super) fn failure(&self) -> Option<Error> {
        match &*self.outcome.borrow() {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Makes a new connection the one serving `stream` (`superseded` tells it when a later
    /// one takes over) and returns `received_below` for its HELLO_OK. Fails, with the cause,
    /// when the sender claims acknowledgements for blocks that were never received.
    pub(super) fn attach(&self, stream: u16, acked_below: u64, superseded: &Arc<Notify>) -> Result<u64, String> {
        let mut progress = self.lock();
        if acked_below > progress.received_below {
            Err(format!(
                "claims blocks below seq {} were acknowledged, but only those below {} were received",
                acked_below, progress.received_below
            ))
        } else {
            if let Some(old) = progress.streams.insert(stream, superseded.clone()) {
                old.notify_one();
            }
            Ok(progress.received_below)
        }
    }

    /// Where block `seq` stands, for a sender whose window is `window` blocks; a new block's
    /// slot is taken (free it with a [`SlotGuard`]).
    pub(super) fn claim(&self, seq: u64, window: u32) -> Have {
        let mut progress = self.lock();
        if seq < progress.received_below {
            Have::Already
        } else if seq - progress.received_below >= u64::from(window) {
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
    }

    /// Whether exactly the blocks below `total` have been consumed.
    pub(super) fn has_all(&self, total: u64) -> bool {
        let progress = self.lock();
        progress.received_below == total && progress.above.is_empty()
    }
}

/// How a transfer ended, remembered so that a late reconnection gets a meaningful answer.
enum Finished {
    Complete(u64),
    Failed(ErrorCode, String),
}

/// Finished transfers remembered (oldest forgotten first).
const FINISHED_KEPT: usize = 1024;

/// What a receiver and all its connections share.
pub(super) struct RecvShared {
    pub(super) config: ReceiverConfig,
    transfers: Mutex<HashMap<TransferId, Arc<TransferState>>>,
    finished: Mutex<VecDeque<(TransferId, Finished)>>,
    /// Set when the receiver is dropped.
    pub(super) shutdown: watch::Sender<bool>,
}

impl RecvShared {
    /// A receiver expecting no transfers yet.
    pub(super) fn new(config: ReceiverConfig) -> Self {
        let (shutdown, _) = watch::channel(false);
        RecvShared {
            config,
            transfers: Mutex::new(HashMap::new()),
            finished: Mutex::new(VecDeque::new()),
            shutdown,
        }
    }

    /// The transfers expected now, by id.
    pub(super) fn transfers(&self) -> MutexGuard<'_, HashMap<TransferId, Arc<TransferState>>> {
        self.transfers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a transfer's outcome (the first one wins) and forgets it as active.
    pub(super) fn finish(&self, t: &TransferState, result: Result<u64, Error>) {
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

    /// How transfer `id` ended, if it is among those remembered: its total number of blocks,
    /// or the error code and message it failed with.
    pub(super) fn finished(&self, id: TransferId) -> Option<Result<u64, (ErrorCode, String)>> {
        let list = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter().rev().find(|(x, _)| *x == id).map(|(_, f)| match f {
            Finished::Complete(total) => Ok(*total),
            Finished::Failed(code, message) => Err((*code, message.clone())),
        })
    }
}

fn result_message(result: &Result<u64, Error>) -> String {
    match result {
        Ok(total) => format!("complete after {total} blocks"),
        Err(e) => e.to_string(),
    }
}

/// Marks a block consumed, or, if dropped before that (consumer failed, task cancelled),
/// frees its slot so that a re-send can be consumed.
pub(super) struct SlotGuard<'a> {
    t: &'a TransferState,
    seq: u64,
    done: bool,
}

impl<'a> SlotGuard<'a> {
    /// Guards the slot of block `seq`, which [`TransferState::claim`] found [`Have::New`].
    pub(super) fn new(t: &'a TransferState, seq: u64) -> Self {
        SlotGuard { t, seq, done: false }
    }

    /// Marks the block consumed and advances `received_below` past every consumed block.
    pub(super) fn complete(mut self) {
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
