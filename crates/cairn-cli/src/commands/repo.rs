//! `cairn repo init`.

use std::process::ExitCode;

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
        RepoCommand::Init { path, encryption } => {
            let pw = super::password(g)?;
            if *encryption != Encryption::None && pw.is_none() {
                anyhow::bail!("an encrypted repository needs a password: set CAIRN_PASSWORD or use --password-file");
            }
            let repo = Repository::init(path, *encryption, pw.as_deref(), None)?;
            let out = Initialised {
                path: path.display().to_string(),
                repository_id: repo.config().repository_id.clone(),
                encryption: *encryption,
            };
            if g.json {
                output::json(&out)?;
            } else {
                println!(
                    "created repository {} at {} (encryption: {})",
                    out.repository_id, out.path, encryption
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
