//! Arguments of `cairn disk …`: disk images without a repository.

use std::path::PathBuf;

use cairn_disk::Format;
use clap::Subcommand;

use super::parse::parse_size;

/// `cairn disk …`.
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
