//! A VM's transfer as the server relays it: the source's disk descriptions, the target task,
//! and the events of both ends until they are over.

use std::collections::HashMap;

use cairn_configdb::{LogLevel, SessionState};
use cairn_mover::protocol::{DiskDescription, Instruction, Level, SourceSummary, TargetTask, TaskEvent};
use cairn_repo::{Method, PointStats};
use cairn_resources::Lease;
use cairn_transfer::TransferId;
use jiff::Timestamp;
use tokio::time::Interval;

use super::super::session::{log_db, set_task_state};
use super::super::settings::FORWARD_FULL_EVERY;
use super::super::vm::human_bytes;
use super::super::{TaskProgress, lock, stats, tasks};
use super::end::{End, lost};
use super::{Ctx, GRACE};
use crate::live::backup::LiveBackup;
use crate::throttle::ActiveTransfer;

/// What happened to a VM, as the event loop sees it.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) finished: HashMap<u32, (PointStats, f64, f64)>,
    pub(super) summary: Option<SourceSummary>,
    pub(super) committed: Option<(String, String, Vec<String>, String, bool)>,
    pub(super) failure: Option<(Option<u32>, String)>,
    pub(super) stopped: Option<String>,
}

impl Progress {
    /// Records an end event (`Committed`, `Failed`, `Stopped`) of the side `who`.
    fn record_end(&mut self, ev: TaskEvent, who: &str) {
        match ev {
            TaskEvent::Committed {
                point,
                kind,
                notes,
                retention,
                retention_failed,
            } => self.committed = Some((point, kind, notes, retention, retention_failed)),
            TaskEvent::Failed { disk, error } => {
                self.failure.get_or_insert((disk, format!("{who}: {error}")));
            }
            TaskEvent::Stopped { reason } if self.failure.is_none() => {
                self.stopped.get_or_insert(reason);
            }
            _ => {}
        }
    }
}

fn level(l: Level) -> LogLevel {
    match l {
        Level::Info => LogLevel::Info,
        Level::Warning => LogLevel::Warning,
        Level::Error => LogLevel::Error,
    }
}

/// Logs an agent's line on its disk's task (or every task).
async fn log_event(ctx: &Ctx<'_>, disk: Option<u32>, l: Level, text: &str) {
    tasks::log_event(ctx.db, ctx.tasks, disk.map(|d| d as usize), level(l), text).await;
}

/// Waits for the source's description of the VM's disks. `None` if the source ended, was lost,
/// the session stopped or the description does not fit the VM (`progress` tells).
pub(super) async fn describe(
    ctx: &Ctx<'_>,
    source: &mut End,
    progress: &mut Progress,
    tick: &mut Interval,
) -> Option<Vec<DiskDescription>> {
    let movers = &ctx.shared.mgr.ctx.movers;
    let described: Vec<DiskDescription> = loop {
        tokio::select! {
            ev = source.recv() => match ev {
                Some(TaskEvent::Described { disks }) => break disks,
                Some(TaskEvent::Log { disk, level: l, text }) => log_event(ctx, disk, l, &text).await,
                Some(ev @ (TaskEvent::Failed { .. } | TaskEvent::Stopped { .. })) => {
                    progress.record_end(ev, "the proxy");
                    return None;
                }
                Some(_) => {}
                None => {
                    let text = format!("proxy {} ended the task without a report", ctx.proxy_name);
                    progress.failure = Some((None, text));
                    return None;
                }
            },
            () = ctx.shared.stop.wait() => {
                let reason = tasks::stop_text(ctx.shared);
                source.cancel(&reason);
                progress.stopped = Some(reason);
                return None;
            }
            _ = tick.tick() => {
                if let Some(why) = lost(ctx.db, movers, source).await {
                    source.cancel(&why);
                    progress.failure = Some((None, why));
                    return None;
                }
            }
        }
    };
    if described.len() != ctx.unit.disks.len() {
        source.cancel("the proxy described another number of disks");
        let text = format!(
            "proxy {} described {} disks, the VM has {}",
            ctx.proxy_name,
            described.len(),
            ctx.unit.disks.len()
        );
        progress.failure = Some((None, text));
        return None;
    }
    Some(described)
}

/// Gives the repository agent the target task: the transfer from the source whose certificate
/// has `source_fingerprint`, into the VM's chain.
pub(super) fn start_target(
    ctx: &Ctx<'_>,
    transfer: TransferId,
    source_fingerprint: String,
    disks: Vec<DiskDescription>,
    live: Option<&LiveBackup>,
    lease: &Lease,
) -> End {
    let target = ctx.shared.mgr.ctx.movers.hub.open_task(ctx.repo.agent.id);
    let settings = &ctx.shared.settings;
    target.send(Instruction::Target(TargetTask {
        task: target.id,
        transfer: transfer.to_string(),
        source_fingerprint,
        repository: ctx.shared.repository.settings.path.clone(),
        password: ctx.repo.password.clone(),
        vm: ctx.unit.repo_name(),
        block_size: settings.block_size,
        method: settings.method,
        full_every: (settings.method == Method::Forward).then_some(FORWARD_FULL_EVERY),
        compression: settings.compression.to_string(),
        retention: u32::try_from(settings.retention).unwrap_or(u32::MAX),
        vm_config: live.map(|l| l.vm_config.clone()),
        disks,
        write_rate: lease.rate_limiter().rate(),
    }));
    End::Agent {
        task: target,
        instance: ctx.repo.instance.clone(),
        agent: Box::new(ctx.repo.agent.clone()),
    }
}

/// The relay between the source and the target until both are over (or the grace runs out).
pub(super) struct Relay<'a> {
    ctx: &'a Ctx<'a>,
    source: End,
    target: End,
    progress: Progress,
    source_over: bool,
    target_over: bool,
    /// One side was cancelled (or the session stopped): no further cancel is sent.
    cancelled: bool,
    /// When the side still running is given up.
    deadline: Option<tokio::time::Instant>,
}

impl<'a> Relay<'a> {
    pub(super) fn new(ctx: &'a Ctx<'a>, source: End, target: End, progress: Progress) -> Relay<'a> {
        Relay {
            ctx,
            source,
            target,
            progress,
            source_over: false,
            target_over: false,
            cancelled: false,
            deadline: None,
        }
    }

    /// Relays and records until the target ends (and the source, or the grace runs out),
    /// steering both ends from `lease` and `network` every tick.
    pub(super) async fn run(
        mut self,
        lease: &Lease,
        network: Option<&ActiveTransfer>,
        tick: &mut Interval,
    ) -> Progress {
        while (!self.target_over || !self.source_over) && !self.grace_over() {
            tokio::select! {
                ev = self.target.recv(), if !self.target_over => match ev {
                    Some(ev) => self.on_target(ev).await,
                    None => self.target_over = true,
                },
                ev = self.source.recv(), if !self.source_over => match ev {
                    Some(ev) => self.on_source(ev).await,
                    None => self.source_over = true,
                },
                () = self.ctx.shared.stop.wait(), if !self.cancelled => self.on_stop(),
                _ = tick.tick() => self.on_tick(lease, network).await,
            }
        }
        self.progress
    }

    /// Whether the deadline passed (a target that did not end by then fails the VM).
    fn grace_over(&mut self) -> bool {
        if self.deadline.is_none_or(|d| tokio::time::Instant::now() < d) {
            return false;
        }
        if !self.target_over && self.progress.failure.is_none() && self.progress.stopped.is_none() {
            let text = format!("repository agent {} did not end the task", self.ctx.repo.agent.name);
            self.progress.failure = Some((None, text));
        }
        true
    }

    fn start_grace(&mut self) {
        self.deadline.get_or_insert(tokio::time::Instant::now() + GRACE);
    }

    /// An event of the repository agent's side.
    async fn on_target(&mut self, ev: TaskEvent) {
        let ctx = self.ctx;
        match ev {
            TaskEvent::ReadPlan { disk, runs } => self.source.send(Instruction::ReadPlan {
                task: self.source.id(),
                disk,
                runs,
            }),
            TaskEvent::Log { disk, level: l, text } => log_event(ctx, disk, l, &text).await,
            TaskEvent::DiskStarting { disk, total_bytes } => disk_starting(ctx, disk, total_bytes).await,
            TaskEvent::Progress {
                disk,
                done_bytes,
                total_bytes,
            } => {
                if let Some(&task) = ctx.tasks.get(disk as usize) {
                    lock(&ctx.shared.mgr.progress).insert(
                        task,
                        TaskProgress {
                            done_bytes,
                            total_bytes,
                        },
                    );
                }
            }
            TaskEvent::DiskFinished {
                disk,
                stats,
                throttle_secs,
                wall_secs,
            } => {
                disk_finished(ctx, disk, &stats).await;
                self.progress.finished.insert(disk, (stats, throttle_secs, wall_secs));
            }
            ev @ (TaskEvent::Committed { .. } | TaskEvent::Failed { .. } | TaskEvent::Stopped { .. }) => {
                let failed = !matches!(ev, TaskEvent::Committed { .. });
                let who = format!("repository agent {}", ctx.repo.agent.name);
                self.progress.record_end(ev, &who);
                self.target_over = true;
                if failed && !self.source_over && !self.cancelled {
                    self.cancelled = true;
                    self.source.cancel("the repository's side of the task ended");
                }
                self.start_grace();
            }
            _ => {}
        }
    }

    /// An event of the source's side.
    async fn on_source(&mut self, ev: TaskEvent) {
        let ctx = self.ctx;
        match ev {
            TaskEvent::Log { disk, level: l, text } => log_event(ctx, disk, l, &text).await,
            TaskEvent::SourceFinished(summary) => {
                self.progress.summary = Some(summary);
                self.source_over = true;
            }
            ev @ (TaskEvent::Failed { .. } | TaskEvent::Stopped { .. }) => {
                self.source_over = true;
                if self.target_over && !self.cancelled {
                    // The point is committed (or the target failed on its own): the source's
                    // end no longer decides the VM, but is worth a line.
                    let why = match ev {
                        TaskEvent::Failed { error, .. } => error,
                        TaskEvent::Stopped { reason } => reason,
                        _ => String::new(),
                    };
                    let text = format!(
                        "proxy {} ended its side of the task with an error after the repository's side ended: {why}",
                        ctx.proxy_name
                    );
                    log_db(ctx.db, ctx.tasks[0], LogLevel::Warning, &text).await;
                } else if !self.target_over {
                    if self.progress.failure.is_none() && self.progress.stopped.is_none() {
                        self.progress.record_end(ev, &format!("proxy {}", ctx.proxy_name));
                    }
                    if !self.cancelled {
                        self.cancelled = true;
                        self.target.cancel("the proxy's side of the task ended");
                    }
                    self.start_grace();
                }
            }
            _ => {}
        }
    }

    /// The session is stopped: both sides are cancelled.
    fn on_stop(&mut self) {
        let reason = tasks::stop_text(self.ctx.shared);
        self.cancelled = true;
        self.source.cancel(&reason);
        self.target.cancel(&reason);
        self.progress.stopped = Some(reason);
        self.start_grace();
    }

    /// Refreshes the steering of both sides and checks that their agents are still there.
    async fn on_tick(&mut self, lease: &Lease, network: Option<&ActiveTransfer>) {
        let write_rate = lease.rate_limiter().rate();
        self.target.steer(|c| c.write_rate = write_rate);
        let network_rate = network.and_then(|n| n.rate(Timestamp::now()));
        self.source.steer(|c| c.network_rate = network_rate);
        if self.cancelled {
            return;
        }
        let movers = &self.ctx.shared.mgr.ctx.movers;
        for source_lost in [true, false] {
            let (end, other) = if source_lost {
                (&self.source, &self.target)
            } else {
                (&self.target, &self.source)
            };
            if let Some(why) = lost(self.ctx.db, movers, end).await {
                self.cancelled = true;
                other.cancel(&why);
                self.progress.failure = Some((None, why));
                // The lost side will not answer: only the other one is waited for.
                if source_lost {
                    self.source_over = true;
                } else {
                    self.target_over = true;
                }
                self.start_grace();
                break;
            }
        }
    }
}

/// Disk `disk` starts on the repository agent: its task runs, with `total_bytes` to read.
async fn disk_starting(ctx: &Ctx<'_>, disk: u32, total_bytes: u64) {
    let Some(&task) = ctx.tasks.get(disk as usize) else {
        return;
    };
    let now = Timestamp::now();
    lock(&ctx.shared.mgr.progress).insert(
        task,
        TaskProgress {
            done_bytes: 0,
            total_bytes,
        },
    );
    let line = format!(
        "processing on proxy {}, writing to repository {} on agent {}; {} to read",
        ctx.proxy_name,
        ctx.shared.repository.settings.name,
        ctx.repo.agent.name,
        human_bytes(total_bytes)
    );
    if let Err(e) = tasks::record_disk_start(ctx.shared, task, ctx.proxy_id, now, &line).await {
        tracing::error!(task, error = %e, "recording a task's start failed");
    }
}

/// Disk `disk` is done on the repository agent.
async fn disk_finished(ctx: &Ctx<'_>, disk: u32, stats: &PointStats) {
    let Some(&task) = ctx.tasks.get(disk as usize) else {
        return;
    };
    lock(&ctx.shared.mgr.progress).remove(&task);
    set_task_state(ctx.db, task, SessionState::Success).await;
    log_db(
        ctx.db,
        task,
        LogLevel::Info,
        &format!("disk done on the repository agent: {}", stats::disk_done_text(stats)),
    )
    .await;
}
