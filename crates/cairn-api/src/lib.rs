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
pub mod checks;
pub mod names;

pub use names::{AgentRole, HostKind, LogLevel, Role, SessionState, TokenKind, TokenScope, UnknownName};
