//! `cairn repository …`, `cairn proxy …` and `cairn settings`.

use std::process::ExitCode;

use anyhow::Context;
use cairn_api::repositories::{ProxyDto, RepositoryDto};
use cairn_api::settings::SettingsDto;
use serde_json::{Map, Value, json};

use super::login::password_from_stdin;
use super::lookup::{by_name, id_by_name, yes_no};
use crate::args::{Global, ProxyCommand, RepoEncryption, RepositoryCommand, SettingsArgs};
use crate::client::{Client, typed_for, usage};
use crate::output::{self, Table, bytes, rate};

fn limits(body: &mut Map<String, Value>, max_tasks: Option<u32>, read: Option<u64>, write: Option<u64>) {
    if let Some(n) = max_tasks {
        body.insert("max_tasks".into(), Value::from(n));
    }
    if let Some(r) = read {
        body.insert("read_limit_bytes".into(), Value::from(r));
    }
    if let Some(w) = write {
        body.insert("write_limit_bytes".into(), Value::from(w));
    }
}

/// A rate limit of the API (negative reads as 0).
fn limit(bytes: Option<i64>) -> Option<u64> {
    bytes.map(|b| u64::try_from(b).unwrap_or(0))
}

/// `-` for an empty text.
fn or_dash(text: Option<&str>) -> String {
    match text {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => "-".to_string(),
    }
}

/// A repository of the answer to `cairn COMMAND`, for people.
fn describe(command: &str, answer: Value) -> anyhow::Result<String> {
    let r: RepositoryDto = typed_for(command, answer)?;
    Ok(format!(
        "repository {} at {} ({}encrypted, {} tasks, read {}, write {})",
        r.name,
        r.path,
        if r.encrypted { "" } else { "not " },
        r.max_tasks,
        rate(limit(r.read_limit_bytes)),
        rate(limit(r.write_limit_bytes)),
    ))
}

pub fn repositories(g: &Global, c: &RepositoryCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    match c {
        RepositoryCommand::Add {
            name,
            path,
            encryption,
            password_stdin,
            max_tasks,
            read_limit,
            write_limit,
            rate,
            agent,
        } => {
            // A path on an agent's host is taken as given (it must be absolute there).
            let path = if agent.is_some() {
                if !path.is_absolute() {
                    return Err(usage!("--path must be absolute on the agent's host"));
                }
                path.clone()
            } else {
                std::path::absolute(path).with_context(|| format!("making {} an absolute path", path.display()))?
            };
            let (read_limit, write_limit) = match rate {
                Some(r) => (&Some(*r), &Some(*r)),
                None => (read_limit, write_limit),
            };
            let mut body = Map::new();
            body.insert("name".into(), Value::from(name.as_str()));
            body.insert("path".into(), Value::from(path.display().to_string()));
            let enc = match encryption {
                RepoEncryption::Aes256Gcm => "aes-256-gcm",
                RepoEncryption::None => "none",
            };
            body.insert("encryption".into(), Value::from(enc));
            let password = if *password_stdin {
                Some(password_from_stdin()?)
            } else {
                super::password(g)?
                    .map(String::from_utf8)
                    .transpose()
                    .map_err(|_| usage!("the repository password is not UTF-8"))?
            };
            if let Some(pw) = password {
                if *encryption == RepoEncryption::None {
                    return Err(usage!("a password was given for a repository with --encryption none"));
                }
                body.insert("password".into(), Value::from(pw));
            }
            limits(&mut body, *max_tasks, *read_limit, *write_limit);
            if let Some(agent) = agent {
                // An unknown name is a usage error, like every name the server does not know.
                by_name(&client, "/api/v1/agents", "agent", agent)?;
                body.insert("agent".into(), Value::from(agent.as_str()));
            }
            let repo = client.post("/api/v1/repositories", &body)?;
            if g.json {
                output::json(&repo)?;
            } else {
                println!("added {}", describe("repository add", repo)?);
            }
        }
        RepositoryCommand::List => {
            let all = client.get("/api/v1/repositories")?;
            if g.json {
                output::json(&all)?;
            } else {
                let mut t = Table::new(&[
                    "NAME",
                    "PATH",
                    "DEFAULT",
                    "ENCRYPTED",
                    ">TASKS",
                    ">READ LIMIT",
                    ">WRITE LIMIT",
                    ">FREE",
                ]);
                for r in typed_for::<Vec<RepositoryDto>>("repository list", all)? {
                    t.row(vec![
                        r.name,
                        r.path,
                        yes_no(r.is_default),
                        yes_no(r.encrypted),
                        r.max_tasks.to_string(),
                        rate(limit(r.read_limit_bytes)),
                        rate(limit(r.write_limit_bytes)),
                        r.free_bytes.map(bytes).unwrap_or_else(|| "-".into()),
                    ]);
                }
                t.print();
            }
        }
        RepositoryCommand::Set {
            name,
            max_tasks,
            read_limit,
            write_limit,
        } => {
            if max_tasks.is_none() && read_limit.is_none() && write_limit.is_none() {
                return Err(usage!(
                    "nothing to change: give --max-tasks, --read-limit and/or --write-limit"
                ));
            }
            let id = id_by_name(&client, "/api/v1/repositories", "repository", name)?;
            let mut body = Map::new();
            limits(&mut body, *max_tasks, *read_limit, *write_limit);
            let repo = client.patch(&format!("/api/v1/repositories/{id}"), &body)?;
            if g.json {
                output::json(&repo)?;
            } else {
                println!("changed {}", describe("repository set", repo)?);
            }
        }
        RepositoryCommand::Remove { name } => {
            let id = id_by_name(&client, "/api/v1/repositories", "repository", name)?;
            client.delete(&format!("/api/v1/repositories/{id}"))?;
            if g.json {
                output::json(&json!({"removed": name, "id": id}))?;
            } else {
                println!("removed repository {name} from the server (its files stay on disk)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn proxies(g: &Global, c: &ProxyCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    match c {
        ProxyCommand::List => {
            let all = client.get("/api/v1/proxies")?;
            if g.json {
                output::json(&all)?;
            } else {
                let all: Vec<ProxyDto> = typed_for("proxy list", all)?;
                let mut t = Table::new(&["NAME", "KIND", "ADDRESS", ">TASKS", ">RUNNING"]);
                for p in &all {
                    t.row(vec![
                        p.name.clone(),
                        if p.agent_id.is_none() { "this server" } else { "agent" }.to_string(),
                        or_dash(p.address.as_deref()),
                        p.max_tasks.to_string(),
                        p.running_tasks.to_string(),
                    ]);
                }
                t.print();
                if let Some(own) = all.iter().find(|p| p.agent_id.is_none()) {
                    println!(
                        "{} is this backup server's own proxy: the server named it after the machine's host name",
                        own.name
                    );
                }
            }
        }
        ProxyCommand::Set { name, max_tasks } => {
            let id = id_by_name(&client, "/api/v1/proxies", "proxy", name)?;
            let p = client.patch(&format!("/api/v1/proxies/{id}"), &json!({"max_tasks": max_tasks}))?;
            if g.json {
                output::json(&p)?;
            } else {
                let p: ProxyDto = typed_for("proxy set", p)?;
                println!("proxy {} now runs up to {} tasks", p.name, p.max_tasks);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn settings(g: &Global, a: &SettingsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    let mut change = Map::new();
    if let Some(on) = a.parallel_processing {
        change.insert("parallel_processing".into(), json!(on));
    }
    if let Some(on) = a.require_totp_for_admins {
        change.insert("require_totp_for_administrators".into(), json!(on));
    }
    if !a.restore_folders.is_empty() {
        let mut folders = Vec::new();
        for f in &a.restore_folders {
            folders.push(
                std::path::absolute(f)
                    .map_err(|e| usage!("--restore-folder {}: {e}", f.display()))?
                    .display()
                    .to_string(),
            );
        }
        change.insert("restore_folders".into(), json!(folders));
    }
    let settings = if change.is_empty() {
        client.get("/api/v1/settings")?
    } else {
        client.patch("/api/v1/settings", &Value::Object(change))?
    };
    if g.json {
        output::json(&settings)?;
    } else {
        let settings: SettingsDto = typed_for("settings", settings)?;
        let on = if settings.parallel_processing { "on" } else { "off" };
        println!("parallel processing: {on}");
        println!("time zone: {}", or_dash(Some(&settings.time_zone)));
        println!(
            "second factor required of administrators: {}",
            if settings.require_totp_for_administrators {
                "yes"
            } else {
                "no"
            }
        );
        let folders: Vec<&str> = settings.restore_folders.iter().map(String::as_str).collect();
        println!(
            "restore folders: {}",
            if folders.is_empty() {
                "none (restores are refused)".to_string()
            } else {
                folders.join(", ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
