//! `cairn restore`.

use std::process::ExitCode;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use cairn_disk::image::{Image, OpenOptions};
use cairn_disk::{DiskSource, Format};
use cairn_engine::{RestoreStats, RestoreTarget};
use serde::Serialize;

use crate::args::{Global, RestoreArgs};
use crate::output::{self, bytes};

/// Mode of a restored image unless `--file-mode` says otherwise: the guest's
/// data is readable by its owner only.
const DEFAULT_FILE_MODE: u32 = 0o600;

#[derive(Serialize)]
struct RestoreOutput<'a> {
    #[serde(flatten)]
    stats: &'a RestoreStats,
    /// The image's own virtual size (the disk's, rounded up where the format needs it).
    image_size: u64,
    /// Permissions of the new file.
    file_mode: String,
    notes: Vec<String>,
}

pub fn run(g: &Global, a: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let path = a.repo.as_deref().context("--repo or --repository is needed")?;
    let repo = super::open_repo(g, path)?;
    let bar = output::progress_bar(!g.json && !g.quiet, "restore");
    let target = RestoreTarget {
        format: a.format,
        logical_sector: a.sector_size,
        block_size: a.image_block_size,
    };
    let (vm, to) = required(a)?;
    let result = cairn_engine::restore(&repo, vm, &a.point, a.disk, to, &target, &|p| {
        bar.set_length(p.total_bytes);
        bar.set_position(p.done_bytes);
    });
    bar.finish_and_clear();
    let stats = result?;
    let mode = a.file_mode.unwrap_or(DEFAULT_FILE_MODE);
    if let Err(e) = std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)) {
        let _ = std::fs::remove_file(to);
        return Err(e)
            .with_context(|| format!("{}: setting permissions {mode:o} (the image was removed)", to.display()));
    }
    let image_size = image_size(to, a.format, stats.virtual_size)?;
    let mut notes = Vec::new();
    if image_size != stats.virtual_size {
        notes.push(format!(
            "the {} image is {} bytes: the disk's {} bytes rounded up {}; the added bytes read as zeros",
            a.format,
            image_size,
            stats.virtual_size,
            match a.format {
                Format::Vhd => "to a size its CHS geometry describes exactly, so every VHD reader sees the same size",
                _ => "to whole sectors, as the format needs",
            }
        ));
    }
    if g.json {
        output::json(&RestoreOutput {
            stats: &stats,
            image_size,
            file_mode: format!("{mode:o}"),
            notes,
        })?;
    } else {
        println!(
            "restored disk {} of {} point {} to {} ({}): {} virtual, {} written in {:.2} s",
            stats.disk,
            stats.vm,
            stats.point,
            to.display(),
            stats.format,
            bytes(stats.virtual_size),
            bytes(stats.written_bytes),
            stats.duration_secs
        );
        if !g.quiet {
            for note in &notes {
                eprintln!("note: {note}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The virtual size of the restored image as its format records it.
fn image_size(to: &Path, format: Format, disk_size: u64) -> anyhow::Result<u64> {
    if format == Format::Raw {
        return Ok(disk_size);
    }
    let opts = OpenOptions {
        format: Some(format),
        no_parents: true,
    };
    Ok(Image::open_with(to, &opts)
        .with_context(|| format!("reading back the restored image {}", to.display()))?
        .virtual_size())
}

/// `--vm` and `--to` of a one-disk restore (clap requires them unless `restore vm` is used).
pub(crate) fn required(a: &RestoreArgs) -> anyhow::Result<(&str, &std::path::Path)> {
    match (&a.vm, &a.to) {
        (Some(vm), Some(to)) => Ok((vm, to)),
        _ => anyhow::bail!("a disk restore needs --vm and --to (or use `cairn restore vm VM` for a whole VM)"),
    }
}
