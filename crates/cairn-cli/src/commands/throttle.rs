//! `cairn throttle …`: network throttling rules between data movers.

use std::process::ExitCode;

use cairn_api::throttle::ThrottleRuleDto;
use cairn_server::throttle::{Rule, rate_text};
use serde_json::json;

use crate::args::{Global, ThrottleCommand};
use crate::client::{Client, typed, usage};
use crate::output::{self, Table};

const RULES: &str = "/api/v1/throttle-rules";

/// `rule 3 (10.0.1.0/24 ↔ 10.9.0.0/16, 50 MB/s, mon-fri 08:00-18:00)` for a rule of the API.
fn describe(rule: &ThrottleRuleDto) -> String {
    let (id, limit) = (rule.id, rule.limit_bytes);
    match Rule::new(id, &rule.from, &rule.to, limit, rule.window.as_deref()) {
        Ok(parsed) => parsed.to_string(),
        // A rule this client cannot parse (a newer server): show it as the server sent it.
        Err(_) => format!("rule {id} ({} ↔ {}, {limit} B/s)", rule.from, rule.to),
    }
}

pub fn run(g: &Global, c: &ThrottleCommand) -> anyhow::Result<ExitCode> {
    if let ThrottleCommand::Add { limit: 0, .. } = c {
        return Err(usage!(
            "--limit must be above 0 (remove the rule instead of making it unlimited)"
        ));
    }
    let client = Client::from_global(g)?;
    match c {
        ThrottleCommand::Add {
            from,
            to,
            limit,
            window,
        } => {
            let limit = i64::try_from(*limit).map_err(|_| usage!("--limit {limit} is too large"))?;
            let rule = client.post(
                RULES,
                &json!({"from": from, "to": to, "limit_bytes": limit, "window": window}),
            )?;
            if g.json {
                output::json(&rule)?;
            } else {
                println!("added throttling {}", describe(&typed(rule)?));
            }
        }
        ThrottleCommand::List => {
            let all = client.get(RULES)?;
            if g.json {
                output::json(&all)?;
            } else {
                let mut t = Table::new(&[">ID", "FROM", "TO", ">LIMIT", "WINDOW", "CREATED"]);
                for rule in typed::<Vec<ThrottleRuleDto>>(all)? {
                    t.row(vec![
                        rule.id.to_string(),
                        rule.from,
                        rule.to,
                        u64::try_from(rule.limit_bytes).map_or("-".into(), rate_text),
                        rule.window.unwrap_or_else(|| "always".to_string()),
                        output::time(&rule.created_at.to_string()),
                    ]);
                }
                if t.is_empty() {
                    eprintln!(
                        "no throttling rules: add one with `cairn throttle add --from CIDR --to CIDR --limit RATE`"
                    );
                } else {
                    t.print();
                }
            }
        }
        ThrottleCommand::Remove { id } => {
            client.delete(&format!("{RULES}/{id}"))?;
            if g.json {
                output::json(&json!({"removed": id}))?;
            } else {
                println!("removed throttling rule {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
