//! One module per command; [`run`] dispatches.

mod agent;
mod audit;
mod backup;
mod disk;
mod hosts;
mod jobs;
mod live;
mod login;
mod lookup;
mod points;
mod remote_restore;
mod repo;
mod repositories;
mod restore;
mod retain;
pub(crate) mod server;
mod sessions;
mod throttle;
mod totp;
mod users;
mod verify;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use cairn_repo::Repository;

use crate::args::{self, Cli, Command, Global};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match &cli.command {
        Command::Repo(c) => repo::run(g, c),
        Command::Backup(a) => backup::run(g, a),
        Command::Points(a) => match &a.repository {
            Some(name) => remote_restore::points(g, a, name),
            None => points::run(g, a),
        },
        Command::Restore(args::RestoreArgs {
            whole: Some(args::RestoreWhole::Vm(a)),
            ..
        }) => live::restore_vm(g, a),
        Command::InstantRecovery(c) => live::instant(g, c),
        Command::Restore(a) => match &a.repository {
            Some(name) => remote_restore::restore(g, a, name),
            None => restore::run(g, a),
        },
        Command::Verify(a) => verify::run(g, a),
        Command::Retain(a) => retain::run(g, a),
        Command::Disk(c) => disk::run(g, c),
        Command::Server(a) => server::run(g, a),
        Command::Login(a) => login::login(g, a),
        Command::Logout => login::logout(g),
        Command::Whoami => login::whoami(g),
        Command::Password(a) => login::change_password(g, a),
        Command::Totp(c) => totp::run(g, c),
        Command::Audit(c) => audit::run(g, c),
        Command::User(c) => users::users(g, c),
        Command::Token(c) => users::tokens(g, c),
        Command::Host(c) => hosts::hosts(g, c),
        Command::Vm(c) => hosts::vms(g, c),
        Command::Repository(c) => repositories::repositories(g, c),
        Command::Proxy(c) => repositories::proxies(g, c),
        Command::Settings(a) => repositories::settings(g, a),
        Command::Job(c) => jobs::jobs(g, c),
        Command::Session(c) => sessions::sessions(g, c),
        Command::Agent(a) => agent::run(g, a),
        Command::Throttle(c) => throttle::run(g, c),
    }
}

/// Whether a command talks to a backup server (its errors exit with 1, usage and login
/// problems with 2) rather than working on local files (every error exits with 2).
pub fn is_remote(command: &Command) -> bool {
    match command {
        Command::Repo(_)
        | Command::Backup(_)
        | Command::Verify(_)
        | Command::Retain(_)
        | Command::Disk(_)
        | Command::Server(_) => false,
        Command::Points(a) => a.repository.is_some(),
        Command::Restore(a) => a.repository.is_some() || a.whole.is_some(),
        Command::InstantRecovery(_) => true,
        Command::Login(_)
        | Command::Logout
        | Command::Whoami
        | Command::Password(_)
        | Command::Totp(_)
        | Command::Audit(_)
        | Command::User(_)
        | Command::Token(_)
        | Command::Host(_)
        | Command::Vm(_)
        | Command::Repository(_)
        | Command::Proxy(_)
        | Command::Settings(_)
        | Command::Job(_)
        | Command::Session(_)
        | Command::Agent(_)
        | Command::Throttle(_) => true,
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
