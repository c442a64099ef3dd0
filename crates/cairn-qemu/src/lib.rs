//! QEMU control for cairn: QMP and guest-agent clients, VM configuration,
//! point-in-time views with dirty bitmaps, and consistency modes.
//!
//! - [`qmp`]: async QMP client (commands with ids and timeouts, events).
//! - [`qga`]: guest agent client (resync, fsfreeze, exec, files).
//! - [`channel`]: the agent channel's state as QEMU reports it (socket held, agent running).
//! - [`disks`]: the VM's disks with their format nodes and dirty bitmaps.
//! - [`config`]: what is needed to start the VM again, read through QMP, and the
//!   `qemu-system-x86_64` command line that does so with new disks.
//! - [`view`]: a point-in-time view of a running VM's disks exported over NBD, with
//!   changed block tracking through persistent checkpoint bitmaps.
//! - [`quiesce`]: online (guest freeze), offline (pause) and crash-consistent views with
//!   the fallback rules; a guest is never left frozen or paused.
//! - [`process`]: spawning and stopping QEMU processes.
//!
//! A backup of a running VM:
//! ```no_run
//! # async fn f() -> Result<(), cairn_qemu::Error> {
//! use std::time::Duration;
//! use cairn_qemu::{qmp::Qmp, view, quiesce};
//! let qmp = Qmp::connect("/run/vms/web01.qmp".as_ref(), Duration::from_secs(10)).await?;
//! let disks = cairn_qemu::disks::list_disks(&qmp).await?;
//! let request = view::ViewRequest {
//!     disks: disks.iter().map(|d| view::DiskRequest {
//!         node: d.node.clone(), since: Some("cairn-cp-41".into()), next: "cairn-cp-42".into(), persistent: true,
//!     }).collect(),
//!     scratch_dir: "/var/tmp".into(),
//!     socket: "/run/cairn/web01.nbd".into(),
//! };
//! let prepared = view::prepare(&qmp, &request).await?;
//! let policy = quiesce::ConsistencyPolicy::default();
//! let (mut live, report) = quiesce::snapshot(&qmp, None, &policy, prepared).await?;
//! live.export(&qmp).await?;
//! // ... read nbd+unix:///cairn-0?socket=/run/cairn/web01.nbd (meta context live.disks()[0].dirty_context) ...
//! live.finish(&qmp, true).await?;
//! # let _ = report; Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod channel;
pub mod config;
pub mod disks;
pub mod process;
pub mod qga;
pub mod qmp;
pub mod quiesce;
pub mod view;

pub use qga::{AgentError, GuestAgent};
pub use qmp::{Qmp, QmpError, QmpEvent};

/// Errors of the higher-level operations (disks, config, views, consistency, processes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A QMP command failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// A guest agent command failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A local file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The request does not fit the VM (unknown node, duplicate names, ...).
    #[error("{0}")]
    Invalid(String),
    /// QEMU reported something cairn cannot use.
    #[error("{0}")]
    Unexpected(String),
    /// The job requires an application-consistent view and quiescing failed; no view was
    /// made and nothing was left frozen, paused or attached.
    #[error("application-consistent snapshot required but not possible: {0}")]
    AppConsistency(String),
    /// Some teardown steps failed (all were attempted).
    #[error("tearing down the view left problems: {}", .0.join("; "))]
    Teardown(Vec<String>),
    /// Starting or stopping a QEMU process failed.
    #[error("QEMU process: {0}")]
    Process(String),
}

/// Result of the higher-level operations.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

#[cfg(test)]
mod send_checks {
    //! The lead spawns these futures on a multi-threaded runtime: they must be `Send`.
    use super::*;

    fn assert_send<T: Send>(_: T) {}

    #[allow(dead_code)]
    fn futures_are_send(
        qmp: Qmp,
        agent: GuestAgent,
        prepared: view::PreparedView,
        mut live: view::LiveView,
        request: view::ViewRequest,
    ) {
        let policy = quiesce::ConsistencyPolicy::default();
        assert_send(quiesce::snapshot(&qmp, Some(&agent), &policy, prepared));
        assert_send(view::prepare(&qmp, &request));
        assert_send(live.export(&qmp));
        assert_send(live.finish(&qmp, true));
        assert_send(view::cleanup_leftovers(&qmp, &[]));
        assert_send(config::read_config(&qmp));
        assert_send(disks::list_disks(&qmp));
        assert_send(agent.exec("/bin/true", &[], None));
        assert_send(agent.read_file("/etc/hostname"));
        assert_send(process::QemuProcess::spawn(
            &[],
            "/x".as_ref(),
            std::time::Duration::ZERO,
        ));
    }
}
