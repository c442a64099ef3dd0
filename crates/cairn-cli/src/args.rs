//! Command-line arguments: the top-level [`Cli`], the [`Global`] flags and the [`Command`]
//! enum; the arguments of each command group live in a submodule beside it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod agents;
mod audit;
mod backup;
mod disk;
mod jobs;
mod live;
mod login;
mod parse;
mod repo;
mod repositories;
mod server;
mod sessions;
mod users;

pub use agents::{AgentArgs, AgentCommand, AgentRunArgs, ThrottleCommand};
pub use audit::AuditCommand;
pub use backup::{BackupArgs, RestoreArgs};
pub use disk::DiskCommand;
pub use jobs::{JobCommand, JobFlags};
pub use live::{HostCommand, HostKind, InstantCommand, RestoreVmArgs, RestoreWhole, VmCommand};
pub use login::{LoginArgs, PasswordArgs, TotpCommand};
pub use repo::{PointsArgs, RepoCommand, RetainArgs, VerifyArgs};
pub use repositories::{ProxyCommand, RepoEncryption, RepositoryCommand, SettingsArgs};
pub use server::ServerArgs;
pub use sessions::SessionCommand;
pub use users::{TokenCommand, UserCommand};

/// Image-level backup of virtual machine disks.
#[derive(Parser, Debug)]
#[command(name = "cairn", version, about, long_about = None)]
pub struct Cli {
    /// Flags every command takes.
    #[command(flatten)]
    pub global: Global,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Args, Debug)]
pub struct Global {
    /// Print machine-readable JSON instead of a human summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// Read the repository password from this file (else CAIRN_PASSWORD).
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Log what happens (CAIRN_LOG=debug for more).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// No progress bar.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Backup server for server commands (default: the one of `cairn login`).
    #[arg(long, global = true, env = "CAIRN_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// CA certificate (PEM) the server's certificate must chain to, e.g. DATA/ca.pem of the
    /// server (default: the one stored by `cairn login`, else the system's roots).
    #[arg(long, global = true, env = "CAIRN_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

/// The command to run.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create or inspect repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Back up the disks of a VM as a new restore point.
    Backup(BackupArgs),
    /// List restore points.
    Points(PointsArgs),
    /// Restore one disk of a restore point to a new image (raw, qcow2, vhdx, vhd).
    Restore(RestoreArgs),
    /// Health check: read every stored block back and check it (exit code 1 on damage).
    Verify(VerifyArgs),
    /// Apply retention: keep the newest N restore points.
    Retain(RetainArgs),
    /// Inspect disk images (raw, qcow2, VHDX, VHD) without a repository.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Run the backup server (API, scheduler, job manager) on a data folder.
    Server(ServerArgs),
    /// Log in to a backup server and remember the login for later commands.
    Login(LoginArgs),
    /// Log out of the backup server (the login token is deleted).
    Logout,
    /// Show who the stored login or CAIRN_TOKEN belongs to.
    Whoami,
    /// Change your own password (every other login of yours ends).
    Password(PasswordArgs),
    /// Set up or remove your second factor (TOTP).
    #[command(subcommand)]
    Totp(TotpCommand),
    /// Read the audit log and check that it is intact (administrator).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage the server's users (administrator).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage your API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage hosts (where VMs are found).
    #[command(subcommand)]
    Host(HostCommand),
    /// List VMs found on the hosts.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Manage the server's repositories.
    #[command(subcommand)]
    Repository(RepositoryCommand),
    /// Manage proxies (task slots).
    #[command(subcommand)]
    Proxy(ProxyCommand),
    /// Show or change the server's settings.
    Settings(SettingsArgs),
    /// Manage and run backup jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Run VMs straight from their backups, and move them to production storage.
    #[command(subcommand)]
    InstantRecovery(InstantCommand),
    /// Inspect and stop sessions (runs of jobs).
    #[command(subcommand)]
    Session(SessionCommand),
    /// Run an agent (data mover) on this host, or manage the server's agents.
    Agent(AgentArgs),
    /// Manage network throttling rules between data movers.
    #[command(subcommand)]
    Throttle(ThrottleCommand),
}
