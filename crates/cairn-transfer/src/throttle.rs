//! Hooks the sender calls per block: throttling, and fault injection for tests.

use std::time::Duration;

/// Paces the sender: called once per block (first send and re-sends alike) with the block's
/// payload length, before the block is written; the sender sleeps for the returned duration.
///
/// Time spent sleeping is reported as [`SenderStats::throttled`](crate::SenderStats::throttled),
/// the "Throttling" share of a session's bottleneck statistics. The signature matches
/// `cairn_resources::RateLimiter::delay_for`, so a limiter plugs in as a closure:
/// `Arc::new(move |bytes| limiter.delay_for(bytes))`. All streams of a transfer share one
/// throttle, so the limit applies to the transfer as a whole.
pub trait Throttle: Send + Sync {
    /// Accounts for `bytes` about to be sent and returns how long to wait before sending them.
    fn delay_for(&self, bytes: u64) -> Duration;
}

impl<F: Fn(u64) -> Duration + Send + Sync> Throttle for F {
    fn delay_for(&self, bytes: u64) -> Duration {
        self(bytes)
    }
}

/// A throttle made of several (say, the repository's rate share and a network rule): waits as
/// long as the slowest of them asks.
pub struct AllOf(pub Vec<std::sync::Arc<dyn Throttle>>);

impl Throttle for AllOf {
    fn delay_for(&self, bytes: u64) -> Duration {
        self.0
            .iter()
            .map(|t| t.delay_for(bytes))
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

/// Test aid: damages chosen blocks on their way out *after* their CRC-32C was computed, the
/// way a faulty NIC, driver or memory below TLS's integrity check but above the block CRC
/// would. The receiver then NACKs them and the sender re-sends.
///
/// Never set in production configurations.
pub trait FaultInjector: Send + Sync {
    /// Whether to flip one bit of block `seq`'s payload on its `attempt`-th send (1 = first).
    fn corrupt(&self, seq: u64, attempt: u32) -> bool;
}
