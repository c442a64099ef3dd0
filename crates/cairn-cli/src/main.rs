//! `cairn`: image-level backup of virtual machine disks.
//!
//! Works directly on a repository folder, the way restic or borg users work:
//! `cairn repo init`, `cairn backup`, `cairn points`, `cairn restore`,
//! `cairn verify`, `cairn retain`, `cairn repo repair`. Every command prints a
//! human summary and takes `--json` for scripts.
//!
//! It is also the backup server (`cairn server --data DIR`) and that server's
//! client: `cairn login URL`, then `cairn host|vm|repository|job|session …`.
//! Exit codes of server commands: 0 done, 1 the server refused or failed,
//! 2 usage or login problems, 3 a followed session was stopped.

mod agent;
mod args;
mod client;
mod commands;
mod output;
mod private_file;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    // The server logs what it does (where it listens, sessions) unless told otherwise.
    // The certificate verifier logs its own error before cairn explains it: keep it quiet.
    let server = matches!(cli.command, args::Command::Server(_));
    let default_filter = if cli.global.verbose || server {
        "info"
    } else {
        "warn,rustls_platform_verifier=off"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let remote = commands::is_remote(&cli.command);
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(error_code(&e, remote))
        }
    }
}

/// What the user can do about an error of a library, in the CLI's own terms (libraries do not
/// know the flags and environment variables).
fn hint(e: &anyhow::Error) -> Option<&'static str> {
    e.chain()
        .find_map(|cause| match cause.downcast_ref::<cairn_repo::RepoError>()? {
            cairn_repo::RepoError::PasswordRequired { .. } => {
                Some("give the repository's password in CAIRN_PASSWORD or with --password-file FILE")
            }
            cairn_repo::RepoError::NotARepository { .. } => Some("create one with `cairn repo init --repo DIR`"),
            cairn_repo::RepoError::WrongPassword { .. } => {
                Some("the password comes from CAIRN_PASSWORD or --password-file FILE")
            }
            _ => None,
        })
}

/// Exit code of a failed command: 2 for usage and login problems (and for every error of a
/// local command, as always); 1 when the server refused or failed the request.
fn error_code(e: &anyhow::Error, remote: bool) -> u8 {
    for cause in e.chain() {
        if cause.is::<client::UsageError>() {
            return 2;
        }
        if let Some(api) = cause.downcast_ref::<client::ApiError>() {
            return if api.is_auth() { 2 } else { 1 };
        }
    }
    if remote { 1 } else { 2 }
}

/// The error and its causes, like `{e:#}` but without repeats: most library
/// errors print their cause inside their own message *and* return it as
/// `source()`, which the plain chain would then print a second time.
pub(crate) fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}
