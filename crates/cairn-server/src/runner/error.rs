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

/// Why a session, or one VM of it, could not go on. The texts are the task log lines.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The session's settings were not handed to its run.
    #[error("internal error: the session's settings are missing")]
    SettingsMissing,
    /// The session's work ended with a panic.
    #[error("the session ended abnormally: {0}")]
    Abnormal(tokio::task::JoinError),
    /// The job's repository row cannot be read.
    #[error("repository {id} of job {job}: {error}")]
    JobRepository {
        /// The repository's id.
        id: i64,
        /// The job's name.
        job: String,
        /// Why.
        error: cairn_configdb::Error,
    },
    /// The server's own proxy row cannot be read.
    #[error("proxy {id}: {error}")]
    ServerProxy {
        /// The proxy's id.
        id: i64,
        /// Why.
        error: cairn_configdb::Error,
    },
    /// The repository's limits are refused by the resource scheduler.
    #[error("repository {name}: {error}")]
    RepositoryLimits {
        /// The repository's name.
        name: String,
        /// Why.
        error: cairn_resources::ResourceError,
    },
    /// A proxy's limits are refused by the resource scheduler.
    #[error("proxy {name}: {error}")]
    ProxyLimits {
        /// The proxy's name.
        name: String,
        /// Why.
        error: cairn_resources::ResourceError,
    },
    /// The proxy agents cannot be listed.
    #[error("listing proxy agents: {0}")]
    ProxyAgents(cairn_configdb::Error),
    /// The tasks of the session being retried cannot be listed.
    #[error("session {session}: {error}")]
    RetriedSession {
        /// That session.
        session: i64,
        /// Why.
        error: cairn_configdb::Error,
    },
    /// A VM of the job cannot be resolved.
    #[error("VM {id}: {error}")]
    Vm {
        /// The VM's id.
        id: i64,
        /// Why.
        error: cairn_configdb::Error,
    },
    /// The host of a VM cannot be resolved.
    #[error("host of VM {vm}: {error}")]
    Host {
        /// The VM's name.
        vm: String,
        /// Why.
        error: cairn_configdb::Error,
    },
    /// The disks of a VM cannot be listed.
    #[error("disks of VM {vm}: {error}")]
    Disks {
        /// The VM's name.
        vm: String,
        /// Why.
        error: cairn_configdb::Error,
    },
    /// A disk's task row cannot be created.
    #[error("creating the task of disk {disk} of VM {vm}: {error}")]
    CreateTask {
        /// The disk's name.
        disk: String,
        /// The VM's name.
        vm: String,
        /// Why.
        error: cairn_configdb::Error,
    },
    /// The repository's password cannot be read.
    #[error("reading the password of repository {name} ({}): {error}", .path.display())]
    RepositoryPassword {
        /// The repository's name.
        name: String,
        /// The password file.
        path: std::path::PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The repository cannot be opened.
    #[error("opening repository {name}: {}", super::vm::error_chain(.error))]
    RepositoryOpen {
        /// The repository's name.
        name: String,
        /// Why.
        error: cairn_repo::error::RepoError,
    },
    /// Opening the repository ended with a panic.
    #[error("opening repository {name}: {error}")]
    RepositoryOpenAbnormal {
        /// The repository's name.
        name: String,
        /// Why.
        error: tokio::task::JoinError,
    },
    /// The repository agent could not tell a VM's previous restore point.
    #[error("repository agent {agent} could not tell the previous restore point of {vm}: {error}")]
    PreviousPoint {
        /// The agent's name.
        agent: String,
        /// The VM.
        vm: String,
        /// What the agent said.
        error: String,
    },
    /// The repository agent did not tell a VM's previous restore point in time.
    #[error("repository agent {agent} did not tell the previous restore point of {vm} within {secs} s")]
    PreviousPointTimeout {
        /// The agent's name.
        agent: String,
        /// The VM.
        vm: String,
        /// The time it had.
        secs: u64,
    },
    /// A running VM's view could not be made, or one of its disks not read (`disk` then).
    #[error("{text}")]
    LiveView {
        /// The disk at fault, if one is.
        disk: Option<usize>,
        /// What went wrong.
        text: String,
    },
    /// Opening a running VM's view ended with a panic.
    #[error("opening the view ended abnormally: {0}")]
    LiveViewAbnormal(tokio::task::JoinError),
}
