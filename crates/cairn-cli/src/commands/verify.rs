//! `cairn verify`.

use std::process::ExitCode;

use crate::args::{Global, VerifyArgs};
use crate::output::{self, bytes};

pub fn run(g: &Global, a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let repo = super::open_repo(g, &a.repo)?;
    let bar = output::progress_bar(!g.json && !g.quiet, "verify");
    let report = cairn_repo::verify::verify(&repo, a.vm.as_deref(), &|n| bar.inc(n));
    bar.finish_and_clear();
    let report = report?;
    if g.json {
        output::json(&report)?;
    } else {
        for c in &report.chains {
            let name =
                c.vm.clone()
                    .unwrap_or_else(|| format!("(unreadable chain {})", c.dir.display()));
            println!(
                "VM {name}: {} ({} points, {} records, {} checked)",
                if c.ok { "ok" } else { "DAMAGED" },
                c.points.len(),
                c.records_checked,
                bytes(c.bytes_checked)
            );
            for p in &c.problems {
                println!("  {p}");
            }
            for p in c.points.iter().filter(|p| !p.ok) {
                let disks: Vec<String> = p
                    .damaged_disks
                    .iter()
                    .map(|d| format!("{d} ({} blocks)", p.damaged_blocks[d]))
                    .collect();
                println!(
                    "  restore point {} ({}) damaged; disks: {}",
                    p.id,
                    p.time,
                    if disks.is_empty() {
                        "all".into()
                    } else {
                        disks.join(", ")
                    }
                );
                for problem in &p.problems {
                    println!("    {problem}");
                }
            }
        }
        if report.chains.is_empty() {
            println!("no restore points to check");
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
