//! `cairn repo init` and `cairn repo repair`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use cairn_repo::repair::{ChainRepair, RepairReport};
use cairn_repo::{Encryption, Repository};
use serde::Serialize;

use crate::args::{Global, RepoCommand};
use crate::output;

#[derive(Serialize)]
struct Initialised {
    path: String,
    repository_id: String,
    encryption: Encryption,
}

pub fn run(g: &Global, c: &RepoCommand) -> anyhow::Result<ExitCode> {
    match c {
        RepoCommand::Init { path, encryption } => init(g, path, *encryption),
        RepoCommand::Repair { repo, vm, dry_run } => repair(g, repo, vm.as_deref(), *dry_run),
    }
}

fn init(g: &Global, path: &Path, encryption: Encryption) -> anyhow::Result<ExitCode> {
    let pw = match encryption {
        Encryption::None => None,
        Encryption::Aes256Gcm => Some(match super::password(g)? {
            Some(pw) => pw,
            None => new_password_from_terminal()?,
        }),
    };
    let repo = Repository::init(path, encryption, pw.as_deref(), None)?;
    let out = Initialised {
        path: path.display().to_string(),
        repository_id: repo.config().repository_id.clone(),
        encryption,
    };
    if g.json {
        output::json(&out)?;
    } else {
        println!(
            "created repository {} at {} (encryption: {})",
            out.repository_id, out.path, encryption
        );
        if encryption != Encryption::None && !g.quiet {
            println!("keep the password safe: without it nothing in this repository can be read");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks for a new repository password on the terminal, without echo, twice.
fn new_password_from_terminal() -> anyhow::Result<Vec<u8>> {
    const HOW: &str = "set CAIRN_PASSWORD or use --password-file FILE, or run `cairn repo init` on a terminal \
                       to be asked for it; `--encryption none` makes an unencrypted repository";
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_err()
    {
        bail!("a new repository is encrypted (AES-256-GCM) unless told otherwise, and no password was given: {HOW}");
    }
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map_err(|e| anyhow::anyhow!("cannot read the password from the terminal ({e}): {HOW}"))
    };
    let pw = ask("Password for the new repository: ")?;
    if pw.is_empty() {
        bail!("the password is empty");
    }
    if ask("Same password again: ")? != pw {
        bail!("the two passwords differ; nothing was created");
    }
    Ok(pw.into_bytes())
}

fn repair(g: &Global, path: &Path, vm: Option<&str>, dry_run: bool) -> anyhow::Result<ExitCode> {
    let repo = super::open_repo(g, path)?;
    let bar = output::progress_bar(!g.json && !g.quiet, "check");
    let report = cairn_repo::repair::repair(&repo, vm, dry_run, &|n| bar.inc(n));
    bar.finish_and_clear();
    let report = report?;
    if g.json {
        output::json(&report)?;
    } else {
        print_repair(&report, path);
    }
    // What a repair could not settle is still damage (exit 1).
    let settled = report
        .chains
        .iter()
        .all(|c| c.problems.is_empty() && c.unchecked.is_empty());
    Ok(if settled { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_repair(report: &RepairReport, path: &Path) {
    let (remove, rewrite, drop, fix) = if report.dry_run {
        ("would remove", "would rewrite", "would drop", "would fix")
    } else {
        ("removed", "rewrote", "dropped", "fixed")
    };
    for c in &report.chains {
        let name =
            c.vm.clone()
                .unwrap_or_else(|| format!("(unreadable chain {})", c.dir.display()));
        if nothing_to_do(c) {
            println!("VM {name}: nothing to repair ({} restore points)", c.kept);
            continue;
        }
        println!(
            "VM {name}: {remove} {} restore point(s) that cannot be restored; {} kept",
            c.removed.len(),
            c.kept
        );
        for p in &c.removed {
            println!("  {remove} {} ({})", p.id, p.time);
            for r in &p.reasons {
                println!("    {r}");
            }
        }
        for id in &c.became_full {
            println!("  {id} becomes the full of its segment");
        }
        if !c.files_dropped.is_empty() {
            println!("  {drop} data files: {}", c.files_dropped.join(", "));
        }
        for f in &c.lengths_fixed {
            println!("  {fix} {f}");
        }
        for f in &c.headers_rewritten {
            println!("  {rewrite} the damaged header of {f}");
        }
        for id in &c.unchecked {
            println!(
                "  kept {id}: it could not be read completely for a reason other than damage; fix that and run `cairn verify`"
            );
        }
        for p in &c.problems {
            println!("  {p}");
        }
    }
    if report.chains.is_empty() {
        println!("no chains in {}", path.display());
    }
    if report.dry_run {
        println!("dry run: nothing was changed");
    }
}

fn nothing_to_do(c: &ChainRepair) -> bool {
    c.removed.is_empty()
        && c.unchecked.is_empty()
        && c.files_dropped.is_empty()
        && c.headers_rewritten.is_empty()
        && c.lengths_fixed.is_empty()
        && c.problems.is_empty()
}
