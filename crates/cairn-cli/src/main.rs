//! `cairn`: image-level backup of virtual machine disks.
//!
//! Works directly on a repository folder, the way restic or borg users work:
//! `cairn repo init`, `cairn backup`, `cairn points`, `cairn restore`,
//! `cairn verify`, `cairn retain`. Every command prints a human summary and
//! takes `--json` for scripts.

mod args;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if cli.global.verbose { "info" } else { "warn" })
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, like `{e:#}` but without repeats: most library
/// errors print their cause inside their own message *and* return it as
/// `source()`, which the plain chain would then print a second time.
fn error_chain(e: &anyhow::Error) -> String {
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
