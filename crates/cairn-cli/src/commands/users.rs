//! `cairn user …` and `cairn token …`.

use std::process::ExitCode;

use serde_json::{Map, Value, json};

use super::login::{password_from_stdin, password_from_terminal};
use super::lookup::{id_by_name, list, s, s_or_dash};
use crate::args::{Global, TokenCommand, UserCommand};
use crate::client::{Client, usage};
use crate::output::{self, Table};

fn user_password(stdin: bool, name: &str) -> anyhow::Result<String> {
    if stdin {
        password_from_stdin()
    } else {
        password_from_terminal(&format!("New password of {name}: "), true)
    }
}

pub fn users(g: &Global, c: &UserCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    match c {
        UserCommand::Add {
            name,
            role,
            password_stdin,
        } => {
            let password = user_password(*password_stdin, name)?;
            let user = client.post(
                "/api/v1/users",
                &json!({"name": name, "password": password, "role": role.name()}),
            )?;
            if g.json {
                output::json(&user)?;
            } else {
                println!("created user {} ({})", s(&user, "name"), s(&user, "role"));
            }
        }
        UserCommand::List => {
            let all = client.get("/api/v1/users")?;
            if g.json {
                output::json(&all)?;
            } else {
                let mut t = Table::new(&[">ID", "NAME", "ROLE", "CREATED"]);
                for u in list(&all) {
                    t.row(vec![
                        s_or_dash(u, "id"),
                        s(u, "name").to_string(),
                        s(u, "role").to_string(),
                        output::time(s(u, "created_at")),
                    ]);
                }
                t.print();
            }
        }
        UserCommand::Set {
            name,
            role,
            password_stdin,
        } => {
            if role.is_none() && !password_stdin {
                return Err(usage!("nothing to change: give --role and/or --password-stdin"));
            }
            let id = id_by_name(&client, "/api/v1/users", "user", name)?;
            let mut body = Map::new();
            if let Some(r) = role {
                body.insert("role".into(), Value::from(r.name()));
            }
            if *password_stdin {
                body.insert("password".into(), Value::from(password_from_stdin()?));
            }
            let user = client.patch(&format!("/api/v1/users/{id}"), &body)?;
            if g.json {
                output::json(&user)?;
            } else {
                println!("changed user {} ({})", s(&user, "name"), s(&user, "role"));
            }
        }
        UserCommand::Remove { name } => {
            let id = id_by_name(&client, "/api/v1/users", "user", name)?;
            client.delete(&format!("/api/v1/users/{id}"))?;
            if g.json {
                output::json(&json!({"removed": name, "id": id}))?;
            } else {
                println!("removed user {name}");
            }
        }
        UserCommand::ResetTotp { name } => {
            let id = id_by_name(&client, "/api/v1/users", "user", name)?;
            client.delete(&format!("/api/v1/users/{id}/totp"))?;
            if g.json {
                output::json(&json!({"totp_reset": name, "id": id}))?;
            } else {
                println!("removed the second factor of user {name}; their logins have ended");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn tokens(g: &Global, c: &TokenCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    match c {
        TokenCommand::Create {
            description,
            expires_days,
        } => {
            let mut body = json!({"description": description});
            if let Some(d) = expires_days {
                body["expires_in_days"] = Value::from(*d);
            }
            let token = client.post("/api/v1/tokens", &body)?;
            if g.json {
                output::json(&token)?;
            } else {
                println!("{}", s(&token, "token"));
                if !g.quiet {
                    let expires = match token.get("expires_at").and_then(Value::as_str) {
                        Some(t) => format!("expires {}", output::time(t)),
                        None => "never expires".to_string(),
                    };
                    eprintln!(
                        "API token {} ({expires}); it is shown only now: use it as CAIRN_TOKEN",
                        s_or_dash(&token, "id")
                    );
                }
            }
        }
        TokenCommand::List => {
            let all = client.get("/api/v1/tokens")?;
            if g.json {
                output::json(&all)?;
            } else {
                let mut t = Table::new(&[">ID", "KIND", "DESCRIPTION", "CREATED", "EXPIRES"]);
                for tok in list(&all) {
                    t.row(vec![
                        s_or_dash(tok, "id"),
                        s(tok, "kind").to_string(),
                        s(tok, "description").to_string(),
                        output::time(s(tok, "created_at")),
                        tok.get("expires_at")
                            .and_then(Value::as_str)
                            .map_or_else(|| "never".to_string(), output::time),
                    ]);
                }
                t.print();
            }
        }
        TokenCommand::Remove { id } => {
            client.delete(&format!("/api/v1/tokens/{id}"))?;
            if g.json {
                output::json(&json!({"removed": id}))?;
            } else {
                println!("removed token {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
