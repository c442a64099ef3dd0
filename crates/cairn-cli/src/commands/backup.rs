//! `cairn backup`.

use std::process::ExitCode;

use anyhow::{Context, bail};
use cairn_disk::extent;
use cairn_disk::image::{Image, OpenOptions};
use cairn_engine::{BackupOptions, DiskInput};
use cairn_repo::{BackupPlan, PointMeta, SessionKind};
use serde::Serialize;

use crate::args::{BackupArgs, Global};
use crate::output::{self, bytes};

#[derive(Serialize)]
struct BackupOutput<'a> {
    vm: &'a str,
    session: &'static str,
    point: &'a PointMeta,
    notes: &'a [String],
}

pub fn run(g: &Global, a: &BackupArgs) -> anyhow::Result<ExitCode> {
    let repo = super::open_repo(g, &a.repo)?;
    let mut inputs: Vec<DiskInput> = Vec::new();
    let open = OpenOptions {
        format: a.source_format,
        no_parents: false,
    };
    for path in &a.disks {
        let image = Image::open_with(path, &open)?;
        // A differencing child holds exactly what changed since its parent
        // was frozen; the engine uses that only if the previous point was
        // read from that parent.
        let changed = if a.merged { None } else { image.changed_extents()? };
        let changed_since = changed.as_ref().and_then(|_| image.parent_identity());
        inputs.push(DiskInput {
            source: Box::new(image),
            changed,
            changed_since,
        });
    }
    for spec in &a.cbt {
        let (disk, file) = spec
            .split_once('=')
            .with_context(|| format!("--cbt {spec:?}: expected DISK=FILE"))?;
        let disk: usize = disk.parse().with_context(|| format!("--cbt {spec:?}: disk number"))?;
        let Some(input) = inputs.get_mut(disk) else {
            bail!("--cbt {spec:?}: there is no disk {disk} ({} given)", inputs.len());
        };
        let text = std::fs::read_to_string(file).with_context(|| format!("reading changed extents {file}"))?;
        input.changed = Some(extent::parse_list(&text, file, input.source.virtual_size())?);
        input.changed_since = None;
    }
    let plan = BackupPlan {
        vm: a.vm.clone(),
        block_size: a.block_size,
        method: a.method,
        full_every: a.full_every,
        full_kind: a.full_kind,
        force_full: a.full,
        vm_config: None,
    };
    let mut opts = BackupOptions {
        compression: a.compression,
        ..BackupOptions::default()
    };
    if let Some(t) = a.threads {
        opts.threads = t.max(1);
    }
    let bar = output::progress_bar(!g.json && !g.quiet, "backup");
    let result = cairn_engine::backup(&repo, &plan, inputs, &opts, &|p| {
        bar.set_length(p.total_bytes);
        bar.set_position(p.done_bytes);
    });
    bar.finish_and_clear();
    let result = result?;
    if !g.json && !g.quiet {
        for note in &result.notes {
            eprintln!("note: {note}");
        }
    }
    let session = match result.kind {
        SessionKind::ActiveFull => "full",
        SessionKind::SyntheticFull => "synthetic-full",
        SessionKind::Incremental => "incremental",
    };
    let p = &result.point;
    if g.json {
        output::json(&BackupOutput {
            vm: &a.vm,
            session,
            point: p,
            notes: &result.notes,
        })?;
    } else {
        let s = &p.stats;
        let rate = s.read_bytes as f64 / s.duration_secs.max(1e-9);
        println!("restore point {} of {} ({session}) at {}", p.id, a.vm, p.time);
        println!(
            "  read {} in {:.2} s ({}/s); stored {} new blocks ({} → {})",
            bytes(s.read_bytes),
            s.duration_secs,
            bytes(rate as u64),
            s.new_blocks,
            bytes(s.new_bytes),
            bytes(s.stored_bytes)
        );
        println!(
            "  skipped: {} zero, {} unchanged, {} duplicate blocks",
            s.zero_blocks, s.unchanged_blocks, s.dedup_blocks
        );
        let busy: Vec<String> = s.busy.iter().map(|(n, v)| format!("{n} {v:.0}%")).collect();
        println!("  busy: {}; bottleneck: {}", busy.join(", "), s.bottleneck);
    }
    Ok(ExitCode::SUCCESS)
}
