//! Retrying failed VMs.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// How a session retries its failed VMs: only the VMs that failed are processed again, up to
/// `attempts` more times, `delay` after the failure; then the session ends Warning or Failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first run (0 = never retry).
    pub attempts: u32,
    /// Wait between a failure and its retry.
    pub delay: SignedDuration,
}

impl Default for RetryPolicy {
    /// 3 retries, 10 minutes apart.
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            delay: SignedDuration::from_mins(10),
        }
    }
}

impl RetryPolicy {
    /// When to retry after the run numbered `attempt` failed at `failed_at` (0 = the scheduled
    /// run, 1 = the first retry, …). `None` once the retries are used up.
    pub fn next_retry(&self, attempt: u32, failed_at: Timestamp) -> Option<Timestamp> {
        if attempt >= self.attempts {
            return None;
        }
        failed_at.checked_add(self.delay.max(SignedDuration::ZERO)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_three_retries_ten_minutes_apart() {
        let p = RetryPolicy::default();
        let t: Timestamp = "2026-01-01T22:00:00Z".parse().unwrap();
        assert_eq!(p.next_retry(0, t).unwrap().to_string(), "2026-01-01T22:10:00Z");
        assert!(p.next_retry(2, t).is_some());
        assert_eq!(p.next_retry(3, t), None);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<RetryPolicy>(&json).unwrap(), p);
    }
}
