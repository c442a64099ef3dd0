//! Errors of the job manager's calls.

/// Errors of job-manager calls.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The job or session does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The job already has a session that has not ended.
    #[error("job {job} is already running (session {session})")]
    AlreadyRunning {
        /// The job.
        job: String,
        /// Its running session.
        session: i64,
    },
    /// The job cannot run as configured (no VMs, missing repository password…).
    #[error("{0}")]
    Invalid(String),
    /// The configuration database failed.
    #[error(transparent)]
    Db(#[from] cairn_configdb::Error),
}
