//! Constants of the protocol between the backup server and its agents.

/// Seconds between two heartbeats of an agent.
pub const HEARTBEAT_INTERVAL_SECS: u64 = 10;
/// Heartbeats an agent may miss before it counts as offline.
pub const OFFLINE_AFTER_MISSED: u64 = 3;
