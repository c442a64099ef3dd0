//! The source data mover: opens a VM's disks on the proxy, describes them, and sends the blocks
//! the target's engine plans to read, in that order, over a `cairn-transfer` to the target.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_disk::image::Image;
use cairn_disk::{DiskSource, Extent};
use cairn_transfer::{Block, PeerPolicy, Sender, SenderConfig, ServerName, TlsIdentity, TransferId, sender_tls_config};
use tokio::sync::mpsc;

use crate::pace::Pacer;
use crate::protocol::{
    DiskDescription, Instruction, Level, SourceSummary, SourceTask, TaskEvent, extents_to_pairs, runs_to_blocks,
};
use crate::{MoverError, TaskLink};

/// Blocks read ahead of the sender.
const READ_AHEAD: usize = 8;
/// Window of unacknowledged blocks per transfer.
const WINDOW: u32 = 64;

/// A disk the source reads, with what the target is told about it.
pub struct SourceDisk {
    /// The disk.
    pub source: Box<dyn DiskSource>,
    /// Its description ([`TaskEvent::Described`]).
    pub description: DiskDescription,
}

impl SourceDisk {
    /// Describes `source`: its allocation, and with changed block tracking the extents changed
    /// since the source identity `changed_since` (a differencing disk's parent, a checkpoint).
    pub fn new(
        source: Box<dyn DiskSource>,
        changed: Option<&[Extent]>,
        changed_since: Option<String>,
    ) -> cairn_disk::Result<SourceDisk> {
        let allocation = source.allocation()?;
        let sectors = source.sector_sizes();
        let description = DiskDescription {
            describe: source.describe(),
            virtual_size: source.virtual_size(),
            logical_sector: sectors.logical,
            physical_sector: sectors.physical,
            identity: source.identity(),
            allocation: extents_to_pairs(&allocation),
            changed: changed.map(extents_to_pairs),
            changed_since: changed_since.filter(|_| changed.is_some()),
        };
        Ok(SourceDisk { source, description })
    }
}

/// Runs a source task to its end: opens the task's disk images and sends them as
/// [`send_disks`] does.
pub async fn run_source(
    task: SourceTask,
    identity: &TlsIdentity,
    instructions: mpsc::UnboundedReceiver<Instruction>,
    link: Arc<dyn TaskLink>,
) -> Result<SourceSummary, MoverError> {
    let paths: Vec<PathBuf> = task.disks.iter().map(PathBuf::from).collect();
    let link_for_open = link.clone();
    let disks = tokio::task::spawn_blocking(move || open_disks(&paths, link_for_open.as_ref()))
        .await
        .map_err(|e| MoverError::Panicked(e.to_string()))??;
    send_disks(task, disks, identity, instructions, link).await
}

/// Sends already opened disks (the task's `disks` are then only names): reports
/// [`TaskEvent::Described`], then for every [`Instruction::ReadPlan`] reads and sends those
/// blocks; when every disk's plan has been sent and acknowledged, returns what was done.
/// [`Instruction::Cancel`] or a cancel in the server's [`Control`](crate::protocol::Control) ends
/// it with [`MoverError::Cancelled`].
pub async fn send_disks(
    task: SourceTask,
    disks: Vec<SourceDisk>,
    identity: &TlsIdentity,
    instructions: mpsc::UnboundedReceiver<Instruction>,
    link: Arc<dyn TaskLink>,
) -> Result<SourceSummary, MoverError> {
    link.emit(TaskEvent::Described {
        disks: disks.iter().map(|d| d.description.clone()).collect(),
    });
    let pacer = Arc::new(Pacer::new(task.network_rate));
    let config = sender_config(&task, identity, pacer.clone())?;
    let started = Instant::now();

    let streams = task.target.streams;
    let mut run = SourceRun {
        plans: Plans {
            disks: Arc::new(disks),
            bs: u64::from(task.block_size),
            planned: 0,
            pending: VecDeque::new(),
        },
        instructions,
        link,
        pacer,
        config,
        streams,
        sender: None,
        summary: SourceSummary {
            streams,
            ..SourceSummary::default()
        },
        control_tick: tokio::time::interval(Duration::from_millis(250)),
    };
    while !run.plans.all_sent() {
        let Some((disk, blocks)) = run.next_plan().await? else {
            continue;
        };
        if run.sender.is_none() {
            run.connect().await?;
        }
        run.send_plan(disk, blocks).await?;
    }
    run.finish(started).await
}

/// The sender's configuration for the task's target endpoint: its address, name and pinned
/// fingerprint, streams, window and block size, throttled by `pacer`.
fn sender_config(task: &SourceTask, identity: &TlsIdentity, pacer: Arc<Pacer>) -> Result<SenderConfig, MoverError> {
    let endpoint = &task.target;
    let transfer: TransferId = endpoint.transfer.parse().map_err(MoverError::Protocol)?;
    let fingerprint = endpoint
        .fingerprint
        .parse()
        .map_err(|e| MoverError::Protocol(format!("the target's fingerprint: {e}")))?;
    let addr = endpoint
        .address
        .parse()
        .map_err(|e| MoverError::Protocol(format!("the target's address {:?}: {e}", endpoint.address)))?;
    let server_name = ServerName::try_from(endpoint.server_name.clone())
        .map_err(|e| MoverError::Protocol(format!("the target's name {:?}: {e}", endpoint.server_name)))?;
    let tls = sender_tls_config(identity, PeerPolicy::pinned(fingerprint))?;
    let mut config = SenderConfig::new(addr, server_name, tls, transfer);
    config.streams = endpoint.streams;
    config.window = WINDOW;
    config.max_block_len = task.block_size.max(1);
    config.throttle = Some(pacer);
    Ok(config)
}

/// The read plans the target sent and the source has not sent yet.
struct Plans {
    /// The disks the plans read.
    disks: Arc<Vec<SourceDisk>>,
    /// Block size in bytes.
    bs: u64,
    /// How many plans arrived (one per disk).
    planned: usize,
    /// Plans waiting to be sent: the disk and its blocks, in order.
    pending: VecDeque<(u32, Vec<u64>)>,
}

impl Plans {
    /// Checks the plan of `disk` and queues it.
    fn queue(&mut self, disk: u32, runs: &[[u64; 2]]) -> Result<(), MoverError> {
        let blocks = plan_blocks(&self.disks, disk, runs, self.bs)?;
        self.planned += 1;
        self.pending.push_back((disk, blocks));
        Ok(())
    }

    /// Checks and queues read plans that arrived while waiting.
    fn queue_all(&mut self, plans: Vec<(u32, Vec<[u64; 2]>)>) -> Result<(), MoverError> {
        for (disk, runs) in plans {
            self.queue(disk, &runs)?;
        }
        Ok(())
    }

    /// Whether every disk's plan arrived and was taken.
    fn all_sent(&self) -> bool {
        self.planned >= self.disks.len() && self.pending.is_empty()
    }
}

/// A source task sending its disks.
struct SourceRun {
    /// The plans to send.
    plans: Plans,
    /// The server's instructions.
    instructions: mpsc::UnboundedReceiver<Instruction>,
    /// Events to and control from the server.
    link: Arc<dyn TaskLink>,
    /// The network rate, steered by the server.
    pacer: Arc<Pacer>,
    /// How to connect to the target.
    config: SenderConfig,
    /// Streams of the transfer (for the log).
    streams: u16,
    /// The transfer, once connected (at the first plan).
    sender: Option<Sender>,
    /// What was done so far.
    summary: SourceSummary,
    /// When to look at the server's control answer.
    control_tick: tokio::time::Interval,
}

impl SourceRun {
    /// The next plan to send. Waits for one when none is queued; returns `None` when the wait
    /// ended otherwise (an instruction, a rate change) and the caller should look again.
    async fn next_plan(&mut self) -> Result<Option<(u32, Vec<u64>)>, MoverError> {
        if let Some(plan) = self.plans.pending.pop_front() {
            return Ok(Some(plan));
        }
        tokio::select! {
            ins = self.instructions.recv() => match ins {
                Some(Instruction::ReadPlan { disk, runs, .. }) => self.plans.queue(disk, &runs)?,
                Some(Instruction::Cancel { reason, .. }) => return cancelled(self.sender.take(), reason).await,
                Some(_) => {}
                None => return cancelled(self.sender.take(), "the server ended the task".into()).await,
            },
            _ = self.control_tick.tick() => {
                let control = self.link.control();
                if let Some(reason) = control.cancel {
                    return cancelled(self.sender.take(), reason).await;
                }
                self.pacer.steer(control.network_rate);
            }
        }
        Ok(None)
    }

    /// Connects the transfer, keeping read plans that arrive meanwhile.
    async fn connect(&mut self) -> Result<(), MoverError> {
        let mut plans = Vec::new();
        let connected = until_cancel(
            Sender::connect(self.config.clone()),
            &mut self.instructions,
            self.link.as_ref(),
            &mut plans,
        )
        .await;
        self.plans.queue_all(plans)?;
        match connected {
            Waited::Done(r) => {
                self.sender = Some(r.map_err(|e| cancel_or(e, &mut self.instructions, self.link.as_ref()))?);
                Ok(())
            }
            Waited::Cancelled(reason) => cancelled(None, reason).await,
        }
    }

    /// Reads `blocks` of `disk` on a reader thread and sends them, while queueing new plans and
    /// watching for a cancel.
    async fn send_plan(&mut self, disk: u32, blocks: Vec<u64>) -> Result<(), MoverError> {
        let Some(active) = self.sender.as_ref() else {
            return Ok(());
        };
        let disks = self.plans.disks.clone();
        let bs = self.plans.bs;
        let total = blocks.len();
        if total > 0 {
            self.link.emit(TaskEvent::Log {
                disk: Some(disk),
                level: Level::Info,
                text: format!(
                    "sending {total} blocks of {} to the repository's data mover over {} stream(s)",
                    disks[disk as usize].source.describe(),
                    self.streams
                ),
            });
        }
        // A reader thread fills a small queue; this task sends.
        let (tx, mut rx) = mpsc::channel::<Result<(u64, Bytes, bool), MoverError>>(READ_AHEAD);
        let reader =
            tokio::task::spawn_blocking(move || read_blocks(disks[disk as usize].source.as_ref(), &blocks, bs, tx));
        loop {
            tokio::select! {
                biased;
                ins = self.instructions.recv() => match ins {
                    Some(Instruction::ReadPlan { disk, runs, .. }) => self.plans.queue(disk, &runs)?,
                    Some(Instruction::Cancel { reason, .. }) => {
                        drop(rx);
                        return cancelled(self.sender.take(), reason).await;
                    }
                    Some(_) => {}
                    None => {
                        drop(rx);
                        return cancelled(self.sender.take(), "the server ended the task".into()).await;
                    }
                },
                _ = self.control_tick.tick() => {
                    let control = self.link.control();
                    if let Some(reason) = control.cancel {
                        drop(rx);
                        return cancelled(self.sender.take(), reason).await;
                    }
                    self.pacer.steer(control.network_rate);
                }
                next = rx.recv() => match next {
                    Some(Ok((offset, data, zero))) => {
                        self.summary.blocks += 1;
                        if zero {
                            self.summary.zero_blocks += 1;
                        }
                        // A full window waits for acknowledgements: a cancel must not wait too.
                        let mut plans = Vec::new();
                        let sent = until_cancel(
                            active.send(Block { disk, offset, data }),
                            &mut self.instructions,
                            self.link.as_ref(),
                            &mut plans,
                        )
                        .await;
                        self.plans.queue_all(plans)?;
                        match sent {
                            Waited::Done(r) => {
                                r.map_err(|e| cancel_or(e, &mut self.instructions, self.link.as_ref()))?;
                            }
                            Waited::Cancelled(reason) => {
                                drop(rx);
                                return cancelled(self.sender.take(), reason).await;
                            }
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => break,
                }
            }
        }
        let (read_bytes, read_time) = reader.await.map_err(|e| MoverError::Panicked(e.to_string()))?;
        self.summary.read_bytes += read_bytes;
        self.summary.read_secs += read_time.as_secs_f64();
        Ok(())
    }

    /// Finishes the transfer (every block acknowledged) and returns the summary.
    async fn finish(mut self, started: Instant) -> Result<SourceSummary, MoverError> {
        if let Some(sender) = self.sender {
            // Dropping `finish` on a cancel aborts the streams.
            let stats = match until_cancel(
                sender.finish(),
                &mut self.instructions,
                self.link.as_ref(),
                &mut Vec::new(),
            )
            .await
            {
                Waited::Done(r) => r.map_err(|e| cancel_or(e, &mut self.instructions, self.link.as_ref()))?,
                Waited::Cancelled(reason) => return Err(MoverError::Cancelled(reason)),
            };
            self.summary.sent_bytes = stats.bytes_sent;
            self.summary.resent_blocks = stats.resent_blocks;
            self.summary.reconnects = stats.reconnects;
            self.summary.throttled_secs = stats.throttled.as_secs_f64();
        }
        self.summary.elapsed_secs = started.elapsed().as_secs_f64();
        Ok(self.summary)
    }
}

/// How a wait ended.
enum Waited<T> {
    Done(T),
    Cancelled(String),
}

/// Waits for `fut` unless the task is cancelled first (an instruction or the server's steering);
/// read plans that arrive meanwhile are kept in `plans`.
async fn until_cancel<T>(
    fut: impl std::future::Future<Output = T>,
    instructions: &mut mpsc::UnboundedReceiver<Instruction>,
    link: &dyn TaskLink,
    plans: &mut Vec<(u32, Vec<[u64; 2]>)>,
) -> Waited<T> {
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Waited::Done(out),
            ins = instructions.recv() => match ins {
                Some(Instruction::Cancel { reason, .. }) => return Waited::Cancelled(reason),
                Some(Instruction::ReadPlan { disk, runs, .. }) => plans.push((disk, runs)),
                Some(_) => {}
                None => return Waited::Cancelled("the server ended the task".into()),
            },
            _ = tick.tick() => {
                if let Some(reason) = link.control().cancel {
                    return Waited::Cancelled(reason);
                }
            }
        }
    }
}

/// Aborts the transfer, if there is one, and ends the task as cancelled for `reason`.
async fn cancelled<T>(sender: Option<Sender>, reason: String) -> Result<T, MoverError> {
    if let Some(sender) = sender {
        sender.abort(&reason).await;
    }
    Err(MoverError::Cancelled(reason))
}

/// The error a failed transfer ends the task with: [`MoverError::Cancelled`] when the server has
/// cancelled the task meanwhile (the target, cancelled too, ends the transfer, and its refusal
/// may reach the sender before the source looked at its instructions), else the transfer's.
fn cancel_or(
    error: cairn_transfer::Error,
    instructions: &mut mpsc::UnboundedReceiver<Instruction>,
    link: &dyn TaskLink,
) -> MoverError {
    while let Ok(ins) = instructions.try_recv() {
        if let Instruction::Cancel { reason, .. } = ins {
            return MoverError::Cancelled(reason);
        }
    }
    match link.control().cancel {
        Some(reason) => MoverError::Cancelled(reason),
        None => MoverError::Channel(error),
    }
}

/// The blocks of a plan, checked against the disk.
fn plan_blocks(disks: &[SourceDisk], disk: u32, runs: &[[u64; 2]], bs: u64) -> Result<Vec<u64>, MoverError> {
    let Some(image) = disks.get(disk as usize).map(|d| d.source.as_ref()) else {
        return Err(MoverError::Protocol(format!(
            "a read plan for disk {disk}, but the VM has {} disks",
            disks.len()
        )));
    };
    let count = image.virtual_size().div_ceil(bs.max(1));
    let blocks = runs_to_blocks(runs, count)
        .ok_or_else(|| MoverError::Protocol(format!("the read plan of disk {disk} names more blocks than it has")))?;
    if let Some(bad) = blocks.iter().find(|&&b| b >= count) {
        return Err(MoverError::Protocol(format!(
            "the read plan of disk {disk} names block {bad}, past its end ({count} blocks)"
        )));
    }
    Ok(blocks)
}

/// Reads `blocks` of `image` in order into `tx` (an all-zero block as an empty one); returns
/// the bytes read and the time spent reading.
fn read_blocks(
    image: &dyn DiskSource,
    blocks: &[u64],
    bs: u64,
    tx: mpsc::Sender<Result<(u64, Bytes, bool), MoverError>>,
) -> (u64, Duration) {
    let size = image.virtual_size();
    let mut read = 0u64;
    let mut busy = Duration::ZERO;
    for &block in blocks {
        let offset = block * bs;
        let len = (size - offset).min(bs) as usize;
        let mut buf = vec![0u8; len];
        let t = Instant::now();
        let result = image.read_at(&mut buf, offset);
        busy += t.elapsed();
        let item = match result {
            Ok(()) => {
                read += len as u64;
                if buf.iter().all(|&b| b == 0) {
                    Ok((offset, Bytes::new(), true))
                } else {
                    Ok((offset, Bytes::from(buf), false))
                }
            }
            Err(e) => Err(MoverError::Disk(e)),
        };
        let stop = item.is_err();
        if tx.blocking_send(item).is_err() || stop {
            break;
        }
    }
    (read, busy)
}

/// Opens every disk, with a differencing child's changed extents as CBT, and logs the decision.
fn open_disks(paths: &[PathBuf], link: &dyn TaskLink) -> Result<Vec<SourceDisk>, MoverError> {
    let mut disks = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let opened = Image::open(path).and_then(|image| {
            let changed = image.changed_extents()?;
            let changed_since = changed.as_ref().and_then(|_| image.parent_identity());
            let note = crate::cbt_note(path, changed.as_deref(), changed_since.is_some());
            Ok((
                SourceDisk::new(Box::new(image), changed.as_deref(), changed_since)?,
                note,
            ))
        });
        let (disk, note) = opened.map_err(|error| MoverError::Open {
            disk: i as u32,
            path: path.clone(),
            error,
        })?;
        link.emit(TaskEvent::Log {
            disk: Some(i as u32),
            level: Level::Info,
            text: note,
        });
        disks.push(disk);
    }
    Ok(disks)
}
