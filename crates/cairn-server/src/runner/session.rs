//! One session: resolve the job's VMs, run them (with retries), end with a state and statistics.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use cairn_configdb::{Disk, Job, LogLevel, NewTask, SessionState};

use cairn_repo::Repository;
use cairn_resources::{ProxyId, RepositoryId, TaskRequest};
use cairn_schedule::BackupWindow;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::task::JoinSet;

use super::stop::{StopReason, StopSignal};
use super::vm::{self, VmOutcome};
use super::{JobManager, SessionEnded, SessionError, Trigger, stats};
use crate::clock::Clock;
use crate::repositories::repository_limits;

use super::settings::{JobSettings, VmUnit};

/// What every VM of a session shares.
pub(crate) struct Shared {
    pub(crate) mgr: Arc<JobManager>,
    pub(crate) session_id: i64,
    pub(crate) settings: JobSettings,
    pub(crate) stop: Arc<StopSignal>,
    pub(crate) repository: cairn_configdb::Repository,
    pub(crate) proxy_name: String,
    pub(crate) request: TaskRequest,
    /// Proxies the request may get, by resource id: (proxy row id, name, where it runs).
    pub(crate) proxy_routes: HashMap<String, (i64, String, super::remote::ProxyRoute)>,
    /// Set once the first task got its slots (the session is then `running`).
    pub(crate) running: AtomicBool,
    opened: tokio::sync::Mutex<Option<Arc<Repository>>>,
}

impl Shared {
    /// The repository, opened once per session (the key derivation is slow).
    pub(crate) async fn open_repository(&self) -> Result<Arc<Repository>, SessionError> {
        let mut opened = self.opened.lock().await;
        if let Some(repo) = &*opened {
            return Ok(repo.clone());
        }
        let row = &self.repository;
        let password =
            self.mgr
                .ctx
                .secrets
                .repository_password(row.id)
                .map_err(|error| SessionError::RepositoryPassword {
                    name: row.settings.name.clone(),
                    path: self.mgr.ctx.secrets.repository_password_path(row.id),
                    error,
                })?;
        let path = row.settings.path.clone();
        let name = row.settings.name.clone();
        let (mgr, id) = (self.mgr.clone(), row.id);
        let repo = tokio::task::spawn_blocking(move || mgr.repositories.open(id, &path, password.as_deref()))
            .await
            .map_err(|error| SessionError::RepositoryOpenAbnormal {
                name: name.clone(),
                error,
            })?
            .map_err(|error| SessionError::RepositoryOpen { name, error })?;
        *opened = Some(repo.clone());
        Ok(repo)
    }
}

/// A session being run.
pub(crate) struct SessionRun {
    mgr: Arc<JobManager>,
    id: i64,
    job: Job,
    settings: Option<JobSettings>,
    trigger: Trigger,
    stop: Arc<StopSignal>,
}

/// How the passes over the VMs went.
struct Passes {
    /// Passes made (1 = no retry).
    attempt: u32,
    /// A VM failed on its last try.
    failed: bool,
    /// A VM succeeded only after a retry, or retention warned.
    warned: bool,
}

impl SessionRun {
    pub(crate) fn new(
        mgr: Arc<JobManager>,
        id: i64,
        job: Job,
        settings: JobSettings,
        trigger: Trigger,
        stop: Arc<StopSignal>,
    ) -> SessionRun {
        SessionRun {
            mgr,
            id,
            job,
            settings: Some(settings),
            trigger,
            stop,
        }
    }

    /// Runs the session to its end and records the outcome.
    pub(crate) async fn run(mut self) {
        let started = Instant::now();
        let settings = self.settings.take();
        let watcher = settings.as_ref().and_then(|s| s.window.clone()).map(|window| {
            tokio::spawn(watch_window(
                window,
                self.mgr.clock.clone(),
                self.mgr.ctx.time_zone.clone(),
                self.stop.clone(),
            ))
        });
        // The work runs in a task of its own, so even a panic in it ends the session properly
        // (its unfinished tasks failed) instead of leaving the job "running" for good.
        let this = Arc::new(self);
        let worker = tokio::spawn(this.clone().execute(settings));
        let outcome = match worker.await {
            Ok(outcome) => outcome,
            Err(e) => Err(SessionError::Abnormal(e)),
        };
        if let Some(w) = watcher {
            w.abort();
        }
        this.finish(started, outcome).await;
    }

    /// Ends the session: leftover tasks, state, statistics, announcement.
    async fn finish(&self, started: Instant, outcome: Result<Passes, SessionError>) {
        let db = &self.mgr.ctx.db;
        let (mut state, mut error, attempt) = match outcome {
            Ok(p) if p.failed => (SessionState::Failed, None, p.attempt),
            Ok(p) if p.warned => (SessionState::Warning, None, p.attempt),
            Ok(p) => (SessionState::Success, None, p.attempt),
            Err(e) => (SessionState::Failed, Some(e.to_string()), 1),
        };
        let mut tasks = db.list_tasks(self.id).await.unwrap_or_else(|e| {
            tracing::error!(session = self.id, error = %e, "listing the session's tasks failed");
            Vec::new()
        });
        // Tasks that did not end (a session-level error) end with the session.
        for task in tasks.iter_mut().filter(|t| !t.state.is_final()) {
            let (task_state, text) = match (&error, self.stop.reason()) {
                (Some(e), _) => (SessionState::Failed, format!("not backed up: {e}")),
                (None, Some(reason)) => (SessionState::Stopped, reason.log_text()),
                (None, None) => (SessionState::Failed, "not backed up: the session ended".to_string()),
            };
            let level = if task_state == SessionState::Failed {
                LogLevel::Error
            } else {
                LogLevel::Warning
            };
            log_db(db, task.id, level, &text).await;
            set_task_state(db, task.id, task_state).await;
            task.state = task_state;
        }
        match self.stop.reason() {
            Some(StopReason::User | StopReason::Shutdown) => state = SessionState::Stopped,
            Some(StopReason::WindowClosed(at)) if tasks.iter().any(|t| t.state == SessionState::Stopped) => {
                state = SessionState::Failed;
                error.get_or_insert_with(|| format!("backup window closed at {at}: the session was stopped"));
            }
            _ => {}
        }
        let statistics = stats::session_statistics(
            &tasks,
            attempt,
            &self.trigger,
            started.elapsed().as_secs_f64(),
            error.as_deref(),
        );
        if let Err(e) = db.set_session_statistics(self.id, &statistics).await {
            tracing::error!(session = self.id, error = %e, "storing session statistics failed");
        }
        if let Err(e) = db.set_session_state(self.id, state, Timestamp::now()).await {
            tracing::error!(session = self.id, error = %e, "storing the session's state failed");
        }
        tracing::info!(session = self.id, job = %self.job.spec.name, ?state, "session ended");
        self.mgr.session_ended(SessionEnded {
            session_id: self.id,
            job_id: self.job.id,
            state,
        });
    }

    /// Resolves the VMs and runs the passes. An `Err` is a session-level failure.
    async fn execute(self: Arc<Self>, settings: Option<JobSettings>) -> Result<Passes, SessionError> {
        let db = self.mgr.ctx.db.clone();
        let settings = settings.ok_or(SessionError::SettingsMissing)?;
        let repository =
            db.get_repository(self.job.spec.repository_id)
                .await
                .map_err(|error| SessionError::JobRepository {
                    id: self.job.spec.repository_id,
                    job: self.job.spec.name.clone(),
                    error,
                })?;
        let proxy = db
            .get_proxy(self.mgr.ctx.proxy_id)
            .await
            .map_err(|error| SessionError::ServerProxy {
                id: self.mgr.ctx.proxy_id,
                error,
            })?;
        let (proxy_routes, request) = self.routes(&repository, &proxy).await?;
        let shared = Arc::new(Shared {
            proxy_routes,
            mgr: self.mgr.clone(),
            session_id: self.id,
            settings,
            stop: self.stop.clone(),
            repository,
            proxy_name: proxy.settings.name.clone(),
            request,
            running: AtomicBool::new(false),
            opened: tokio::sync::Mutex::new(None),
        });

        let vm_ids = self.vm_ids().await?;
        let mut units = self.resolve(&vm_ids).await?;
        let mut passes = Passes {
            attempt: 1,
            failed: false,
            warned: false,
        };
        let retries = shared.settings.retry.attempts;
        loop {
            let outcomes = self.pass(&shared, units, passes.attempt, retries).await?;
            let failed: Vec<i64> = outcomes
                .iter()
                .filter(|(_, o)| *o == VmOutcome::Failed)
                .map(|(id, _)| *id)
                .collect();
            if passes.attempt > 1 && outcomes.iter().any(|(_, o)| matches!(o, VmOutcome::Success { .. })) {
                passes.warned = true;
            }
            passes.warned |= outcomes.iter().any(|(_, o)| *o == VmOutcome::Success { warning: true });
            passes.failed = !failed.is_empty();
            let failed_at = Timestamp::now();
            if failed.is_empty() || self.stop.is_set() {
                break;
            }
            let Some(_) = shared.settings.retry.next_retry(passes.attempt - 1, failed_at) else {
                break;
            };
            let delay = shared.settings.retry.delay;
            tracing::info!(
                session = self.id,
                vms = failed.len(),
                retry = passes.attempt,
                of = retries,
                ?delay,
                "retrying failed VMs"
            );
            let clock = &self.mgr.clock;
            let until = clock.now().saturating_add(delay).unwrap_or_else(|_| clock.now());
            tokio::select! {
                () = clock.sleep_until(until) => {}
                () = self.stop.wait() => {}
            }
            if self.stop.is_set() {
                break;
            }
            passes.attempt += 1;
            units = self.resolve(&failed).await?;
        }
        Ok(passes)
    }

    /// Registers the repository and the proxies with the resource scheduler (a repository on an
    /// agent: the online proxy agents, the server itself only when there is none). Returns where
    /// each proxy runs, by resource id, and the session's task request.
    async fn routes(
        &self,
        repository: &cairn_configdb::Repository,
        proxy: &cairn_configdb::Proxy,
    ) -> Result<(HashMap<String, (i64, String, super::remote::ProxyRoute)>, TaskRequest), SessionError> {
        let db = &self.mgr.ctx.db;
        let resources = &self.mgr.ctx.resources;
        let repo_id = RepositoryId::new(repository.id.to_string());
        let proxy_id = ProxyId::new(proxy.id.to_string());
        if resources.repository_load(&repo_id).is_none() {
            let limits = repository_limits(repository);
            resources
                .set_repository(repo_id.clone(), limits)
                .map_err(|error| SessionError::RepositoryLimits {
                    name: repository.settings.name.clone(),
                    error,
                })?;
        }
        if resources.proxy_load(&proxy_id).is_none() {
            let max = usize::try_from(proxy.settings.max_tasks).unwrap_or(1).max(1);
            resources
                .set_proxy(proxy_id.clone(), max)
                .map_err(|error| SessionError::ProxyLimits {
                    name: proxy.settings.name.clone(),
                    error,
                })?;
        }
        let mut proxy_routes = HashMap::from([(
            proxy_id.as_str().to_string(),
            (proxy.id, proxy.settings.name.clone(), super::remote::ProxyRoute::Server),
        )]);
        let mut request = TaskRequest::new(self.job.id.to_string(), proxy_id, repo_id);
        if repository.settings.agent_id.is_some() {
            // A repository on an agent: the proxy agents that are online do the reading; the
            // server itself only when there is none.
            let agents = crate::movers::agent_proxies(db, &self.mgr.ctx.movers)
                .await
                .map_err(SessionError::ProxyAgents)?;
            if !agents.is_empty() {
                let mut ids = Vec::new();
                for (row, agent) in agents {
                    let id = ProxyId::new(format!("agent-proxy-{}", row.id));
                    let max = usize::try_from(agent.max_tasks).unwrap_or(1).max(1);
                    resources
                        .set_proxy(id.clone(), max)
                        .map_err(|error| SessionError::ProxyLimits {
                            name: row.settings.name.clone(),
                            error,
                        })?;
                    proxy_routes.insert(
                        id.as_str().to_string(),
                        (
                            row.id,
                            row.settings.name.clone(),
                            super::remote::ProxyRoute::Agent(Box::new(agent)),
                        ),
                    );
                    ids.push(id);
                }
                request = request.with_proxies(ids);
            }
        }
        Ok((proxy_routes, request))
    }

    /// The job's VMs to back up: on a retry, those that failed or were stopped in the retried
    /// session.
    async fn vm_ids(&self) -> Result<Vec<i64>, SessionError> {
        let db = &self.mgr.ctx.db;
        let mut vm_ids = self.job.spec.vm_ids.clone();
        if let Trigger::Retry { session_id } = self.trigger {
            let failed: HashSet<i64> = db
                .list_tasks(session_id)
                .await
                .map_err(|error| SessionError::RetriedSession {
                    session: session_id,
                    error,
                })?
                .iter()
                .filter(|t| matches!(t.state, SessionState::Failed | SessionState::Stopped))
                .filter_map(|t| t.vm_id)
                .collect();
            vm_ids.retain(|id| failed.contains(id));
        }
        Ok(vm_ids)
    }

    /// The VMs with ids `vm_ids` (in that order) and their disks, minus the excluded ones.
    async fn resolve(&self, vm_ids: &[i64]) -> Result<Vec<VmUnit>, SessionError> {
        let db = &self.mgr.ctx.db;
        let excluded: HashSet<i64> = self.job.spec.excluded_disk_ids.iter().copied().collect();
        let mut units = Vec::new();
        for &id in vm_ids {
            let vm = match db.get_vm(id).await {
                Ok(vm) => vm,
                Err(cairn_configdb::Error::NotFound { .. }) => {
                    tracing::warn!(session = self.id, vm = id, "a VM of the job no longer exists; skipped");
                    continue;
                }
                Err(error) => return Err(SessionError::Vm { id, error }),
            };
            let host = db.get_host(vm.host_id).await.map_err(|error| SessionError::Host {
                vm: vm.name.clone(),
                error,
            })?;
            let disks: Vec<Disk> = db
                .list_disks(vm.id)
                .await
                .map_err(|error| SessionError::Disks {
                    vm: vm.name.clone(),
                    error,
                })?
                .into_iter()
                .filter(|d| !excluded.contains(&d.id))
                .collect();
            if disks.is_empty() {
                tracing::info!(session = self.id, vm = %vm.name, "the VM has no disks to back up; skipped");
                continue;
            }
            let problem = if !vm.present {
                Some((
                    None,
                    format!(
                        "VM {} was not found by the last scan of host {} ({})",
                        vm.name, host.name, host.location
                    ),
                ))
            } else {
                disks.iter().position(|d| !d.present).map(|i| {
                    (
                        Some(i),
                        format!(
                            "disk {} ({}) was not found by the last scan of host {}",
                            disks[i].name, disks[i].path, host.name
                        ),
                    )
                })
            };
            units.push(VmUnit {
                vm,
                host,
                disks,
                problem,
            });
        }
        Ok(units)
    }

    /// One pass over `units`: creates their tasks and runs the VMs. Returns each VM's outcome.
    async fn pass(
        &self,
        shared: &Arc<Shared>,
        units: Vec<VmUnit>,
        attempt: u32,
        retries: u32,
    ) -> Result<Vec<(i64, VmOutcome)>, SessionError> {
        let db = &self.mgr.ctx.db;
        if attempt > 1 {
            let statistics = serde_json::json!({ "trigger": self.trigger, "attempt": attempt });
            if let Err(e) = db.set_session_statistics(self.id, &statistics).await {
                tracing::warn!(session = self.id, error = %e, "storing the session's attempt failed");
            }
        }
        let mut planned = Vec::new();
        for unit in units {
            let mut tasks = Vec::new();
            for disk in &unit.disks {
                let task = db
                    .create_task(&NewTask {
                        session_id: self.id,
                        vm_id: Some(unit.vm.id),
                        disk_id: Some(disk.id),
                        vm_name: unit.repo_name(),
                        disk_name: disk.name.clone(),
                    })
                    .await
                    .map_err(|error| SessionError::CreateTask {
                        disk: disk.name.clone(),
                        vm: unit.vm.name.clone(),
                        error,
                    })?;
                if attempt > 1 {
                    log_db(
                        db,
                        task.id,
                        LogLevel::Info,
                        &format!("retry {} of {retries} of VM {}", attempt - 1, unit.repo_name()),
                    )
                    .await;
                }
                tasks.push(task.id);
            }
            planned.push((unit, tasks));
        }

        let resources = &self.mgr.ctx.resources;
        let limit = if resources.parallel_processing() {
            let proxy = resources
                .proxy_load(&shared.request.proxies[0])
                .map_or(1, |l| l.max_tasks);
            let repo = resources
                .repository_load(&shared.request.repository)
                .map_or(1, |l| l.max_tasks);
            proxy.min(repo).max(1)
        } else {
            1
        };
        let mut queue = planned.into_iter();
        let mut running = JoinSet::new();
        let mut outcomes = Vec::new();
        loop {
            while running.len() < limit
                && let Some((unit, tasks)) = queue.next()
            {
                let shared = shared.clone();
                let vm_id = unit.vm.id;
                running.spawn(async move { (vm_id, vm::run_vm(shared, unit, tasks).await) });
            }
            match running.join_next().await {
                None => break,
                Some(Ok(outcome)) => outcomes.push(outcome),
                Some(Err(e)) => {
                    // A panic in a VM's task: its tasks are ended with the session.
                    tracing::error!(session = self.id, error = %e, "a VM's task ended abnormally");
                }
            }
        }
        Ok(outcomes)
    }
}

/// Stops the session when its backup window closes.
async fn watch_window(window: BackupWindow, clock: Arc<dyn Clock>, tz: TimeZone, stop: Arc<StopSignal>) {
    loop {
        let now = clock.now();
        match window.closes_at_in(now, &tz) {
            Some(at) => {
                clock.sleep_until(at).await;
                if !window.is_open_in(clock.now(), &tz) {
                    stop.request(StopReason::WindowClosed(at));
                    return;
                }
            }
            None => {
                if !window.is_open_in(now, &tz) {
                    stop.request(StopReason::WindowClosed(now));
                }
                // Open for good.
                return;
            }
        }
    }
}

/// Appends a log line; a failure is only traced (the log is not worth failing the task for).
pub(crate) async fn log_db(db: &cairn_configdb::ConfigDb, task: i64, level: LogLevel, text: &str) {
    if let Err(e) = db.append_task_log(task, level, text, Timestamp::now()).await {
        tracing::warn!(task, error = %e, text, "writing a task log line failed");
    }
}

/// Sets a task's state now; a failure is traced.
pub(crate) async fn set_task_state(db: &cairn_configdb::ConfigDb, task: i64, state: SessionState) {
    if let Err(e) = db.set_task_state(task, state, Timestamp::now()).await {
        tracing::error!(task, error = %e, ?state, "storing a task's state failed");
    }
}
