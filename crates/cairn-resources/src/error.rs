//! Errors of the resource scheduler.

use crate::{ProxyId, RepositoryId};

/// Why a configuration change or a task request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// The task names a repository the scheduler does not know (or that was removed while it waited).
    #[error("unknown repository {0}")]
    UnknownRepository(RepositoryId),
    /// None of the task's proxies is known (they were never added, or were removed while it waited).
    #[error("unknown proxy {0}")]
    UnknownProxy(ProxyId),
    /// The task request lists no proxy at all.
    #[error("the task request names no proxy")]
    NoProxy,
    /// A maximum of concurrent tasks of zero was given; every resource allows at least one task.
    #[error("the maximum of concurrent tasks must be at least 1")]
    ZeroTaskLimit,
    /// A data rate limit of zero bytes per second was given; use `None` for "unlimited".
    #[error("a data rate limit must be at least 1 byte/s (use no limit instead of 0)")]
    ZeroRateLimit,
}
