//! Leases (the slots a running task holds) and the future that waits for them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Instant;

use crate::rate::RateLimiter;
use crate::request::TaskRequest;
use crate::state::{Grant, Inner};
use crate::{Direction, JobId, ProxyId, RepositoryId, ResourceError};

/// One slot on a proxy and one on a repository (and the job's turn in sequential mode), held by a
/// running task. Dropping the lease frees them all at once and lets waiting tasks start.
#[derive(Debug)]
pub struct Lease {
    inner: Arc<Inner>,
    grant: Grant,
    limiter: RateLimiter,
}

impl Lease {
    fn new(inner: Arc<Inner>, grant: Grant) -> Self {
        let limiter = RateLimiter::new(grant.share.clone(), grant.direction);
        Self { inner, grant, limiter }
    }

    /// The proxy the task runs on (chosen by the scheduler when several were allowed).
    pub fn proxy(&self) -> &ProxyId {
        &self.grant.proxy
    }

    /// The repository the task reads from or writes to.
    pub fn repository(&self) -> &RepositoryId {
        &self.grant.repository
    }

    /// The job the task belongs to.
    pub fn job(&self) -> &JobId {
        &self.grant.job
    }

    /// The task's direction at the repository.
    pub fn direction(&self) -> Direction {
        self.grant.direction
    }

    /// The task's pacer: its live share of the repository's rate limit. Clone it to hand it to the
    /// data path; clones keep pacing at the share even after the lease is gone.
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Shorthand for [`RateLimiter::throttle`]: sleep just long enough after moving `bytes`.
    pub fn throttle(&self, bytes: u64) {
        self.limiter.throttle(bytes);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let wakers = {
            let mut state = self.inner.lock();
            state.untake(&self.grant);
            state.schedule()
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// Future of [`ResourceScheduler::acquire_async`](crate::ResourceScheduler::acquire_async):
/// resolves to a [`Lease`] once the task may start. Dropping it before then withdraws the request
/// (and returns slots granted in the meantime), so it is safe to race against a timeout or a
/// cancellation signal. It must not be polled again after it resolved.
#[derive(Debug)]
#[must_use = "a task waits for its slots only while the future is polled or kept"]
pub struct Acquire {
    inner: Arc<Inner>,
    request: Option<TaskRequest>,
    ticket: Option<u64>,
}

impl Acquire {
    pub(crate) fn new(inner: Arc<Inner>, request: TaskRequest) -> Self {
        Self {
            inner,
            request: Some(request),
            ticket: None,
        }
    }

    /// Polls until the lease is granted, parking the thread in between; `None` when `deadline`
    /// passes first (the request is then still queued until `self` is dropped).
    pub(crate) fn block_until(&mut self, deadline: Option<Instant>) -> Option<Result<Lease, ResourceError>> {
        let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(result) = Pin::new(&mut *self).poll(&mut cx) {
                return Some(result);
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
    }
}

impl Future for Acquire {
    type Output = Result<Lease, ResourceError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut wakers = Vec::new();
        let outcome = {
            let mut state = this.inner.lock();
            let ticket = match (this.ticket, this.request.take()) {
                (Some(ticket), _) => ticket,
                (None, Some(request)) => {
                    if let Err(error) = state.validate(&request) {
                        return Poll::Ready(Err(error));
                    }
                    let ticket = state.enqueue(request, cx.waker().clone());
                    this.ticket = Some(ticket);
                    wakers = state.schedule();
                    ticket
                }
                // Polled after completion.
                (None, None) => return Poll::Pending,
            };
            let outcome = state.done.remove(&ticket);
            if outcome.is_none()
                && let Some(waiter) = state.queue.iter_mut().find(|w| w.ticket == ticket)
                && !waiter.waker.will_wake(cx.waker())
            {
                waiter.waker = cx.waker().clone();
            }
            outcome
        };
        wakers.into_iter().for_each(Waker::wake);
        match outcome {
            None => Poll::Pending,
            Some(result) => {
                this.ticket = None;
                Poll::Ready(result.map(|grant| Lease::new(this.inner.clone(), grant)))
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket else {
            return;
        };
        let wakers = {
            let mut state = self.inner.lock();
            if state.cancel(ticket) {
                state.schedule()
            } else {
                Vec::new()
            }
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// Wakes a thread parked in [`Acquire::block_until`].
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}
