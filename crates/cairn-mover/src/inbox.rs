//! The target's side of the data path: blocks arrive from the transfer (async, out of order,
//! spread over streams) and the engine reads them (one thread, in the order of its read plan).
//! [`Inbox`] sits between the two with a bounded number of blocks; [`RemoteDisk`] is a disk of
//! the VM as the engine sees it.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use cairn_disk::{DiskError, DiskSource, Extent, SectorSizes};
use tokio::sync::Notify;

use crate::protocol::{DiskDescription, pairs_to_extents};

/// How often a waiting reader looks whether the task was stopped.
const STOP_POLL: Duration = Duration::from_millis(200);

#[derive(Default)]
struct State {
    blocks: HashMap<(u32, u64), Bytes>,
    /// The block the reader waits for: always let in, even when the inbox is full.
    wanted: Option<(u32, u64)>,
    failed: Option<String>,
}

/// Blocks received and not yet read, at most `capacity` of them (plus the one the reader waits
/// for, so a full inbox never blocks the block that would drain it).
pub struct Inbox {
    state: Mutex<State>,
    arrived: Condvar,
    space: Notify,
    capacity: usize,
}

impl Inbox {
    /// An empty inbox holding at most `capacity` blocks (at least 1).
    pub fn new(capacity: usize) -> Arc<Inbox> {
        Arc::new(Inbox {
            state: Mutex::new(State::default()),
            arrived: Condvar::new(),
            space: Notify::new(),
            capacity: capacity.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts the block of `disk` at `offset` in, waiting while the inbox is full. Fails when the
    /// inbox failed ([`fail`](Self::fail)).
    pub async fn put(&self, disk: u32, offset: u64, data: Bytes) -> Result<(), String> {
        let key = (disk, offset);
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if let Some(reason) = &state.failed {
                    return Err(reason.clone());
                }
                if state.blocks.len() < self.capacity || state.wanted == Some(key) {
                    state.blocks.insert(key, data);
                    self.arrived.notify_all();
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Takes the block of `disk` at `offset`, waiting until it arrives. `stopped` is asked every
    /// few hundred milliseconds while waiting; a reason ends the wait with it.
    pub fn take(&self, disk: u32, offset: u64, stopped: &dyn Fn() -> Option<String>) -> Result<Bytes, String> {
        let key = (disk, offset);
        let mut state = self.lock();
        loop {
            if let Some(data) = state.blocks.remove(&key) {
                state.wanted = None;
                drop(state);
                self.space.notify_waiters();
                return Ok(data);
            }
            if let Some(reason) = &state.failed {
                return Err(reason.clone());
            }
            if state.wanted != Some(key) {
                state.wanted = Some(key);
                self.space.notify_waiters();
            }
            state = self
                .arrived
                .wait_timeout(state, STOP_POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if let Some(reason) = stopped() {
                return Err(reason);
            }
        }
    }

    /// Ends the inbox: waiting and later readers and writers get `reason` (the first one given).
    pub fn fail(&self, reason: impl Into<String>) {
        {
            let mut state = self.lock();
            if state.failed.is_none() {
                state.failed = Some(reason.into());
            }
        }
        self.arrived.notify_all();
        self.space.notify_waiters();
    }

    /// Blocks held now.
    pub fn len(&self) -> usize {
        self.lock().blocks.len()
    }

    /// Whether no block is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A VM disk on the proxy, read through the transfer: the engine of the target data mover backs
/// it up like a local disk. Reads must come in the order of the read plan the engine announced
/// (the source sends blocks in that order); an empty block received means all zeros.
pub struct RemoteDisk {
    disk: u32,
    description: DiskDescription,
    inbox: Arc<Inbox>,
    stopped: Box<dyn Fn() -> Option<String> + Send + Sync>,
}

impl RemoteDisk {
    /// Disk `disk` described by the source, its blocks coming through `inbox`; `stopped` says
    /// whether (and why) the task was stopped.
    pub fn new(
        disk: u32,
        description: DiskDescription,
        inbox: Arc<Inbox>,
        stopped: Box<dyn Fn() -> Option<String> + Send + Sync>,
    ) -> RemoteDisk {
        RemoteDisk {
            disk,
            description,
            inbox,
            stopped,
        }
    }
}

impl DiskSource for RemoteDisk {
    fn describe(&self) -> String {
        self.description.describe.clone()
    }

    fn virtual_size(&self) -> u64 {
        self.description.virtual_size
    }

    fn allocation(&self) -> cairn_disk::Result<Vec<Extent>> {
        Ok(pairs_to_extents(&self.description.allocation))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> cairn_disk::Result<()> {
        let source_error = |reason: String| DiskError::Source {
            source_name: self.description.describe.clone(),
            reason,
        };
        let data = self
            .inbox
            .take(self.disk, offset, &*self.stopped)
            .map_err(source_error)?;
        if data.is_empty() {
            buf.fill(0);
        } else if data.len() == buf.len() {
            buf.copy_from_slice(&data);
        } else {
            return Err(source_error(format!(
                "the proxy sent {} bytes for the block at offset {offset}, the engine reads {}",
                data.len(),
                buf.len()
            )));
        }
        Ok(())
    }

    fn sector_sizes(&self) -> SectorSizes {
        SectorSizes {
            logical: self.description.logical_sector,
            physical: self.description.physical_sector,
        }
    }

    fn identity(&self) -> Option<String> {
        self.description.identity.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_order_blocks_are_read_in_order_with_a_small_inbox() {
        let inbox = Inbox::new(2);
        let n = 50u64;
        let producer = {
            let inbox = inbox.clone();
            tokio::spawn(async move {
                // Pairs swapped: 1,0,3,2,... as parallel streams would deliver them.
                for i in (0..n).step_by(2) {
                    for j in [i + 1, i] {
                        if j < n {
                            inbox.put(0, j * 4096, Bytes::from(vec![j as u8; 16])).await.unwrap();
                        }
                    }
                }
            })
        };
        let reader = {
            let inbox = inbox.clone();
            tokio::task::spawn_blocking(move || {
                (0..n)
                    .map(|j| inbox.take(0, j * 4096, &|| None).unwrap()[0])
                    .collect::<Vec<u8>>()
            })
        };
        let got = reader.await.unwrap();
        producer.await.unwrap();
        assert_eq!(got, (0..n).map(|j| j as u8).collect::<Vec<_>>());
        assert!(inbox.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_wakes_the_reader_and_the_writers() {
        let inbox = Inbox::new(1);
        inbox.put(0, 0, Bytes::from_static(b"a")).await.unwrap();
        let blocked = {
            let inbox = inbox.clone();
            tokio::spawn(async move { inbox.put(0, 4096, Bytes::from_static(b"b")).await })
        };
        let reader = {
            let inbox = inbox.clone();
            tokio::task::spawn_blocking(move || inbox.take(1, 0, &|| None))
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        inbox.fail("the proxy went away");
        assert_eq!(reader.await.unwrap(), Err("the proxy went away".to_string()));
        assert_eq!(blocked.await.unwrap(), Err("the proxy went away".to_string()));
    }

    #[test]
    fn a_stop_ends_the_wait() {
        let inbox = Inbox::new(4);
        let err = inbox.take(0, 0, &|| Some("stopped by the user".into())).unwrap_err();
        assert_eq!(err, "stopped by the user");
    }
}
