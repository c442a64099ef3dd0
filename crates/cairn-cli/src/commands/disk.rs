//! `cairn disk`: inspect images without a repository.

use std::process::ExitCode;

use cairn_disk::image::{Fill, Image, MapEntry};
use cairn_disk::{DiskSource, Extent, SectorSizes};
use serde::Serialize;

use crate::args::{DiskCommand, Global};
use crate::output::{self, bytes};

#[derive(Serialize)]
struct LayerInfo {
    file: String,
    format: String,
    virtual_size: u64,
    sector_sizes: SectorSizes,
    details: Vec<(String, String)>,
}

#[derive(Serialize)]
struct Info {
    virtual_size: u64,
    sector_sizes: SectorSizes,
    /// The file given first, then its parents down to the base.
    layers: Vec<LayerInfo>,
    data_bytes: u64,
    zero_bytes: u64,
    unallocated_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    map: Option<Vec<MapEntry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<Vec<Extent>>,
}

pub fn run(g: &Global, c: &DiskCommand) -> anyhow::Result<ExitCode> {
    match c {
        DiskCommand::Info { file, map, changed } => info(g, file, *map, *changed),
        DiskCommand::ReplayLog { file } => {
            let replayed = cairn_disk::vhdx::replay_log_in_place(file)?;
            if g.json {
                output::json(&serde_json::json!({ "file": file, "replayed": replayed }))?;
            } else if replayed {
                println!("{}: log replayed into the file", file.display());
            } else {
                println!("{}: the log was empty; nothing to do", file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn info(g: &Global, file: &std::path::Path, want_map: bool, want_changed: bool) -> anyhow::Result<ExitCode> {
    let image = Image::open(file)?;
    let entries = image.map()?;
    let sum = |fill: Fill| entries.iter().filter(|e| e.fill == fill).map(|e| e.length).sum::<u64>();
    let info = Info {
        virtual_size: image.virtual_size(),
        sector_sizes: image.sector_sizes(),
        layers: image
            .layers()
            .iter()
            .map(|l| LayerInfo {
                file: l.file().path().display().to_string(),
                format: l.format().to_string(),
                virtual_size: l.virtual_size(),
                sector_sizes: l.sector_sizes(),
                details: l.details(),
            })
            .collect(),
        data_bytes: sum(Fill::Data),
        zero_bytes: sum(Fill::Zero),
        unallocated_bytes: sum(Fill::Unallocated),
        changed: if want_changed { image.changed_extents()? } else { None },
        map: want_map.then_some(entries),
    };
    if g.json {
        output::json(&info)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "virtual size {} ({} bytes), sectors {}/{} (logical/physical)",
        bytes(info.virtual_size),
        info.virtual_size,
        info.sector_sizes.logical,
        info.sector_sizes.physical
    );
    for (i, l) in info.layers.iter().enumerate() {
        let role = if i == 0 { "file" } else { "parent" };
        println!("{role:>6}: {} ({}, {})", l.file, l.format, bytes(l.virtual_size));
        for (k, v) in &l.details {
            println!("          {k}: {v}");
        }
    }
    println!(
        "data {}, zero {}, unallocated {}",
        bytes(info.data_bytes),
        bytes(info.zero_bytes),
        bytes(info.unallocated_bytes)
    );
    if let Some(map) = &info.map {
        println!("{:>16} {:>16}  fill", "offset", "length");
        for e in map {
            let layer = e.layer.map(|l| format!(" (layer {l})")).unwrap_or_default();
            println!("{:>16} {:>16}  {:?}{layer}", e.offset, e.length, e.fill);
        }
    }
    if let Some(changed) = &info.changed {
        let total: u64 = changed.iter().map(|e| e.length).sum();
        println!("changed by the child: {} in {} extents", bytes(total), changed.len());
        for e in changed {
            println!("{:>16} {:>16}", e.offset, e.length);
        }
    }
    Ok(ExitCode::SUCCESS)
}
