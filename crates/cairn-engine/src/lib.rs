//! cairn's data path: backup (`source read → zero filter → hash/dedup →
//! compress → encrypt → write`) and restore, with stages running
//! concurrently on all cores, bounded memory, and per-stage busy time.
//!
//! A scheduler drives a backup through [`BackupHooks`] ([`backup_with_hooks`]):
//! it hears when each disk starts (and may hold it there until a task slot is
//! free) and ends with the disk's own statistics, paces repository writes, and
//! can stop the backup at the next block ([`EngineError::Stopped`]; the
//! repository stays as it was). A restore is driven the same way through
//! [`RestoreHooks`] ([`restore_with_hooks`]): progress, paced repository reads
//! and a stop at the next block.
//!
//! ```no_run
//! use cairn_engine::{backup, BackupOptions, DiskInput};
//! use cairn_disk::raw::RawFile;
//! use cairn_repo::{BackupPlan, Method, FullKind, Repository};
//! let repo = Repository::open("/backups".as_ref(), None).unwrap();
//! let plan = BackupPlan { vm: "web01".into(), block_size: 1 << 20, method: Method::ForeverForward,
//!     full_every: None, full_kind: FullKind::Synthetic, force_full: false, vm_config: None };
//! let disk = DiskInput { source: Box::new(RawFile::open("disk0.raw".as_ref()).unwrap()), changed: None, changed_since: None };
//! let result = backup(&repo, &plan, vec![disk], &BackupOptions::default(), &|_| {}).unwrap();
//! println!("point {} bottleneck {}", result.point.id, result.point.stats.bottleneck);
//! ```

mod backup;
mod point_disk;
mod restore;
mod stages;

pub use backup::{BackupHooks, BackupOptions, BackupResult, DiskInput, backup, backup_with_hooks};
pub use point_disk::PointDisk;
pub use restore::{RestoreHooks, RestoreOutput, RestoreStats, RestoreTarget, restore, restore_with_hooks};
pub use stages::Progress;

/// Errors of the data path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Reading a source disk failed.
    #[error(transparent)]
    Disk(#[from] cairn_disk::DiskError),
    /// A repository operation failed.
    #[error(transparent)]
    Repo(#[from] cairn_repo::RepoError),
    /// Encoding a block failed.
    #[error("encoding a block: {0}")]
    Format(#[from] cairn_format::FormatError),
    /// The caller asked the backup to stop ([`BackupHooks::stop_requested`]);
    /// the repository is as it was before the backup started.
    #[error("the backup was stopped before its restore point was committed")]
    Stopped,
    /// The caller asked the restore to stop ([`RestoreHooks::stop_requested`]);
    /// the partial image file was removed.
    #[error("the restore was stopped; its partial image file was removed")]
    RestoreStopped,
    /// A [`BackupHooks`] method failed (e.g. no task slot could be had).
    #[error(transparent)]
    Hook(Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// Result alias for this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
