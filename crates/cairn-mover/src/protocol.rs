//! The control messages of a backup that crosses machines, as JSON: what the backup server
//! tells a data mover to do ([`Instruction`]), what a data mover reports back while it works
//! ([`TaskEvent`]), and the steering the server answers each report with ([`Control`]).
//!
//! Block data never travels in these messages; it goes from the source to the target data mover
//! over `cairn-transfer`. A read plan (which blocks the target's engine will read, in order) is
//! sent as runs of consecutive block numbers, so even a full read of a large disk is a few
//! numbers.

use cairn_disk::Extent;
use cairn_repo::{Method, PointStats};
use serde::{Deserialize, Serialize};

/// What the backup server asks a data mover to do. Every instruction names the task it belongs
/// to (a number the server picks, unique while the server runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Instruction {
    /// Read a VM's disks and send the blocks the target asks for to the target data mover.
    Source(SourceTask),
    /// Receive a VM's blocks and back them up as a new restore point into a repository that
    /// this data mover owns.
    Target(TargetTask),
    /// To a running source task: the blocks the target will read from one disk, in order.
    ReadPlan {
        /// The source task.
        task: u64,
        /// Disk position in the VM.
        disk: u32,
        /// Runs of consecutive block numbers `[first, count]`, in reading order.
        runs: Vec<[u64; 2]>,
    },
    /// Stop a task now; it reports [`TaskEvent::Stopped`].
    Cancel {
        /// The task.
        task: u64,
        /// Why, for its log.
        reason: String,
    },
    /// Restore one disk of a restore point to a new image file on this data mover's host.
    Restore(RestoreTask),
    /// Create a repository folder on this data mover (or adopt the repository already there).
    InitRepository {
        /// The task.
        task: u64,
        /// Folder on the data mover's host.
        path: String,
        /// The repository's password.
        password: String,
    },
    /// Tell what the newest restore point of a VM was read from, per disk (answered with
    /// [`TaskEvent::PreviousPoint`]): a live backup needs its checkpoints before it makes its view.
    PreviousPoint {
        /// The task.
        task: u64,
        /// Repository folder on this data mover.
        repository: String,
        /// The repository's password.
        password: String,
        /// The VM's name in the repository.
        vm: String,
    },
}

impl Instruction {
    /// The task the instruction belongs to.
    pub fn task(&self) -> u64 {
        match self {
            Instruction::Source(t) => t.task,
            Instruction::Target(t) => t.task,
            Instruction::Restore(t) => t.task,
            Instruction::ReadPlan { task, .. }
            | Instruction::Cancel { task, .. }
            | Instruction::InitRepository { task, .. }
            | Instruction::PreviousPoint { task, .. } => *task,
        }
    }
}

/// Where a source sends its blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferEndpoint {
    /// The target data mover's data channel address (`IP:port`).
    pub address: String,
    /// The DNS name its certificate carries (what the sender checks).
    pub server_name: String,
    /// SHA-256 fingerprint of the target's certificate: the only one accepted (pinning).
    pub fingerprint: String,
    /// The transfer's id (32 hex digits), which the target expects.
    pub transfer: String,
    /// Parallel TCP streams (1..=64).
    pub streams: u16,
}

/// A source task: one VM's disks on the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceTask {
    /// Task number.
    pub task: u64,
    /// The VM, for log lines.
    pub vm: String,
    /// Disk image paths as the proxy sees them, in the VM's disk order.
    pub disks: Vec<String>,
    /// Block size of the backup (bytes).
    pub block_size: u32,
    /// The target data mover.
    pub target: TransferEndpoint,
    /// The network rate limit that applies at the start (bytes/s); later changes come in [`Control`].
    pub network_rate: Option<u64>,
}

/// A target task: one VM's new restore point in a repository on this data mover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetTask {
    /// Task number.
    pub task: u64,
    /// The transfer to expect (32 hex digits).
    pub transfer: String,
    /// SHA-256 fingerprint of the source data mover's certificate: the only sender accepted.
    pub source_fingerprint: String,
    /// The repository folder on this data mover's host.
    pub repository: String,
    /// The repository's password (kept in memory for the task only).
    pub password: String,
    /// The VM's name in the repository.
    pub vm: String,
    /// Block size (bytes).
    pub block_size: u32,
    /// Chain method.
    pub method: Method,
    /// Forward method: an active full every N points.
    pub full_every: Option<u32>,
    /// Compression of new blocks (`zstd:3`, `lz4`, `none`, …).
    pub compression: String,
    /// Restore points to keep after the new one is committed (retention runs here, on the
    /// repository's own data mover).
    pub retention: u32,
    /// The VM configuration to store in the point, if any.
    pub vm_config: Option<serde_json::Value>,
    /// The VM's disks as the source described them.
    pub disks: Vec<DiskDescription>,
    /// The write rate limit share at the start (bytes/s); later changes come in [`Control`].
    pub write_rate: Option<u64>,
}

/// A restore on the repository's own data mover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTask {
    /// Task number.
    pub task: u64,
    /// The repository folder on this data mover's host.
    pub repository: String,
    /// The repository's password.
    pub password: String,
    /// VM name in the repository.
    pub vm: String,
    /// `latest`, a point id or a unique prefix.
    pub point: String,
    /// Disk number.
    pub disk: u32,
    /// The new image file (absolute path on this host beneath one of `restore_folders`; must not
    /// exist).
    pub target_path: String,
    /// Image format name (`raw`, `qcow2`, `vhdx`, `vhd`).
    pub format: String,
    /// Logical sector size of the new image, if not the source's.
    pub sector_size: Option<u32>,
    /// Read rate share (bytes/s) at the start; later changes come in [`Control::write_rate`].
    pub read_rate: Option<u64>,
    /// The folders the image may be written beneath (the server's restore folders setting).
    pub restore_folders: Vec<String>,
    /// Permission bits of the new image file.
    pub file_mode: u32,
}

/// What a restore on a data mover did (the answer of the HTTP API's restore, too).
pub use cairn_api::restore::RestoreResult as RestoreSummary;

/// What a restore did, as reported.
pub fn restore_summary(stats: cairn_engine::RestoreStats) -> RestoreSummary {
    RestoreSummary {
        vm: stats.vm,
        point: stats.point,
        disk: stats.disk,
        virtual_size: stats.virtual_size,
        blocks: stats.blocks,
        written_bytes: stats.written_bytes,
        format: stats.format.name().to_string(),
        duration_secs: stats.duration_secs,
    }
}

/// A disk as the source sees it: enough for the target's engine to plan what to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskDescription {
    /// Where it comes from (a path on the proxy), for messages and the point's metadata.
    pub describe: String,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Logical sector size.
    pub logical_sector: u32,
    /// Physical sector size.
    pub physical_sector: u32,
    /// The source's identity, if it has one.
    pub identity: Option<String>,
    /// Extents that may hold data, `[offset, length]`.
    pub allocation: Vec<[u64; 2]>,
    /// Changed extents since the parent (a differencing disk), if known.
    pub changed: Option<Vec<[u64; 2]>>,
    /// The parent's identity, when `changed` is relative to it.
    pub changed_since: Option<String>,
}

/// Log levels of [`TaskEvent::Log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Information.
    Info,
    /// Something the user should look at.
    Warning,
    /// A failure.
    Error,
}

/// What the source reports when it has sent everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceSummary {
    /// Bytes read from the disks.
    pub read_bytes: u64,
    /// Seconds spent reading.
    pub read_secs: f64,
    /// Blocks sent (zero blocks are sent as empty markers).
    pub blocks: u64,
    /// Blocks that were all zeros (sent without their bytes).
    pub zero_blocks: u64,
    /// Payload bytes sent, re-sends included.
    pub sent_bytes: u64,
    /// Blocks sent again after a CRC failure or a reconnection.
    pub resent_blocks: u64,
    /// Connections re-established.
    pub reconnects: u64,
    /// Seconds the sender waited on a network rate limit.
    pub throttled_secs: f64,
    /// Seconds the transfer took.
    pub elapsed_secs: f64,
    /// Parallel streams used.
    pub streams: u16,
}

/// A report of a data mover about a task, as it happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskEvent {
    /// A line for the task's log (`disk` = one disk's task; none = every disk of the VM).
    Log {
        /// Disk position, if the line is about one disk.
        disk: Option<u32>,
        /// Level.
        level: Level,
        /// Text.
        text: String,
    },
    /// (source) The disks are open.
    Described {
        /// One per disk, in order.
        disks: Vec<DiskDescription>,
    },
    /// (target) The engine will read these blocks of a disk, in this order.
    ReadPlan {
        /// Disk position.
        disk: u32,
        /// Runs `[first, count]`.
        runs: Vec<[u64; 2]>,
    },
    /// (target) A disk starts; `total_bytes` will be read from it.
    DiskStarting {
        /// Disk position.
        disk: u32,
        /// Bytes to read.
        total_bytes: u64,
    },
    /// (target) Progress within a disk.
    Progress {
        /// Disk position.
        disk: u32,
        /// Bytes done.
        done_bytes: u64,
        /// Bytes in all.
        total_bytes: u64,
    },
    /// (target) A disk was read and written.
    DiskFinished {
        /// Disk position.
        disk: u32,
        /// Its statistics.
        stats: PointStats,
        /// Seconds spent waiting on the write rate limit.
        throttle_secs: f64,
        /// Seconds from start to end.
        wall_secs: f64,
    },
    /// (source) Everything the target asked for was sent and acknowledged.
    SourceFinished(SourceSummary),
    /// (target) The restore point is committed, and retention ran.
    Committed {
        /// The new point's id.
        point: String,
        /// `full`, `synthetic full` or `incremental`.
        kind: String,
        /// The engine's notes (CBT decisions).
        notes: Vec<String>,
        /// What retention did, for the log.
        retention: String,
        /// Retention failed (the point stays).
        retention_failed: bool,
    },
    /// (repository) A restore is complete.
    Restored(RestoreSummary),
    /// (repository) The repository is ready.
    RepositoryReady {
        /// What was done (`created` / `adopted`) and what it holds.
        summary: String,
    },
    /// (repository) The newest restore point of a VM, if it has one.
    PreviousPoint {
        /// Its id; `None` when the VM has no restore point in the repository.
        point: Option<String>,
        /// The source identity each disk was read at, `(disk position, identity)`.
        sources: Vec<(u32, String)>,
    },
    /// The task failed.
    Failed {
        /// Disk position, if one disk is at fault.
        disk: Option<u32>,
        /// The error and its causes.
        error: String,
    },
    /// The task was stopped ([`Instruction::Cancel`]); nothing was committed.
    Stopped {
        /// Why.
        reason: String,
    },
}

impl TaskEvent {
    /// Whether the event ends its task.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            TaskEvent::SourceFinished(_)
                | TaskEvent::Committed { .. }
                | TaskEvent::RepositoryReady { .. }
                | TaskEvent::PreviousPoint { .. }
                | TaskEvent::Restored(_)
                | TaskEvent::Failed { .. }
                | TaskEvent::Stopped { .. }
        )
    }
}

/// The server's answer to a data mover's reports: steering for the running task.
pub use cairn_api::agents::ControlDto as Control;

/// Extents as `[offset, length]` pairs.
pub fn extents_to_pairs(extents: &[Extent]) -> Vec<[u64; 2]> {
    extents.iter().map(|e| [e.offset, e.length]).collect()
}

/// `[offset, length]` pairs as extents.
pub fn pairs_to_extents(pairs: &[[u64; 2]]) -> Vec<Extent> {
    pairs
        .iter()
        .map(|&[offset, length]| Extent { offset, length })
        .collect()
}

/// Block numbers as runs of consecutive numbers `[first, count]`, keeping their order.
pub fn blocks_to_runs(blocks: &[u64]) -> Vec<[u64; 2]> {
    let mut runs: Vec<[u64; 2]> = Vec::new();
    for &b in blocks {
        match runs.last_mut() {
            Some([first, count]) if first.checked_add(*count) == Some(b) => *count += 1,
            _ => runs.push([b, 1]),
        }
    }
    runs
}

/// The block numbers of runs, in order. `None` when the runs describe more than `limit` blocks
/// (a malformed plan must not make the reader allocate without bound).
pub fn runs_to_blocks(runs: &[[u64; 2]], limit: u64) -> Option<Vec<u64>> {
    let total = runs.iter().try_fold(0u64, |n, &[_, count]| n.checked_add(count))?;
    if total > limit {
        return None;
    }
    let mut blocks = Vec::with_capacity(total as usize);
    for &[first, count] in runs {
        let end = first.checked_add(count)?;
        blocks.extend(first..end);
    }
    Some(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn runs_round_trip(blocks in proptest::collection::vec(0u64..10_000, 0..300)) {
            let runs = blocks_to_runs(&blocks);
            prop_assert_eq!(runs_to_blocks(&runs, u64::MAX), Some(blocks.clone()));
            // Runs never hold two adjacent runs that could be one.
            for w in runs.windows(2) {
                prop_assert!(w[0][0] + w[0][1] != w[1][0]);
            }
        }
    }

    #[test]
    fn runs_are_bounded() {
        assert_eq!(runs_to_blocks(&[[0, 10], [100, 5]], 15).map(|b| b.len()), Some(15));
        assert_eq!(runs_to_blocks(&[[0, 10], [100, 6]], 15), None);
        assert_eq!(runs_to_blocks(&[[u64::MAX, 2]], 15), None);
        assert_eq!(runs_to_blocks(&[[0, u64::MAX], [0, 1]], u64::MAX), None);
    }

    #[test]
    fn instructions_are_tagged_json() {
        let i = Instruction::Cancel {
            task: 7,
            reason: "stopped by admin".into(),
        };
        let text = serde_json::to_string(&i).unwrap();
        assert_eq!(text, r#"{"type":"cancel","task":7,"reason":"stopped by admin"}"#);
        assert_eq!(serde_json::from_str::<Instruction>(&text).unwrap(), i);
        assert!(serde_json::from_str::<Instruction>(r#"{"type":"format_disk","task":1}"#).is_err());
    }
}
