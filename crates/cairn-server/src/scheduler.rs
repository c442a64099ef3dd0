//! The scheduler: starts jobs on their schedules, after other jobs, and once after downtime.
//!
//! [`spawn`] runs one tokio task that
//!
//! - sleeps until the next due run of any enabled job (or until [`JobManager::notify`] says jobs
//!   changed, or a session ended), then starts every job that is due with [`Trigger::Schedule`];
//!   a job that is still running is skipped (logged), and so is a run that falls outside the job's
//!   backup window;
//! - starts jobs whose schedule is `after JOB` when a session of `JOB` ends with *success* or
//!   *warning* ([`Trigger::After`]). A *failed* or *stopped* predecessor does not start them: a
//!   chain of jobs usually depends on the earlier job's data (e.g. a copy job after the backup), so
//!   running it on a failure would only copy stale data; the next successful run starts it again;
//! - after downtime runs each job that missed at least one run **once** ([`Trigger::Missed`]),
//!   however many runs were missed. To know what was missed it remembers, per job, up to when its
//!   schedule was handled: the settings key `scheduler.last_checked.<job id>` (RFC 3339), written
//!   when a job fires (or is skipped) and when its schedule or enabled state changes. Runs in
//!   `(last_checked, now]` are the missed ones ([`cairn_schedule::Schedule::missed_in`]). A job
//!   without the key counts from its creation.
//!
//! Time comes from a [`Clock`], so tests drive the scheduler with a
//! [`ManualClock`](crate::clock::ManualClock) instead of
//! waiting for the wall clock. Schedules and windows without a `tz` use the server's zone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_configdb::{ConfigDb, Job, SessionState};
use cairn_schedule::{Rule, Schedule};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::broadcast;

use crate::clock::{Clock, Sleep};
use crate::runner::{JobManager, RunError, SessionEnded, Trigger, parse_window};

/// The next time `job` runs on its own schedule after `now`: `None` when it is disabled, has no
/// schedule, runs `after` another job, or its schedule text does not parse.
pub fn next_run(job: &Job, now: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
    if !job.spec.enabled {
        return None;
    }
    let schedule: Schedule = job.spec.schedule.as_deref()?.parse().ok()?;
    schedule.next_after_in(now, tz)
}

/// Settings key remembering up to when the scheduler handled job `job_id`'s schedule.
pub fn last_checked_key(job_id: i64) -> String {
    format!("scheduler.last_checked.{job_id}")
}

/// Starts the scheduler task. It runs until the task is aborted (server shutdown).
pub fn spawn(
    manager: Arc<JobManager>,
    db: ConfigDb,
    tz: TimeZone,
    clock: Arc<dyn Clock>,
    audit: Arc<crate::audit::Auditor>,
) -> tokio::task::JoinHandle<()> {
    let ended = manager.subscribe();
    let scheduler = Scheduler {
        audit,
        manager,
        db,
        tz,
        started: clock.now(),
        clock,
        memo: HashMap::new(),
    };
    tokio::spawn(scheduler.run(ended))
}

/// What the scheduler remembers about a job between wake-ups.
struct Memo {
    /// Up to when the job's schedule was handled.
    last: Timestamp,
    /// The schedule text and enabled state last seen, to notice edits.
    schedule: Option<String>,
    enabled: bool,
}

struct Scheduler {
    /// Records the runs it starts.
    audit: Arc<crate::audit::Auditor>,
    manager: Arc<JobManager>,
    db: ConfigDb,
    tz: TimeZone,
    clock: Arc<dyn Clock>,
    /// When the scheduler started: runs due before it were missed.
    started: Timestamp,
    memo: HashMap<i64, Memo>,
}

/// After a database error, wait this long before looking again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(10);

impl Scheduler {
    async fn run(mut self, mut ended: broadcast::Receiver<SessionEnded>) {
        loop {
            let next = match self.pass().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "scheduler: reading the jobs failed; trying again shortly");
                    let sleep = tokio::time::sleep(RETRY_AFTER_ERROR);
                    tokio::select! {
                        () = sleep => {}
                        () = self.manager.jobs_changed() => {}
                    }
                    continue;
                }
            };
            let sleep: Sleep = match next {
                Some(at) => self.clock.sleep_until(at),
                None => Box::pin(std::future::pending()),
            };
            tokio::select! {
                () = sleep => {}
                () = self.manager.jobs_changed() => {}
                event = ended.recv() => match event {
                    Ok(event) => self.chain_after(&event).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "scheduler: missed session-end events; `after` jobs of them do not start");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Starts every due job; returns when the next one is due. A run that fell due before the
    /// scheduler started (the server was down) is [`Trigger::Missed`], and however many were
    /// missed, the job runs once.
    async fn pass(&mut self) -> Result<Option<Timestamp>, cairn_configdb::Error> {
        let jobs = self.db.list_jobs().await?;
        let now = self.clock.now();
        let gone: Vec<i64> = self
            .memo
            .keys()
            .copied()
            .filter(|id| !jobs.iter().any(|j| j.id == *id))
            .collect();
        for id in gone {
            // A deleted job: forget it, and its stored time with it.
            self.memo.remove(&id);
            if let Err(e) = self.db.delete_setting(&last_checked_key(id)).await {
                tracing::warn!(job = id, error = %e, "scheduler: could not remove a deleted job's last-checked time");
            }
        }
        let mut earliest: Option<Timestamp> = None;
        for job in &jobs {
            let last = match self.memo.get(&job.id) {
                Some(m) if m.schedule == job.spec.schedule && m.enabled == job.spec.enabled => m.last,
                Some(_) => {
                    // Edited or enabled again: the schedule counts from now.
                    self.remember(job, now).await;
                    now
                }
                None => {
                    let last = self.stored_last(job).await;
                    self.memo.insert(
                        job.id,
                        Memo {
                            last,
                            schedule: job.spec.schedule.clone(),
                            enabled: job.spec.enabled,
                        },
                    );
                    last
                }
            };
            if !job.spec.enabled {
                continue;
            }
            let Some(schedule) = self.time_schedule(job) else {
                continue;
            };
            if let Some(due) = schedule.next_after_in(last, &self.tz)
                && due <= now
            {
                let trigger = if due < self.started {
                    let missed = schedule.missed_in(last, self.started, &self.tz);
                    tracing::info!(
                        job = %job.spec.name,
                        missed = missed.count,
                        first_missed = ?missed.first,
                        "scheduler: runs were missed while the server was down; running the job once"
                    );
                    Trigger::Missed
                } else {
                    Trigger::Schedule
                };
                self.fire(job, trigger, now).await;
                self.remember(job, now).await;
            }
            let last = self.memo.get(&job.id).map_or(now, |m| m.last);
            if let Some(next) = schedule.next_after_in(last.max(now), &self.tz) {
                earliest = Some(earliest.map_or(next, |e| e.min(next)));
            }
        }
        Ok(earliest)
    }

    /// The job's schedule if it is time-based and parses.
    fn time_schedule(&self, job: &Job) -> Option<Schedule> {
        let text = job.spec.schedule.as_deref()?;
        match text.parse::<Schedule>() {
            Ok(s) if s.is_event_driven() => None,
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(job = %job.spec.name, schedule = text, error = %e, "scheduler: the job's schedule does not parse; it does not run on schedule");
                None
            }
        }
    }

    /// The stored "handled up to" time of a job, else its creation time.
    async fn stored_last(&self, job: &Job) -> Timestamp {
        match self.db.get_setting(&last_checked_key(job.id)).await {
            Ok(Some(text)) => match text.parse::<Timestamp>() {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(job = %job.spec.name, value = text, error = %e, "scheduler: unreadable last-checked time; counting from the job's creation");
                    job.created_at
                }
            },
            Ok(None) => job.created_at,
            Err(e) => {
                tracing::warn!(job = %job.spec.name, error = %e, "scheduler: reading the last-checked time failed; counting from the job's creation");
                job.created_at
            }
        }
    }

    /// Notes (in memory and in the settings) that `job`'s schedule was handled up to `at`.
    async fn remember(&mut self, job: &Job, at: Timestamp) {
        self.memo.insert(
            job.id,
            Memo {
                last: at,
                schedule: job.spec.schedule.clone(),
                enabled: job.spec.enabled,
            },
        );
        if let Err(e) = self.db.set_setting(&last_checked_key(job.id), &at.to_string()).await {
            tracing::warn!(job = %job.spec.name, error = %e, "scheduler: could not store the last-checked time");
        }
    }

    /// Starts `job` unless it runs already or its backup window is closed.
    async fn fire(&self, job: &Job, trigger: Trigger, now: Timestamp) {
        if let Some(text) = &job.spec.backup_window {
            match parse_window(text) {
                Ok(window) if !window.is_open_in(now, &self.tz) => {
                    tracing::info!(job = %job.spec.name, window = %text, "scheduler: skipping a run outside the job's backup window");
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(job = %job.spec.name, error = %e, "scheduler: skipping a run: the backup window does not parse");
                    return;
                }
            }
        }
        match self.manager.run_job(job.id, trigger.clone()).await {
            Ok(session) => {
                tracing::info!(job = %job.spec.name, session, ?trigger, "scheduler: started the job");
                self.audit
                    .record(cairn_configdb::NewAuditEntry {
                        user: Some(crate::audit::SCHEDULER_USER.to_owned()),
                        address: None,
                        action: "job.run".into(),
                        target: format!("job {} ({})", job.id, job.spec.name),
                        outcome: "ok".into(),
                        details: serde_json::json!({"session": session, "trigger": format!("{trigger:?}")}),
                    })
                    .await;
            }
            Err(RunError::AlreadyRunning { session, .. }) => {
                tracing::info!(job = %job.spec.name, session, "scheduler: skipping a run: the job is still running");
            }
            Err(e) => {
                tracing::warn!(job = %job.spec.name, error = %e, "scheduler: could not start the job");
            }
        }
    }

    /// Starts the enabled `after JOB` jobs of the job whose session just ended.
    async fn chain_after(&mut self, event: &SessionEnded) {
        if !matches!(event.state, SessionState::Success | SessionState::Warning) {
            return;
        }
        let jobs = match self.db.list_jobs().await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "scheduler: reading the jobs failed; `after` jobs do not start");
                return;
            }
        };
        let Some(finished) = jobs.iter().find(|j| j.id == event.job_id) else {
            return;
        };
        let now = self.clock.now();
        for job in jobs.iter().filter(|j| j.spec.enabled && j.id != finished.id) {
            let Some(Ok(schedule)) = job.spec.schedule.as_deref().map(str::parse::<Schedule>) else {
                continue;
            };
            if let Rule::After { job: name } = &schedule.rule
                && *name == finished.spec.name
            {
                self.fire(
                    job,
                    Trigger::After {
                        session_id: event.session_id,
                    },
                    now,
                )
                .await;
            }
        }
    }
}
