//! Command-line arguments.

use std::path::PathBuf;

use cairn_format::codec::Compression;
use cairn_repo::{Encryption, FullKind, Method};
use clap::{Args, Parser, Subcommand};

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
    /// Restore one disk of a restore point to a sparse raw file.
    Restore(RestoreArgs),
    /// Health check: read every stored block back and check it (exit code 1 on damage).
    Verify(VerifyArgs),
    /// Apply retention: keep the newest N restore points.
    Retain(RetainArgs),
}

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Create a new repository in an empty or absent folder.
    Init {
        /// Repository folder.
        path: PathBuf,
        /// Encryption of blocks and metadata.
        #[arg(long, default_value = "none", value_parser = clap::value_parser!(Encryption))]
        encryption: Encryption,
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
    /// Disk images, in disk order (disk 0 first).
    #[arg(required = true)]
    pub disks: Vec<PathBuf>,
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
    #[arg(long)]
    pub repo: PathBuf,
    /// Only this VM.
    #[arg(long)]
    pub vm: Option<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Repository folder.
    #[arg(long)]
    pub repo: PathBuf,
    /// VM name.
    #[arg(long)]
    pub vm: String,
    /// Restore point: `latest`, an id or a unique id prefix.
    #[arg(long, default_value = "latest")]
    pub point: String,
    /// Disk number.
    #[arg(long, default_value_t = 0)]
    pub disk: u32,
    /// Output file (must not exist); written as a sparse raw image.
    #[arg(long)]
    pub to: PathBuf,
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
