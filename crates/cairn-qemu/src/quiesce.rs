//! Consistency modes: take a view's instant ([`PreparedView::commit`]) with the guest
//! quiesced by its agent (online), paused (offline) or as it is (crash-consistent),
//! with the seeds' fallback rules (DESIGN §5):
//!
//! - [`ConsistencyMode::Online`]: a freeze left by an interrupted earlier run is thawed
//!   (with a warning), then the pre-freeze script (through the agent, when set),
//!   `guest-fsfreeze-freeze`, commit, thaw at once, post-thaw script. When the agent is
//!   absent, does not answer, or the freeze or the pre-freeze script fails: with
//!   `require_app` the call fails naming the cause (no view, nothing left frozen or
//!   attached); otherwise the view is crash-consistent and the report carries a warning.
//! - [`ConsistencyMode::Offline`]: as online, but when the agent path fails the VM is
//!   paused (`stop`) for the commit and resumed (`cont`) at once — never crash-consistent.
//! - [`ConsistencyMode::Crash`]: commit only; the agent is not called.
//!
//! Thaw and resume are guaranteed on every path: errors, timeouts and a dropped
//! (cancelled) future alike — a guard thaws or resumes from a spawned task.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::qga::{FreezeStatus, GuestAgent};
use crate::qmp::Qmp;
use crate::view::{LiveView, PreparedView};
use crate::{Error, Result};

/// How a view's instant is made consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyMode {
    /// Application-consistent: the guest agent freezes the filesystems.
    #[default]
    Online,
    /// The VM is paused while the instant is taken.
    Offline,
    /// Crash-consistent: the instant as the disks are.
    Crash,
}

impl std::fmt::Display for ConsistencyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConsistencyMode::Online => "online",
            ConsistencyMode::Offline => "offline",
            ConsistencyMode::Crash => "crash",
        })
    }
}

/// What the job asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyPolicy {
    /// The wanted mode.
    pub mode: ConsistencyMode,
    /// Fail instead of falling back when the guest cannot be quiesced.
    pub require_app: bool,
    /// A program in the guest run (through the agent, no shell, no arguments) before the
    /// freeze; a non-zero exit counts as a failed quiesce.
    pub pre_freeze: Option<String>,
    /// A program in the guest run after the thaw (also after a failed freeze when the
    /// pre-freeze script ran); a failure is a warning.
    pub post_thaw: Option<String>,
    /// How long the freeze may take.
    pub freeze_timeout: Duration,
    /// How long each script may run.
    #[serde(default = "default_script_timeout")]
    pub script_timeout: Duration,
}

fn default_script_timeout() -> Duration {
    Duration::from_secs(300)
}

impl Default for ConsistencyPolicy {
    fn default() -> Self {
        ConsistencyPolicy {
            mode: ConsistencyMode::Online,
            require_app: false,
            pre_freeze: None,
            post_thaw: None,
            freeze_timeout: Duration::from_secs(30),
            script_timeout: default_script_timeout(),
        }
    }
}

/// What was achieved, for the session log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyReport {
    /// The consistency the view has.
    pub achieved: ConsistencyMode,
    /// From the freeze request to the thaw's reply (zero when not frozen).
    pub frozen_for: Duration,
    /// From `stop` to the reply of `cont` (zero when not paused).
    pub paused_for: Duration,
    /// Problems the user should see (a fallback and its cause, a failed script).
    pub warnings: Vec<String>,
    /// What happened, step by step.
    pub log: Vec<String>,
}

impl ConsistencyReport {
    fn new(mode: ConsistencyMode) -> Self {
        ConsistencyReport {
            achieved: mode,
            frozen_for: Duration::ZERO,
            paused_for: Duration::ZERO,
            warnings: Vec::new(),
            log: Vec::new(),
        }
    }

    fn log(&mut self, line: String) {
        tracing::info!(target: "cairn_qemu::quiesce", "{line}");
        self.log.push(line);
    }

    fn warn(&mut self, line: String) {
        tracing::warn!(target: "cairn_qemu::quiesce", "{line}");
        self.log.push(format!("warning: {line}"));
        self.warnings.push(line);
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Thaws the guest when dropped armed (from a spawned task).
struct ThawGuard {
    agent: Option<GuestAgent>,
}

impl ThawGuard {
    /// Thaws now (three attempts); `Err` names the last problem.
    async fn thaw(&mut self) -> std::result::Result<u64, String> {
        let Some(agent) = self.agent.take() else { return Ok(0) };
        thaw_with_retries(&agent).await
    }
}

async fn thaw_with_retries(agent: &GuestAgent) -> std::result::Result<u64, String> {
    let mut last = String::new();
    for attempt in 1..=3 {
        match agent.fsfreeze_thaw().await {
            Ok(n) => return Ok(n),
            Err(e) => {
                tracing::warn!(target: "cairn_qemu::quiesce", "thaw attempt {attempt} failed: {e}");
                last = e.to_string();
            }
        }
    }
    Err(last)
}

impl Drop for ThawGuard {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        if let Err(e) = thaw_with_retries(&agent).await {
                            tracing::error!(target: "cairn_qemu::quiesce", "guest may stay frozen: thaw failed: {e}");
                        }
                    });
                }
                Err(_) => {
                    tracing::error!(target: "cairn_qemu::quiesce", "guest may stay frozen: no runtime to thaw it")
                }
            }
        }
    }
}

/// Resumes the VM when dropped armed (from a spawned task).
struct ResumeGuard {
    qmp: Option<Qmp>,
}

impl ResumeGuard {
    async fn resume(&mut self) -> std::result::Result<(), String> {
        let Some(qmp) = self.qmp.take() else { return Ok(()) };
        resume_with_retries(&qmp).await
    }
}

async fn resume_with_retries(qmp: &Qmp) -> std::result::Result<(), String> {
    let mut last = String::new();
    for attempt in 1..=3 {
        match qmp.cont().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(target: "cairn_qemu::quiesce", "cont attempt {attempt} failed: {e}");
                last = e.to_string();
                if e.is_closed() {
                    break;
                }
            }
        }
    }
    Err(last)
}

impl Drop for ResumeGuard {
    fn drop(&mut self) {
        if let Some(qmp) = self.qmp.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        if let Err(e) = resume_with_retries(&qmp).await {
                            tracing::error!(target: "cairn_qemu::quiesce", "VM may stay paused: cont failed: {e}");
                        }
                    });
                }
                Err(_) => tracing::error!(target: "cairn_qemu::quiesce", "VM may stay paused: no runtime to resume it"),
            }
        }
    }
}

/// Runs a guest script; `Err` describes the failure.
async fn run_script(agent: &GuestAgent, which: &str, path: &str, timeout: Duration) -> std::result::Result<(), String> {
    match agent.exec_timeout(path, &[], None, timeout).await {
        Ok(out) if out.success() => Ok(()),
        Ok(out) => Err(format!(
            "{which} script {path} exited with code {}: {}",
            out.code,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{which} script {path}: {e}")),
    }
}

/// The VM's guest agent as the caller found it.
#[derive(Debug, Clone)]
pub enum Agent {
    /// Connected (and resynchronised).
    Ready(GuestAgent),
    /// The VM has no guest agent channel.
    Missing,
    /// It has one, but it cannot be used now; the text names why (its socket is held by another
    /// client, the agent does not run in the guest, no reply in time).
    Unusable(String),
}

/// Takes the view's instant with the consistency `policy` asks for (see the module
/// docs for the rules). `agent` is the VM's guest agent, if it has one.
pub async fn snapshot(
    qmp: &Qmp,
    agent: Option<&GuestAgent>,
    policy: &ConsistencyPolicy,
    prepared: PreparedView,
) -> Result<(LiveView, ConsistencyReport)> {
    let agent = agent.map_or(Agent::Missing, |a| Agent::Ready(a.clone()));
    snapshot_with(qmp, &agent, policy, prepared).await
}

/// Like [`snapshot`], with the agent as the caller found it: when it is [`Agent::Unusable`], the
/// fallback's warning (or the failure with `require_app`) names the caller's cause.
pub async fn snapshot_with(
    qmp: &Qmp,
    agent: &Agent,
    policy: &ConsistencyPolicy,
    prepared: PreparedView,
) -> Result<(LiveView, ConsistencyReport)> {
    let agent = match agent {
        Agent::Ready(a) => Ok(a),
        Agent::Missing => Err("the VM has no guest agent".to_owned()),
        Agent::Unusable(cause) => Err(cause.clone()),
    };
    let mut report = ConsistencyReport::new(policy.mode);
    if policy.mode == ConsistencyMode::Crash {
        let view = prepared.commit(qmp).await?;
        report.achieved = ConsistencyMode::Crash;
        report.log("crash-consistent view taken (no quiescing asked)".into());
        return Ok((view, report));
    }

    // The application-consistent path; `break` carries the cause of a failure before the
    // commit (and whether the pre-freeze script ran, so post-thaw undoes it).
    let (cause, pre_ran) = 'app: {
        let agent = match &agent {
            Ok(agent) => *agent,
            Err(cause) => break 'app (cause.clone(), false),
        };
        if let Err(e) = agent.ping().await {
            break 'app (format!("the guest agent does not answer: {e}"), false);
        }
        // A freeze left by an interrupted earlier run (cairn killed while the guest was frozen).
        if let Ok(FreezeStatus::Frozen) = agent.fsfreeze_status().await {
            match thaw_with_retries(agent).await {
                Ok(n) => report.warn(format!(
                    "the guest was left frozen (an interrupted earlier run?): thawed {n}"
                )),
                Err(e) => break 'app (format!("the guest is frozen and does not thaw: {e}"), false),
            }
        }
        let mut pre_ran = false;
        if let Some(script) = &policy.pre_freeze {
            let started = Instant::now();
            if let Err(cause) = run_script(agent, "pre-freeze", script, policy.script_timeout).await {
                break 'app (cause, false);
            }
            pre_ran = true;
            report.log(format!("pre-freeze script {script} ran in {}", ms(started.elapsed())));
        }
        let mut guard = ThawGuard {
            agent: Some(agent.clone()),
        };
        let frozen_at = Instant::now();
        let count = match agent.fsfreeze_freeze_timeout(policy.freeze_timeout).await {
            Ok(n) => n,
            Err(e) => {
                if let Err(t) = guard.thaw().await {
                    report.warn(format!("thaw after the failed freeze failed: {t}"));
                }
                break 'app (format!("guest filesystem freeze failed: {e}"), pre_ran);
            }
        };
        let freeze_took = frozen_at.elapsed();
        let committed = prepared.commit(qmp).await;
        let thawed = guard.thaw().await;
        report.frozen_for = frozen_at.elapsed();
        match thawed {
            Ok(n) => report.log(format!(
                "froze {count} guest filesystems in {}, took the view, thawed {n}: frozen for {}",
                ms(freeze_took),
                ms(report.frozen_for)
            )),
            Err(e) => report.warn(format!(
                "thawing the guest failed (its filesystems may stay frozen): {e}"
            )),
        }
        if let Some(script) = &policy.post_thaw
            && let Err(cause) = run_script(agent, "post-thaw", script, policy.script_timeout).await
        {
            report.warn(cause);
        }
        let view = committed?;
        report.achieved = ConsistencyMode::Online;
        return Ok((view, report));
    };

    let post_thaw = async |report: &mut ConsistencyReport| {
        if pre_ran
            && let (Ok(agent), Some(script)) = (&agent, &policy.post_thaw)
            && let Err(cause) = run_script(agent, "post-thaw", script, policy.script_timeout).await
        {
            report.warn(cause);
        }
    };

    if policy.require_app {
        post_thaw(&mut report).await;
        if let Err(e) = prepared.abort(qmp).await {
            tracing::warn!(target: "cairn_qemu::quiesce", "removing the prepared view: {e}");
        }
        return Err(Error::AppConsistency(cause));
    }

    match policy.mode {
        ConsistencyMode::Offline => {
            report.warn(format!(
                "application-consistent view not possible ({cause}): pausing the VM instead"
            ));
            let status = qmp.query_status().await;
            let running = matches!(&status, Ok(s) if s.running);
            let view = if running {
                let mut guard = ResumeGuard { qmp: Some(qmp.clone()) };
                let paused_at = Instant::now();
                if let Err(e) = qmp.stop().await {
                    // Whether it paused or not, the guard resumes it; nothing was taken.
                    drop(guard);
                    let _ = prepared.abort(qmp).await;
                    return Err(e.into());
                }
                let committed = prepared.commit(qmp).await;
                let resumed = guard.resume().await;
                report.paused_for = paused_at.elapsed();
                match resumed {
                    Ok(()) => report.log(format!(
                        "VM paused for {} while the view was taken",
                        ms(report.paused_for)
                    )),
                    Err(e) => report.warn(format!("resuming the VM failed (it may stay paused): {e}")),
                }
                committed?
            } else {
                let state = status.map(|s| s.status).unwrap_or_else(|e| format!("unknown ({e})"));
                let view = prepared.commit(qmp).await?;
                report.log(format!("VM was not running ({state}): view taken without pausing"));
                view
            };
            report.achieved = ConsistencyMode::Offline;
            post_thaw(&mut report).await;
            Ok((view, report))
        }
        _ => {
            report.warn(format!(
                "application-consistent view not possible ({cause}): the view is crash-consistent"
            ));
            let view = prepared.commit(qmp).await?;
            report.achieved = ConsistencyMode::Crash;
            report.log("crash-consistent view taken".into());
            post_thaw(&mut report).await;
            Ok((view, report))
        }
    }
}
