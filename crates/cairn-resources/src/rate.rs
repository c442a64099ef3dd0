//! Per-task token buckets whose rate is a live share of a repository's data rate limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Which way a task's data flows at its repository. A repository has a read and a write rate limit:
/// readers share the read limit among themselves, writers the write limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The task reads from the repository (restore, health check, copy source).
    Read,
    /// The task writes to the repository (backup, copy target).
    Write,
}

/// Credit a task may bank while idle, so a short pause is not lost entirely, yet a long one does not
/// let the task burst far above its share.
const BURST: Duration = Duration::from_millis(100);

/// The current per-task rate of one repository, one value per direction (each from that
/// direction's limit); written by the scheduler
/// whenever a task starts or ends or the limit changes, read by every [`RateLimiter`] on each call.
#[derive(Debug, Default)]
pub(crate) struct RateShare {
    /// Bytes per second per reading task; 0 = unlimited.
    read: AtomicU64,
    /// Bytes per second per writing task; 0 = unlimited.
    write: AtomicU64,
}

impl RateShare {
    fn slot(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::Read => &self.read,
            Direction::Write => &self.write,
        }
    }

    /// Recomputes the share of `direction` from the repository limit and its active tasks.
    pub(crate) fn split(&self, direction: Direction, limit: Option<u64>, active: usize) {
        let share = match limit {
            None => 0,
            // Never round a share down to "unlimited" (0): at least 1 byte/s.
            Some(limit) => (limit / (active.max(1) as u64)).max(1),
        };
        self.slot(direction).store(share, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, direction: Direction) -> Option<u64> {
        match self.slot(direction).load(Ordering::Relaxed) {
            0 => None,
            rate => Some(rate),
        }
    }
}

/// Paces one task's data flow to its current share of the repository's rate limit.
///
/// The share is `limit / tasks active in the same direction on the repository`, re-read on every
/// call, so when another task starts or ends the pace changes from the next call on. Clones share
/// one bucket, so several threads moving data for the same task are paced together.
///
/// The bucket is a virtual clock (GCRA): each call advances the task's "paid until" time by
/// `bytes / rate` and returns how far that lies in the future; an idle task may bank at most
/// 100 ms of credit. Synchronous code calls [`throttle`](Self::throttle); async code sleeps for
/// [`delay_for`](Self::delay_for) with its runtime's timer.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    share: Arc<RateShare>,
    direction: Direction,
    paid_until: Arc<Mutex<Option<Instant>>>,
}

impl RateLimiter {
    pub(crate) fn new(share: Arc<RateShare>, direction: Direction) -> Self {
        Self {
            share,
            direction,
            paid_until: Arc::new(Mutex::new(None)),
        }
    }

    /// A limiter that never waits (for data paths that run without a scheduler).
    pub fn unlimited() -> Self {
        Self::new(Arc::new(RateShare::default()), Direction::Write)
    }

    /// The task's current rate in bytes per second, `None` when unlimited.
    pub fn rate(&self) -> Option<u64> {
        self.share.get(self.direction)
    }

    /// The direction this limiter paces.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Accounts for `bytes` moved now and returns how long the caller must wait before moving more
    /// so that it stays within its share. Never blocks; zero when unlimited or within credit.
    pub fn delay_for(&self, bytes: u64) -> Duration {
        let Some(rate) = self.rate() else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let cost = transfer_time(bytes, rate);
        let mut paid_until = self.paid_until.lock().unwrap_or_else(PoisonError::into_inner);
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let start = match *paid_until {
            Some(t) if t > earliest => t,
            Some(_) => earliest,
            None => now,
        };
        let end = start.checked_add(cost).unwrap_or(start);
        *paid_until = Some(end);
        end.saturating_duration_since(now)
    }

    /// Accounts for `bytes` and sleeps the calling thread just long enough to keep to the share.
    pub fn throttle(&self, bytes: u64) {
        let delay = self.delay_for(bytes);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
}

/// `bytes / rate` seconds, saturating instead of overflowing for absurd inputs.
fn transfer_time(bytes: u64, rate: u64) -> Duration {
    let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_equal_and_never_zero() {
        let share = RateShare::default();
        share.split(Direction::Write, Some(8_000_000), 2);
        assert_eq!(share.get(Direction::Write), Some(4_000_000));
        assert_eq!(share.get(Direction::Read), None);
        share.split(Direction::Read, Some(3), 10);
        assert_eq!(share.get(Direction::Read), Some(1));
        share.split(Direction::Read, Some(8), 0);
        assert_eq!(share.get(Direction::Read), Some(8));
        share.split(Direction::Read, None, 3);
        assert_eq!(share.get(Direction::Read), None);
    }

    #[test]
    fn delay_accumulates_at_the_share() {
        let share = Arc::new(RateShare::default());
        share.split(Direction::Write, Some(1_000_000), 1);
        let limiter = RateLimiter::new(share, Direction::Write);
        let first = limiter.delay_for(100_000);
        assert!(
            first <= Duration::from_millis(100) && first >= Duration::from_millis(90),
            "{first:?}"
        );
        let second = limiter.delay_for(100_000);
        assert!(second >= Duration::from_millis(190), "{second:?}");
    }

    #[test]
    fn unlimited_never_waits_and_huge_inputs_saturate() {
        assert_eq!(RateLimiter::unlimited().delay_for(u64::MAX), Duration::ZERO);
        assert_eq!(transfer_time(u64::MAX, 1), Duration::from_nanos(u64::MAX));
    }
}
