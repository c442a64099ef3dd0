//! A VM's end as the server records it: the source's summary, per-task statistics, the
//! committed point (or why there is none).

use cairn_configdb::{LogLevel, SessionState};
use cairn_mover::protocol::SourceSummary;
use cairn_repo::PointStats;

use super::super::session::{log_db, set_task_state};
use super::super::vm::{VmOutcome, human_bytes};
use super::super::{stats, tasks, view};
use super::Ctx;
use super::relay::Progress;
use crate::live::backup::LiveBackup;

/// Records the VM's end on its tasks, after ending a running VM's view (its new checkpoints
/// become current only when the point was committed).
pub(super) async fn finish(ctx: &Ctx<'_>, progress: Progress, live: Option<LiveBackup>) -> VmOutcome {
    let (db, tasks) = (ctx.db, ctx.tasks);
    tasks::clear_progress(ctx.shared, tasks);
    let fell_back = view::end(ctx.shared, tasks, live, progress.committed.is_some()).await;
    if let Some(summary) = &progress.summary {
        log_db(db, tasks[0], LogLevel::Info, &summary_line(ctx.proxy_name, summary)).await;
    }
    store_statistics(ctx, &progress).await;
    if let Some((point, kind, notes, retention, retention_failed)) = progress.committed {
        for note in &notes {
            tasks::log_event(db, tasks, None, LogLevel::Info, note).await;
        }
        let text = format!(
            "restore point {point} ({kind}) of {} committed to repository {} by agent {}",
            ctx.unit.repo_name(),
            ctx.shared.repository.settings.name,
            ctx.repo.agent.name
        );
        for &task in tasks {
            log_db(db, task, LogLevel::Info, &text).await;
        }
        return tasks::committed_outcome(db, tasks, &retention, retention_failed, fell_back).await;
    }
    if let Some(reason) = progress.stopped.filter(|_| progress.failure.is_none()) {
        let text = format!("{reason}: no restore point was committed");
        tasks::end_all(db, tasks, LogLevel::Warning, SessionState::Stopped, &text).await;
        return VmOutcome::Stopped;
    }
    let (disk, text) = progress
        .failure
        .unwrap_or((None, "the task ended without a restore point".to_string()));
    for (i, &task) in tasks.iter().enumerate() {
        let line = match disk {
            Some(d) if d as usize != i => format!("not backed up: disk {d} of this VM failed: {text}"),
            _ if progress.finished.contains_key(&(i as u32)) => {
                format!("not backed up: the VM's restore point was not committed: {text}")
            }
            _ => text.clone(),
        };
        log_db(db, task, LogLevel::Error, &line).await;
        set_task_state(db, task, SessionState::Failed).await;
    }
    VmOutcome::Failed
}

/// The proxy's summary of what it read and sent.
fn summary_line(proxy_name: &str, summary: &SourceSummary) -> String {
    format!(
        "proxy {proxy_name}: read {} in {:.2} s, sent {} blocks ({} all-zero, sent without data), {} on the wire \
         over {} stream(s); {} block(s) re-sent, {} reconnection(s), {:.2} s waiting on network throttling",
        human_bytes(summary.read_bytes),
        summary.read_secs,
        summary.blocks,
        summary.zero_blocks,
        human_bytes(summary.sent_bytes),
        summary.streams,
        summary.resent_blocks,
        summary.reconnects,
        summary.throttled_secs
    )
}

/// Stores each finished disk's statistics, its share of the network throttling by the bytes it
/// read, and the busy percentages of both machines.
async fn store_statistics(ctx: &Ctx<'_>, progress: &Progress) {
    let total_read: u64 = progress.finished.values().map(|(s, _, _)| s.read_bytes).sum();
    let network_throttle = progress.summary.as_ref().map_or(0.0, |s| s.throttled_secs);
    let point = progress.committed.as_ref().map(|c| c.0.clone());
    for (i, &task) in ctx.tasks.iter().enumerate() {
        if let Some((stats, throttle, wall)) = progress.finished.get(&(i as u32)) {
            let mut stats = stats.clone();
            stats.busy = remote_busy(&stats, progress.summary.as_ref());
            let share = if total_read > 0 {
                stats.read_bytes as f64 / total_read as f64
            } else {
                0.0
            };
            let doc = stats::task_statistics(&stats, throttle + network_throttle * share, *wall, point.as_deref());
            tasks::store_statistics(ctx.db, task, &doc).await;
        }
    }
}

/// Busy percentages of a disk on the two machines: the engine's "source" is the time it waited
/// for blocks from the network; the proxy's read time becomes "source".
fn remote_busy(stats: &PointStats, summary: Option<&SourceSummary>) -> Vec<(String, f64)> {
    let engine = |name: &str| stats.busy.iter().find(|(n, _)| n == name).map_or(0.0, |(_, v)| *v);
    let source = summary
        .filter(|s| s.elapsed_secs > 0.0)
        .map_or(0.0, |s| (s.read_secs / s.elapsed_secs * 100.0).min(100.0));
    vec![
        ("source".to_string(), source),
        ("proxy".to_string(), engine("proxy")),
        ("network".to_string(), engine("source")),
        ("target".to_string(), engine("target")),
    ]
}
