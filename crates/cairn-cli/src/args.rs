//! Command-line arguments.

use std::path::PathBuf;

use cairn_disk::Format;
use cairn_format::codec::Compression;
use cairn_repo::{Encryption, FullKind, Method};
use clap::{Args, Parser, Subcommand};

mod agents;
mod live;

pub use agents::{AgentArgs, AgentCommand, AgentRunArgs, ThrottleCommand};
pub use live::{HostCommand, HostKind, InstantCommand, RestoreVmArgs, RestoreWhole, VmCommand};

/// Image-level backup of virtual machine disks.
#[derive(Parser, Debug)]
#[command(name = "cairn", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
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
    Totp(crate::commands::totp::TotpCommand),
    /// Read the audit log and check that it is intact (administrator).
    #[command(subcommand)]
    Audit(crate::commands::audit::AuditCommand),
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

#[derive(Subcommand, Debug)]
pub enum DiskCommand {
    /// Format, sizes, parent chain and allocation of an image.
    Info {
        /// Image file (the format is detected from its content).
        file: PathBuf,
        /// Also list the allocation map (data, zero and unallocated extents).
        #[arg(long)]
        map: bool,
        /// For a differencing child, list the extents it changed.
        #[arg(long)]
        changed: bool,
    },
    /// Read every allocated byte of an image (through its parents) and report
    /// the throughput: checks that a disk can be backed up.
    Check {
        /// Image file.
        file: PathBuf,
    },
    /// Convert an image (with its parents merged) to a new image file.
    Convert {
        /// Image file to read.
        file: PathBuf,
        /// New image file (must not exist).
        #[arg(long)]
        to: PathBuf,
        /// Format to write: raw, qcow2, vhdx or vhd.
        #[arg(long, default_value = "raw")]
        format: Format,
        /// Logical sector size of a VHDX: 512 or 4096 (default: the source's).
        #[arg(long, value_name = "BYTES")]
        sector_size: Option<u32>,
        /// VHDX block size or qcow2 cluster size.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        image_block_size: Option<u32>,
    },
    /// Apply a VHDX file's pending log to the file itself (reads replay it
    /// in memory without this; run it only on a copy or a disk no host uses).
    ReplayLog {
        /// VHDX file.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Create a new repository in an empty or absent folder.
    Init {
        /// Repository folder.
        path: PathBuf,
        /// Encryption of blocks and metadata: aes-256-gcm (the default; the password
        /// comes from --password-file or CAIRN_PASSWORD, else it is asked twice on the
        /// terminal) or none.
        #[arg(long, default_value = "aes-256-gcm", value_parser = clap::value_parser!(Encryption))]
        encryption: Encryption,
    },
    /// Remove the restore points that damage made unrestorable (as `cairn verify`
    /// finds them), so the rest of each chain works again; never removes a point
    /// that can be restored.
    Repair {
        /// Repository folder.
        #[arg(long)]
        repo: PathBuf,
        /// Only this VM.
        #[arg(long)]
        vm: Option<String>,
        /// Only say what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Repository folder.
    #[arg(long)]
    pub repo: PathBuf,
    /// Name of the VM the disks belong to.
    #[arg(long)]
    pub vm: String,
    /// Disk images (raw, qcow2, VHDX, VHD: detected from content), in disk
    /// order (disk 0 first). A differencing child (VHDX .avhdx, qcow2 overlay,
    /// VHD differencing) is backed up as the disk its guest sees; when the
    /// previous restore point was read from the child's parent, only the
    /// blocks the child holds are read.
    #[arg(required = true)]
    pub disks: Vec<PathBuf>,
    /// Read differencing children's whole merged view (every layer) instead
    /// of only the blocks the child holds.
    #[arg(long)]
    pub merged: bool,
    /// Format of the disk files, instead of detecting it from their content.
    #[arg(long, value_name = "FORMAT")]
    pub source_format: Option<Format>,
    /// Block size: 256K, 512K, 1M or 4M (fixed once a VM's chain exists).
    #[arg(long, default_value = "1M", value_parser = parse_block_size)]
    pub block_size: u32,
    /// Compression: none, lz4, zstd:LEVEL.
    #[arg(long, default_value_t = Compression::DEFAULT, value_parser = clap::value_parser!(Compression))]
    pub compression: Compression,
    /// Backup method: forever-forward or forward.
    #[arg(long, default_value = "forever-forward", value_parser = clap::value_parser!(Method))]
    pub method: Method,
    /// Forward method: a new full every N restore points.
    #[arg(long, value_name = "N")]
    pub full_every: Option<u32>,
    /// How periodic fulls are made: synthetic or active.
    #[arg(long, default_value = "synthetic", value_parser = clap::value_parser!(FullKind))]
    pub full_kind: FullKind,
    /// Make an active full now (read every block from the source).
    #[arg(long)]
    pub full: bool,
    /// Changed extents of a disk since the previous point (CBT): `DISK=FILE`,
    /// FILE holding `OFFSET LENGTH` lines in bytes.
    #[arg(long, value_name = "DISK=FILE")]
    pub cbt: Vec<String>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Args, Debug)]
pub struct PointsArgs {
    /// Repository folder.
    #[arg(long, required_unless_present = "repository", conflicts_with = "repository")]
    pub repo: Option<PathBuf>,
    /// Repository of the backup server (by name) instead of a folder.
    #[arg(long, value_name = "NAME")]
    pub repository: Option<String>,
    /// Only this VM.
    #[arg(long)]
    pub vm: Option<String>,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RestoreArgs {
    /// Restore a whole VM instead of one disk.
    #[command(subcommand)]
    pub whole: Option<RestoreWhole>,
    /// Repository folder.
    #[arg(long, required_unless_present = "repository", conflicts_with = "repository")]
    pub repo: Option<PathBuf>,
    /// Repository of the backup server (by name) instead of a folder: the server restores,
    /// and `--to` is a path on the server's machine.
    #[arg(long, value_name = "NAME")]
    pub repository: Option<String>,
    /// VM name (on a server repository `HOST/VM`, or the VM's name alone when unique).
    #[arg(long, required = true)]
    pub vm: Option<String>,
    /// Restore point: `latest`, an id or a unique id prefix.
    #[arg(long, default_value = "latest")]
    pub point: String,
    /// Disk number.
    #[arg(long, default_value_t = 0)]
    pub disk: u32,
    /// Output file (must not exist).
    #[arg(long, required = true)]
    pub to: Option<PathBuf>,
    /// Image format to write: raw (sparse), qcow2 (v3), vhdx (dynamic) or vhd (dynamic).
    #[arg(long, default_value = "raw")]
    pub format: Format,
    /// Logical sector size of a VHDX: 512 or 4096 (default: the source's).
    #[arg(long, value_name = "BYTES")]
    pub sector_size: Option<u32>,
    /// VHDX block size or qcow2 cluster size (default 32M for VHDX, 64K for qcow2).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub image_block_size: Option<u32>,
    /// Permissions of the new image, in octal (default 600: only its owner can
    /// read the guest's data); setuid, setgid and sticky bits are refused.
    #[arg(long, value_name = "OCTAL", value_parser = parse_file_mode)]
    pub file_mode: Option<u32>,
}

/// Parses permission bits in octal (`640`, `0640`, `0o640`): read, write and
/// execute bits only.
pub fn parse_file_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode =
        u32::from_str_radix(digits, 8).map_err(|_| format!("{s:?} is not an octal file mode such as 600 or 0640"))?;
    if mode & 0o7000 != 0 {
        return Err(format!(
            "{s}: setuid, setgid and sticky bits are refused for a restored image (use read/write/execute bits, e.g. 640)"
        ));
    }
    if mode > 0o777 {
        return Err(format!("{s} is not a file mode (at most 777)"));
    }
    Ok(mode)
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Repository folder.
    #[arg(long)]
    pub repo: PathBuf,
    /// Only this VM.
    #[arg(long)]
    pub vm: Option<String>,
}

#[derive(Args, Debug)]
pub struct RetainArgs {
    /// Repository folder.
    #[arg(long)]
    pub repo: PathBuf,
    /// VM name (default: every VM in the repository).
    #[arg(long)]
    pub vm: Option<String>,
    /// Number of restore points to keep.
    #[arg(long)]
    pub keep: usize,
}

/// Parses a size with an optional K or M suffix (powers of two).
pub fn parse_size(s: &str) -> Result<u32, String> {
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        _ => (s, 0),
    };
    num.parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size (e.g. 64K, 32M)"))
}

/// Parses `256K`, `1M`, `4M` or a byte count.
pub fn parse_block_size(s: &str) -> Result<u32, String> {
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u32 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1u32 << 20),
        _ => (s, 1),
    };
    let n: u32 = num.parse().map_err(|_| format!("invalid block size {s:?}"))?;
    let v = n
        .checked_mul(mul)
        .ok_or_else(|| format!("block size {s:?} too large"))?;
    if cairn_format::index::BLOCK_SIZES.contains(&v) {
        Ok(v)
    } else {
        Err(format!("block size {s:?} is not one of 256K, 512K, 1M, 4M"))
    }
}

// ------------------------------------------------------------ backup server commands

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Data folder: configuration database (SQLite), CA and certificate, secrets.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8520")]
    pub listen: std::net::SocketAddr,
    /// `postgres://…` to keep the configuration in PostgreSQL instead of SQLite.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Where to create the default repository on first start (default: the volume with the
    /// most free space).
    #[arg(long, value_name = "PATH")]
    pub default_repository: Option<PathBuf>,
    /// Time zone of schedules that name none (IANA name; default: the system's).
    #[arg(long, value_name = "TZ")]
    pub time_zone: Option<String>,
    /// Extra DNS name or IP address for the server's certificate (repeatable).
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Seconds between agents' heartbeats; an agent silent for three of them is lost and its
    /// running tasks fail (and are retried).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub agent_heartbeat: u64,
    /// Parallel TCP streams per data transfer between data movers (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub streams: u16,
    /// Restore folder set on first start (repeatable; default: DATA-restore beside the data
    /// folder): restores are written only beneath these. Change them later with `cairn settings
    /// --restore-folder`.
    #[arg(long = "restore-folder", value_name = "DIR")]
    pub restore_folders: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Server URL, e.g. https://backup.example:8520.
    pub url: String,
    /// User name.
    #[arg(long, default_value = "admin")]
    pub user: String,
    /// Read the password from the first line of standard input (else it is asked for on the
    /// terminal).
    #[arg(long)]
    pub password_stdin: bool,
    /// The current code of the authenticator app, when the user has a second factor (else it is
    /// asked for on the terminal when needed).
    #[arg(long, value_name = "CODE")]
    pub totp_code: Option<String>,
}

/// `cairn password`.
#[derive(Args, Debug)]
pub struct PasswordArgs {
    /// Read the current password and then the new one from two lines of standard input (else
    /// they are asked for on the terminal).
    #[arg(long)]
    pub password_stdin: bool,
}

/// A role of a user.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Administrator,
    /// Read everything and restore.
    RestoreOperator,
    /// Read only.
    Viewer,
}

impl Role {
    /// The name the API uses.
    pub fn name(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::RestoreOperator => "restore-operator",
            Role::Viewer => "viewer",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user.
    Add {
        /// User name.
        name: String,
        /// Role.
        #[arg(long, value_enum)]
        role: Role,
        /// Read the password from standard input (else it is asked for twice on the terminal).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Change a user's role or password.
    Set {
        /// User name.
        name: String,
        /// New role.
        #[arg(long, value_enum)]
        role: Option<Role>,
        /// Read a new password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user.
    Remove {
        /// User name.
        name: String,
    },
    /// Remove a user's second factor (a lost phone); the user's logins end.
    ResetTotp {
        /// User name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an API token for yourself (printed once).
    Create {
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Days until the token expires (default: never).
        #[arg(long, value_name = "N")]
        expires_days: Option<u32>,
    },
    /// List your tokens (without their secrets).
    List,
    /// Delete one of your tokens.
    Remove {
        /// Token id (see `cairn token list`).
        id: i64,
    },
}

/// Encryption of a server repository.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoEncryption {
    /// AES-256-GCM with a password.
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    /// No encryption.
    None,
}

#[derive(Subcommand, Debug)]
pub enum RepositoryCommand {
    /// Add a repository (creates it in the folder, or adopts a cairn repository there).
    Add {
        /// Repository name.
        name: String,
        /// Folder on the server's machine.
        #[arg(long)]
        path: PathBuf,
        /// Encryption.
        #[arg(long, value_enum, default_value = "aes-256-gcm")]
        encryption: RepoEncryption,
        /// Read the password from standard input (default: --password-file, CAIRN_PASSWORD,
        /// else the server makes one up and keeps it).
        #[arg(long)]
        password_stdin: bool,
        /// Concurrent tasks.
        #[arg(long, value_name = "N")]
        max_tasks: Option<u32>,
        /// Read limit per second, e.g. 100MiB (0 or none: unlimited).
        #[arg(long, value_name = "RATE", value_parser = parse_rate)]
        read_limit: Option<u64>,
        /// Write limit per second, e.g. 100MiB (0 or none: unlimited).
        #[arg(long, value_name = "RATE", value_parser = parse_rate)]
        write_limit: Option<u64>,
        /// Both the read and the write limit, e.g. 200MB/s.
        #[arg(long, value_name = "RATE", value_parser = parse_rate, conflicts_with_all = ["read_limit", "write_limit"])]
        rate: Option<u64>,
        /// The repository agent that owns the folder (the path is on that agent's host, and
        /// only that agent writes to it).
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
    },
    /// List repositories.
    List,
    /// Change a repository's task slots or rate limits.
    Set {
        /// Repository name.
        name: String,
        /// Concurrent tasks.
        #[arg(long, value_name = "N")]
        max_tasks: Option<u32>,
        /// Read limit per second, e.g. 100MiB (0 or none: unlimited).
        #[arg(long, value_name = "RATE", value_parser = parse_rate)]
        read_limit: Option<u64>,
        /// Write limit per second, e.g. 100MiB (0 or none: unlimited).
        #[arg(long, value_name = "RATE", value_parser = parse_rate)]
        write_limit: Option<u64>,
    },
    /// Remove a repository from the server (its files stay on disk).
    Remove {
        /// Repository name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProxyCommand {
    /// List proxies with their task slots.
    List,
    /// Change a proxy's task slots.
    Set {
        /// Proxy name.
        name: String,
        /// Concurrent tasks.
        #[arg(long, value_name = "N")]
        max_tasks: u32,
    },
}

#[derive(Args, Debug)]
pub struct SettingsArgs {
    /// Process VMs and disks in parallel (off: one by one).
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub parallel_processing: Option<bool>,
    /// Set the restore folders (repeatable; replaces the list): restores, restored VMs and
    /// migrations are written only beneath these folders.
    #[arg(long = "restore-folder", value_name = "DIR")]
    pub restore_folders: Vec<PathBuf>,
    /// Require administrators to log in with a second factor (TOTP).
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub require_totp_for_admins: Option<bool>,
}

/// Settings of a job; each is optional so `job edit` changes only what is given.
#[derive(Args, Debug, Default)]
pub struct JobFlags {
    /// VMs to back up: NAME, or HOST/VM when the name is on several hosts (repeatable).
    #[arg(long = "vm", value_name = "VM", num_args = 1..)]
    pub vms: Vec<String>,
    /// A disk to leave out, as VM:DISKNAME (repeatable).
    #[arg(long = "exclude-disk", value_name = "VM:DISK")]
    pub exclude_disks: Vec<String>,
    /// Repository name (`job create` default: the server's default repository).
    #[arg(long, value_name = "NAME")]
    pub repository: Option<String>,
    /// Schedule, e.g. "daily 22:00", "weekly sat 03:00", "every 4h", "after JOB" (none: manual).
    #[arg(long, value_name = "TEXT")]
    pub schedule: Option<String>,
    /// Backup window, e.g. "mon-fri 20:00-06:00" (none: always).
    #[arg(long, value_name = "TEXT")]
    pub window: Option<String>,
    /// Restore points to keep.
    #[arg(long, value_name = "N")]
    pub retain: Option<u32>,
    /// Block size: 256K, 512K, 1M or 4M.
    #[arg(long, value_parser = parse_block_size)]
    pub block_size: Option<u32>,
    /// Compression: none, lz4, zstd:LEVEL.
    #[arg(long, value_parser = clap::value_parser!(Compression))]
    pub compression: Option<Compression>,
    /// Backup method.
    #[arg(long, value_parser = ["forever-forward", "forward"])]
    pub method: Option<String>,
    /// Retries of a failed VM.
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Wait between retries, e.g. 10m, 30s, 1h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub retry_wait: Option<u64>,
    /// Create the job disabled (its schedule does not start it).
    #[arg(long)]
    pub disabled: bool,
    /// Point-in-time view of running VMs: online (freeze through the guest agent, else
    /// crash-consistent with a warning), offline (freeze, else pause the VM) or crash.
    #[arg(long, value_parser = ["online", "offline", "crash"])]
    pub consistency: Option<String>,
    /// Fail a VM whose guest cannot be frozen instead of falling back (`--require-app-consistency`,
    /// or `--require-app-consistency=false` to turn it off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub require_app_consistency: Option<bool>,
    /// Command run in the guest (through its agent) before the freeze; `none` removes it.
    #[arg(long, value_name = "COMMAND")]
    pub pre_freeze: Option<String>,
    /// Command run in the guest after the thaw; `none` removes it.
    #[arg(long, value_name = "COMMAND")]
    pub post_thaw: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Create a job.
    Create {
        /// Job name.
        name: String,
        #[command(flatten)]
        flags: JobFlags,
    },
    /// List jobs with their schedule, next run and last result.
    List,
    /// Show a job's settings.
    Show {
        /// Job name.
        name: String,
    },
    /// Change a job's settings (only the flags given).
    Edit {
        /// Job name.
        name: String,
        #[command(flatten)]
        flags: JobFlags,
    },
    /// Delete a job.
    Remove {
        /// Job name.
        name: String,
    },
    /// Let the job's schedule start it.
    Enable {
        /// Job name.
        name: String,
    },
    /// Keep the job's schedule from starting it.
    Disable {
        /// Job name.
        name: String,
    },
    /// Start a session of the job now.
    Run {
        /// Job name.
        name: String,
        /// Follow the session until it ends (exit code 0 success or warning, 1 failed, 3 stopped).
        #[arg(long)]
        wait: bool,
    },
    /// Stop the job's running session.
    Stop {
        /// Job name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// List sessions, newest first.
    List {
        /// Only the sessions of this job.
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// Sessions per page.
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Every session (all pages).
        #[arg(long)]
        all: bool,
    },
    /// Show a session: statistics, tasks and their logs.
    Show {
        /// Session id.
        id: i64,
    },
    /// Stop a running session.
    Stop {
        /// Session id.
        id: i64,
    },
}

/// Parses a rate per second: `100MiB`, `50M`, `1G`, `10MB` (decimal), a byte count; `0`,
/// `none` or `unlimited` give 0 (no limit). K/M/G/T and KiB/MiB/GiB/TiB are powers of two,
/// KB/MB/GB/TB powers of ten; a trailing `/s` is allowed.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    if t.eq_ignore_ascii_case("none") || t.eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let mul: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(format!("{s:?} is not a rate (e.g. 100MiB, 1G, 0 for unlimited)")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (e.g. 100MiB, 1G, 0 for unlimited)"))?;
    let v = n * mul;
    if !v.is_finite() || v >= u64::MAX as f64 / 2.0 {
        return Err(format!("rate {s:?} is too large"));
    }
    Ok(v.round() as u64)
}

/// Parses a duration in seconds: `600`, `30s`, `10m`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('h') => (&t[..t.len() - 1], 3600),
        Some('d') => (&t[..t.len() - 1], 86_400),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 30s, 10m, 2h)"))
}

/// Parses `on`/`off` (also true/false, yes/no).
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100MiB"), Ok(100 << 20));
        assert_eq!(parse_rate("100M/s"), Ok(100 << 20));
        assert_eq!(parse_rate("10MB"), Ok(10_000_000));
        assert_eq!(parse_rate("1.5G"), Ok(3 << 29));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("none"), Ok(0));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10 parsecs").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("45"), Ok(45));
        assert!(parse_duration("soon").is_err());
    }
}
