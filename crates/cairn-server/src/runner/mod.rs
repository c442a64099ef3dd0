//! The job manager: runs sessions of jobs.
//!
//! [`JobManager::run_job`] creates a session (state `waiting`) and runs it in a tokio task:
//!
//! 1. The job's VMs are resolved from the configuration database with their disks (minus the
//!    excluded ones); every VM disk gets a task, `waiting`. A VM that the last scan did not find,
//!    or with a disk it did not find, fails (a restore point needs every disk of the VM).
//! 2. VMs run concurrently — as many as the proxy and the repository have task slots — when
//!    parallel processing is on, one by one when it is off. Per VM the repository is opened
//!    (password from [`Secrets`]), every disk opened with [`cairn_disk::image::Image`] (a
//!    differencing child gives its changed extents as CBT) and the engine runs on a blocking
//!    thread. Before each disk is read its task takes a [`cairn_resources::Lease`] (a slot on the
//!    proxy and on the repository; until then it is `waiting`), and gives it back when the disk
//!    is done, so a task only runs while both have a slot. Repository writes are paced by the
//!    lease's share of the repository's write limit.
//! 3. After a VM's restore point is committed, retention keeps `job.retention_points` points (a
//!    failure there is a warning; the point stays).
//! 4. VMs that failed are retried `job.retries` times, `job.retry_wait_seconds` apart, in the
//!    same session with new task rows.
//! 5. The session ends `success` (every task succeeded), `warning` (a VM needed a retry, or
//!    retention warned), `failed` (a VM still failed after its retries, or the backup window
//!    closed before every task finished) or `stopped` (a user stopped it, or the server shut
//!    down).
//!
//! A session still running when the job's backup window closes is stopped: its unfinished
//! tasks end `stopped` with the log line "backup window closed at …". Task logs, statistics
//! (see [`stats`]) and live progress ([`JobManager::task_progress`]) follow the API contract.
//!
//! Database times (`started_at`, `ended_at`, log lines) are the system's time; schedules and
//! backup windows use the manager's [`Clock`] (a manual one in tests).
//!
//! Resource ids in the [`ResourceScheduler`]: a job is `job.id`, a proxy `proxy.id` and a
//! repository `repository.id`, each as decimal text. A proxy or repository the resource
//! scheduler does not know yet is added with its limits from the database when a session starts.

mod error;
mod remote;
mod repo_cache;
pub(crate) mod session;
pub(crate) mod settings;
pub mod stats;
mod stop;
pub(crate) mod tasks;
mod view;
pub(crate) mod vm;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cairn_configdb::{ConfigDb, LogLevel, SessionState};
use cairn_resources::ResourceScheduler;
use jiff::tz::TimeZone;
use serde::Serialize;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::secrets::Secrets;
pub use error::RunError;
pub(crate) use error::SessionError;
pub use settings::parse_window;
use stop::{StopReason, StopSignal};

/// Why a session was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Trigger {
    /// A user asked (API `POST /jobs/{id}/run`).
    Manual {
        /// Who.
        user: String,
    },
    /// The job's schedule.
    Schedule,
    /// A run missed while the server was down, run once at start.
    Missed,
    /// The job it is chained after finished.
    After {
        /// That job's session.
        session_id: i64,
    },
    /// A retry of the failed VMs of an earlier session.
    Retry {
        /// The earlier session.
        session_id: i64,
    },
}

/// Live progress of a running task (kept in memory, not in the database).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TaskProgress {
    /// Bytes processed so far.
    pub done_bytes: u64,
    /// Bytes the task will process in all.
    pub total_bytes: u64,
}

/// What the job manager needs.
#[derive(Clone)]
pub struct RunnerContext {
    /// Agents: control channel, heartbeat rule, the server's own data mover identity.
    pub movers: Arc<crate::movers::Movers>,
    /// Network throttling rules and the transfers they apply to.
    pub throttles: crate::throttle::NetworkThrottles,
    /// The configuration database.
    pub db: ConfigDb,
    /// Task slots and rate limits.
    pub resources: Arc<ResourceScheduler>,
    /// Repository passwords.
    pub secrets: Secrets,
    /// Time zone of schedules and backup windows that name none.
    pub time_zone: TimeZone,
    /// Database id of the proxy tasks run on (the server itself).
    pub proxy_id: i64,
}

/// A session that ended, as announced to [`JobManager::subscribe`]rs (the scheduler starts
/// `after JOB` jobs on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnded {
    /// The session.
    pub session_id: i64,
    /// Its job.
    pub job_id: i64,
    /// How it ended.
    pub state: SessionState,
}

/// A session that has not ended.
struct Active {
    job_id: i64,
    stop: Arc<StopSignal>,
    handle: Option<JoinHandle<()>>,
}

/// Runs jobs: one session per run, one task per VM disk.
pub struct JobManager {
    ctx: RunnerContext,
    clock: Arc<dyn Clock>,
    active: Mutex<HashMap<i64, Active>>,
    /// Serialises the "is the job running? create its session" step of [`run_job`](Self::run_job).
    start_lock: tokio::sync::Mutex<()>,
    progress: Arc<Mutex<HashMap<i64, TaskProgress>>>,
    jobs_changed: Notify,
    ended: broadcast::Sender<SessionEnded>,
    /// Opened repositories, kept across sessions.
    repositories: repo_cache::RepoCache,
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl JobManager {
    /// Repository `id` at `path`, opened with `password` — or the one opened before from the same
    /// path, password and config file, without deriving its keys again.
    pub fn open_repository(
        &self,
        id: i64,
        path: &str,
        password: Option<&[u8]>,
    ) -> cairn_repo::Result<Arc<cairn_repo::Repository>> {
        self.repositories.open(id, path, password)
    }

    /// A job manager (no sessions running) on the system clock.
    pub fn new(ctx: RunnerContext) -> Arc<JobManager> {
        Self::with_clock(ctx, Arc::new(SystemClock))
    }

    /// A job manager whose backup windows and retry waits follow `clock` (tests pass a
    /// [`ManualClock`](crate::clock::ManualClock)).
    pub fn with_clock(ctx: RunnerContext, clock: Arc<dyn Clock>) -> Arc<JobManager> {
        Arc::new(JobManager {
            ctx,
            clock,
            active: Mutex::new(HashMap::new()),
            start_lock: tokio::sync::Mutex::new(()),
            progress: Arc::new(Mutex::new(HashMap::new())),
            jobs_changed: Notify::new(),
            ended: broadcast::channel(256).0,
            repositories: repo_cache::RepoCache::default(),
        })
    }

    /// Starts a session of job `job_id` and returns its id at once (state `waiting`); the
    /// session runs in the background. [`RunError::AlreadyRunning`] if the job has a session
    /// that has not ended; [`RunError::Invalid`] if the job has no VMs, its settings do not
    /// parse, or its backup window is closed now.
    pub async fn run_job(self: &Arc<Self>, job_id: i64, trigger: Trigger) -> Result<i64, RunError> {
        let _starting = self.start_lock.lock().await;
        let job = match self.ctx.db.get_job(job_id).await {
            Ok(job) => job,
            Err(cairn_configdb::Error::NotFound { what }) => {
                return Err(RunError::NotFound(format!("{what} not found")));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(session) = lock(&self.active)
            .iter()
            .find(|(_, a)| a.job_id == job_id)
            .map(|(id, _)| *id)
        {
            return Err(RunError::AlreadyRunning {
                job: job.spec.name.clone(),
                session,
            });
        }
        let settings = settings::JobSettings::parse(&job, self.clock.now(), &self.ctx.time_zone)?;
        let session = self.ctx.db.create_session(job_id, jiff::Timestamp::now()).await?;
        let stop = Arc::new(StopSignal::default());
        let statistics = serde_json::json!({ "trigger": trigger, "attempt": 1 });
        self.ctx.db.set_session_statistics(session.id, &statistics).await?;
        lock(&self.active).insert(
            session.id,
            Active {
                job_id,
                stop: stop.clone(),
                handle: None,
            },
        );
        let run = session::SessionRun::new(self.clone(), session.id, job, settings, trigger, stop);
        let handle = tokio::spawn(run.run());
        if let Some(active) = lock(&self.active).get_mut(&session.id) {
            active.handle = Some(handle);
        }
        Ok(session.id)
    }

    /// Asks a running session to stop: waiting tasks end `stopped` at once, running tasks stop
    /// at the next block and leave the repository as it was. Returns when the request is noted.
    pub async fn stop_session(&self, session_id: i64) -> Result<(), RunError> {
        let stop = lock(&self.active).get(&session_id).map(|a| a.stop.clone());
        match stop {
            Some(stop) => {
                stop.request(StopReason::User);
                Ok(())
            }
            None => Err(RunError::NotFound(format!("session {session_id} is not running"))),
        }
    }

    /// The running session of job `job_id`, if any.
    pub fn running_session_of(&self, job_id: i64) -> Option<i64> {
        lock(&self.active)
            .iter()
            .find(|(_, a)| a.job_id == job_id)
            .map(|(id, _)| *id)
    }

    /// Database id of the proxy this server's tasks run on (the server itself); restores take
    /// their task slot there too.
    pub fn proxy_id(&self) -> i64 {
        self.ctx.proxy_id
    }

    /// Live progress of a running task.
    pub fn task_progress(&self, task_id: i64) -> Option<TaskProgress> {
        lock(&self.progress).get(&task_id).copied()
    }

    /// Ids of the sessions that have not ended.
    pub fn active_sessions(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = lock(&self.active).keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Stops every session and waits for them to end (server shutdown).
    pub async fn shutdown(&self) {
        let handles: Vec<JoinHandle<()>> = {
            let mut active = lock(&self.active);
            active
                .values_mut()
                .filter_map(|a| {
                    a.stop.request(StopReason::Shutdown);
                    a.handle.take()
                })
                .collect()
        };
        for handle in handles {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "a session task ended abnormally during shutdown");
            }
        }
    }

    /// After a restart: sessions and tasks a killed server left `waiting` or `running` end
    /// `failed`, each such task with the log line "the server stopped during this session
    /// (restarted at …)" (and the session's statistics with it as `error`). Call once at start,
    /// before the scheduler. Returns how many sessions were marked.
    pub async fn recover_after_restart(&self) -> Result<u64, RunError> {
        let db = &self.ctx.db;
        let now = jiff::Timestamp::now();
        let text = format!("the server stopped during this session (restarted at {now})");
        // Sessions of this process (if any already run) are alive: leave them.
        let running = self.active_sessions();
        let mut marked = 0;
        for session in db.list_unfinished_sessions().await? {
            if running.contains(&session.id) {
                continue;
            }
            for task in db.list_tasks(session.id).await? {
                if !task.state.is_final() {
                    db.append_task_log(task.id, LogLevel::Error, &text, now).await?;
                    db.set_task_state(task.id, SessionState::Failed, now).await?;
                }
            }
            let mut statistics = session.statistics.clone();
            if !statistics.is_object() {
                statistics = serde_json::json!({});
            }
            statistics["error"] = serde_json::Value::String(text.clone());
            db.set_session_statistics(session.id, &statistics).await?;
            db.set_session_state(session.id, SessionState::Failed, now).await?;
            marked += 1;
        }
        Ok(marked)
    }

    /// Tells the scheduler that jobs changed (created, edited, enabled, disabled, deleted), so it
    /// re-reads them now instead of at its next planned wake-up.
    pub fn notify(&self) {
        self.jobs_changed.notify_one();
    }

    /// Completes at the next [`notify`](Self::notify) (or at once if one came since the last call).
    pub async fn jobs_changed(&self) {
        self.jobs_changed.notified().await;
    }

    /// Announcements of ended sessions, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEnded> {
        self.ended.subscribe()
    }

    /// The clock of backup windows and retry waits.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Called by a session's task as its last step.
    fn session_ended(&self, event: SessionEnded) {
        lock(&self.active).remove(&event.session_id);
        // Nobody listening is fine.
        let _ = self.ended.send(event);
    }
}
