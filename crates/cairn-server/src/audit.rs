//! The audit trail: who did what and when, through the API (and so the CLI and the console) or
//! the scheduler.
//!
//! Every request that may change something (any method but GET, HEAD and OPTIONS) on a route of
//! the API is recorded by the HTTP layer after it was answered ([`crate::http::audit_trail`]):
//! the action (named for the route), the user, the client's address, the target, the outcome
//! (`ok` or the status and error message) and details the handler adds (a restore's target file,
//! a job's name). Agents' heartbeats, work polls and task
//! reports are not recorded: they change nothing a person asked for. Jobs started by the
//! scheduler are recorded by it as user `(scheduler)`.
//!
//! Entries go to the configuration database ([`cairn_configdb::ConfigDb::append_audit`]:
//! append-only, hash-chained). The newest entry's id and hash are also written to `DATA/audit.head`,
//! so that removing entries from the end of the log (which leaves a valid chain) is detected by
//! [`Auditor::verify`] as well.

use std::path::{Path, PathBuf};

pub use cairn_api::audit::AuditReport;
use cairn_configdb::{AuditCheck, ConfigDb, NewAuditEntry};

/// File in the data folder with the id and hash of the newest entry.
pub const HEAD_FILE: &str = "audit.head";
/// The user of entries the server makes on its own.
pub const SCHEDULER_USER: &str = "(scheduler)";

/// Writes audit entries and checks the chain.
#[derive(Debug)]
pub struct Auditor {
    db: ConfigDb,
    head_file: PathBuf,
    /// Serialises appends with the head file's writes.
    order: tokio::sync::Mutex<()>,
}

impl Auditor {
    /// An auditor writing to `db` and keeping the head in `data_dir`.
    pub fn new(db: ConfigDb, data_dir: &Path) -> Auditor {
        Auditor {
            db,
            head_file: data_dir.join(HEAD_FILE),
            order: tokio::sync::Mutex::new(()),
        }
    }

    /// Appends `entry`. A failure is logged, never returned: the action it records has happened.
    pub async fn record(&self, entry: NewAuditEntry) {
        let _order = self.order.lock().await;
        match self.db.append_audit(&entry).await {
            Ok(stored) => {
                let text = format!("{} {}\n", stored.id, stored.hash);
                if let Err(e) = crate::secrets::write_private(&self.head_file, text.as_bytes()) {
                    tracing::error!("writing the audit head {}: {e}", self.head_file.display());
                }
            }
            Err(e) => tracing::error!(
                "the audit log could not record {} by {} on {}: {e}",
                entry.action,
                entry.user.as_deref().unwrap_or("-"),
                entry.target
            ),
        }
    }

    /// Walks the chain and compares its newest entry with the head kept in the data folder.
    pub async fn verify(&self) -> Result<AuditReport, cairn_configdb::Error> {
        let AuditCheck { entries, head, problem } = self.db.verify_audit().await?;
        let problem = problem.or_else(|| self.head_problem(head.as_ref()));
        Ok(AuditReport {
            entries,
            intact: problem.is_none(),
            problem,
        })
    }

    fn head_problem(&self, head: Option<&(i64, String)>) -> Option<String> {
        let text = match std::fs::read_to_string(&self.head_file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return head.map(|(id, _)| {
                    format!(
                        "{} is missing although the log has {id} entries",
                        self.head_file.display()
                    )
                });
            }
            Err(e) => return Some(format!("reading {}: {e}", self.head_file.display())),
        };
        let mut parts = text.split_whitespace();
        let (Some(id), Some(hash)) = (parts.next().and_then(|i| i.parse::<i64>().ok()), parts.next()) else {
            return Some(format!("{} is damaged", self.head_file.display()));
        };
        match head {
            None => Some(format!(
                "the log is empty but its newest entry was {id}: every entry was removed"
            )),
            Some((last, _)) if *last < id => Some(format!(
                "entries {} to {id} were removed from the end of the log",
                last + 1
            )),
            Some((last, last_hash)) if *last == id && last_hash != hash => {
                Some(format!("entry {id} is not the entry that was written last"))
            }
            // A newer entry than the head: the server stopped between the two writes.
            Some(_) => None,
        }
    }
}
