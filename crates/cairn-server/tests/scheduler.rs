//! The scheduler on a manual clock: daily runs at their time and only once, one catch-up run after
//! downtime however many were missed, `after JOB` chaining, disabled jobs and closed backup
//! windows. Jobs back up a small real image into a real repository.
//!
//! Absence ("this job did not start") cannot be awaited; those checks give the scheduler a short
//! moment after the event first (`settle`), then look.

mod runner_common;

use std::sync::Arc;
use std::time::Duration;

use cairn_configdb::{Job, Session, SessionState};
use cairn_server::clock::{Clock, ManualClock};
use cairn_server::runner::{JobManager, Trigger};
use cairn_server::scheduler;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use runner_common::*;

/// Lets the scheduler act on what just happened before checking that something did *not* happen.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// 09:00 UTC tomorrow (real time), so every job was created before the manual clock starts.
fn tomorrow_nine() -> Timestamp {
    let today = Timestamp::now().to_zoned(TimeZone::UTC).date();
    today
        .tomorrow()
        .unwrap()
        .at(9, 0, 0, 0)
        .to_zoned(TimeZone::UTC)
        .unwrap()
        .timestamp()
}

struct Fixture {
    env: Env,
    clock: Arc<ManualClock>,
    manager: Arc<JobManager>,
    vm: i64,
    broken_vm: i64,
    repository: i64,
}

async fn fixture(test: &str) -> Fixture {
    let env = Env::new(Backend::Sqlite, test).await;
    let repo = env.repository("main", 4, None).await;
    let img = env.images();
    let disk = img.join("small.img");
    raw_image(&disk, 1, 1 << 20, 1 << 20);
    let broken = img.join("broken.qcow2");
    qcow2_image(&broken, "4M", &["write -P 0x42 0 1M"]);
    let bytes = std::fs::read(&broken).unwrap();
    std::fs::write(&broken, &bytes[..4096]).unwrap();
    let inv = env
        .inventory(&[("vm-s", vec![disk]), ("vm-broken", vec![broken])])
        .await;
    let clock = ManualClock::new(tomorrow_nine());
    let manager = env.manager(Some(clock.clone() as Arc<dyn Clock>));
    Fixture {
        vm: inv.iter().find(|(v, _)| v.name == "vm-s").unwrap().0.id,
        broken_vm: inv.iter().find(|(v, _)| v.name == "vm-broken").unwrap().0.id,
        repository: repo.id,
        env,
        clock,
        manager,
    }
}

impl Fixture {
    async fn job(&self, name: &str, schedule: Option<&str>, edit: impl FnOnce(&mut cairn_configdb::JobSpec)) -> Job {
        let job = self
            .env
            .job(name, vec![self.vm], self.repository, |s| {
                s.schedule = schedule.map(str::to_string);
                edit(s);
            })
            .await;
        // Handled up to the clock's start: no catch-up run for the time before it.
        self.env
            .db
            .set_setting(&scheduler::last_checked_key(job.id), &self.clock.now().to_string())
            .await
            .unwrap();
        job
    }

    fn spawn(&self) -> tokio::task::JoinHandle<()> {
        scheduler::spawn(
            self.manager.clone(),
            self.env.db.clone(),
            TimeZone::UTC,
            self.clock.clone() as Arc<dyn Clock>,
            Arc::new(cairn_server::audit::Auditor::new(
                self.env.db.clone(),
                self.env.dir.path(),
            )),
        )
    }

    /// Waits for the `n`-th session of `job` (1-based) to end; returns it.
    async fn nth_session(&self, job: &Job, n: usize) -> Session {
        let session = self
            .env
            .wait_for(&format!("session {n} of job {}", job.spec.name), || async {
                self.env.sessions_of(job.id).await.into_iter().nth(n - 1)
            })
            .await;
        self.env.wait_session(session.id).await
    }

    fn at(&self, hours: i64, minutes: i64) -> Timestamp {
        tomorrow_nine() + SignedDuration::from_hours(hours - 9) + SignedDuration::from_mins(minutes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_job_runs_at_its_time_once() {
    let f = fixture("sched_daily").await;
    let daily = f.job("daily", Some("daily 10:00"), |_| {}).await;
    let disabled = f.job("disabled", Some("daily 10:00"), |s| s.enabled = false).await;
    let closed = f
        .job("closed-window", Some("daily 10:00"), |s| {
            s.backup_window = Some("mon-sun 12:00-13:00".into())
        })
        .await;
    let handle = f.spawn();
    settle().await;
    assert!(f.env.sessions_of(daily.id).await.is_empty(), "not due before 10:00");

    f.clock.set(f.at(10, 0));
    let first = f.nth_session(&daily, 1).await;
    assert_state(&f.env, &first, SessionState::Success).await;
    assert_eq!(first.statistics["trigger"]["kind"], "schedule");

    // A job added while the scheduler runs is picked up when the API says jobs changed.
    let late = f.job("late", Some("daily 10:15"), |_| {}).await;
    f.manager.notify();
    f.clock.set(f.at(10, 15));
    let late_first = f.nth_session(&late, 1).await;
    assert_eq!(late_first.statistics["trigger"]["kind"], "schedule");

    f.clock.set(f.at(10, 30));
    settle().await;
    assert_eq!(f.env.sessions_of(daily.id).await.len(), 1, "one run per due time");

    f.clock.set(f.at(24 + 10, 0));
    let second = f.nth_session(&daily, 2).await;
    assert_state(&f.env, &second, SessionState::Success).await;
    settle().await;
    assert_eq!(f.env.sessions_of(daily.id).await.len(), 2);
    assert!(
        f.env.sessions_of(disabled.id).await.is_empty(),
        "disabled jobs never run"
    );
    assert!(
        f.env.sessions_of(closed.id).await.is_empty(),
        "runs outside the backup window are skipped"
    );
    // The handled-up-to time is stored.
    let stored = f
        .env
        .db
        .get_setting(&scheduler::last_checked_key(daily.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.parse::<Timestamp>().unwrap(), f.at(24 + 10, 0));
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_runs_after_downtime_run_once() {
    let f = fixture("sched_missed").await;
    let job = f.job("nightly", Some("daily 10:00"), |_| {}).await;
    let first_scheduler = f.spawn();
    f.clock.set(f.at(10, 0));
    let first = f.nth_session(&job, 1).await;
    assert_eq!(first.statistics["trigger"]["kind"], "schedule");

    // The server is down for three days: three 10:00 runs are missed.
    first_scheduler.abort();
    assert!(first_scheduler.await.unwrap_err().is_cancelled());
    f.clock.set(f.at(3 * 24 + 11, 0));
    let second_scheduler = f.spawn();
    let missed = f.nth_session(&job, 2).await;
    assert_state(&f.env, &missed, SessionState::Success).await;
    assert_eq!(missed.statistics["trigger"]["kind"], "missed");
    settle().await;
    assert_eq!(f.env.sessions_of(job.id).await.len(), 2, "one catch-up run, not three");

    // Then the schedule goes on as usual.
    f.clock.set(f.at(4 * 24 + 10, 0));
    let next = f.nth_session(&job, 3).await;
    assert_eq!(next.statistics["trigger"]["kind"], "schedule");
    second_scheduler.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_jobs_follow_successful_sessions() {
    let f = fixture("sched_after").await;
    let first = f.job("first", None, |_| {}).await;
    let second = f.job("second", Some("after first"), |_| {}).await;
    let third = f.job("third", Some("after second"), |_| {}).await;
    let disabled = f.job("not-enabled", Some("after first"), |s| s.enabled = false).await;
    let broken = f.env.job("broken", vec![f.broken_vm], f.repository, |_| {}).await;
    let after_broken = f.job("after-broken", Some("after broken"), |_| {}).await;
    let handle = f.spawn();
    settle().await;

    let s1 = f
        .manager
        .run_job(first.id, Trigger::Manual { user: "admin".into() })
        .await
        .unwrap();
    let s2 = f.nth_session(&second, 1).await;
    assert_eq!(s2.statistics["trigger"]["kind"], "after");
    assert_eq!(s2.statistics["trigger"]["session_id"], s1);
    let s3 = f.nth_session(&third, 1).await;
    assert_eq!(s3.statistics["trigger"]["session_id"], s2.id);
    assert_state(&f.env, &s3, SessionState::Success).await;

    // A failed session does not start the jobs after it.
    let sb = f
        .manager
        .run_job(broken.id, Trigger::Manual { user: "admin".into() })
        .await
        .unwrap();
    let failed = f.env.wait_session(sb).await;
    assert_state(&f.env, &failed, SessionState::Failed).await;
    settle().await;
    assert!(f.env.sessions_of(after_broken.id).await.is_empty());
    assert!(f.env.sessions_of(disabled.id).await.is_empty());
    assert_eq!(f.env.sessions_of(second.id).await.len(), 1);
    handle.abort();
}
