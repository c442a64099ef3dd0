//! A cairn repository on a local folder: config, chains, backup sessions,
//! retention and health checks.
//!
//! Layout (see `docs/format.md`):
//! ```text
//! REPO/config                         identity, format version, keys
//! REPO/chains/<chain-id>/chain.meta   restore points and files of one VM (commit point)
//! REPO/chains/<chain-id>/lock         flock: shared for readers, exclusive for writers
//! REPO/chains/<chain-id>/NNNNNNNN.full|.inc   data files (block records)
//! REPO/chains/<chain-id>/<point>.idx  block map of one restore point
//! ```
//!
//! Every change follows one write order: new files are written aside and
//! fsynced, then `chain.meta` is replaced atomically. A crash at any moment
//! leaves either the old or the new state, plus leftovers that the next writer
//! removes ([`session`] and [`retention`] explain the details). A health
//! check ([`verify`]) names the restore points damage has made unrestorable,
//! and a repair ([`repair`]) removes exactly those.

pub mod chain;
pub mod config;
pub mod error;
pub mod folder;
pub mod fsutil;
pub mod repair;
pub mod repository;
pub mod reserve;
pub mod retention;
pub mod session;
pub mod verify;

pub use chain::{ChainMeta, FullKind, Method, PointKind, PointMeta, PointStats};
pub use config::Encryption;
pub use error::{RepoError, Result};
pub use repository::{ChainReader, Repository};
pub use session::{BackupPlan, BackupSession, SessionKind};
