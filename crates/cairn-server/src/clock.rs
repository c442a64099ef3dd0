//! Where the scheduler and the job manager's backup windows get the time from: the system's
//! clock, or in tests a [`ManualClock`] that moves only when told to.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

/// A boxed future that sleeps.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where the scheduler (and the job manager's backup windows) get the time from.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
    /// A future that completes once [`now`](Self::now) has reached `at` (at once if it has).
    fn sleep_until(&self, at: Timestamp) -> Sleep;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// The longest single sleep of [`SystemClock`]: the wall clock may be changed (or the machine
/// suspended) while tokio's monotonic timer sleeps, so long waits are re-checked this often.
const MAX_SLEEP: Duration = Duration::from_secs(30);

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        Box::pin(async move {
            loop {
                let left = at.duration_since(Timestamp::now());
                if left <= jiff::SignedDuration::ZERO {
                    return;
                }
                let left = Duration::try_from(left).unwrap_or(MAX_SLEEP).min(MAX_SLEEP);
                tokio::time::sleep(left).await;
            }
        })
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<Timestamp>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: watch::Sender::new(start),
        })
    }

    /// Sets the time (it may also go back); sleepers whose time has come wake up.
    pub fn set(&self, t: Timestamp) {
        self.now.send_replace(t);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: jiff::SignedDuration) {
        self.now.send_modify(|t| *t = t.saturating_add(by).unwrap_or(*t));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is gone, time never moves again.
            if rx.wait_for(|now| *now >= at).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}
