//! Task slots and repository rate limits for the cairn backup server.
//!
//! A backup *task* (one VM disk) runs on a *proxy* (the data mover that reads the disk) and
//! reads from or writes to a *repository*. The [`ResourceScheduler`] decides when a task may
//! start and where, with these rules:
//!
//! - **Task slots.** Every proxy and every repository has a maximum of concurrent tasks (by
//!   default the number of CPU cores, [`default_max_tasks`]). A task starts only when its proxy
//!   *and* its repository both have a free slot, and it takes both in one step under one lock: a
//!   task never holds one slot while waiting for the other, so tasks cannot deadlock each other.
//!   The returned [`Lease`] frees both when dropped.
//! - **Proxy choice.** A task may list several proxies (preferred first). It gets one with a free
//!   slot, the least utilised (`running / max`), ties going to more free slots, then to the
//!   earlier in the list ([`least_loaded`], [`ResourceScheduler::pick_proxy`]).
//! - **Fairness.** Waiting tasks are considered oldest first whenever something changes (a task
//!   ends, a limit is edited, a task arrives). A task that cannot start is skipped, so it never
//!   holds back a younger task that can start elsewhere (another repository, another proxy); tasks
//!   that want the same proxy and repository therefore start in arrival order. To keep a task
//!   waiting for a busy proxy from starving while younger tasks keep taking its repository's
//!   slots, every such overtaking is counted; after [`SchedulerOptions::max_overtakes`] of them
//!   the older task's proxies, repository (and job) are held back for it until it starts.
//! - **Parallel processing** ([`ResourceScheduler::set_parallel_processing`]). When off, each job
//!   runs one task at a time, i.e. its VMs and disks one by one; different jobs still run side by
//!   side.
//! - **Rate limits.** A repository may limit its read and its write data rate (bytes/s,
//!   [`RepositoryLimits::read_limit`] and [`RepositoryLimits::write_limit`]). Each limit is split
//!   equally between the tasks of its direction ([`Direction`]) using the repository at that
//!   moment, and re-split whenever one starts or ends: readers never slow writers, nor writers
//!   readers. [`ResourceScheduler::repository_rate`] reports a direction's tasks and share. Each lease carries a
//!   [`RateLimiter`] — a token bucket at the task's current share — that the data path calls
//!   after moving data.
//! - **Runtime edits.** Limits can change at any time. A lowered maximum never stops running
//!   tasks; it only keeps new ones waiting until the running ones drop below it. A raised one
//!   starts waiting tasks at once. Removing a proxy or repository fails the tasks waiting for it.
//!
//! The scheduler is one mutex around plain counters; it is usable from threads
//! ([`acquire`](ResourceScheduler::acquire), [`acquire_timeout`](ResourceScheduler::acquire_timeout),
//! [`try_acquire`](ResourceScheduler::try_acquire)) and from async tasks on any executor
//! ([`acquire_async`](ResourceScheduler::acquire_async), whose future is cancel-safe).
//!
//! ```
//! use cairn_resources::{Direction, RepositoryLimits, ResourceScheduler, SchedulerOptions, TaskRequest};
//!
//! let scheduler = ResourceScheduler::new(SchedulerOptions::default());
//! scheduler.set_proxy("proxy-1", 2)?;
//! scheduler.set_proxy("proxy-2", 2)?;
//! let limits = RepositoryLimits { max_tasks: 4, read_limit: Some(2 << 20), write_limit: Some(8 << 20) };
//! scheduler.set_repository("repo", limits)?;
//!
//! let task = TaskRequest::new("nightly", "proxy-1", "repo").with_proxies(["proxy-1", "proxy-2"]);
//! let first = scheduler.acquire(&task)?;
//! let second = scheduler.acquire(&task)?; // proxy-2: proxy-1 is busier now
//! assert_ne!(first.proxy(), second.proxy());
//! assert_eq!(first.rate_limiter().rate(), Some(4 << 20)); // two writers share 8 MiB/s
//! first.throttle(64 * 1024); // after writing a block
//!
//! // A restore reads: it gets the whole read limit and leaves the writers' shares alone.
//! let restore = scheduler.acquire(&TaskRequest::new("restore", "proxy-1", "repo").with_direction(Direction::Read))?;
//! assert_eq!(restore.rate_limiter().rate(), Some(2 << 20));
//! assert_eq!(first.rate_limiter().rate(), Some(4 << 20));
//! let reads = scheduler.repository_rate(&"repo".into(), Direction::Read).unwrap();
//! assert_eq!((reads.tasks, reads.share), (1, Some(2 << 20)));
//! drop(second);
//! assert_eq!(first.rate_limiter().rate(), Some(8 << 20));
//! # Ok::<(), cairn_resources::ResourceError>(())
//! ```

mod choose;
mod error;
mod ids;
mod lease;
mod rate;
mod request;
mod scheduler;
mod state;

pub use choose::{Load, least_loaded};
pub use error::ResourceError;
pub use ids::{JobId, ProxyId, RepositoryId};
pub use lease::{Acquire, Lease};
pub use rate::{Direction, RateLimiter};
pub use request::TaskRequest;
pub use scheduler::{RateUsage, RepositoryLimits, ResourceScheduler, SchedulerOptions, default_max_tasks};
