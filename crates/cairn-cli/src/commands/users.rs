//! `cairn user …` and `cairn token …`.

use std::process::ExitCode;

use cairn_api::auth::{TokenCreated, TokenInfo};
use cairn_api::users::UserDto;
use serde_json::{Map, Value, json};

use super::login::{password_from_stdin, password_from_terminal};
use super::lookup::id_by_name;
use crate::args::{Global, TokenCommand, UserCommand};
use crate::client::{Client, typed, usage};
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
                let user: UserDto = typed(user)?;
                println!("created user {} ({})", user.name, user.role);
            }
        }
        UserCommand::List => {
            let all = client.get("/api/v1/users")?;
            if g.json {
                output::json(&all)?;
            } else {
                let mut t = Table::new(&[">ID", "NAME", "ROLE", "CREATED"]);
                for u in typed::<Vec<UserDto>>(all)? {
                    t.row(vec![
                        u.id.to_string(),
                        u.name,
                        u.role.to_string(),
                        output::time(&u.created_at.to_string()),
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
                let user: UserDto = typed(user)?;
                println!("changed user {} ({})", user.name, user.role);
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
                let token: TokenCreated = typed(token)?;
                println!("{}", token.token);
                if !g.quiet {
                    let expires = match token.expires_at {
                        Some(t) => format!("expires {}", output::time(&t.to_string())),
                        None => "never expires".to_string(),
                    };
                    eprintln!(
                        "API token {} ({expires}); it is shown only now: use it as CAIRN_TOKEN",
                        token.id
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
                for tok in typed::<Vec<TokenInfo>>(all)? {
                    t.row(vec![
                        tok.id.to_string(),
                        tok.kind,
                        tok.description,
                        output::time(&tok.created_at.to_string()),
                        tok.expires_at
                            .map_or_else(|| "never".to_string(), |t| output::time(&t.to_string())),
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
