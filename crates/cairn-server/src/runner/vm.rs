//! One VM of a session: open its disks, run the engine with per-disk task slots, record each
//! task's outcome, apply retention.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_configdb::{ConfigDb, HostKind, LogLevel, SessionState};
use cairn_disk::image::Image;
use cairn_engine::{BackupHooks, BackupOptions, BackupResult, DiskInput, EngineError, Progress};
use cairn_repo::{BackupPlan, FullKind, Method, PointStats, Repository, SessionKind};
use cairn_resources::{Lease, RateLimiter, ResourceScheduler};
use jiff::Timestamp;
use tokio::runtime::Handle;

use super::session::{Shared, log_db, set_task_state};
use super::settings::{FORWARD_FULL_EVERY, VmUnit};
use super::stop::StopSignal;
use super::{TaskProgress, lock, stats, tasks, view};
use crate::live::backup::LiveBackup;

/// How a VM's backup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VmOutcome {
    /// Its restore point was committed; `warning` if retention failed afterwards.
    Success {
        /// Retention (or something else after the commit) warned.
        warning: bool,
    },
    /// It failed; retried if retries are left.
    Failed,
    /// It was stopped.
    Stopped,
}

pub(crate) use cairn_mover::{error_chain, human_bytes};

/// Backs up one VM; every task in `tasks` (one per disk of `unit`, in order) ends final.
pub(crate) async fn run_vm(shared: Arc<Shared>, unit: VmUnit, tasks: Vec<i64>) -> VmOutcome {
    if shared.repository.settings.agent_id.is_some() {
        return super::remote::run_vm(shared, unit, tasks).await;
    }
    if let Some(outcome) = tasks::stopped_before_start(&shared, &tasks).await {
        return outcome;
    }
    let db = shared.mgr.ctx.db.clone();
    if let Some((disk, problem)) = &unit.problem {
        for (i, &task) in tasks.iter().enumerate() {
            let text = match disk {
                Some(d) if *d != i => format!("not backed up: {problem} (a restore point needs every disk of the VM)"),
                _ => problem.clone(),
            };
            log_db(&db, task, LogLevel::Error, &text).await;
            set_task_state(&db, task, SessionState::Failed).await;
        }
        return VmOutcome::Failed;
    }
    let repo = match shared.open_repository().await {
        Ok(repo) => repo,
        Err(e) => {
            tasks::end_all(&db, &tasks, LogLevel::Error, SessionState::Failed, &e.to_string()).await;
            return VmOutcome::Failed;
        }
    };
    let hooks = Arc::new(VmHooks::new(&shared, &unit, &tasks));
    let live = match start_live(&shared, &unit, &tasks, &hooks, &repo).await {
        Ok(live) => live,
        Err(e) => {
            hooks.release();
            return failed(&shared, &unit, &tasks, &hooks, e).await;
        }
    };
    let result = run_engine(&shared, &unit, &repo, &hooks, live.as_ref()).await;
    // Whatever happened, the slot is free now and no progress is live.
    hooks.release();
    tasks::clear_progress(&shared, &tasks);
    let fell_back = view::end(&shared, &tasks, live, result.is_ok()).await;
    match result {
        Ok(result) => committed(&shared, &unit, &tasks, &hooks, &repo, result, fell_back).await,
        Err(e) => failed(&shared, &unit, &tasks, &hooks, e).await,
    }
}

/// A running VM's point-in-time view, made once the first disk has its task slots (so the view
/// does not wait in the queue while the guest writes into its copy-before-write overlay).
/// `None` for a VM that is not running on QEMU.
async fn start_live(
    shared: &Shared,
    unit: &VmUnit,
    tasks: &[i64],
    hooks: &VmHooks,
    repo: &Repository,
) -> Result<Option<LiveBackup>, VmError> {
    if unit.host.kind != HostKind::Qemu {
        return Ok(None);
    }
    hooks.acquire_first().await.map_err(VmError::Engine)?;
    let previous = crate::live::backup::previous_point(repo, &unit.repo_name(), unit.disks.len());
    let view = view::start(shared, unit, tasks, previous)
        .await
        .map_err(|e| VmError::Live {
            disk: None,
            text: e.to_string(),
        })?;
    Ok(Some(view))
}

/// Opens the VM's disks (or its view's) and runs the engine on a blocking thread.
async fn run_engine(
    shared: &Shared,
    unit: &VmUnit,
    repo: &Arc<Repository>,
    hooks: &Arc<VmHooks>,
    live: Option<&LiveBackup>,
) -> Result<BackupResult, VmError> {
    let plan = BackupPlan {
        vm: unit.repo_name(),
        block_size: shared.settings.block_size,
        method: shared.settings.method,
        full_every: (shared.settings.method == Method::Forward).then_some(FORWARD_FULL_EVERY),
        full_kind: FullKind::Synthetic,
        force_full: false,
        vm_config: live.map(|l| l.vm_config.clone()),
    };
    let opts = BackupOptions {
        compression: shared.settings.compression,
        ..BackupOptions::default()
    };
    let paths = tasks::disk_paths(unit);
    let (engine_repo, engine_hooks) = (repo.clone(), hooks.clone());
    let live_specs = live.map(|l| l.specs.clone());
    let unit_disks = unit.disks.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let inputs = match &live_specs {
            Some(specs) => crate::live::backup::open_inputs(specs, &unit_disks, &|disk, text| {
                engine_hooks.log(disk, LogLevel::Info, text)
            })
            .map_err(|(disk, text)| VmError::Live { disk: Some(disk), text })?,
            None => open_disks(&paths, &engine_hooks)?,
        };
        cairn_engine::backup_with_hooks(&engine_repo, &plan, inputs, &opts, engine_hooks.as_ref())
            .map_err(VmError::Engine)
    })
    .await;
    match joined {
        Ok(r) => r,
        Err(e) => Err(VmError::Panicked(e.to_string())),
    }
}

/// Why a VM's backup did not produce a point.
enum VmError {
    /// Disk `disk` could not be opened.
    Open {
        disk: usize,
        path: PathBuf,
        error: cairn_disk::DiskError,
    },
    /// The engine failed (or was stopped).
    Engine(EngineError),
    /// The blocking thread panicked.
    Panicked(String),
    /// The running VM's view could not be made or read (disk position if one is at fault).
    Live { disk: Option<usize>, text: String },
}

/// Opens every disk of the VM, with a differencing child's changed extents as CBT (as
/// `cairn backup` does), and logs the CBT decision on each task.
fn open_disks(paths: &[PathBuf], hooks: &VmHooks) -> Result<Vec<DiskInput>, VmError> {
    let mut inputs = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let opened = Image::open(path).and_then(|image| {
            let changed = image.changed_extents()?;
            Ok((image, changed))
        });
        let (image, changed) = opened.map_err(|error| VmError::Open {
            disk: i,
            path: path.clone(),
            error,
        })?;
        let changed_since = changed.as_ref().and_then(|_| image.parent_identity());
        let note = cairn_mover::cbt_note(path, changed.as_deref(), changed_since.is_some());
        hooks.log(i, LogLevel::Info, &note);
        inputs.push(DiskInput {
            source: Box::new(image),
            changed,
            changed_since,
        });
    }
    Ok(inputs)
}

/// The VM's point is committed: record the point on its tasks, log the engine's notes, apply
/// retention; `fell_back`: a running VM's view fell back (every task warns).
async fn committed(
    shared: &Shared,
    unit: &VmUnit,
    tasks: &[i64],
    hooks: &VmHooks,
    repo: &Arc<Repository>,
    result: BackupResult,
    fell_back: bool,
) -> VmOutcome {
    let db = &shared.mgr.ctx.db;
    let kind = match result.kind {
        SessionKind::ActiveFull => "full",
        SessionKind::SyntheticFull => "synthetic full",
        SessionKind::Incremental => "incremental",
    };
    for note in &result.notes {
        // Engine notes start with "disk N:".
        let disk = note
            .strip_prefix("disk ")
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse::<usize>().ok());
        let targets: Vec<i64> = match disk.and_then(|d| tasks.get(d)) {
            Some(&task) => vec![task],
            None => tasks.to_vec(),
        };
        for task in targets {
            log_db(db, task, LogLevel::Info, note).await;
        }
    }
    let finished = hooks.finished();
    for (i, &task) in tasks.iter().enumerate() {
        if let Some(f) = finished.get(&i) {
            let doc = stats::task_statistics(&f.stats, f.throttle_secs, f.wall_secs, Some(&result.point.id));
            tasks::store_statistics(db, task, &doc).await;
        }
        log_db(
            db,
            task,
            LogLevel::Info,
            &format!(
                "restore point {} ({kind}) of {} committed to repository {}",
                result.point.id,
                unit.repo_name(),
                shared.repository.settings.name
            ),
        )
        .await;
    }

    let keep = shared.settings.retention;
    let (retain_repo, vm) = (repo.clone(), unit.repo_name());
    let retained = tokio::task::spawn_blocking(move || cairn_repo::retention::retain(&retain_repo, &vm, keep)).await;
    let (text, retention_failed) = match retained {
        Ok(Ok(report)) => (cairn_mover::retention_text(keep, "", &report), false),
        Ok(Err(e)) => (
            format!("retention failed, the new restore point stays: {}", error_chain(&e)),
            true,
        ),
        Err(e) => (
            format!("retention ended abnormally, the new restore point stays: {e}"),
            true,
        ),
    };
    tasks::committed_outcome(db, tasks, &text, retention_failed, fell_back).await
}

/// The VM's backup failed or was stopped: every task ends failed or stopped with the reason.
async fn failed(shared: &Shared, unit: &VmUnit, tasks: &[i64], hooks: &VmHooks, error: VmError) -> VmOutcome {
    let db = &shared.mgr.ctx.db;
    let finished = hooks.finished();
    let current = hooks.current();
    if matches!(error, VmError::Engine(EngineError::Stopped)) {
        let reason = tasks::stop_text(shared);
        for (i, &task) in tasks.iter().enumerate() {
            let text = if finished.contains_key(&i) {
                format!("{reason}: the VM's restore point was not committed, so this disk is not backed up")
            } else {
                reason.clone()
            };
            log_db(db, task, LogLevel::Warning, &text).await;
            set_task_state(db, task, SessionState::Stopped).await;
        }
        return VmOutcome::Stopped;
    }
    let (culprit, text) = match &error {
        VmError::Open { disk, path, error } => (
            Some(*disk),
            format!("opening {}: {}", path.display(), error_chain(error)),
        ),
        VmError::Engine(e) => (current, error_chain(e)),
        VmError::Panicked(e) => (current, format!("the backup thread ended abnormally: {e}")),
        VmError::Live { disk, text } => (*disk, text.clone()),
    };
    let culprit_name = culprit.and_then(|d| unit.disks.get(d)).map(|d| d.name.clone());
    for (i, &task) in tasks.iter().enumerate() {
        let line = match (&culprit_name, culprit == Some(i)) {
            (_, true) | (None, _) => text.clone(),
            (Some(name), false) if finished.contains_key(&i) => {
                format!("not backed up: the VM's restore point was not committed because disk {name} failed: {text}")
            }
            (Some(name), false) => format!("not backed up: disk {name} of this VM failed: {text}"),
        };
        log_db(db, task, LogLevel::Error, &line).await;
        set_task_state(db, task, SessionState::Failed).await;
    }
    VmOutcome::Failed
}

/// What is known about a disk that finished.
#[derive(Clone)]
struct Finished {
    stats: PointStats,
    throttle_secs: f64,
    wall_secs: f64,
}

#[derive(Default)]
struct HookState {
    lease: Option<Lease>,
    /// Slots taken before the engine started (a live VM's first disk).
    prelease: Option<Lease>,
    limiter: Option<RateLimiter>,
    current: Option<usize>,
    started: Option<Instant>,
    throttled: Duration,
    finished: HashMap<usize, Finished>,
}

/// The engine hooks of one VM: task slots per disk, task rows, progress, pacing, stop.
struct VmHooks {
    rt: Handle,
    db: ConfigDb,
    tasks: Vec<i64>,
    resources: Arc<ResourceScheduler>,
    request: cairn_resources::TaskRequest,
    proxy_id: i64,
    proxy_name: String,
    repository_name: String,
    stop: Arc<StopSignal>,
    progress: Arc<Mutex<HashMap<i64, TaskProgress>>>,
    shared: Arc<Shared>,
    state: Mutex<HookState>,
}

/// The longest single sleep for the write rate limit (stops are checked in between).
const THROTTLE_SLICE: Duration = Duration::from_millis(50);

impl VmHooks {
    fn new(shared: &Arc<Shared>, _unit: &VmUnit, tasks: &[i64]) -> VmHooks {
        VmHooks {
            rt: Handle::current(),
            db: shared.mgr.ctx.db.clone(),
            tasks: tasks.to_vec(),
            resources: shared.mgr.ctx.resources.clone(),
            request: shared.request.clone(),
            proxy_id: shared.mgr.ctx.proxy_id,
            proxy_name: shared.proxy_name.clone(),
            repository_name: shared.repository.settings.name.clone(),
            stop: shared.stop.clone(),
            progress: shared.mgr.progress.clone(),
            shared: shared.clone(),
            state: Mutex::new(HookState::default()),
        }
    }

    /// Appends a log line to disk `disk`'s task (from a blocking thread).
    fn log(&self, disk: usize, level: LogLevel, text: &str) {
        if let Some(&task) = self.tasks.get(disk) {
            self.rt.block_on(log_db(&self.db, task, level, text));
        }
    }

    /// The line of a task that waits for its slots.
    fn waiting_line(&self) -> String {
        format!(
            "waiting for resources: a task slot on proxy {} and on repository {}",
            self.proxy_name, self.repository_name
        )
    }

    /// Frees the slots of the disk being processed, if any.
    fn release(&self) {
        let mut state = lock(&self.state);
        state.lease = None;
        state.prelease = None;
        state.limiter = None;
    }

    /// Takes the first disk's task slots now (from async code); `disk_starting` of disk 0 uses them.
    async fn acquire_first(&self) -> Result<(), EngineError> {
        if let Some(&task) = self.tasks.first() {
            log_db(&self.db, task, LogLevel::Info, &self.waiting_line()).await;
        }
        let lease = tokio::select! {
            lease = self.resources.acquire_async(self.request.clone()) => lease.map_err(|e| EngineError::Hook(Box::new(e)))?,
            () = self.stop.wait() => return Err(EngineError::Stopped),
        };
        lock(&self.state).prelease = Some(lease);
        Ok(())
    }

    fn finished(&self) -> HashMap<usize, Finished> {
        lock(&self.state).finished.clone()
    }

    fn current(&self) -> Option<usize> {
        lock(&self.state).current
    }

    /// Waits for the task's slots (keeping its place in the queue) or for a stop.
    fn acquire(&self) -> Result<Lease, EngineError> {
        let acquire = self.resources.acquire_async(self.request.clone());
        self.rt.block_on(async {
            tokio::select! {
                lease = acquire => lease.map_err(|e| EngineError::Hook(Box::new(e))),
                () = self.stop.wait() => Err(EngineError::Stopped),
            }
        })
    }
}

impl BackupHooks for VmHooks {
    fn disk_starting(&self, disk: u32, total_bytes: u64) -> Result<(), EngineError> {
        let disk = disk as usize;
        let Some(&task) = self.tasks.get(disk) else {
            return Err(EngineError::Hook(
                format!(
                    "the engine reported disk {disk}, but the VM has {} tasks",
                    self.tasks.len()
                )
                .into(),
            ));
        };
        let prelease = {
            let mut state = lock(&self.state);
            state.current = Some(disk);
            state.prelease.take()
        };
        let lease = match prelease {
            Some(lease) => lease,
            None => {
                self.log(disk, LogLevel::Info, &self.waiting_line());
                self.acquire()?
            }
        };
        let started_at = Timestamp::now();
        let repo_load = self.resources.repository_load(lease.repository());
        let proxy_load = self.resources.proxy_load(lease.proxy());
        let share = lease.rate_limiter().rate().map_or_else(
            || "no write rate limit".to_string(),
            |r| format!("write rate share {}/s", human_bytes(r)),
        );
        {
            let mut state = lock(&self.state);
            state.limiter = Some(lease.rate_limiter().clone());
            state.lease = Some(lease);
            state.started = Some(Instant::now());
            state.throttled = Duration::ZERO;
        }
        lock(&self.progress).insert(
            task,
            TaskProgress {
                done_bytes: 0,
                total_bytes,
            },
        );
        let line = format!(
            "processing on proxy {} ({} of {} task slots busy), writing to repository {} ({} of {} task slots \
             busy, {share}); {} to read",
            self.proxy_name,
            proxy_load.map_or(0, |l| l.running),
            proxy_load.map_or(0, |l| l.max_tasks),
            self.repository_name,
            repo_load.map_or(0, |l| l.running),
            repo_load.map_or(0, |l| l.max_tasks),
            human_bytes(total_bytes)
        );
        self.rt
            .block_on(tasks::record_disk_start(
                &self.shared,
                task,
                self.proxy_id,
                started_at,
                &line,
            ))
            .map_err(|e| EngineError::Hook(Box::new(e)))
    }

    fn disk_finished(&self, disk: u32, stats: &PointStats) {
        let disk = disk as usize;
        let Some(&task) = self.tasks.get(disk) else {
            return;
        };
        // The end is taken before the slots are freed, so the next task's start is later.
        let ended_at = Timestamp::now();
        // The slots are freed only once the task is recorded as ended, so the database never
        // shows more running tasks than there are slots.
        let (throttle_secs, wall_secs, lease) = {
            let mut state = lock(&self.state);
            let wall = state.started.take().map_or(0.0, |s| s.elapsed().as_secs_f64());
            let throttle = state.throttled.as_secs_f64();
            let lease = state.lease.take();
            state.limiter = None;
            state.current = None;
            state.finished.insert(
                disk,
                Finished {
                    stats: stats.clone(),
                    throttle_secs: throttle,
                    wall_secs: wall,
                },
            );
            (throttle, wall, lease)
        };
        lock(&self.progress).remove(&task);
        let doc = stats::task_statistics(stats, throttle_secs, wall_secs, None);
        let busy: Vec<String> = stats::STAGES
            .iter()
            .map(|s| format!("{s} {:.0}%", doc["busy"][s].as_f64().unwrap_or(0.0)))
            .collect();
        let line = format!(
            "disk done: {}; busy: {}; bottleneck: {}",
            stats::disk_done_text(stats),
            busy.join(", "),
            doc["bottleneck"].as_str().unwrap_or("")
        );
        let db = &self.db;
        let result = self.rt.block_on(async {
            db.set_task_statistics(task, &doc).await?;
            db.set_task_state(task, SessionState::Success, ended_at).await?;
            db.append_task_log(task, LogLevel::Info, &line, Timestamp::now()).await
        });
        if let Err(e) = result {
            tracing::error!(task, error = %e, "recording a finished disk failed");
        }
        drop(lease);
    }

    fn progress(&self, disk: u32, progress: Progress) {
        if let Some(&task) = self.tasks.get(disk as usize) {
            lock(&self.progress).insert(
                task,
                TaskProgress {
                    done_bytes: progress.done_bytes,
                    total_bytes: progress.total_bytes,
                },
            );
        }
    }

    fn throttle_write(&self, bytes: u64) {
        let limiter = lock(&self.state).limiter.clone();
        let Some(limiter) = limiter else {
            return;
        };
        let delay = limiter.delay_for(bytes);
        if delay.is_zero() {
            return;
        }
        let start = Instant::now();
        while !self.stop.is_set() {
            let left = delay.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(THROTTLE_SLICE));
        }
        lock(&self.state).throttled += start.elapsed();
    }

    fn stop_requested(&self) -> bool {
        self.stop.is_set()
    }
}
