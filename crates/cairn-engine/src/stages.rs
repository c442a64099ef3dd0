//! Stage busy-time accounting and progress reporting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Progress of a running operation, reported as data moves.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Bytes processed so far.
    pub done_bytes: u64,
    /// Bytes the operation will process in all.
    pub total_bytes: u64,
}

/// Busy time of one stage, summed over its threads, in nanoseconds.
#[derive(Default)]
pub(crate) struct Busy(AtomicU64);

impl Busy {
    /// Runs `f`, adding its duration to the stage's busy time.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.0.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    /// Adds the busy time of `other` (another measurement of the same stage).
    pub fn add(&self, other: &Busy) {
        self.0.fetch_add(other.0.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Percentage of `wall × threads` the stage was busy.
    pub fn percent(&self, wall: Duration, threads: usize) -> f64 {
        let total = wall.as_nanos() as f64 * threads.max(1) as f64;
        if total == 0.0 {
            0.0
        } else {
            (self.0.load(Ordering::Relaxed) as f64 / total * 100.0).min(100.0)
        }
    }
}

/// Names the stage with the highest busy percentage.
pub(crate) fn bottleneck(busy: &[(String, f64)]) -> String {
    busy.iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _)| n.clone())
        .unwrap_or_default()
}
