//! The types of cairn's HTTP API and of what its configuration stores, with no I/O.
//!
//! The backup server, its agents, the command line and the web console share these: request and
//! response bodies of every route (with their OpenAPI schemas), the closed sets of names (roles,
//! host kinds, session states…), the constraints the server checks (`checks`), the error body.
//! The configuration database stores the same records, so a job, a repository or a user is one
//! type from the database to the command line.
//!
//! ```
//! use cairn_api::Role;
//! let role: Role = "restore-operator".parse()?;
//! assert!(role.at_least(Role::Viewer));
//! # Ok::<(), cairn_api::UnknownName>(())
//! ```

#![warn(missing_docs)]

pub mod agent;
pub mod agents;
pub mod audit;
pub mod auth;
pub mod checks;
pub mod error;
pub mod health;
pub mod instant;
pub mod inventory;
pub mod jobs;
#[macro_use]
pub mod names;
pub mod repositories;
pub mod restore;
pub mod sessions;
pub mod settings;
pub mod spec;
pub mod throttle;
pub mod users;
pub mod vm;

pub use names::{AgentRole, HostKind, LogLevel, Role, SessionState, TokenKind, TokenScope, UnknownName};
