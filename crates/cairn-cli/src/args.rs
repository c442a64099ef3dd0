//! Command-line arguments.

use std::path::PathBuf;

use cairn_disk::Format;
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
    /// Restore one disk of a restore point to a new image (raw, qcow2, vhdx, vhd).
    Restore(RestoreArgs),
    /// Health check: read every stored block back and check it (exit code 1 on damage).
    Verify(VerifyArgs),
    /// Apply retention: keep the newest N restore points.
    Retain(RetainArgs),
    /// Inspect disk images (raw, qcow2, VHDX, VHD) without a repository.
    #[command(subcommand)]
    Disk(DiskCommand),
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
    /// Output file (must not exist).
    #[arg(long)]
    pub to: PathBuf,
    /// Image format to write: raw (sparse), qcow2 (v3), vhdx (dynamic) or vhd (dynamic).
    #[arg(long, default_value = "raw")]
    pub format: Format,
    /// Logical sector size of a VHDX: 512 or 4096 (default: the source's).
    #[arg(long, value_name = "BYTES")]
    pub sector_size: Option<u32>,
    /// VHDX block size or qcow2 cluster size (default 32M for VHDX, 64K for qcow2).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub image_block_size: Option<u32>,
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
