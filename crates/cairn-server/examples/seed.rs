//! Fills a server's configuration database with many jobs and sessions, for the API benchmark
//! (`bench/server.sh`): `cargo run --release -p cairn-server --example seed -- DB_URL JOBS SESSIONS`.
//!
//! `DB_URL` is the server's database (`sqlite://DATA/cairn.db` or `postgres://…`); the server must
//! have started once so the default repository exists. Jobs get one VM each (on a host named
//! `bench`); sessions are spread over the jobs and over the past year, ended, with one task and
//! statistics of the size the job manager writes.

use anyhow::{Context, bail};
use cairn_api::spec::{BlockSize, Compression, Consistency, Method, Retention};
use cairn_configdb::{
    ConfigDb, DiscoveredDisk, DiscoveredVm, HostKind, JobSpec, LogLevel, NewHost, NewTask, SessionState,
};
use jiff::{SignedDuration, Timestamp};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, jobs, sessions] = args.as_slice() else {
        bail!("usage: seed DB_URL JOBS SESSIONS");
    };
    let jobs: usize = jobs.parse().context("JOBS")?;
    let sessions: usize = sessions.parse().context("SESSIONS")?;
    let db = ConfigDb::open(url).await.with_context(|| format!("opening {url}"))?;
    let repo = db
        .default_repository()
        .await?
        .context("no default repository: start the server once first")?;
    let now = Timestamp::now();
    let host = db
        .create_host(&NewHost {
            name: "bench".into(),
            kind: HostKind::ImageFolder,
            location: "/nonexistent/bench".into(),
        })
        .await?;
    let discovered: Vec<DiscoveredVm> = (0..jobs)
        .map(|i| DiscoveredVm {
            external_id: format!("vm{i:04}"),
            name: format!("vm{i:04}"),
            disks: vec![DiscoveredDisk {
                key: "disk0".into(),
                name: "disk0".into(),
                path: format!("/nonexistent/bench/vm{i:04}.qcow2"),
                format: "qcow2".into(),
                capacity_bytes: 64 << 30,
            }],
        })
        .collect();
    let vms = db.sync_host_inventory(host.id, &discovered, now).await?;
    let mut job_ids = Vec::with_capacity(jobs);
    for (i, vm) in vms.iter().enumerate() {
        let job = db
            .create_job(&JobSpec {
                name: format!("bench-{i:04}"),
                vm_ids: vec![vm.id],
                excluded_disk_ids: vec![],
                repository_id: repo.id,
                block_size: BlockSize::DEFAULT,
                compression: Compression::Zstd(3),
                encryption: None,
                method: Method::ForeverForward,
                retention_points: Retention::try_from(14).expect("retention"),
                schedule: Some(format!("daily {:02}:{:02}", i % 24, i % 60)),
                backup_window: None,
                retries: 3,
                retry_wait_seconds: 600,
                enabled: false,
                consistency: Consistency::Online,
                require_app_consistency: false,
                pre_freeze_script: None,
                post_thaw_script: None,
            })
            .await?;
        job_ids.push((job.id, vm.id, vm.name.clone()));
    }
    eprintln!("seed: {jobs} jobs");
    let stats = serde_json::json!({
        "tasks": 1, "tasks_success": 1, "tasks_warning": 0, "tasks_failed": 0, "tasks_stopped": 0,
        "read_bytes": 1_800_000_000u64, "transferred_bytes": 650_000_000u64, "new_bytes": 1_700_000_000u64,
        "dedup_ratio": 1.04, "compression_ratio": 2.6, "duration_secs": 5.1,
        "busy": {"source": 12.0, "proxy": 97.5, "network": 0.0, "target": 8.1},
        "bottleneck": "proxy", "attempt": 1, "trigger": {"kind": "schedule"}
    });
    let span = SignedDuration::from_hours(24 * 365);
    let start = now - span;
    let step = span.as_micros() / sessions.max(1) as i128;
    for n in 0..sessions {
        let (job_id, vm_id, vm_name) = &job_ids[n % job_ids.len()];
        let at = start + SignedDuration::from_micros((step * n as i128) as i64);
        let session = db.create_session(*job_id, at).await?;
        let task = db
            .create_task(&NewTask {
                session_id: session.id,
                vm_id: Some(*vm_id),
                disk_id: None,
                vm_name: vm_name.clone(),
                disk_name: "disk0".into(),
            })
            .await?;
        db.append_task_log(task.id, LogLevel::Info, "backed up 1.7 GiB", at)
            .await?;
        db.set_task_statistics(task.id, &stats).await?;
        db.set_task_state(task.id, SessionState::Success, at + SignedDuration::from_secs(5))
            .await?;
        db.set_session_statistics(session.id, &stats).await?;
        db.set_session_state(session.id, SessionState::Success, at + SignedDuration::from_secs(6))
            .await?;
        if (n + 1) % 10_000 == 0 {
            eprintln!("seed: {} sessions", n + 1);
        }
    }
    db.close().await;
    Ok(())
}
