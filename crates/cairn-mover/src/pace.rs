//! A rate limit whose rate can change while it is used: the backup server recomputes a task's
//! share of a repository's write limit or of a network rule as other tasks start and end, and
//! the data mover applies the new rate to the next block.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Paces bytes to a rate (bytes per second; 0 = unlimited) that may change at any time, and
/// adds up the time it asked callers to wait.
#[derive(Debug)]
pub struct Pacer {
    rate: AtomicU64,
    next: Mutex<Option<Instant>>,
    waited_micros: AtomicU64,
    /// Whether the server's steering has named a rate yet.
    steered: AtomicBool,
}

impl Pacer {
    /// A pacer at `rate` bytes/s (`None` = unlimited).
    pub fn new(rate: Option<u64>) -> Pacer {
        Pacer {
            rate: AtomicU64::new(rate.unwrap_or(0)),
            next: Mutex::new(None),
            waited_micros: AtomicU64::new(0),
            steered: AtomicBool::new(false),
        }
    }

    /// Changes the rate (`None` = unlimited); applies from the next call.
    pub fn set_rate(&self, rate: Option<u64>) {
        self.rate.store(rate.unwrap_or(0), Ordering::Relaxed);
    }

    /// Applies the rate of the server's steering ([`Control`](crate::protocol::Control)). A link
    /// has no answer from the server before the task's first report is delivered, and its
    /// `Control` then says `None`: until the steering has named a rate once, `None` keeps the
    /// task's start rate instead of lifting the limit. After that, `None` means unlimited.
    pub fn steer(&self, rate: Option<u64>) {
        if rate.is_some() {
            self.steered.store(true, Ordering::Relaxed);
        } else if !self.steered.load(Ordering::Relaxed) {
            return;
        }
        self.set_rate(rate);
    }

    /// The rate now.
    pub fn rate(&self) -> Option<u64> {
        Some(self.rate.load(Ordering::Relaxed)).filter(|&r| r > 0)
    }

    /// Accounts for `bytes` and returns how long to wait before using them.
    pub fn delay_for(&self, bytes: u64) -> Duration {
        let rate = self.rate.load(Ordering::Relaxed);
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if rate == 0 {
            *next = None;
            return Duration::ZERO;
        }
        let start = next.filter(|n| *n > now).unwrap_or(now);
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        *next = Some(start + cost);
        let delay = start - now;
        self.waited_micros
            .fetch_add(delay.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
        delay
    }

    /// Sleeps as [`delay_for`](Self::delay_for) says (on a blocking thread).
    pub fn wait(&self, bytes: u64) {
        let delay = self.delay_for(bytes);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }

    /// Total time callers were asked to wait.
    pub fn waited(&self) -> Duration {
        Duration::from_micros(self.waited_micros.load(Ordering::Relaxed))
    }
}

impl cairn_transfer::Throttle for Pacer {
    fn delay_for(&self, bytes: u64) -> Duration {
        Pacer::delay_for(self, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_add_up_to_the_rate() {
        let p = Pacer::new(Some(1_000_000));
        let total: Duration = (0..10).map(|_| p.delay_for(100_000)).sum();
        // 1 MB at 1 MB/s: the first block goes at once, the other nine wait 0.1 s each in turn
        // (0.1 + 0.2 + … + 0.9 s in sum), give or take the microseconds this loop takes.
        assert!(
            total > Duration::from_millis(4400) && total < Duration::from_millis(4600),
            "{total:?}"
        );
        assert!(p.waited() >= Duration::from_millis(4400));
    }

    #[test]
    fn unlimited_and_changed_rates() {
        let p = Pacer::new(None);
        assert_eq!(p.delay_for(1 << 30), Duration::ZERO);
        p.set_rate(Some(1000));
        assert_eq!(p.rate(), Some(1000));
        assert_eq!(p.delay_for(1000), Duration::ZERO);
        let d = p.delay_for(1000);
        assert!(d > Duration::from_millis(900) && d <= Duration::from_secs(1), "{d:?}");
        p.set_rate(None);
        assert_eq!(p.delay_for(1 << 30), Duration::ZERO);
    }

    #[test]
    fn steering_keeps_the_start_rate_until_it_names_one() {
        let p = Pacer::new(Some(1000));
        p.steer(None);
        assert_eq!(p.rate(), Some(1000), "no answer from the server yet");
        p.steer(Some(5000));
        assert_eq!(p.rate(), Some(5000));
        p.steer(None);
        assert_eq!(p.rate(), None, "the server lifted the limit");
        p.steer(Some(7));
        assert_eq!(p.rate(), Some(7));
    }
}
