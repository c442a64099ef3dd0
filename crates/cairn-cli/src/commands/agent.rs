//! `cairn agent …`: enrolment tokens, the list of agents, certificate renewal, revocation, and
//! the agent process.

use std::process::ExitCode;

use serde_json::{Value, json};

use super::lookup::{id_by_name, list, s, s_or_dash, u};
use crate::args::{AgentArgs, AgentCommand, Global};
use crate::client::Client;
use crate::output::{self, Table};

pub fn run(g: &Global, a: &AgentArgs) -> anyhow::Result<ExitCode> {
    let c = match &a.command {
        None => return crate::agent::run(g, &a.run),
        Some(AgentCommand::Run(run)) => return crate::agent::run(g, run),
        Some(c) => c,
    };
    manage(g, c)
}

/// The commands that talk to the server as a user.
fn manage(g: &Global, c: &AgentCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    match c {
        AgentCommand::Token { roles, expires } => {
            let token = client.post(
                "/api/v1/agents/tokens",
                &json!({"roles": roles, "expires_in_secs": expires}),
            )?;
            let command = format!(
                "cairn agent --server {} --ca-cert ca.pem --token {} --data /var/lib/cairn-agent",
                client.base_url(),
                s(&token, "token")
            );
            if g.json {
                let mut out = token.clone();
                out["command"] = Value::from(command);
                output::json(&out)?;
            } else {
                println!("{}", s(&token, "token"));
                if !g.quiet {
                    eprintln!(
                        "one-time enrolment token for roles {} (expires {}); it is shown only now.\n\
                         On the agent host, with a copy of the server's DATA/ca.pem as ca.pem, run:\n  {command}",
                        roles.join(","),
                        output::time(s(&token, "expires_at"))
                    );
                }
            }
        }
        AgentCommand::List => {
            let all = client.get("/api/v1/agents")?;
            if g.json {
                output::json(&all)?;
            } else {
                let mut t = Table::new(&[
                    "NAME",
                    "ROLES",
                    "STATE",
                    "VERSION",
                    ">TASKS",
                    ">FREE",
                    "ADDRESS",
                    "LAST SEEN",
                    "CERTIFICATE ENDS",
                ]);
                for agent in list(&all) {
                    let roles: Vec<&str> = agent["roles"]
                        .as_array()
                        .map(|r| r.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    t.row(vec![
                        s(agent, "name").to_string(),
                        roles.join(","),
                        s(agent, "state").to_string(),
                        s(agent, "version").to_string(),
                        s_or_dash(agent, "max_tasks"),
                        u(agent, "free_bytes").map_or("-".into(), output::bytes),
                        s_or_dash(agent, "address"),
                        agent["last_seen_at"].as_str().map_or("never".into(), output::time),
                        certificate_end(agent),
                    ]);
                }
                if t.is_empty() {
                    eprintln!("no agents yet: create a token with `cairn agent token --roles proxy`");
                } else {
                    t.print();
                }
            }
        }
        AgentCommand::Revoke { name } => {
            let id = id_by_name(&client, "/api/v1/agents", "agent", name)?;
            let agent = client.delete(&format!("/api/v1/agents/{id}"))?;
            if g.json {
                output::json(&agent)?;
            } else {
                println!("revoked agent {name}: the server refuses its certificate from now on");
            }
        }
        AgentCommand::Renew { name } => {
            let id = id_by_name(&client, "/api/v1/agents", "agent", name)?;
            let agent = client.post(&format!("/api/v1/agents/{id}/renew"), &json!({}))?;
            if g.json {
                output::json(&agent)?;
            } else {
                println!(
                    "agent {name} renews its key and certificate at its next heartbeat; its current certificate is \
                     refused once it uses the new one"
                );
            }
        }
        AgentCommand::Run(run) => return crate::agent::run(g, run),
    }
    Ok(ExitCode::SUCCESS)
}

/// When an agent's certificate ends, and whether it is being renewed.
fn certificate_end(agent: &Value) -> String {
    let end = agent["cert_not_after"].as_str().map_or("-".into(), output::time);
    if agent["renew_certificate"] == true && agent["state"] != "revoked" {
        format!("{end} (renewing)")
    } else {
        end
    }
}
