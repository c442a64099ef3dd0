//! `cairn retain`.

use std::process::ExitCode;

use cairn_repo::retention::{self, RetainReport};

use crate::args::{Global, RetainArgs};
use crate::output::{self, bytes};

pub fn run(g: &Global, a: &RetainArgs) -> anyhow::Result<ExitCode> {
    let repo = super::open_repo(g, &a.repo)?;
    let (vms, broken): (Vec<String>, _) = match &a.vm {
        Some(vm) => (vec![vm.clone()], Vec::new()),
        None => {
            let (chains, broken) = super::split_chains(repo.list()?);
            (chains.into_iter().map(|c| c.vm).collect(), broken)
        }
    };
    for e in &broken {
        eprintln!("error: {e}; its retention was skipped (run `cairn verify`)");
    }
    let mut reports: Vec<RetainReport> = Vec::new();
    for vm in &vms {
        reports.push(retention::retain(&repo, vm, a.keep)?);
    }
    if g.json {
        output::json(&reports)?;
    } else {
        for r in &reports {
            println!(
                "VM {}: kept {} points, removed {}, merged into full {}, {} files deleted, {} reclaimed",
                r.vm,
                r.kept,
                r.removed.len(),
                r.merged_into_full.len(),
                r.files_deleted,
                bytes(r.reclaimed_bytes)
            );
            if let Some(n) = &r.note {
                println!("  note: {n}");
            }
            if r.reserve_released {
                println!(
                    "  note: the chain's space reserve was used to commit on a full disk; the next backup allocates it again"
                );
            }
        }
    }
    Ok(if broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
