//! The scheduler's bookkeeping and its grant pass. Everything here runs under the scheduler's one
//! mutex; nothing blocks or wakes anybody while holding it (wakers are returned to the caller).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use crate::choose::{Load, least_loaded};
use crate::rate::RateShare;
use crate::request::TaskRequest;
use crate::{Direction, JobId, ProxyId, RepositoryId, ResourceError};

pub(crate) struct ProxyState {
    pub(crate) max_tasks: usize,
    pub(crate) running: usize,
    /// Changes when the proxy is removed and added again, so old leases do not release new slots.
    pub(crate) generation: u64,
}

pub(crate) struct RepoState {
    pub(crate) max_tasks: usize,
    pub(crate) running: usize,
    pub(crate) read_limit: Option<u64>,
    pub(crate) write_limit: Option<u64>,
    pub(crate) readers: usize,
    pub(crate) writers: usize,
    pub(crate) share: Arc<RateShare>,
    pub(crate) generation: u64,
}

impl RepoState {
    pub(crate) fn resplit(&self) {
        self.share.split(Direction::Read, self.read_limit, self.readers);
        self.share.split(Direction::Write, self.write_limit, self.writers);
    }
}

/// The slots one running task holds; returned exactly once, by the lease's drop.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) proxy: ProxyId,
    pub(crate) proxy_generation: u64,
    pub(crate) repository: RepositoryId,
    pub(crate) repo_generation: u64,
    pub(crate) job: JobId,
    pub(crate) direction: Direction,
    pub(crate) share: Arc<RateShare>,
}

pub(crate) struct Waiter {
    pub(crate) ticket: u64,
    pub(crate) request: TaskRequest,
    /// How many later tasks took a slot this waiter also wants while it had to wait.
    pub(crate) overtaken: u32,
    pub(crate) waker: Waker,
}

/// A countable thing a task occupies; a job counts only while parallel processing is off.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Res {
    Proxy(ProxyId),
    Repo(RepositoryId),
    Job(JobId),
}

enum Decision {
    Grant(ProxyId),
    Wait,
    Fail(ResourceError),
}

pub(crate) struct State {
    pub(crate) proxies: HashMap<ProxyId, ProxyState>,
    pub(crate) repos: HashMap<RepositoryId, RepoState>,
    pub(crate) jobs: HashMap<JobId, usize>,
    pub(crate) parallel: bool,
    pub(crate) max_overtakes: u32,
    pub(crate) next_generation: u64,
    next_ticket: u64,
    /// Waiting requests in arrival (ticket) order.
    pub(crate) queue: VecDeque<Waiter>,
    /// Decided requests whose future has not picked up the result yet.
    pub(crate) done: HashMap<u64, Result<Grant, ResourceError>>,
}

impl State {
    pub(crate) fn new(parallel: bool, max_overtakes: u32) -> Self {
        Self {
            proxies: HashMap::new(),
            repos: HashMap::new(),
            jobs: HashMap::new(),
            parallel,
            max_overtakes,
            next_generation: 0,
            next_ticket: 0,
            queue: VecDeque::new(),
            done: HashMap::new(),
        }
    }

    /// Refuses requests that can never be served as they stand.
    pub(crate) fn validate(&self, request: &TaskRequest) -> Result<(), ResourceError> {
        if request.proxies.is_empty() {
            return Err(ResourceError::NoProxy);
        }
        if !self.repos.contains_key(&request.repository) {
            return Err(ResourceError::UnknownRepository(request.repository.clone()));
        }
        match request.proxies.iter().find(|p| self.proxies.contains_key(*p)) {
            Some(_) => Ok(()),
            None => Err(ResourceError::UnknownProxy(request.proxies[0].clone())),
        }
    }

    pub(crate) fn enqueue(&mut self, request: TaskRequest, waker: Waker) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.queue.push_back(Waiter {
            ticket,
            request,
            overtaken: 0,
            waker,
        });
        ticket
    }

    /// Loads of `candidates` in the caller's order; unknown proxies are left out.
    pub(crate) fn loads<'a>(&self, candidates: &'a [ProxyId]) -> Vec<(&'a ProxyId, Load)> {
        candidates
            .iter()
            .filter_map(|id| {
                self.proxies.get(id).map(|p| {
                    (
                        id,
                        Load {
                            running: p.running,
                            max_tasks: p.max_tasks,
                        },
                    )
                })
            })
            .collect()
    }

    fn decide(&self, request: &TaskRequest, held: &HashSet<Res>) -> Decision {
        let Some(repo) = self.repos.get(&request.repository) else {
            return Decision::Fail(ResourceError::UnknownRepository(request.repository.clone()));
        };
        let mut loads = self.loads(&request.proxies);
        if loads.is_empty() {
            return Decision::Fail(match request.proxies.first() {
                Some(p) => ResourceError::UnknownProxy(p.clone()),
                None => ResourceError::NoProxy,
            });
        }
        if !self.parallel
            && (self.jobs.get(&request.job).is_some_and(|n| *n > 0) || held.contains(&Res::Job(request.job.clone())))
        {
            return Decision::Wait;
        }
        if repo.running >= repo.max_tasks || held.contains(&Res::Repo(request.repository.clone())) {
            return Decision::Wait;
        }
        // A proxy held back for an older waiter counts as full for this one.
        for (id, load) in &mut loads {
            if held.contains(&Res::Proxy((*id).clone())) {
                load.running = load.running.max(load.max_tasks);
            }
        }
        let only_loads: Vec<Load> = loads.iter().map(|(_, l)| *l).collect();
        match least_loaded(&only_loads) {
            Some(i) => Decision::Grant(loads[i].0.clone()),
            None => Decision::Wait,
        }
    }

    fn resources_of(&self, request: &TaskRequest) -> Vec<Res> {
        let mut res: Vec<Res> = request.proxies.iter().cloned().map(Res::Proxy).collect();
        res.push(Res::Repo(request.repository.clone()));
        if !self.parallel {
            res.push(Res::Job(request.job.clone()));
        }
        res
    }

    /// Occupies one slot of `proxy`, of the request's repository and of its job. The caller has
    /// checked that all exist and have room.
    fn take(&mut self, request: &TaskRequest, proxy: ProxyId) -> Option<Grant> {
        let p = self.proxies.get_mut(&proxy)?;
        let repo = self.repos.get_mut(&request.repository)?;
        p.running += 1;
        repo.running += 1;
        match request.direction {
            Direction::Read => repo.readers += 1,
            Direction::Write => repo.writers += 1,
        }
        repo.resplit();
        *self.jobs.entry(request.job.clone()).or_insert(0) += 1;
        Some(Grant {
            proxy,
            proxy_generation: p.generation,
            repository: request.repository.clone(),
            repo_generation: repo.generation,
            job: request.job.clone(),
            direction: request.direction,
            share: repo.share.clone(),
        })
    }

    /// Gives back the slots of `grant` (those of removed resources are simply forgotten).
    pub(crate) fn untake(&mut self, grant: &Grant) {
        if let Some(p) = self.proxies.get_mut(&grant.proxy)
            && p.generation == grant.proxy_generation
        {
            p.running = p.running.saturating_sub(1);
        }
        if let Some(repo) = self.repos.get_mut(&grant.repository)
            && repo.generation == grant.repo_generation
        {
            repo.running = repo.running.saturating_sub(1);
            match grant.direction {
                Direction::Read => repo.readers = repo.readers.saturating_sub(1),
                Direction::Write => repo.writers = repo.writers.saturating_sub(1),
            }
            repo.resplit();
        }
        if let Some(n) = self.jobs.get_mut(&grant.job) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.jobs.remove(&grant.job);
            }
        }
    }

    /// The grant pass: walks the waiters oldest first and starts every one whose proxy, repository
    /// (and job, in sequential mode) all have room. A waiter that cannot start is skipped, so it
    /// does not block younger ones that can; but each time a younger task takes a slot the skipped
    /// one also wants, the skipped one is "overtaken", and once that happened `max_overtakes`
    /// times, the resources it wants are held back from all younger waiters until it has started.
    /// Returns the wakers of the decided waiters, to be woken after the lock is released.
    pub(crate) fn schedule(&mut self) -> Vec<Waker> {
        let mut wakers = Vec::new();
        let mut held: HashSet<Res> = HashSet::new();
        let mut blocked: Vec<(usize, Vec<Res>)> = Vec::new();
        let mut decided = Vec::with_capacity(self.queue.len());
        for i in 0..self.queue.len() {
            let request = self.queue[i].request.clone();
            let done = match self.decide(&request, &held) {
                Decision::Fail(error) => {
                    self.done.insert(self.queue[i].ticket, Err(error));
                    wakers.push(self.queue[i].waker.clone());
                    true
                }
                Decision::Wait => {
                    let wants = self.resources_of(&request);
                    if self.queue[i].overtaken >= self.max_overtakes {
                        held.extend(wants.iter().cloned());
                    }
                    blocked.push((i, wants));
                    false
                }
                Decision::Grant(proxy) => {
                    let Some(grant) = self.take(&request, proxy) else {
                        decided.push(false);
                        continue;
                    };
                    let mut used = vec![Res::Proxy(grant.proxy.clone()), Res::Repo(grant.repository.clone())];
                    if !self.parallel {
                        used.push(Res::Job(grant.job.clone()));
                    }
                    for (j, wants) in &blocked {
                        if wants.iter().any(|r| used.contains(r)) {
                            let waiter = &mut self.queue[*j];
                            waiter.overtaken = waiter.overtaken.saturating_add(1);
                            if waiter.overtaken == self.max_overtakes {
                                held.extend(wants.iter().cloned());
                            }
                        }
                    }
                    self.done.insert(self.queue[i].ticket, Ok(grant));
                    wakers.push(self.queue[i].waker.clone());
                    true
                }
            };
            decided.push(done);
        }
        let mut index = 0;
        self.queue.retain(|_| {
            let keep = !decided[index];
            index += 1;
            keep
        });
        wakers
    }

    /// Forgets a waiter or its undelivered result (its future was dropped). Returns whether slots
    /// or held-back resources may have become free, i.e. whether a grant pass is due.
    pub(crate) fn cancel(&mut self, ticket: u64) -> bool {
        if let Some(pos) = self.queue.iter().position(|w| w.ticket == ticket) {
            self.queue.remove(pos);
            return true;
        }
        if let Some(Ok(grant)) = self.done.remove(&ticket) {
            self.untake(&grant);
            return true;
        }
        false
    }
}

/// The scheduler's state behind its lock, shared by the scheduler and the leases and futures it
/// hands out.
pub(crate) struct Inner {
    state: Mutex<State>,
}

impl Inner {
    /// Puts `state` behind the lock.
    pub(crate) fn new(state: State) -> Self {
        Self {
            state: Mutex::new(state),
        }
    }

    /// Locks the state. Nothing panics while holding it, but should a panic ever poison the lock,
    /// the counters are still consistent at every unlock, so carrying on is safe.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResourceScheduler")
    }
}
