//! Arguments of `cairn job …`: backup jobs.

use cairn_format::codec::Compression;
use clap::{Args, Subcommand};

use super::parse::{parse_block_size, parse_duration};

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

/// `cairn job …`.
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
