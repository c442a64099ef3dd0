//! `cairn restore`.

use std::process::ExitCode;

use anyhow::Context;
use cairn_engine::RestoreTarget;

use crate::args::{Global, RestoreArgs};
use crate::output::{self, bytes};

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
    if g.json {
        output::json(&stats)?;
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
    }
    Ok(ExitCode::SUCCESS)
}

/// `--vm` and `--to` of a one-disk restore (clap requires them unless `restore vm` is used).
pub(crate) fn required(a: &RestoreArgs) -> anyhow::Result<(&str, &std::path::Path)> {
    match (&a.vm, &a.to) {
        (Some(vm), Some(to)) => Ok((vm, to)),
        _ => anyhow::bail!("a disk restore needs --vm and --to (or use `cairn restore vm VM` for a whole VM)"),
    }
}
