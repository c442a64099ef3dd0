//! What request handlers, the job manager and the scheduler share.

use std::path::PathBuf;
use std::sync::Arc;

use cairn_configdb::ConfigDb;
use cairn_resources::ResourceScheduler;
use jiff::tz::TimeZone;

use crate::runner::JobManager;
use crate::secrets::Secrets;

/// Shared state of a running server (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    /// The configuration database.
    pub db: ConfigDb,
    /// Runs jobs: sessions and tasks.
    pub jobs: Arc<JobManager>,
    /// Task slots and rate limits of proxies and repositories.
    pub resources: Arc<ResourceScheduler>,
    /// Repository passwords.
    pub secrets: Secrets,
    /// The data folder.
    pub data_dir: PathBuf,
    /// Time zone of schedules that name none.
    pub time_zone: TimeZone,
    /// Running instant recoveries and their NBD server.
    pub instant: Arc<crate::live::instant::InstantRecoveries>,
    /// Agents' control channel, the server's own data mover identity, heartbeat rule.
    pub movers: Arc<crate::movers::Movers>,
    /// Network throttling rules in force and the transfers sharing them.
    pub throttles: crate::throttle::NetworkThrottles,
    /// The audit trail.
    pub audit: Arc<crate::audit::Auditor>,
    /// Failed-login counters and lockouts.
    pub logins: Arc<crate::auth::throttle::LoginThrottle>,
}
