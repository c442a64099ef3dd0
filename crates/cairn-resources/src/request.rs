//! What a task asks the scheduler for.

use crate::{Direction, JobId, ProxyId, RepositoryId};

/// What a task needs: its job, the proxies it may run on (in order of preference), its repository
/// and which way its data flows there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRequest {
    /// The job (session) the task belongs to; counts in sequential mode.
    pub job: JobId,
    /// Proxies the task may run on, preferred first; unknown ones are ignored.
    pub proxies: Vec<ProxyId>,
    /// The repository the task reads from or writes to.
    pub repository: RepositoryId,
    /// Reading or writing at the repository (selects which rate split the task joins).
    pub direction: Direction,
}

impl TaskRequest {
    /// A task of `job` writing to `repository` through `proxy`.
    pub fn new(job: impl Into<JobId>, proxy: impl Into<ProxyId>, repository: impl Into<RepositoryId>) -> Self {
        Self {
            job: job.into(),
            proxies: vec![proxy.into()],
            repository: repository.into(),
            direction: Direction::Write,
        }
    }

    /// Replaces the proxy by a list of allowed proxies, preferred first.
    pub fn with_proxies<P: Into<ProxyId>>(mut self, proxies: impl IntoIterator<Item = P>) -> Self {
        self.proxies = proxies.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the direction (the default is [`Direction::Write`]).
    pub fn with_direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }
}
