//! `cairn disk`: inspect images without a repository.

use std::process::ExitCode;

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use cairn_disk::image::{Fill, Image, MapEntry};
use cairn_disk::writer::{self, WRITE_ALIGN};
use cairn_disk::{DiskSource, Extent, Format, SectorSizes, WriteOptions};
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
        DiskCommand::Check { file } => check(g, file),
        DiskCommand::Convert {
            file,
            to,
            format,
            sector_size,
            image_block_size,
        } => convert(g, file, to, *format, *sector_size, *image_block_size),
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

/// Chunk size for reading whole images: large reads, aligned for the writers.
const CHUNK: u64 = 1 << 20;

/// Calls `f(offset, bytes)` for every allocated chunk of `image`, in order.
/// Chunks are aligned to the writers' unit, so none splits a cluster.
fn for_each_chunk(image: &Image, mut f: impl FnMut(u64, &[u8]) -> anyhow::Result<()>) -> anyhow::Result<u64> {
    let size = image.virtual_size();
    let aligned = cairn_disk::extent::normalize(
        image
            .allocation()?
            .into_iter()
            .map(|e| {
                let start = e.offset / WRITE_ALIGN * WRITE_ALIGN;
                let end = e.end().div_ceil(WRITE_ALIGN).saturating_mul(WRITE_ALIGN).min(size);
                Extent {
                    offset: start,
                    length: end - start,
                }
            })
            .collect(),
    );
    let mut buf = cairn_disk::buf::AlignedBuf::new(CHUNK as usize);
    let mut total = 0u64;
    for e in aligned {
        let mut off = e.offset;
        while off < e.end() {
            let n = CHUNK.min(e.end() - off);
            image.read_at(&mut buf[..n as usize], off)?;
            f(off, &buf[..n as usize])?;
            total += n;
            off += n;
        }
    }
    Ok(total)
}

#[derive(Serialize)]
struct Transfer<'a> {
    file: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<Format>,
    virtual_size: u64,
    read_bytes: u64,
    duration_secs: f64,
}

fn report(g: &Global, t: &Transfer) -> anyhow::Result<ExitCode> {
    if g.json {
        output::json(t)?;
    } else {
        let rate = t.read_bytes as f64 / t.duration_secs.max(1e-9);
        let what = match (t.to, t.format) {
            (Some(to), Some(f)) => format!("converted to {} ({f})", to.display()),
            _ => "read".to_string(),
        };
        println!(
            "{}: {what}: {} of allocated data in {:.2} s ({}/s)",
            t.file.display(),
            bytes(t.read_bytes),
            t.duration_secs,
            bytes(rate as u64)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check(g: &Global, file: &Path) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let image = Image::open(file)?;
    let read = for_each_chunk(&image, |_, _| Ok(()))?;
    report(
        g,
        &Transfer {
            file,
            to: None,
            format: None,
            virtual_size: image.virtual_size(),
            read_bytes: read,
            duration_secs: started.elapsed().as_secs_f64(),
        },
    )
}

fn convert(
    g: &Global,
    file: &Path,
    to: &Path,
    format: Format,
    sector_size: Option<u32>,
    block_size: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let image = Image::open(file)?;
    let sectors = image.sector_sizes();
    let logical = sector_size.unwrap_or(sectors.logical);
    let opts = WriteOptions {
        logical_sector: logical,
        physical_sector: sectors.physical.max(logical),
        block_size,
    };
    let out = writer::create(format, to, image.virtual_size(), &opts)?;
    let result = for_each_chunk(&image, |off, data| Ok(out.write_at(data, off)?));
    let result = result.and_then(|n| {
        out.finish().with_context(|| format!("finishing {}", to.display()))?;
        Ok(n)
    });
    let read = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(to);
            return Err(e);
        }
    };
    report(
        g,
        &Transfer {
            file,
            to: Some(to),
            format: Some(format),
            virtual_size: image.virtual_size(),
            read_bytes: read,
            duration_secs: started.elapsed().as_secs_f64(),
        },
    )
}
