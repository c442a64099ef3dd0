//! Arguments of `cairn backup` and `cairn restore`.

use std::path::PathBuf;

use cairn_disk::Format;
use cairn_format::codec::Compression;
use cairn_repo::{FullKind, Method};
use clap::Args;

use super::RestoreWhole;
use super::parse::{parse_block_size, parse_file_mode, parse_size};

/// `cairn backup`.
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

/// `cairn restore` (one disk, or a whole VM with `cairn restore vm`).
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
