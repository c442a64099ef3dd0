//! [`NbdDisk`]: an NBD export as a [`DiskSource`], over a pool of connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use cairn_disk::extent::{Extent, normalize};
use cairn_disk::{DiskError, DiskSource};

use crate::proto::{BASE_ALLOCATION, STATE_DIRTY, STATE_HOLE};
use crate::{ClientOptions, Endpoint, Error, NbdClient, Result};

struct Pool {
    idle: Vec<NbdClient>,
    /// Connections that exist (idle or lent out).
    open: usize,
}

/// A [`DiskSource`] over an NBD export, with up to `connections` connections
/// so that reads from several threads run in parallel (each read borrows one
/// idle connection, waiting when all are busy).
///
/// Its allocation map comes from `base:allocation` (extents without the
/// hole flag) when `opts.meta_contexts` includes it and the server accepted
/// it, else the whole disk counts as allocated. A connection that fails is
/// dropped and replaced by a new one on a later read.
pub struct NbdDisk {
    ep: Endpoint,
    opts: ClientOptions,
    describe: String,
    identity: Option<String>,
    size: u64,
    contexts: Vec<String>,
    connections: usize,
    pool: Mutex<Pool>,
    returned: Condvar,
    bytes_read: AtomicU64,
}

impl NbdDisk {
    /// Connects once to learn the export (size, accepted contexts) and keeps
    /// that connection; up to `connections` (at least 1) are opened as reads
    /// need them. `describe` names the disk in messages, `identity` is
    /// returned by [`DiskSource::identity`].
    pub fn open(
        ep: Endpoint,
        opts: ClientOptions,
        connections: usize,
        describe: String,
        identity: Option<String>,
    ) -> Result<Self> {
        let first = NbdClient::connect(&ep, &opts)?;
        Ok(NbdDisk {
            size: first.size(),
            contexts: first.meta_contexts().to_vec(),
            ep,
            opts,
            describe,
            identity,
            connections: connections.max(1),
            pool: Mutex::new(Pool {
                idle: vec![first],
                open: 1,
            }),
            returned: Condvar::new(),
            bytes_read: AtomicU64::new(0),
        })
    }

    /// The metadata contexts the server accepted.
    pub fn meta_contexts(&self) -> &[String] {
        &self.contexts
    }

    /// The extents whose flags under `context` have bit 0 set (for
    /// `qemu:dirty-bitmap:NAME`: dirty), sorted and merged, over the whole disk.
    pub fn dirty_extents(&self, context: &str) -> Result<Vec<Extent>> {
        self.status_extents(context, |flags| flags & STATE_DIRTY != 0)
    }

    /// Data bytes received by reads so far (requested bytes, holes included).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// The extents of the whole disk under `context` whose flags satisfy `keep`.
    fn status_extents(&self, context: &str, keep: impl Fn(u32) -> bool) -> Result<Vec<Extent>> {
        if !self.contexts.iter().any(|c| c == context) {
            return Err(Error::NoContext {
                export: self.opts.export.clone(),
                context: context.to_string(),
                accepted: self.contexts.clone(),
            });
        }
        let extents = self.with_client(|c| c.block_status(context, 0, self.size))?;
        Ok(normalize(
            extents
                .into_iter()
                .filter(|e| keep(e.flags))
                .map(|e| Extent {
                    offset: e.offset,
                    length: e.length,
                })
                .collect(),
        ))
    }

    /// Runs `f` on an idle connection (opening one if the pool allows, else
    /// waiting for one); a connection that fails other than with a
    /// per-command server error is dropped.
    fn with_client<T>(&self, f: impl FnOnce(&mut NbdClient) -> Result<T>) -> Result<T> {
        let mut client = self.take()?;
        let r = f(&mut client);
        match &r {
            Ok(_) | Err(Error::Command { .. }) | Err(Error::OutOfRange { .. }) => self.give_back(client),
            Err(_) => {
                drop(client);
                self.lock().open -= 1;
                self.returned.notify_one();
            }
        }
        r
    }

    fn take(&self) -> Result<NbdClient> {
        let mut pool = self.lock();
        loop {
            if let Some(c) = pool.idle.pop() {
                return Ok(c);
            }
            if pool.open < self.connections {
                pool.open += 1;
                drop(pool);
                return match NbdClient::connect(&self.ep, &self.opts) {
                    Ok(c) if c.size() == self.size => Ok(c),
                    Ok(c) => {
                        let size = c.size();
                        drop(c);
                        self.lock().open -= 1;
                        self.returned.notify_one();
                        Err(Error::Protocol {
                            export: self.opts.export.clone(),
                            reason: format!("export size changed from {} to {size} bytes", self.size),
                        })
                    }
                    Err(e) => {
                        self.lock().open -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            pool = self.returned.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn give_back(&self, c: NbdClient) {
        self.lock().idle.push(c);
        self.returned.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn disk_error(&self, op: &'static str, e: Error) -> DiskError {
        DiskError::Io {
            path: self.describe.clone().into(),
            op,
            source: std::io::Error::other(e),
        }
    }
}

impl DiskSource for NbdDisk {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn allocation(&self) -> cairn_disk::Result<Vec<Extent>> {
        if !self.contexts.iter().any(|c| c == BASE_ALLOCATION) {
            return Ok(if self.size == 0 {
                Vec::new()
            } else {
                vec![Extent {
                    offset: 0,
                    length: self.size,
                }]
            });
        }
        self.status_extents(BASE_ALLOCATION, |flags| flags & STATE_HOLE == 0)
            .map_err(|e| self.disk_error("nbd block status", e))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> cairn_disk::Result<()> {
        // Bytes past the end read as zeros.
        let n = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        buf[n..].fill(0);
        if n == 0 {
            return Ok(());
        }
        self.with_client(|c| c.read(offset, &mut buf[..n]))
            .map_err(|e| self.disk_error("nbd read", e))?;
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    fn identity(&self) -> Option<String> {
        self.identity.clone()
    }
}

impl std::fmt::Debug for NbdDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdDisk")
            .field("describe", &self.describe)
            .field("endpoint", &self.ep)
            .field("export", &self.opts.export)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}
