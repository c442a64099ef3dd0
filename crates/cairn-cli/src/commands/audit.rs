//! `cairn audit list|verify`: the server's audit log.

use std::process::ExitCode;

use anyhow::Context;
use cairn_api::audit::{AuditEntryDto, AuditReport};

use crate::args::{AuditCommand, Global};
use crate::client::Client;
use crate::output::{self, Table};

/// Runs `cairn audit …`.
pub fn run(g: &Global, c: &AuditCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    match c {
        AuditCommand::List {
            since,
            user,
            limit,
            before,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(t) = since {
                query.push(("since", t.to_string()));
            }
            if let Some(u) = user {
                query.push(("user", u.clone()));
            }
            if let Some(b) = before {
                query.push(("before", b.to_string()));
            }
            let value = client.get_query("/api/v1/audit", &query)?;
            let entries: Vec<AuditEntryDto> =
                serde_json::from_value(value).context("the server's audit entries are not in the expected form")?;
            if g.json {
                output::json(&entries)?;
                return Ok(ExitCode::SUCCESS);
            }
            if entries.is_empty() {
                println!("no audit entries");
            }
            let mut t = Table::new(&[">ID", "TIME", "USER", "ADDRESS", "ACTION", "TARGET", "OUTCOME"]);
            for e in &entries {
                t.row(vec![
                    e.id.to_string(),
                    output::time(&e.at.to_string()),
                    e.user.clone().unwrap_or_else(|| "-".into()),
                    e.address.clone().unwrap_or_else(|| "-".into()),
                    e.action.clone(),
                    e.target.clone(),
                    e.outcome.clone(),
                ]);
            }
            t.print();
        }
        AuditCommand::Verify => {
            let report: AuditReport = serde_json::from_value(client.get("/api/v1/audit/verify")?)
                .context("the server's audit check is not in the expected form")?;
            if g.json {
                output::json(&report)?;
            } else if report.intact {
                println!(
                    "audit log intact: {} entries, each linked to the one before",
                    report.entries
                );
            } else {
                println!(
                    "audit log DAMAGED: {} ({} entries read)",
                    report.problem.as_deref().unwrap_or("unknown problem"),
                    report.entries
                );
            }
            if !report.intact {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
