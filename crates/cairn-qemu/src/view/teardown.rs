//! Removing what a view added to QEMU (exports, block jobs, scratch nodes and files) at teardown,
//! and waiting until QEMU no longer has them.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{TEARDOWN_WAIT, ViewDisk, remove_file};
use crate::qmp::Qmp;

/// Deletes exports with the given ids that exist and waits until they are gone.
pub(super) async fn remove_exports(qmp: &Qmp, ids: &[String]) -> Result<(), String> {
    remove_and_wait(qmp, BlockObjects::Exports, ids).await
}

/// Cancels the jobs with the given ids that exist and waits until they are gone (the
/// `BLOCK_JOB_CANCELLED` event may come before the command's reply: polling avoids the race).
pub(super) async fn cancel_jobs(qmp: &Qmp, ids: &[String]) -> Result<(), String> {
    remove_and_wait(qmp, BlockObjects::Jobs, ids).await
}

/// The kinds of block layer objects a view removes at teardown.
#[derive(Clone, Copy)]
enum BlockObjects {
    /// NBD exports (`block-export-del`).
    Exports,
    /// Block jobs (`block-job-cancel`).
    Jobs,
}

impl BlockObjects {
    /// Plural name for messages.
    fn name(self) -> &'static str {
        match self {
            BlockObjects::Exports => "exports",
            BlockObjects::Jobs => "jobs",
        }
    }

    /// The ids of the objects of this kind QEMU has, each with whether it has concluded (a job
    /// that was not dismissed automatically; an export never has).
    async fn list(self, qmp: &Qmp) -> Result<Vec<(String, bool)>, String> {
        let listed = match self {
            BlockObjects::Exports => qmp
                .query_block_exports()
                .await
                .map(|exports| exports.into_iter().map(|e| (e.id, false)).collect()),
            BlockObjects::Jobs => qmp.query_block_jobs().await.map(|jobs| {
                jobs.into_iter()
                    .map(|j| {
                        let concluded = j.status == "concluded";
                        (j.device, concluded)
                    })
                    .collect()
            }),
        };
        listed.map_err(|e| e.to_string())
    }

    /// Asks QEMU to remove object `id`.
    async fn remove(self, qmp: &Qmp, id: &str) -> Result<(), String> {
        let removed = match self {
            BlockObjects::Exports => qmp.block_export_del(id).await,
            BlockObjects::Jobs => qmp.block_job_cancel(id).await,
        };
        removed.map_err(|e| e.to_string())
    }

    /// Whether a failed removal is an error even when the object is gone in the end (an export
    /// already shutting down refuses deletion, which is fine).
    fn removal_errors_count(self) -> bool {
        matches!(self, BlockObjects::Jobs)
    }
}

/// Removes the objects of `kind` with the given ids that exist and waits until they are gone.
async fn remove_and_wait(qmp: &Qmp, kind: BlockObjects, ids: &[String]) -> Result<(), String> {
    let present: Vec<String> = kind
        .list(qmp)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| ids.contains(id))
        .collect();
    let mut errors = Vec::new();
    for id in &present {
        if let Err(e) = kind.remove(qmp, id).await {
            errors.push(e);
        }
    }
    let deadline = Instant::now() + TEARDOWN_WAIT;
    loop {
        let listed = kind.list(qmp).await?;
        let left: Vec<&(String, bool)> = listed.iter().filter(|(id, _)| present.contains(id)).collect();
        if left.is_empty() {
            return if errors.is_empty() || !kind.removal_errors_count() {
                Ok(())
            } else {
                Err(errors.join("; "))
            };
        }
        for (id, _) in left.iter().filter(|(_, concluded)| *concluded) {
            let _ = qmp.execute("job-dismiss", json!({ "id": id })).await;
        }
        if Instant::now() >= deadline {
            let names: Vec<&str> = left.iter().map(|(id, _)| id.as_str()).collect();
            errors.push(format!(
                "{} {} still present after {TEARDOWN_WAIT:?}",
                kind.name(),
                names.join(", ")
            ));
            return Err(errors.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Removes the scratch nodes and files of `disks` (best effort; returns the problems).
pub(super) async fn remove_scratch(qmp: &Qmp, disks: &[ViewDisk]) -> Vec<String> {
    let mut errors = Vec::new();
    match qmp
        .execute_as::<Vec<Value>>("query-named-block-nodes", Value::Null)
        .await
    {
        Ok(nodes) => {
            for d in disks {
                if nodes.iter().any(|n| n["node-name"] == d.scratch_node.as_str())
                    && let Err(e) = qmp.blockdev_del(&d.scratch_node).await
                {
                    errors.push(e.to_string());
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    for d in disks {
        if let Err(e) = remove_file(&d.scratch_file) {
            errors.push(e.to_string());
        }
    }
    errors
}
