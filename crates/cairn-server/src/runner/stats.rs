//! The statistics documents of tasks and sessions (see the API contract).
//!
//! Task: `{read_bytes, read_blocks, transferred_bytes, new_blocks, new_bytes, zero_blocks,
//! unchanged_blocks, dedup_blocks, read_ratio, dedup_ratio, compression_ratio, duration_secs,
//! busy:{source,proxy,network,target,throttling}, bottleneck, point_id, wall_secs}`.
//!
//! - `transferred_bytes`: bytes written to the repository (stored records);
//! - `read_ratio`: bytes read ÷ new (uncompressed) bytes stored — how much smaller what was
//!   stored is than what was read, by skipping zero, unchanged and duplicate blocks (a full
//!   re-read of a disk that barely changed is mostly unchanged blocks); 1.0 when nothing new was
//!   stored;
//! - `dedup_ratio`: deduplication alone — (new + duplicate blocks) ÷ new blocks: the blocks that
//!   differed from the previous point and were not zero, ÷ those stored because no identical
//!   block was stored already; 1.0 when nothing new was stored;
//! - `compression_ratio`: new bytes ÷ transferred bytes; 1.0 when nothing was stored;
//! - `duration_secs`: the engine's time for the disk; `wall_secs`: the task's time as the
//!   server saw it, from getting its task slot to its end (the difference is server overhead);
//! - `busy`: percent of the time each stage worked; `throttling` is the time the repository's
//!   write rate limit made the task wait. `bottleneck` names the highest;
//! - `point_id`: the restore point, once the VM's point is committed (`null` before).
//!
//! Session: `{tasks, tasks_success, tasks_warning, tasks_failed, tasks_stopped, read_bytes,
//! transferred_bytes, new_bytes, new_blocks, dedup_blocks, unchanged_blocks, zero_blocks,
//! read_ratio, dedup_ratio, compression_ratio, duration_secs, busy,
//! bottleneck, attempt, trigger}` plus `error` when the session failed for a reason of its own
//! (backup window closed, server restarted). Sums over the tasks; `busy` is the tasks' busy
//! percentages weighted by their durations, and `bottleneck` the stage with the most busy time
//! summed over the tasks; `duration_secs` is the session's wall time; `attempt` counts passes
//! (1 = no retry yet).

use cairn_configdb::{SessionState, Task};
use cairn_repo::PointStats;
use serde_json::{Value, json};

use super::Trigger;

/// Stage names in the `busy` objects, in order.
pub(crate) const STAGES: [&str; 5] = ["source", "proxy", "network", "target", "throttling"];

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// The stage with the highest value (`""` if none is above zero).
fn highest(values: &[(&str, f64)]) -> String {
    values
        .iter()
        .filter(|(_, v)| *v > 0.0)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _)| n.to_string())
        .unwrap_or_default()
}

/// The statistics of a task from its disk's engine statistics, the time it waited for the write
/// rate limit, its wall time and (once committed) its restore point.
pub(crate) fn task_statistics(s: &PointStats, throttle_secs: f64, wall_secs: f64, point_id: Option<&str>) -> Value {
    let engine = |name: &str| s.busy.iter().find(|(n, _)| n == name).map_or(0.0, |(_, v)| *v);
    let throttling = if s.duration_secs > 0.0 {
        (throttle_secs / s.duration_secs * 100.0).min(100.0)
    } else {
        0.0
    };
    let busy: Vec<(&str, f64)> = STAGES
        .iter()
        .map(|&stage| {
            (
                stage,
                if stage == "throttling" {
                    throttling
                } else {
                    engine(stage)
                },
            )
        })
        .collect();
    json!({
        "read_bytes": s.read_bytes,
        "read_blocks": s.read_blocks,
        "transferred_bytes": s.stored_bytes,
        "new_blocks": s.new_blocks,
        "new_bytes": s.new_bytes,
        "zero_blocks": s.zero_blocks,
        "unchanged_blocks": s.unchanged_blocks,
        "dedup_blocks": s.dedup_blocks,
        "read_ratio": ratio(s.read_bytes, s.new_bytes),
        "dedup_ratio": ratio(s.new_blocks + s.dedup_blocks, s.new_blocks),
        "compression_ratio": ratio(s.new_bytes, s.stored_bytes),
        "duration_secs": s.duration_secs,
        "busy": busy.iter().map(|(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "bottleneck": highest(&busy),
        "point_id": point_id,
        "wall_secs": wall_secs,
    })
}

/// What a finished disk read and stored, for its log line: `read … ({n} blocks) in … s; {n} new
/// blocks (… → …), {n} zero, {n} unchanged, {n} duplicate`.
pub(crate) fn disk_done_text(stats: &PointStats) -> String {
    use super::vm::human_bytes;
    format!(
        "read {} ({} blocks) in {:.2} s; {} new blocks ({} → {}), {} zero, {} unchanged, {} duplicate",
        human_bytes(stats.read_bytes),
        stats.read_blocks,
        stats.duration_secs,
        stats.new_blocks,
        human_bytes(stats.new_bytes),
        human_bytes(stats.stored_bytes),
        stats.zero_blocks,
        stats.unchanged_blocks,
        stats.dedup_blocks,
    )
}

/// The session document from its tasks.
pub(crate) fn session_statistics(
    tasks: &[Task],
    attempt: u32,
    trigger: &Trigger,
    duration_secs: f64,
    error: Option<&str>,
) -> Value {
    let count = |state: SessionState| tasks.iter().filter(|t| t.state == state).count();
    let field = |t: &Task, name: &str| t.statistics.get(name).and_then(Value::as_u64).unwrap_or(0);
    let sum = |name: &str| tasks.iter().map(|t| field(t, name)).sum::<u64>();
    let (read, transferred, new) = (sum("read_bytes"), sum("transferred_bytes"), sum("new_bytes"));
    let (new_blocks, dedup_blocks) = (sum("new_blocks"), sum("dedup_blocks"));
    // Busy seconds per stage, summed over the tasks.
    let mut busy_secs = [0.0f64; STAGES.len()];
    let mut total_secs = 0.0;
    for t in tasks {
        let Some(duration) = t.statistics.get("duration_secs").and_then(Value::as_f64) else {
            continue;
        };
        total_secs += duration;
        for (i, stage) in STAGES.iter().enumerate() {
            let pct = t
                .statistics
                .get("busy")
                .and_then(|b| b.get(stage))
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            busy_secs[i] += pct / 100.0 * duration;
        }
    }
    let busy: serde_json::Map<String, Value> = STAGES
        .iter()
        .zip(busy_secs)
        .map(|(stage, secs)| {
            let pct = if total_secs > 0.0 {
                secs / total_secs * 100.0
            } else {
                0.0
            };
            (stage.to_string(), json!(pct))
        })
        .collect();
    let summed: Vec<(&str, f64)> = STAGES.iter().copied().zip(busy_secs).collect();
    let mut doc = json!({
        "tasks": tasks.len(),
        "tasks_success": count(SessionState::Success),
        "tasks_warning": count(SessionState::Warning),
        "tasks_failed": count(SessionState::Failed),
        "tasks_stopped": count(SessionState::Stopped),
        "read_bytes": read,
        "transferred_bytes": transferred,
        "new_bytes": new,
        "new_blocks": new_blocks,
        "dedup_blocks": dedup_blocks,
        "unchanged_blocks": sum("unchanged_blocks"),
        "zero_blocks": sum("zero_blocks"),
        "read_ratio": ratio(read, new),
        "dedup_ratio": ratio(new_blocks + dedup_blocks, new_blocks),
        "compression_ratio": ratio(new, transferred),
        "duration_secs": duration_secs,
        "busy": busy,
        "bottleneck": highest(&summed),
        "attempt": attempt,
        "trigger": trigger,
    });
    if let Some(error) = error {
        doc["error"] = json!(error);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(busy: [f64; 4], duration: f64) -> PointStats {
        PointStats {
            read_bytes: 4 << 20,
            read_blocks: 4,
            new_blocks: 2,
            new_bytes: 2 << 20,
            dedup_blocks: 1,
            unchanged_blocks: 1,
            stored_bytes: 1 << 20,
            duration_secs: duration,
            busy: ["source", "proxy", "network", "target"]
                .iter()
                .zip(busy)
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
            bottleneck: String::new(),
            ..PointStats::default()
        }
    }

    #[test]
    fn task_ratios_and_throttling_bottleneck() {
        let doc = task_statistics(&stats([10.0, 20.0, 0.0, 5.0], 2.0), 1.5, 2.1, Some("abcd"));
        assert_eq!(doc["read_ratio"], 2.0, "4 MiB read, 2 MiB new");
        assert_eq!(doc["dedup_ratio"], 1.5, "2 new blocks and 1 duplicate");
        assert_eq!(doc["compression_ratio"], 2.0);
        assert_eq!(doc["transferred_bytes"], 1 << 20);
        assert_eq!(doc["busy"]["throttling"], 75.0);
        assert_eq!(doc["bottleneck"], "throttling");
        assert_eq!(doc["point_id"], "abcd");
        let doc = task_statistics(&stats([10.0, 20.0, 0.0, 5.0], 2.0), 0.0, 2.1, None);
        assert_eq!(doc["bottleneck"], "proxy");
        assert!(doc["point_id"].is_null());
    }

    #[test]
    fn session_bottleneck_weighs_busy_by_duration() {
        let task = |busy, duration, state| Task {
            id: 1,
            session_id: 1,
            vm_id: None,
            disk_id: None,
            vm_name: "vm".into(),
            disk_name: "d".into(),
            state,
            proxy_id: None,
            repository_id: None,
            started_at: None,
            ended_at: None,
            statistics: task_statistics(&stats(busy, duration), 0.0, duration, None),
        };
        // A long source-bound task outweighs a short proxy-bound one.
        let tasks = [
            task([90.0, 10.0, 0.0, 0.0], 10.0, SessionState::Success),
            task([0.0, 100.0, 0.0, 0.0], 1.0, SessionState::Failed),
        ];
        let doc = session_statistics(&tasks, 2, &Trigger::Schedule, 12.0, None);
        assert_eq!(doc["bottleneck"], "source");
        assert_eq!(doc["tasks"], 2);
        assert_eq!(doc["tasks_success"], 1);
        assert_eq!(doc["tasks_failed"], 1);
        assert_eq!(doc["read_bytes"], 8 << 20);
        assert_eq!(doc["read_ratio"], 2.0);
        assert_eq!(doc["dedup_ratio"], 1.5);
        assert_eq!(doc["unchanged_blocks"], 2);
        assert_eq!(doc["trigger"]["kind"], "schedule");
        let source = doc["busy"]["source"].as_f64().unwrap();
        assert!((source - 900.0 / 11.0).abs() < 1e-9, "{source}");
    }
}
