//! Task rows and log lines that the local and the remote VM paths write alike.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use cairn_configdb::{ConfigDb, LogLevel, SessionState};
use jiff::Timestamp;

use super::lock;
use super::session::{Shared, log_db, set_task_state};
use super::settings::VmUnit;
use super::vm::VmOutcome;

/// The log text of the session's stop ("stopped" if no reason is known).
pub(crate) fn stop_text(shared: &Shared) -> String {
    shared
        .stop
        .reason()
        .map_or_else(|| "stopped".to_string(), |r| r.log_text())
}

/// Logs `text` at `level` on every task of `tasks` and sets each to `state`.
pub(crate) async fn end_all(db: &ConfigDb, tasks: &[i64], level: LogLevel, state: SessionState, text: &str) {
    for &task in tasks {
        log_db(db, task, level, text).await;
        set_task_state(db, task, state).await;
    }
}

/// A session already stopped before the VM began: its tasks end stopped with the reason.
pub(crate) async fn stopped_before_start(shared: &Shared, tasks: &[i64]) -> Option<VmOutcome> {
    let reason = shared.stop.reason()?;
    end_all(
        &shared.mgr.ctx.db,
        tasks,
        LogLevel::Warning,
        SessionState::Stopped,
        &reason.log_text(),
    )
    .await;
    Some(VmOutcome::Stopped)
}

/// Logs `text` on disk `disk`'s task, or on every task when there is no such disk.
pub(crate) async fn log_event(db: &ConfigDb, tasks: &[i64], disk: Option<usize>, level: LogLevel, text: &str) {
    match disk.and_then(|d| tasks.get(d)) {
        Some(&task) => log_db(db, task, level, text).await,
        None => {
            for &task in tasks {
                log_db(db, task, level, text).await;
            }
        }
    }
}

/// Writes live-backup lines to the VM's task logs (a line without a disk goes to every task).
pub(crate) async fn log_lines(shared: &Shared, tasks: &[i64], lines: &[crate::live::backup::Line]) {
    for line in lines {
        log_event(&shared.mgr.ctx.db, tasks, line.disk, line.level, &line.text).await;
    }
}

/// The paths of the VM's disks, relative ones under its host's location.
pub(crate) fn disk_paths(unit: &VmUnit) -> Vec<PathBuf> {
    unit.disks
        .iter()
        .map(|d| {
            let p = PathBuf::from(&d.path);
            if p.is_relative() {
                Path::new(&unit.host.location).join(p)
            } else {
                p
            }
        })
        .collect()
}

/// No progress of the VM's tasks is live any more.
pub(crate) fn clear_progress(shared: &Shared, tasks: &[i64]) {
    for &task in tasks {
        lock(&shared.mgr.progress).remove(&task);
    }
}

/// Records that disk task `task` runs on proxy `proxy_id` since `at`: its proxy and repository,
/// its state, the session's state (on its first running task) and the line `line`.
pub(crate) async fn record_disk_start(
    shared: &Shared,
    task: i64,
    proxy_id: i64,
    at: Timestamp,
    line: &str,
) -> Result<(), cairn_configdb::Error> {
    let db = &shared.mgr.ctx.db;
    db.assign_task(task, Some(proxy_id), Some(shared.repository.id)).await?;
    db.set_task_state(task, SessionState::Running, at).await?;
    if !shared.running.swap(true, Ordering::SeqCst) {
        db.set_session_state(shared.session_id, SessionState::Running, at)
            .await?;
    }
    db.append_task_log(task, LogLevel::Info, line, Timestamp::now())
        .await
        .map(|_| ())
}

/// Stores a task's statistics document; a failure is traced.
pub(crate) async fn store_statistics(db: &ConfigDb, task: i64, doc: &serde_json::Value) {
    if let Err(e) = db.set_task_statistics(task, doc).await {
        tracing::error!(task, error = %e, "storing task statistics failed");
    }
}

/// The VM's point is committed and retention ran: its line goes to the first task (a warning
/// there if retention failed), and every task warns if a running VM's view fell back.
pub(crate) async fn committed_outcome(
    db: &ConfigDb,
    tasks: &[i64],
    retention: &str,
    retention_failed: bool,
    fell_back: bool,
) -> VmOutcome {
    let level = if retention_failed {
        LogLevel::Warning
    } else {
        LogLevel::Info
    };
    log_db(db, tasks[0], level, retention).await;
    if retention_failed {
        set_task_state(db, tasks[0], SessionState::Warning).await;
    }
    if fell_back {
        for &task in tasks {
            set_task_state(db, task, SessionState::Warning).await;
        }
    }
    VmOutcome::Success {
        warning: retention_failed || fell_back,
    }
}
