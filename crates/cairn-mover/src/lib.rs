//! cairn's data movers: the two ends of a backup whose proxy and repository are different
//! machines.
//!
//! The backup server plans; data movers (the `cairn agent` processes on proxies and repository
//! servers, or the server itself in its default roles) do the work:
//!
//! - The **source** ([`source::run_source`], on the proxy) opens the VM's disks, describes them
//!   (size, allocation, changed extents of a differencing disk), and sends the blocks the target
//!   asks for over a `cairn-transfer` (parallel TLS streams, CRC-32C per block, resume).
//! - The **target** ([`target::run_target`], on the repository's own agent) runs cairn's engine
//!   on those blocks as if the disks were local ([`inbox::RemoteDisk`]): it decides what to read
//!   (CBT or all allocated blocks, with the previous point it alone can see), tells the source
//!   through the server ([`protocol::TaskEvent::ReadPlan`] → [`protocol::Instruction::ReadPlan`]),
//!   hashes, deduplicates, compresses, encrypts, writes, commits and applies retention. No other
//!   machine writes into the repository, and the repository's password never leaves the server
//!   and that agent.
//!
//! Both report through a [`TaskLink`]: events go to the server as they happen, and the server's
//! answer steers the task (cancel, the current write or network rate share).
#![warn(missing_docs)]

pub mod inbox;
pub mod pace;
pub mod protocol;
pub mod source;
pub mod target;

use std::path::PathBuf;

/// Where a data mover's reports go, and where the server's steering comes from.
pub trait TaskLink: Send + Sync {
    /// Reports an event (never blocks; delivery is the link's business).
    fn emit(&self, event: protocol::TaskEvent);
    /// The server's latest steering for the task.
    fn control(&self) -> protocol::Control;
}

/// Why a data mover's task failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MoverError {
    /// A disk of the VM could not be opened on the proxy.
    #[error("opening disk {disk} ({path}): {error}")]
    Open {
        /// Disk position.
        disk: u32,
        /// Its path on the proxy.
        path: PathBuf,
        /// The cause.
        error: cairn_disk::DiskError,
    },
    /// Reading a disk failed.
    #[error(transparent)]
    Disk(#[from] cairn_disk::DiskError),
    /// The repository could not be opened or created.
    #[error("repository {path}: {error}")]
    Repo {
        /// Its folder.
        path: PathBuf,
        /// The cause.
        error: cairn_repo::RepoError,
    },
    /// A file operation failed.
    #[error("cannot {op} {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        error: std::io::Error,
    },
    /// A restore's target file exists (restores never overwrite).
    #[error("{0} already exists: restores never overwrite a file")]
    TargetExists(PathBuf),
    /// A restore's target is not allowed (outside the restore folders, through a symlink…).
    #[error("restore target refused: {0}")]
    Confine(#[from] cairn_confine::ConfineError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] cairn_engine::EngineError),
    /// The data channel failed.
    #[error("data channel: {0}")]
    Channel(#[from] cairn_transfer::Error),
    /// The data channel's TLS could not be set up.
    #[error("data channel TLS: {0}")]
    Tls(#[from] cairn_transfer::TlsSetupError),
    /// The transfer from the proxy failed while the engine waited for it.
    #[error("{0}")]
    Transfer(String),
    /// An instruction from the server does not make sense.
    #[error("bad instruction from the server: {0}")]
    Protocol(String),
    /// The task was cancelled.
    #[error("stopped: {0}")]
    Cancelled(String),
    /// A worker thread ended abnormally.
    #[error("a worker thread ended abnormally: {0}")]
    Panicked(String),
}

impl MoverError {
    /// The disk at fault, if one is.
    pub fn disk(&self) -> Option<u32> {
        match self {
            MoverError::Open { disk, .. } => Some(*disk),
            _ => None,
        }
    }

    /// The event that reports this error as the task's end.
    pub fn to_event(&self) -> protocol::TaskEvent {
        match self {
            MoverError::Cancelled(reason) => protocol::TaskEvent::Stopped { reason: reason.clone() },
            e => protocol::TaskEvent::Failed {
                disk: e.disk(),
                error: error_chain(e),
            },
        }
    }
}

/// An error and its causes, `: `-separated (a cause already in the text is not repeated).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// Bytes in binary units for log lines.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The log line that says whether a disk is read with changed block tracking: a differencing
/// child's changed extents (used if the previous point was read from its parent), or every
/// allocated block (compared with the previous point, when there is one: the caller may not
/// know).
pub fn cbt_note(path: &std::path::Path, changed: Option<&[cairn_disk::Extent]>, has_parent: bool) -> String {
    match changed {
        Some(extents) if has_parent => {
            let bytes: u64 = extents.iter().map(|e| e.length).sum();
            format!(
                "changed block tracking: {} is a differencing disk; its {} changed extents ({}) are read if the \
                 previous restore point was read from its parent",
                path.display(),
                extents.len(),
                human_bytes(bytes)
            )
        }
        _ => format!(
            "no changed block tracking for {} (not a differencing disk): every allocated block is read; a block \
             the previous restore point (if there is one) already holds is not stored again",
            path.display()
        ),
    }
}

/// The log line for what retention did (`keep` points), `where_` saying where it ran (may be
/// empty).
pub fn retention_text(keep: usize, where_: &str, report: &cairn_repo::retention::RetainReport) -> String {
    let mut text = format!(
        "retention ({keep} points{where_}): {} kept, {} removed{}",
        report.kept,
        report.removed.len(),
        if report.reclaimed_bytes > 0 {
            format!(", {} reclaimed", human_bytes(report.reclaimed_bytes))
        } else {
            String::new()
        }
    );
    if let Some(note) = &report.note {
        text.push_str("; ");
        text.push_str(note);
    }
    text
}
