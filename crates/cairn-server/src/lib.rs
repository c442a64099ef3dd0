//! The cairn backup server: the control plane of a cairn installation.
//!
//! `cairn server --data DIR` runs one process that is the backup server (configuration
//! database, HTTPS REST API, scheduler, job manager, session logs), the default repository and
//! the default proxy at once. Modules:
//!
//! - [`config`]: what the server is started with;
//! - [`bootstrap`]: the data folder on first start (CA and certificate, configuration database,
//!   first administrator, default repository and proxy);
//! - [`tls`]: the server's own certificate authority and serving certificate;
//! - [`agent_tls`]: mutual TLS with agents (client certificates, pinning by fingerprint);
//! - [`auth`]: passwords (Argon2id), login and API tokens, roles, login throttling, TOTP;
//! - [`audit`]: the audit trail of every change (append-only, hash-chained);
//! - [`secrets`]: repository passwords kept in the data folder;
//! - [`restore_folders`]: the folders beneath which the server writes what users name;
//! - [`api`]: the HTTP routes and the OpenAPI document;
//! - [`runner`]: the job manager (sessions, one task per VM disk, resources, retries, stop);
//! - [`scheduler`]: starts jobs on their schedules, after other jobs and after downtime;
//! - [`state`]: what request handlers share;
//! - [`throttle`]: network throttling rules and each transfer's share of them.

#![warn(missing_docs)]

pub mod agent_hub;
pub mod agent_tls;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod live;
pub mod movers;
pub mod repositories;
pub mod restore_folders;
pub mod runner;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod state;
pub mod throttle;
pub mod tls;

pub use config::ServerConfig;
pub use server::run;
