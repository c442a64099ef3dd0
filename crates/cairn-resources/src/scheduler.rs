//! The public face of the resource scheduler.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::choose::{Load, least_loaded};
use crate::lease::{Acquire, Lease};
use crate::rate::RateShare;
use crate::request::TaskRequest;
use crate::state::{Inner, ProxyState, RepoState, State};
use crate::{Direction, JobId, ProxyId, RepositoryId, ResourceError};

/// Settings of a repository that the scheduler enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepositoryLimits {
    /// Maximum of concurrent tasks (at least 1).
    pub max_tasks: usize,
    /// Read data rate limit in bytes per second (`None` = unlimited), shared equally by the tasks
    /// reading from the repository ([`Direction::Read`]) at that moment. Writers ignore it.
    pub read_limit: Option<u64>,
    /// Write data rate limit in bytes per second (`None` = unlimited), shared equally by the tasks
    /// writing to the repository ([`Direction::Write`]) at that moment. Readers ignore it.
    pub write_limit: Option<u64>,
}

/// One direction of a repository's data rate at this moment (see
/// [`ResourceScheduler::repository_rate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateUsage {
    /// Tasks running in this direction on the repository.
    pub tasks: usize,
    /// The repository's limit for this direction in bytes per second, `None` when unlimited.
    pub limit: Option<u64>,
    /// What each of those tasks may move now (`limit / tasks`, the whole limit when no task
    /// runs), `None` when unlimited. Equals [`RateLimiter::rate`](crate::RateLimiter::rate) of
    /// their leases.
    pub share: Option<u64>,
}

impl Default for RepositoryLimits {
    /// As many tasks as this machine has CPU cores, no rate limit.
    fn default() -> Self {
        Self {
            max_tasks: default_max_tasks(),
            read_limit: None,
            write_limit: None,
        }
    }
}

/// Behaviour switches of a [`ResourceScheduler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerOptions {
    /// Parallel processing: when `false`, each job runs one task at a time (tasks of different
    /// jobs may still run side by side). Default `true`.
    pub parallel_processing: bool,
    /// How many times younger tasks may take a slot an older waiting task also wants before the
    /// older task's resources are held back for it (0 = strict first-come-first-served on every
    /// shared resource). Default 8.
    pub max_overtakes: u32,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            parallel_processing: true,
            max_overtakes: 8,
        }
    }
}

/// The default maximum of concurrent tasks: the number of CPU cores of this machine (1 if unknown).
pub fn default_max_tasks() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Hands out task slots on proxies and repositories; see the crate documentation for the rules.
/// Cloning gives another handle to the same scheduler.
#[derive(Debug, Clone)]
pub struct ResourceScheduler {
    inner: Arc<Inner>,
}

impl Default for ResourceScheduler {
    fn default() -> Self {
        Self::new(SchedulerOptions::default())
    }
}

impl ResourceScheduler {
    /// A scheduler with no proxies and no repositories yet.
    pub fn new(options: SchedulerOptions) -> Self {
        let state = State::new(options.parallel_processing, options.max_overtakes);
        Self {
            inner: Arc::new(Inner::new(state)),
        }
    }

    /// Runs `edit` on the state, then a grant pass, then wakes whoever got a decision.
    fn edit<T>(&self, edit: impl FnOnce(&mut State) -> Result<T, ResourceError>) -> Result<T, ResourceError> {
        let (value, wakers) = {
            let mut state = self.inner.lock();
            let value = edit(&mut state)?;
            (value, state.schedule())
        };
        wakers.into_iter().for_each(Waker::wake);
        Ok(value)
    }

    /// Adds a proxy or changes its maximum of concurrent tasks. Running tasks are never stopped:
    /// after lowering, new tasks wait until the running ones are below the new maximum.
    pub fn set_proxy(&self, proxy: impl Into<ProxyId>, max_tasks: usize) -> Result<(), ResourceError> {
        if max_tasks == 0 {
            return Err(ResourceError::ZeroTaskLimit);
        }
        let proxy = proxy.into();
        self.edit(|state| {
            if let Some(p) = state.proxies.get_mut(&proxy) {
                p.max_tasks = max_tasks;
            } else {
                state.next_generation += 1;
                let generation = state.next_generation;
                state.proxies.insert(
                    proxy,
                    ProxyState {
                        max_tasks,
                        running: 0,
                        generation,
                    },
                );
            }
            Ok(())
        })
    }

    /// Adds a repository or changes its limits. A lowered task maximum stops new tasks only; new
    /// read and write limits are re-split at once and running tasks follow them from their next
    /// call.
    pub fn set_repository(
        &self,
        repository: impl Into<RepositoryId>,
        limits: RepositoryLimits,
    ) -> Result<(), ResourceError> {
        if limits.max_tasks == 0 {
            return Err(ResourceError::ZeroTaskLimit);
        }
        if limits.read_limit == Some(0) || limits.write_limit == Some(0) {
            return Err(ResourceError::ZeroRateLimit);
        }
        let repository = repository.into();
        self.edit(|state| {
            if let Some(repo) = state.repos.get_mut(&repository) {
                repo.max_tasks = limits.max_tasks;
                repo.read_limit = limits.read_limit;
                repo.write_limit = limits.write_limit;
                repo.resplit();
            } else {
                state.next_generation += 1;
                let repo = RepoState {
                    max_tasks: limits.max_tasks,
                    running: 0,
                    read_limit: limits.read_limit,
                    write_limit: limits.write_limit,
                    readers: 0,
                    writers: 0,
                    share: Arc::new(RateShare::default()),
                    generation: state.next_generation,
                };
                repo.resplit();
                state.repos.insert(repository, repo);
            }
            Ok(())
        })
    }

    /// Forgets a proxy. Running tasks on it go on (their slots simply vanish when they end);
    /// waiting tasks that have no other known proxy fail with [`ResourceError::UnknownProxy`].
    /// Returns whether the proxy was known.
    pub fn remove_proxy(&self, proxy: &ProxyId) -> bool {
        self.edit(|state| Ok(state.proxies.remove(proxy).is_some()))
            .unwrap_or(false)
    }

    /// Forgets a repository. Running tasks go on; waiting tasks for it fail with
    /// [`ResourceError::UnknownRepository`]. Returns whether the repository was known.
    pub fn remove_repository(&self, repository: &RepositoryId) -> bool {
        self.edit(|state| Ok(state.repos.remove(repository).is_some()))
            .unwrap_or(false)
    }

    /// Turns parallel processing on or off. Turning it off lets running tasks finish; from then
    /// on a job starts a task only when none of its tasks runs.
    pub fn set_parallel_processing(&self, enabled: bool) {
        // The closure cannot fail.
        let _ = self.edit(|state| {
            state.parallel = enabled;
            Ok(())
        });
    }

    /// Whether parallel processing is on.
    pub fn parallel_processing(&self) -> bool {
        self.inner.lock().parallel
    }

    /// Occupancy of a proxy, `None` if unknown.
    pub fn proxy_load(&self, proxy: &ProxyId) -> Option<Load> {
        let state = self.inner.lock();
        state.proxies.get(proxy).map(|p| Load {
            running: p.running,
            max_tasks: p.max_tasks,
        })
    }

    /// Occupancy of a repository, `None` if unknown.
    pub fn repository_load(&self, repository: &RepositoryId) -> Option<Load> {
        let state = self.inner.lock();
        state.repos.get(repository).map(|r| Load {
            running: r.running,
            max_tasks: r.max_tasks,
        })
    }

    /// The data rate of `repository` in `direction` now: tasks running that way, the limit and
    /// each task's share. `None` if the repository is unknown.
    pub fn repository_rate(&self, repository: &RepositoryId, direction: Direction) -> Option<RateUsage> {
        let state = self.inner.lock();
        state.repos.get(repository).map(|r| {
            let (tasks, limit) = match direction {
                Direction::Read => (r.readers, r.read_limit),
                Direction::Write => (r.writers, r.write_limit),
            };
            RateUsage {
                tasks,
                limit,
                share: r.share.get(direction),
            }
        })
    }

    /// Tasks of `job` running now.
    pub fn job_running(&self, job: &JobId) -> usize {
        self.inner.lock().jobs.get(job).copied().unwrap_or(0)
    }

    /// Tasks waiting for slots now.
    pub fn waiting(&self) -> usize {
        self.inner.lock().queue.len()
    }

    /// The proxy among `candidates` a task would get right now: one with a free slot, the least
    /// utilised, ties going to more free slots and then to the earlier candidate (see
    /// [`least_loaded`]). `None` if none has room. This is advice only; it reserves nothing.
    pub fn pick_proxy(&self, candidates: &[ProxyId]) -> Option<ProxyId> {
        let state = self.inner.lock();
        let loads = state.loads(candidates);
        let only: Vec<Load> = loads.iter().map(|(_, l)| *l).collect();
        least_loaded(&only).map(|i| loads[i].0.clone())
    }

    /// Starts the task now if it may, without waiting. `Ok(None)` when it would have to wait;
    /// it never jumps ahead of older waiters that were held back resources.
    pub fn try_acquire(&self, request: &TaskRequest) -> Result<Option<Lease>, ResourceError> {
        let mut future = Acquire::new(self.inner.clone(), request.clone());
        let mut cx = Context::from_waker(Waker::noop());
        match std::pin::Pin::new(&mut future).poll(&mut cx) {
            Poll::Ready(result) => result.map(Some),
            // Dropping the future withdraws the request.
            Poll::Pending => Ok(None),
        }
    }

    /// Waits (blocking the thread) until the task may start, then returns its lease. Fails at
    /// once for unknown resources, or later if they are removed while the task waits.
    pub fn acquire(&self, request: &TaskRequest) -> Result<Lease, ResourceError> {
        let mut future = Acquire::new(self.inner.clone(), request.clone());
        loop {
            // Without a deadline this returns only with a result; the loop just says so.
            if let Some(result) = future.block_until(None) {
                return result;
            }
        }
    }

    /// Like [`acquire`](Self::acquire) but gives up after `timeout` with `Ok(None)`, withdrawing
    /// the request.
    pub fn acquire_timeout(&self, request: &TaskRequest, timeout: Duration) -> Result<Option<Lease>, ResourceError> {
        let mut future = Acquire::new(self.inner.clone(), request.clone());
        let deadline = Instant::now().checked_add(timeout);
        future.block_until(deadline).transpose()
    }

    /// Waits asynchronously (with any executor) until the task may start. The request joins the
    /// queue when the future is first polled; dropping the future withdraws it.
    pub fn acquire_async(&self, request: TaskRequest) -> Acquire {
        Acquire::new(self.inner.clone(), request)
    }
}
