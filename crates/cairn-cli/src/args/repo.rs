//! Arguments of the commands on a repository folder: `cairn repo …`, `cairn points`,
//! `cairn verify` and `cairn retain`.

use std::path::PathBuf;

use cairn_repo::Encryption;
use clap::{Args, Subcommand};

/// `cairn repo …`.
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

/// `cairn points`.
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

/// `cairn verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Repository folder.
    #[arg(long)]
    pub repo: PathBuf,
    /// Only this VM.
    #[arg(long)]
    pub vm: Option<String>,
}

/// `cairn retain`.
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
