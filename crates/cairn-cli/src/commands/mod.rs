//! One module per command; [`run`] dispatches.

mod backup;
mod disk;
mod points;
mod repo;
mod restore;
mod retain;
mod verify;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use cairn_repo::Repository;

use crate::args::{Cli, Command, Global};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match &cli.command {
        Command::Repo(c) => repo::run(g, c),
        Command::Backup(a) => backup::run(g, a),
        Command::Points(a) => points::run(g, a),
        Command::Restore(a) => restore::run(g, a),
        Command::Verify(a) => verify::run(g, a),
        Command::Retain(a) => retain::run(g, a),
        Command::Disk(c) => disk::run(g, c),
    }
}

/// The repository password from `--password-file` or `CAIRN_PASSWORD`, if any.
pub fn password(g: &Global) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(path) = &g.password_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading password file {}", path.display()))?;
        let pw = text.strip_suffix('\n').unwrap_or(&text);
        let pw = pw.strip_suffix('\r').unwrap_or(pw);
        return Ok(Some(pw.as_bytes().to_vec()));
    }
    Ok(std::env::var_os("CAIRN_PASSWORD").map(|p| p.into_encoded_bytes()))
}

/// Opens the repository at `path` with the password from the flags or environment.
pub fn open_repo(g: &Global, path: &Path) -> anyhow::Result<Repository> {
    let pw = password(g)?;
    Ok(Repository::open(path, pw.as_deref())?)
}

/// Splits a repository listing into readable chains and the errors of the others.
pub fn split_chains(
    list: Vec<cairn_repo::Result<cairn_repo::ChainMeta>>,
) -> (Vec<cairn_repo::ChainMeta>, Vec<cairn_repo::RepoError>) {
    let mut ok = Vec::new();
    let mut broken = Vec::new();
    for c in list {
        match c {
            Ok(c) => ok.push(c),
            Err(e) => broken.push(e),
        }
    }
    (ok, broken)
}
