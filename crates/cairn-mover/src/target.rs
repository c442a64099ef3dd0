//! The target data mover: owns a repository folder, receives a VM's blocks from the proxy and
//! runs the engine on them (hash, dedup against the previous point, compress, encrypt, write),
//! commits the restore point and applies retention. Nothing else writes to the repository.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cairn_engine::{BackupHooks, BackupOptions, BackupResult, DiskInput, EngineError, Progress};
use cairn_format::codec::Compression;
use cairn_repo::{BackupPlan, FullKind, PointStats, Repository, SessionKind};
use cairn_transfer::{ConsumerError, Fingerprint, IncomingTransfer, ReceivedBlock, Receiver, TransferId};
use tokio::sync::mpsc;

use crate::inbox::{Inbox, RemoteDisk};
use crate::pace::Pacer;
use crate::protocol::{Instruction, Level, TargetTask, TaskEvent, blocks_to_runs, pairs_to_extents};
use crate::{MoverError, TaskLink};

/// Blocks the target holds between the transfer and the engine (memory ≈ this × block size).
const INBOX_BLOCKS: usize = 32;
/// Least time between two progress reports of a disk.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long the target waits for the sender's END after its engine is done.
const END_WAIT: Duration = Duration::from_secs(30);

/// What a committed target task produced.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The new point's id.
    pub point: String,
    /// What kind of session wrote it.
    pub kind: SessionKind,
}

/// Runs a target task to its end: expects the transfer (from the pinned source only), runs the
/// engine with the VM's disks read from it, commits the point, applies retention and reports
/// [`TaskEvent::Committed`]. Stops at the next block on [`Instruction::Cancel`] or a cancel in the
/// server's [`Control`](crate::protocol::Control); the repository then stays as it was.
pub async fn run_target(
    task: TargetTask,
    receiver: &Receiver,
    instructions: mpsc::UnboundedReceiver<Instruction>,
    link: Arc<dyn TaskLink>,
) -> Result<Committed, MoverError> {
    let (transfer, source, compression) = parse_task(&task)?;
    let repo = open_repository(&task).await?;

    let inbox = Inbox::new(INBOX_BLOCKS);
    let incoming = expect_blocks(receiver, transfer, source, &inbox)?;
    let stop = StopSignal {
        why: Arc::new(Mutex::new(None)),
        inbox: inbox.clone(),
    };
    let pacer = Arc::new(Pacer::new(task.write_rate));
    let engine_done = Arc::new(AtomicBool::new(false));
    let watcher = watch(
        instructions,
        link.clone(),
        pacer.clone(),
        stop.clone(),
        engine_done.clone(),
        &incoming,
    );

    let stopped = {
        let stop = stop.clone();
        move || stop.reason()
    };
    let inputs = disk_inputs(&task, &inbox, &stopped);
    let opts = BackupOptions {
        compression,
        ..BackupOptions::default()
    };
    let hooks = Arc::new(TargetHooks {
        link: link.clone(),
        pacer: pacer.clone(),
        stopped: Box::new(stopped.clone()),
        disk: Mutex::new(DiskClock::default()),
    });
    let engine = EngineRun {
        repo: repo.clone(),
        plan: backup_plan(&task),
        inputs,
        opts,
        hooks,
        done: engine_done,
    };
    let result = match engine.run_while(watcher).await? {
        Ok(r) => r,
        Err(e) => {
            return Err(match stop.why() {
                Some(Stop::Cancelled(reason)) => MoverError::Cancelled(reason),
                Some(Stop::Failed(reason)) => MoverError::Transfer(reason),
                None => MoverError::Engine(e),
            });
        }
    };
    // The sender finishes once everything it sent was acknowledged; wait briefly for its END so
    // its streams close cleanly (the point is already committed).
    let _ = tokio::time::timeout(END_WAIT, incoming.wait()).await;

    let (retention, retention_failed) = apply_retention(repo, &task).await;
    link.emit(TaskEvent::Committed {
        point: result.point.id.clone(),
        kind: kind_text(result.kind).to_string(),
        notes: result.notes.clone(),
        retention,
        retention_failed,
    });
    Ok(Committed {
        point: result.point.id,
        kind: result.kind,
    })
}

/// The task's transfer id, the source's pinned fingerprint and the compression to write with.
fn parse_task(task: &TargetTask) -> Result<(TransferId, Fingerprint, Compression), MoverError> {
    let transfer: TransferId = task.transfer.parse().map_err(MoverError::Protocol)?;
    let source: Fingerprint = task
        .source_fingerprint
        .parse()
        .map_err(|e| MoverError::Protocol(format!("the source's fingerprint: {e}")))?;
    let compression: Compression = task
        .compression
        .parse()
        .map_err(|e| MoverError::Protocol(format!("compression {:?}: {e}", task.compression)))?;
    Ok((transfer, source, compression))
}

/// Opens the task's repository with its password (on a blocking thread).
async fn open_repository(task: &TargetTask) -> Result<Arc<Repository>, MoverError> {
    let root = PathBuf::from(&task.repository);
    let password = task.password.clone();
    let repo = tokio::task::spawn_blocking(move || Repository::open(&root, Some(password.as_bytes())))
        .await
        .map_err(|e| MoverError::Panicked(e.to_string()))?
        .map_err(|e| MoverError::Repo {
            path: PathBuf::from(&task.repository),
            error: e,
        })?;
    Ok(Arc::new(repo))
}

/// Expects the transfer from `source`, putting every block it brings into `inbox`.
fn expect_blocks(
    receiver: &Receiver,
    transfer: TransferId,
    source: Fingerprint,
    inbox: &Arc<Inbox>,
) -> Result<IncomingTransfer, MoverError> {
    let consumer_inbox = inbox.clone();
    let incoming = receiver.expect_from(transfer, source, move |block: ReceivedBlock| {
        let inbox = consumer_inbox.clone();
        async move {
            inbox
                .put(block.disk, block.offset, block.data)
                .await
                .map_err(ConsumerError::from)
        }
    })?;
    Ok(incoming)
}

/// Steers the running task until it stops: cancels (instructions and control answers), rate
/// changes, a failed transfer. Returns once it has set a stop.
async fn watch(
    mut instructions: mpsc::UnboundedReceiver<Instruction>,
    link: Arc<dyn TaskLink>,
    pacer: Arc<Pacer>,
    stop: StopSignal,
    engine_done: Arc<AtomicBool>,
    incoming: &IncomingTransfer,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut transfer_over = false;
    loop {
        tokio::select! {
            ins = instructions.recv() => match ins {
                Some(Instruction::Cancel { reason, .. }) => { stop.set(Stop::Cancelled(reason)); return; }
                Some(_) => {}
                None => { stop.set(Stop::Cancelled("the server ended the task".into())); return; }
            },
            _ = tick.tick() => {
                let control = link.control();
                if let Some(reason) = control.cancel { stop.set(Stop::Cancelled(reason)); return; }
                pacer.steer(control.write_rate);
            }
            result = incoming.wait(), if !transfer_over => {
                transfer_over = true;
                if let Err(e) = result && !engine_done.load(Ordering::SeqCst) {
                    // A source the server cancelled ends the transfer, and that may arrive
                    // before this task's own cancel: a cancel already there wins.
                    let mut cancel = link.control().cancel;
                    while cancel.is_none() && let Ok(ins) = instructions.try_recv() {
                        if let Instruction::Cancel { reason, .. } = ins {
                            cancel = Some(reason);
                        }
                    }
                    match cancel {
                        Some(reason) => stop.set(Stop::Cancelled(reason)),
                        None => stop.set(Stop::Failed(format!("the transfer from the proxy failed: {e}"))),
                    }
                    return;
                }
            }
        }
    }
}

/// The engine's inputs: one [`RemoteDisk`] per task disk, read from `inbox`.
fn disk_inputs(
    task: &TargetTask,
    inbox: &Arc<Inbox>,
    stopped: &(impl Fn() -> Option<String> + Clone + Send + Sync + 'static),
) -> Vec<DiskInput> {
    task.disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let stopped = stopped.clone();
            DiskInput {
                source: Box::new(RemoteDisk::new(i as u32, d.clone(), inbox.clone(), Box::new(stopped))),
                changed: d.changed.as_deref().map(pairs_to_extents),
                changed_since: d.changed_since.clone(),
            }
        })
        .collect()
}

/// The backup plan of the task: its VM, block size and method; fulls are synthetic.
fn backup_plan(task: &TargetTask) -> BackupPlan {
    BackupPlan {
        vm: task.vm.clone(),
        block_size: task.block_size,
        method: task.method,
        full_every: task.full_every,
        full_kind: FullKind::Synthetic,
        force_full: false,
        vm_config: task.vm_config.clone(),
    }
}

/// The engine's work for one task, run on a blocking thread.
struct EngineRun {
    /// The repository written to.
    repo: Arc<Repository>,
    /// What to back up.
    plan: BackupPlan,
    /// The disks, read from the transfer.
    inputs: Vec<DiskInput>,
    /// Compression and the like.
    opts: BackupOptions,
    /// Progress, pacing and stops.
    hooks: Arc<TargetHooks>,
    /// Set once the engine returned (a transfer ending after it is no failure).
    done: Arc<AtomicBool>,
}

impl EngineRun {
    /// Runs the engine while polling `watcher`. The engine ends at its next block once the
    /// watcher set a stop; this keeps waiting for it so the repository is released before the
    /// task reports its end.
    async fn run_while(
        self,
        watcher: impl Future<Output = ()>,
    ) -> Result<Result<BackupResult, EngineError>, MoverError> {
        let EngineRun {
            repo,
            plan,
            inputs,
            opts,
            hooks,
            done,
        } = self;
        let mut engine = tokio::task::spawn_blocking(move || {
            let r = cairn_engine::backup_with_hooks(&repo, &plan, inputs, &opts, hooks.as_ref());
            done.store(true, Ordering::SeqCst);
            r
        });
        tokio::pin!(watcher);
        let mut watching = true;
        let joined = loop {
            tokio::select! {
                r = &mut engine => break r,
                () = &mut watcher, if watching => watching = false,
            }
        };
        joined.map_err(|e| MoverError::Panicked(e.to_string()))
    }
}

/// How the task event names a session kind.
fn kind_text(kind: SessionKind) -> &'static str {
    match kind {
        SessionKind::ActiveFull => "full",
        SessionKind::SyntheticFull => "synthetic full",
        SessionKind::Incremental => "incremental",
    }
}

/// Applies the task's retention to its VM (on a blocking thread). Returns the text for the
/// task event and whether it failed; a failure keeps the new point.
async fn apply_retention(repo: Arc<Repository>, task: &TargetTask) -> (String, bool) {
    let (vm, keep) = (task.vm.clone(), task.retention.max(1) as usize);
    let retained = tokio::task::spawn_blocking(move || cairn_repo::retention::retain(&repo, &vm, keep)).await;
    match retained {
        Ok(Ok(report)) => {
            let text = crate::retention_text(keep, ", on the repository's data mover", &report);
            (text, false)
        }
        Ok(Err(e)) => (
            format!(
                "retention failed, the new restore point stays: {}",
                crate::error_chain(&e)
            ),
            true,
        ),
        Err(e) => (
            format!("retention ended abnormally, the new restore point stays: {e}"),
            true,
        ),
    }
}

/// Creates the repository at `path` with `password` (AES-256-GCM), or opens the one already
/// there; returns a summary for the log.
pub fn init_repository(path: &Path, password: &str) -> Result<String, MoverError> {
    let repo_error = |error| MoverError::Repo {
        path: path.to_path_buf(),
        error,
    };
    let made = cairn_repo::folder::create_or_adopt(path, cairn_repo::Encryption::Aes256Gcm, Some(password.as_bytes()))
        .map_err(repo_error)?;
    Ok(if made.created {
        format!("created an encrypted repository (AES-256-GCM) in {}", path.display())
    } else {
        format!("adopted the repository already in {}", path.display())
    })
}

/// A VM's newest restore point, as [`previous_point`] finds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousPoint {
    /// Its id; `None` when the VM has no restore point.
    pub point: Option<String>,
    /// The source identity each disk was read at, `(disk position, identity)`.
    pub sources: Vec<(u32, String)>,
}

/// The newest restore point of `vm` in the repository at `path` and the source identity each of
/// its disks was read at (a live backup's checkpoint bitmaps).
pub fn previous_point(path: &Path, password: &str, vm: &str) -> Result<PreviousPoint, MoverError> {
    let repo_error = |error| MoverError::Repo {
        path: path.to_path_buf(),
        error,
    };
    let repo = Repository::open(path, Some(password.as_bytes())).map_err(repo_error)?;
    let chain = match repo.chain(vm) {
        Ok(chain) => chain,
        Err(cairn_repo::RepoError::NoSuchVm { .. }) => return Ok(PreviousPoint::default()),
        Err(e) => return Err(repo_error(e)),
    };
    let Some(last) = chain.meta().points.last() else {
        return Ok(PreviousPoint::default());
    };
    let sources = last
        .disks
        .iter()
        .filter_map(|d| d.source_id.clone().map(|id| (d.disk, id)))
        .collect();
    Ok(PreviousPoint {
        point: Some(last.id.to_string()),
        sources,
    })
}

/// Restores one disk on the repository's own data mover (the repository never leaves it): the
/// new image is written at `task.target_path` on this host, only beneath one of the task's
/// restore folders (never into `protect`, the repository or through a symlink; see
/// `cairn_confine`), never over an existing file, with the task's file mode, at the read rate
/// the server's steering gives (`Control::write_rate` carries the read share here).
pub async fn run_restore(
    task: crate::protocol::RestoreTask,
    protect: &[PathBuf],
    mut instructions: mpsc::UnboundedReceiver<Instruction>,
    link: Arc<dyn TaskLink>,
) -> Result<crate::protocol::RestoreSummary, MoverError> {
    let format: cairn_disk::Format = task
        .format
        .parse()
        .map_err(|e| MoverError::Protocol(format!("format {:?}: {e}", task.format)))?;
    let target = PathBuf::from(&task.target_path);
    let mut allowed =
        cairn_confine::AllowedFolders::new(task.restore_folders.iter().map(PathBuf::from)).protect(&task.repository);
    for p in protect {
        allowed = allowed.protect(p);
    }
    // Made before the slot's work starts: a refused path or an existing file fails at once.
    let out = allowed.create_file(&target, task.file_mode).map_err(|e| {
        if e.is_exists() {
            MoverError::TargetExists(target.clone())
        } else {
            MoverError::Confine(e)
        }
    })?;
    let stop: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let pacer = Arc::new(Pacer::new(task.read_rate));
    let hooks = RestorePacing {
        pacer: pacer.clone(),
        stop: stop.clone(),
    };
    let (root, password, vm, point, disk) = (
        PathBuf::from(&task.repository),
        task.password.clone(),
        task.vm.clone(),
        task.point.clone(),
        task.disk,
    );
    let options = cairn_engine::RestoreTarget {
        format,
        logical_sector: task.sector_size,
        block_size: None,
    };
    let work = tokio::task::spawn_blocking(move || {
        let repo = Repository::open(&root, Some(password.as_bytes())).map_err(|error| MoverError::Repo {
            path: root.clone(),
            error,
        })?;
        cairn_engine::restore_with_hooks(
            &repo,
            &vm,
            &point,
            disk,
            {
                let (file, path, remove) = out.into_parts();
                cairn_engine::RestoreOutput::File {
                    file: cairn_disk::writer::NewFile { file, path },
                    remove: Box::new(remove),
                }
            },
            &options,
            &hooks,
        )
        .map_err(|e| match e {
            EngineError::Repo(error) => MoverError::Repo { path: root, error },
            other => MoverError::Engine(other),
        })
    });
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let stats = loop {
        tokio::select! {
            r = &mut work => break r.map_err(|e| MoverError::Panicked(e.to_string()))??,
            ins = instructions.recv() => {
                let reason = match ins {
                    Some(Instruction::Cancel { reason, .. }) => Some(reason),
                    Some(_) => None,
                    None => Some("the server ended the task".to_string()),
                };
                if let Some(reason) = reason {
                    stop.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(reason);
                }
            }
            _ = tick.tick() => {
                let control = link.control();
                if let Some(reason) = control.cancel {
                    stop.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(reason);
                }
                pacer.steer(control.write_rate);
            }
        }
    };
    Ok(crate::protocol::restore_summary(stats))
}

struct RestorePacing {
    pacer: Arc<Pacer>,
    stop: Arc<Mutex<Option<String>>>,
}

impl cairn_engine::RestoreHooks for RestorePacing {
    fn throttle_read(&self, bytes: u64) {
        self.pacer.wait(bytes);
    }

    fn stop_requested(&self) -> bool {
        self.stop.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }
}

/// Why a target task stops before its engine is done.
#[derive(Debug, Clone)]
enum Stop {
    /// The server cancelled it.
    Cancelled(String),
    /// The transfer from the proxy failed.
    Failed(String),
}

/// The task's stop, set once by whoever noticed it first; setting it fails the inbox so the
/// engine ends at its next block.
#[derive(Clone)]
struct StopSignal {
    /// Why the task stops, once it does.
    why: Arc<Mutex<Option<Stop>>>,
    /// The inbox the engine reads from.
    inbox: Arc<Inbox>,
}

impl StopSignal {
    /// Stops the task for `why`, unless it was stopped already.
    fn set(&self, why: Stop) {
        let reason = why.reason().to_string();
        self.why
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(why);
        self.inbox.fail(reason);
    }

    /// Why the task stopped, if it did.
    fn why(&self) -> Option<Stop> {
        self.why.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The stop's reason, if the task stopped.
    fn reason(&self) -> Option<String> {
        self.why().map(|w| w.reason().to_string())
    }
}

impl Stop {
    fn reason(&self) -> &str {
        match self {
            Stop::Cancelled(r) | Stop::Failed(r) => r,
        }
    }
}

#[derive(Default)]
struct DiskClock {
    started: Option<Instant>,
    throttled_at_start: Duration,
    last_progress: Option<Instant>,
}

struct TargetHooks {
    link: Arc<dyn TaskLink>,
    pacer: Arc<Pacer>,
    stopped: Box<dyn Fn() -> Option<String> + Send + Sync>,
    disk: Mutex<DiskClock>,
}

impl TargetHooks {
    fn clock(&self) -> std::sync::MutexGuard<'_, DiskClock> {
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl BackupHooks for TargetHooks {
    fn disk_starting(&self, disk: u32, total_bytes: u64) -> Result<(), EngineError> {
        {
            let mut c = self.clock();
            c.started = Some(Instant::now());
            c.throttled_at_start = self.pacer.waited();
            c.last_progress = None;
        }
        self.link.emit(TaskEvent::DiskStarting { disk, total_bytes });
        Ok(())
    }

    fn disk_reading(&self, disk: u32, blocks: &[u64]) -> Result<(), EngineError> {
        self.link.emit(TaskEvent::ReadPlan {
            disk,
            runs: blocks_to_runs(blocks),
        });
        Ok(())
    }

    fn disk_finished(&self, disk: u32, stats: &PointStats) {
        let (wall, throttled) = {
            let c = self.clock();
            (
                c.started.map_or(0.0, |s| s.elapsed().as_secs_f64()),
                self.pacer.waited().saturating_sub(c.throttled_at_start),
            )
        };
        self.link.emit(TaskEvent::DiskFinished {
            disk,
            stats: stats.clone(),
            throttle_secs: throttled.as_secs_f64(),
            wall_secs: wall,
        });
    }

    fn progress(&self, disk: u32, progress: Progress) {
        let due = {
            let mut c = self.clock();
            let due = c.last_progress.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY)
                || progress.done_bytes == progress.total_bytes;
            if due {
                c.last_progress = Some(Instant::now());
            }
            due
        };
        if due {
            self.link.emit(TaskEvent::Progress {
                disk,
                done_bytes: progress.done_bytes,
                total_bytes: progress.total_bytes,
            });
        }
    }

    fn throttle_write(&self, bytes: u64) {
        self.pacer.wait(bytes);
    }

    fn stop_requested(&self) -> bool {
        (self.stopped)().is_some()
    }
}

/// A log line for the task (helper for callers).
pub fn log(link: &dyn TaskLink, disk: Option<u32>, level: Level, text: impl Into<String>) {
    link.emit(TaskEvent::Log {
        disk,
        level,
        text: text.into(),
    });
}
