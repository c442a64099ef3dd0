//! Configuration database of the cairn backup server.
//!
//! The server keeps its configuration (users, API tokens, hosts and the VMs and disks discovered on
//! them, repositories, proxies, jobs, settings) and its history (sessions, tasks, task logs, the
//! hash-chained audit log) in one relational database:
//!
//! - an embedded SQLite file in the server's data folder by default ([`ConfigDb::open_sqlite`] or a
//!   `sqlite://PATH?mode=rwc` URL), opened in WAL mode with foreign keys on and a busy timeout;
//! - PostgreSQL for large installs (`postgres://…` URL), with the same behaviour.
//!
//! [`ConfigDb`] hides the backend: it holds an enum over `SqlitePool` and `PgPool` (not sqlx's
//! `Any` driver, which loses types) and every operation runs the *same* SQL text on either pool
//! (both accept `$1` placeholders, `RETURNING` and `ON CONFLICT`). Only the schema differs, so each
//! backend has its own migrations folder (`migrations/sqlite`, `migrations/postgres`), applied on
//! open. Queries are checked at run time; no database is needed to build the crate.
//!
//! Conventions: ids are `i64`; times are [`jiff::Timestamp`] stored as microseconds since the Unix
//! epoch; statistics are JSON documents stored as text. Jobs carry a `version` for optimistic
//! concurrency: [`ConfigDb::update_job`] with a stale version fails with [`Error::Conflict`], so the
//! first save wins and later savers are told to reload.

#![warn(missing_docs)]

mod agents;
mod api;
mod audit;
mod db;
mod error;
mod inventory;
mod jobs;
mod rows;
mod sessions;
mod throttle;
mod users;

pub use agents::{
    Agent, AgentRole, AgentStatus, EnrolRefusal, EnrolmentToken, IssuedCertificate, NewAgent, NewEnrolmentToken,
    roles_from_text, roles_to_text,
};
pub use audit::{AuditCheck, AuditEntry, AuditQuery, GENESIS_HASH, NewAuditEntry, entry_hash};
pub use db::{Backend, ConfigDb};
pub use error::{Error, Result};
pub use inventory::{
    DiscoveredDisk, DiscoveredVm, Disk, Host, HostKind, NewHost, NewProxy, NewRepository, Proxy, Repository, Vm,
};
pub use jobs::{Job, JobSpec};
pub use sessions::{LogLevel, LogLine, NewTask, Session, SessionCursor, SessionPage, SessionQuery, SessionState, Task};
pub use throttle::{NewThrottleRule, ThrottleRule};
pub use users::{NewToken, Role, Token, TokenKind, TokenScope, User};

/// Settings key of the global parallel-processing switch (`"true"` or `"false"`; default on).
pub const SETTING_PARALLEL_PROCESSING: &str = "parallel_processing";
/// Settings key of the restore folders: a JSON array of absolute paths beneath which the server
/// writes what users name (restores, restored VMs, migrations).
pub const SETTING_RESTORE_FOLDERS: &str = "restore_folders";
/// Settings key of whether administrators must log in with a second factor (`"true"`/`"false"`;
/// default off).
pub const SETTING_REQUIRE_ADMIN_TOTP: &str = "require_totp_for_administrators";
