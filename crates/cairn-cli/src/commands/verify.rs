//! `cairn verify`.

use std::process::ExitCode;

use crate::args::{Global, VerifyArgs};
use crate::output::{self, bytes};

pub fn run(g: &Global, a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let repo = match super::open_repo(g, &a.repo) {
        Ok(repo) => repo,
        // A damaged config is a finding of the health check (exit 1), not a
        // mistake on the command line (exit 2).
        Err(e) => match e.downcast_ref::<cairn_repo::RepoError>() {
            Some(re) if re.is_damage() => {
                eprintln!("error: {}", crate::error_chain(&e));
                eprintln!("the repository's config is damaged: no restore point can be read without it");
                return Ok(ExitCode::from(1));
            }
            _ => return Err(e),
        },
    };
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
                    "  restore point {} ({}) {}; disks: {}",
                    p.id,
                    p.time,
                    if p.lost {
                        "LOST: it cannot be restored"
                    } else {
                        "could not be checked completely"
                    },
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
            if !c.ok && c.vm.is_some() {
                let lost = c.points.iter().filter(|p| p.lost).count();
                println!(
                    "  {lost} of {} restore points lost; `cairn repo repair --repo {} --dry-run` shows what a repair changes",
                    c.points.len(),
                    a.repo.display()
                );
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
