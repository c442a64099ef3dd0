//! `cairn points`.

use std::process::ExitCode;

use anyhow::Context;
use cairn_repo::{PointKind, PointMeta};
use serde::Serialize;

use crate::args::{Global, PointsArgs};
use crate::output::{self, bytes};

#[derive(Serialize)]
struct VmPoints<'a> {
    vm: &'a str,
    block_size: u32,
    method: cairn_repo::Method,
    points: &'a [PointMeta],
}

pub fn run(g: &Global, a: &PointsArgs) -> anyhow::Result<ExitCode> {
    let path = a.repo.as_deref().context("--repo or --repository is needed")?;
    let repo = super::open_repo(g, path)?;
    let (chains, broken) = match &a.vm {
        Some(vm) => (vec![repo.chain(vm)?.meta().clone()], Vec::new()),
        None => super::split_chains(repo.list()?),
    };
    for e in &broken {
        eprintln!("error: {e} (run `cairn verify`)");
    }
    let code = if broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if g.json {
        let out: Vec<VmPoints> = chains
            .iter()
            .map(|c| VmPoints {
                vm: &c.vm,
                block_size: c.block_size,
                method: c.method,
                points: &c.points,
            })
            .collect();
        output::json(&out)?;
        return Ok(code);
    }
    if chains.is_empty() && broken.is_empty() {
        println!("no restore points");
    }
    for c in &chains {
        println!(
            "VM {} ({} points, {} blocks)",
            c.vm,
            c.points.len(),
            bytes(c.block_size.into())
        );
        println!(
            "  {:<8}  {:<25}  {:<11}  {:>5}  {:>10}  {:>10}  {:>10}  {:>6}",
            "id", "time", "kind", "disks", "size", "read", "stored", "ratio"
        );
        for p in &c.points {
            let size: u64 = p.disks.iter().map(|d| d.blocks * u64::from(c.block_size)).sum();
            let s = &p.stats;
            let ratio = if s.stored_bytes == 0 {
                "-".to_string()
            } else {
                format!("{:.2}", s.new_bytes as f64 / s.stored_bytes as f64)
            };
            let kind = match p.kind {
                PointKind::Full => "full",
                PointKind::Incremental => "incremental",
            };
            let time: String = p.time.chars().take(25).collect();
            println!(
                "  {:<8}  {:<25}  {:<11}  {:>5}  {:>10}  {:>10}  {:>10}  {:>6}",
                p.id,
                time,
                kind,
                p.disks.len(),
                bytes(size),
                bytes(s.read_bytes),
                bytes(s.stored_bytes),
                ratio
            );
        }
    }
    Ok(code)
}
