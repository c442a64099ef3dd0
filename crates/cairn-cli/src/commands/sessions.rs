//! `cairn session …`, and following a session live (`cairn job run --wait`).

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use cairn_api::sessions::{LogLineDto, SessionDetail, SessionDto, SessionPageDto, TaskDto};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::Timestamp;
use serde_json::{Value, json};

use super::lookup::{f, id_by_name, s_or_dash, u};
use crate::args::{Global, SessionCommand};
use crate::client::{Client, typed_for};
use crate::output::{self, Table, bytes};

/// How often a followed session is polled.
const POLL: Duration = Duration::from_millis(500);
/// The command `wait` follows a session for.
const WAIT: &str = "job run --wait";
/// Log lines asked for per request.
const LOG_PAGE: u32 = 1000;

/// Whether a session or task state is final.
fn ended(state: &str) -> bool {
    matches!(state, "success" | "warning" | "failed" | "stopped")
}

/// The exit code for a session's final state: 0 success or warning, 1 failed, 3 stopped.
fn exit_code(state: &str) -> ExitCode {
    match state {
        "success" | "warning" => ExitCode::SUCCESS,
        "stopped" => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}

/// Duration of a session or task: its statistics, else its start and end times.
fn duration_of(statistics: &Value, started: Option<Timestamp>, ended: Option<Timestamp>) -> Option<f64> {
    f(statistics, "duration_secs").or_else(|| Some(ended?.duration_since(started?).as_secs_f64()))
}

/// Duration of a session.
fn session_duration(x: &SessionDto) -> Option<f64> {
    duration_of(&x.statistics, Some(x.started_at), x.ended_at)
}

/// Duration of a task.
fn task_duration(x: &TaskDto) -> Option<f64> {
    duration_of(&x.statistics, x.started_at, x.ended_at)
}

/// `source 80%, proxy 12%, network 3%, target 9%` from a busy object (or list of pairs).
fn busy_text(busy: Option<&Value>) -> String {
    let Some(busy) = busy else { return "-".into() };
    let mut parts = Vec::new();
    match busy {
        Value::Object(m) => {
            for k in ["source", "proxy", "network", "target"] {
                if let Some(v) = m.get(k).and_then(Value::as_f64) {
                    parts.push(format!("{k} {v:.0}%"));
                }
            }
            for (k, v) in m {
                if !["source", "proxy", "network", "target"].contains(&k.as_str())
                    && let Some(v) = v.as_f64()
                {
                    parts.push(format!("{k} {v:.0}%"));
                }
            }
        }
        Value::Array(a) => {
            for pair in a {
                if let (Some(k), Some(v)) = (pair.get(0).and_then(Value::as_str), pair.get(1).and_then(Value::as_f64)) {
                    parts.push(format!("{k} {v:.0}%"));
                }
            }
        }
        _ => {}
    }
    if parts.is_empty() { "-".into() } else { parts.join(", ") }
}

fn ratio(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

/// How what was stored compares with what was read: `read 37.4× more than it stored new
/// (19 unchanged, 2 zero, 0 duplicate blocks); dedup 1.00x, compression 2.10x`. Older servers
/// sent only `dedup_ratio`, meaning read ÷ new.
fn reduction_text(st: &Value) -> String {
    let (read_ratio, dedup) = match f(st, "read_ratio") {
        Some(r) => (Some(r), f(st, "dedup_ratio")),
        None => (f(st, "dedup_ratio"), None),
    };
    let read = match read_ratio {
        Some(_) if u(st, "new_bytes") == Some(0) => "stored nothing new".to_string(),
        Some(r) if r >= 1.05 => format!("read {r:.1}× more than it stored new"),
        Some(_) => "stored about what it read".to_string(),
        None => "-".to_string(),
    };
    let blocks = match (u(st, "unchanged_blocks"), u(st, "zero_blocks"), u(st, "dedup_blocks")) {
        (Some(unchanged), Some(zero), Some(dup)) => {
            format!(" ({unchanged} unchanged, {zero} zero, {dup} duplicate blocks)")
        }
        _ => String::new(),
    };
    format!(
        "{read}{blocks}; dedup {}, compression {}",
        ratio(dedup),
        ratio(f(st, "compression_ratio"))
    )
}

fn bytes_of(st: &Value, key: &str) -> String {
    u(st, key).map_or_else(|| "-".into(), bytes)
}

/// `web01/disk0` naming a task.
fn task_name(t: &TaskDto) -> String {
    if t.disk_name.is_empty() {
        t.vm_name.clone()
    } else {
        format!("{}/{}", t.vm_name, t.disk_name)
    }
}

/// The session's header and statistics.
fn print_summary(session: &SessionDto) {
    let st = &session.statistics;
    let state = &session.state;
    let ended_at = session
        .ended_at
        .map(|t| format!(", ended {}", output::time(&t.to_string())))
        .unwrap_or_default();
    let took = session_duration(session)
        .map(|d| format!(" in {}", output::duration(d)))
        .unwrap_or_default();
    println!(
        "session {} of job {}: {state}{took} (started {}{ended_at})",
        session.id,
        session.job_name,
        output::time(&session.started_at.to_string()),
    );
    if !st.is_object() {
        return;
    }
    if let Some(n) = u(st, "tasks") {
        let count = |k: &str| u(st, k).unwrap_or(0);
        println!(
            "  tasks: {n} ({} success, {} warning, {} failed, {} stopped)",
            count("tasks_success"),
            count("tasks_warning"),
            count("tasks_failed"),
            count("tasks_stopped")
        );
    }
    println!(
        "  read {}, transferred {}, new {}",
        bytes_of(st, "read_bytes"),
        bytes_of(st, "transferred_bytes"),
        bytes_of(st, "new_bytes")
    );
    println!("  {}", reduction_text(st));
    println!(
        "  busy: {}; bottleneck: {}",
        busy_text(st.get("busy")),
        s_or_dash(st, "bottleneck")
    );
    if let Some(a) = u(st, "attempt").filter(|a| *a > 1) {
        println!("  attempt {a}");
    }
}

/// Every log line of a task after line `after`, as sent (for `--json`) and as read, for
/// `cairn COMMAND`.
fn task_log(client: &Client, command: &str, task: i64, mut after: i64) -> anyhow::Result<Vec<(Value, LogLineDto)>> {
    let mut out = Vec::new();
    loop {
        let page = client.get_query(
            &format!("/api/v1/tasks/{task}/log"),
            &[("after", after.to_string()), ("limit", LOG_PAGE.to_string())],
        )?;
        let raw = match page {
            Value::Array(raw) => raw,
            _ => Vec::new(),
        };
        let lines: Vec<LogLineDto> = typed_for(command, Value::Array(raw.clone()))?;
        let Some(last) = lines.last().map(|l| l.id) else {
            break;
        };
        if last <= after {
            break;
        }
        after = last;
        out.extend(raw.into_iter().zip(lines));
    }
    Ok(out)
}

fn log_line(task: &str, l: &LogLineDto) -> String {
    format!("{}  {:<7} {task}: {}", output::time(&l.at.to_string()), l.level, l.text)
}

/// Follows a session until it ends: task states, log lines and progress bars; then prints its
/// result (or `{session, tasks}` with `--json`). Exit code per [`exit_code`].
pub fn wait(g: &Global, client: &Client, session_id: i64) -> anyhow::Result<ExitCode> {
    let live = !g.json && !g.quiet;
    let multi = MultiProgress::new();
    if !live || !std::io::stderr().is_terminal() {
        multi.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut bars: HashMap<i64, ProgressBar> = HashMap::new();
    let mut states: HashMap<i64, String> = HashMap::new();
    let mut log_after: HashMap<i64, i64> = HashMap::new();
    let mut logs_done: HashSet<i64> = HashSet::new();
    let mut session_state = String::new();
    let say = |line: String| {
        if live {
            multi.suspend(|| println!("{line}"));
        }
    };
    let (raw, detail) = loop {
        let raw = client.get(&format!("/api/v1/sessions/{session_id}"))?;
        let detail: SessionDetail = typed_for(WAIT, raw.clone())?;
        let state = detail.session.state.clone();
        // The final state is told by the summary at the end.
        if state != session_state && !ended(&state) {
            say(format!("session {session_id}: {state}"));
        }
        session_state.clone_from(&state);
        for t in &detail.tasks {
            let tid = t.id;
            let name = task_name(t);
            let tstate = t.state.clone();
            if states.get(&tid) != Some(&tstate) {
                say(format!("  {name}: {tstate}"));
                states.insert(tid, tstate.clone());
            }
            if tstate != "waiting" && !logs_done.contains(&tid) {
                let after = log_after.get(&tid).copied().unwrap_or(0);
                for (_, l) in task_log(client, WAIT, tid, after)? {
                    log_after.insert(tid, l.id);
                    say(format!("    {}", log_line(&name, &l)));
                }
                // A task's lines may still come after it ended (the VM's commit, retention), until
                // the session ends.
                if ended(&tstate) && ended(&state) {
                    logs_done.insert(tid);
                }
            }
            if tstate == "running"
                && let Some(p) = &t.progress
            {
                let bar = bars.entry(tid).or_insert_with(|| {
                    let b = ProgressBar::new(p.total_bytes)
                        .with_style(style.clone())
                        .with_message(name.clone());
                    multi.add(b)
                });
                bar.set_length(p.total_bytes);
                bar.set_position(p.done_bytes);
            } else if tstate != "running"
                && let Some(b) = bars.remove(&tid)
            {
                b.finish_and_clear();
                multi.remove(&b);
            }
        }
        if ended(&state) {
            break (raw, detail);
        }
        std::thread::sleep(POLL);
    };
    for (_, b) in bars.drain() {
        b.finish_and_clear();
    }
    let session = detail.session;
    if g.json {
        let (session, tasks) = match raw {
            Value::Object(mut m) => (m.remove("session"), m.remove("tasks")),
            _ => (None, None),
        };
        output::json(&json!({"session": session.unwrap_or(Value::Null), "tasks": tasks.unwrap_or(json!([]))}))?;
    } else {
        print_summary(&session);
        match session.state.as_str() {
            "warning" => {
                eprintln!("warning: session {session_id} ended with warnings (see `cairn session show {session_id}`)")
            }
            "failed" => eprintln!("error: session {session_id} failed (see `cairn session show {session_id}`)"),
            "stopped" => eprintln!("session {session_id} was stopped"),
            _ => {}
        }
    }
    Ok(exit_code(&session.state))
}

fn list_sessions(g: &Global, client: &Client, job: Option<&str>, limit: u32, all: bool) -> anyhow::Result<()> {
    let job_id = match job {
        Some(name) => Some(id_by_name(client, "/api/v1/jobs", "job", name)?),
        None => None,
    };
    let mut sessions: Vec<SessionDto> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("limit", limit.to_string())];
        if let Some(j) = job_id {
            q.push(("job", j.to_string()));
        }
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page: SessionPageDto = typed_for("session list", client.get_query("/api/v1/sessions", &q)?)?;
        sessions.extend(page.sessions);
        cursor = page.next_cursor;
        if !all || cursor.is_none() {
            break;
        }
    }
    if g.json {
        return output::json(&json!({"sessions": sessions, "next_cursor": cursor}));
    }
    if sessions.is_empty() {
        println!("no sessions");
        return Ok(());
    }
    let mut t = Table::new(&[
        ">ID",
        "JOB",
        "STATE",
        "STARTED",
        ">DURATION",
        ">READ",
        ">TRANSFERRED",
        "BOTTLENECK",
    ]);
    for x in &sessions {
        let st = &x.statistics;
        t.row(vec![
            x.id.to_string(),
            x.job_name.clone(),
            x.state.clone(),
            output::time(&x.started_at.to_string()),
            session_duration(x).map_or_else(|| "-".into(), output::duration),
            bytes_of(st, "read_bytes"),
            bytes_of(st, "transferred_bytes"),
            s_or_dash(st, "bottleneck"),
        ]);
    }
    t.print();
    if cursor.is_some() && !g.quiet {
        eprintln!("(more sessions: --all lists every one)");
    }
    Ok(())
}

fn show_session(g: &Global, client: &Client, id: i64) -> anyhow::Result<()> {
    let detail: SessionDetail = typed_for("session show", client.get(&format!("/api/v1/sessions/{id}"))?)?;
    let mut logs = Vec::new();
    for t in &detail.tasks {
        logs.push(task_log(client, "session show", t.id, 0)?);
    }
    let (session, tasks) = (detail.session, detail.tasks);
    if g.json {
        let mut shown = Vec::new();
        for (t, log) in tasks.iter().zip(&logs) {
            let mut v = serde_json::to_value(t)?;
            if let Value::Object(m) = &mut v {
                m.insert("log".into(), log.iter().map(|(raw, _)| raw.clone()).collect());
            }
            shown.push(v);
        }
        return output::json(&json!({"session": session, "tasks": shown}));
    }
    print_summary(&session);
    if tasks.is_empty() {
        println!("no tasks");
        return Ok(());
    }
    println!();
    let mut table = Table::new(&[
        "TASK",
        "STATE",
        "STARTED",
        ">DURATION",
        ">READ",
        ">TRANSFERRED",
        "BOTTLENECK",
        "BUSY",
    ]);
    for t in &tasks {
        let st = &t.statistics;
        let mut state = t.state.clone();
        if let Some(p) = &t.progress
            && p.total_bytes > 0
        {
            let pct = p.done_bytes as f64 * 100.0 / p.total_bytes as f64;
            state = format!("{state} {pct:.0}%");
        }
        table.row(vec![
            task_name(t),
            state,
            t.started_at
                .map_or_else(|| "-".into(), |at| output::time(&at.to_string())),
            task_duration(t).map_or_else(|| "-".into(), output::duration),
            bytes_of(st, "read_bytes"),
            bytes_of(st, "transferred_bytes"),
            s_or_dash(st, "bottleneck"),
            busy_text(st.get("busy")),
        ]);
    }
    table.print();
    for (t, log) in tasks.iter().zip(&logs) {
        if log.is_empty() {
            continue;
        }
        println!();
        println!("log of {}:", task_name(t));
        for (_, l) in log {
            println!("  {}  {:<7} {}", output::time(&l.at.to_string()), l.level, l.text);
        }
    }
    Ok(())
}

pub fn sessions(g: &Global, c: &SessionCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    match c {
        SessionCommand::List { job, limit, all } => list_sessions(g, &client, job.as_deref(), *limit, *all)?,
        SessionCommand::Show { id } => show_session(g, &client, *id)?,
        SessionCommand::Stop { id } => {
            client.post(&format!("/api/v1/sessions/{id}/stop"), &json!({}))?;
            if g.json {
                output::json(&json!({"session_id": id, "stopping": true}))?;
            } else {
                println!("stopping session {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_shown_in_a_fixed_order() {
        let b = json!({"target": 9.4, "source": 80.2, "network": 3.0, "proxy": 12.0});
        assert_eq!(busy_text(Some(&b)), "source 80%, proxy 12%, network 3%, target 9%");
        assert_eq!(busy_text(None), "-");
    }

    #[test]
    fn exit_codes_follow_the_result() {
        assert_eq!(exit_code("success"), ExitCode::SUCCESS);
        assert_eq!(exit_code("warning"), ExitCode::SUCCESS);
        assert_eq!(exit_code("failed"), ExitCode::from(1));
        assert_eq!(exit_code("stopped"), ExitCode::from(3));
    }

    #[test]
    fn durations_come_from_times_without_statistics() {
        let at = |t: &str| t.parse::<Timestamp>().ok();
        let d = duration_of(&Value::Null, at("2026-11-23T10:00:00Z"), at("2026-11-23T10:01:30Z"));
        assert_eq!(d, Some(90.0));
    }
}
