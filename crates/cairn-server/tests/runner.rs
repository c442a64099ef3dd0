//! The job manager against real things: SQLite and PostgreSQL configuration databases, encrypted
//! repositories in temporary folders, raw and qcow2 images made with qemu-img/qemu-io, the
//! resource scheduler's slots and rate limits.

mod runner_common;

use cairn_configdb::{NewTask, SessionState, Task};
use cairn_resources::RepositoryLimits;
use cairn_server::clock::ManualClock;
use cairn_server::runner::{RunError, Trigger};
use runner_common::*;

/// Runs `async fn $name(Backend)` on SQLite and on PostgreSQL.
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    };
}

fn manual() -> Trigger {
    Trigger::Manual { user: "admin".into() }
}

fn stat(task: &Task, name: &str) -> u64 {
    task.statistics[name]
        .as_u64()
        .unwrap_or_else(|| panic!("task {} has no {name}: {}", task.id, task.statistics))
}

both_backends!(job_of_two_vms_backs_up_restores_and_applies_retention);
async fn job_of_two_vms_backs_up_restores_and_applies_retention(backend: Backend) {
    let env = Env::new(backend, "two_vms").await;
    let repo_row = env.repository("main", 4, None).await;
    let img = env.images();
    for vm in ["vm-a", "vm-b"] {
        std::fs::create_dir_all(img.join(vm)).unwrap();
    }
    let disks = [
        img.join("vm-a/disk0.img"),
        img.join("vm-a/disk1.qcow2"),
        img.join("vm-b/disk0.img"),
        img.join("vm-b/disk1.qcow2"),
    ];
    raw_image(&disks[0], 1, 4 << 20, 3 << 20);
    qcow2_image(&disks[1], "8M", &["write -P 0xab 0 1M", "write -P 0x11 5M 512k"]);
    // Not a multiple of the block size: the last block is short.
    raw_image(&disks[2], 2, (3 << 20) + (512 << 10), 2 << 20);
    qcow2_image(&disks[3], "6M", &["write -P 0xcd 1M 2M"]);
    let inv = env
        .inventory(&[
            ("vm-a", vec![disks[0].clone(), disks[1].clone()]),
            ("vm-b", vec![disks[2].clone(), disks[3].clone()]),
        ])
        .await;
    let job = env
        .job("nightly", vec![inv[0].0.id, inv[1].0.id], repo_row.id, |s| {
            s.retention_points = cairn_api::spec::Retention::try_from(1).expect("retention")
        })
        .await;
    let manager = env.manager(None);

    let sid = manager.run_job(job.id, manual()).await.unwrap();
    let session = env.wait_session(sid).await;
    assert_state(&env, &session, SessionState::Success).await;
    assert!(session.ended_at.is_some());
    let tasks = env.tasks(sid).await;
    assert_eq!(tasks.len(), 4, "one task per VM disk");
    let names: Vec<(String, String)> = tasks.iter().map(|t| (t.vm_name.clone(), t.disk_name.clone())).collect();
    assert_eq!(
        names,
        [
            ("hv1/vm-a".to_string(), "disk0.img".to_string()),
            ("hv1/vm-a".into(), "disk1.qcow2".into()),
            ("hv1/vm-b".into(), "disk0.img".into()),
            ("hv1/vm-b".into(), "disk1.qcow2".into()),
        ]
    );
    let mut read_total = 0;
    for t in &tasks {
        assert_eq!(t.state, SessionState::Success);
        assert_eq!(t.proxy_id, Some(env.proxy_id));
        assert_eq!(t.repository_id, Some(repo_row.id));
        assert!(t.started_at.unwrap() <= t.ended_at.unwrap());
        let s = &t.statistics;
        assert!(stat(t, "read_bytes") > 0, "{s}");
        assert!(stat(t, "transferred_bytes") > 0, "{s}");
        assert!(s["point_id"].is_string(), "{s}");
        for stage in ["source", "proxy", "network", "target", "throttling"] {
            assert!(s["busy"][stage].is_number(), "busy.{stage} in {s}");
        }
        assert!(s["bottleneck"].is_string() && s["duration_secs"].is_number() && s["wall_secs"].is_number());
        assert!(s["dedup_ratio"].as_f64().unwrap() >= 1.0 && s["compression_ratio"].is_number());
        read_total += stat(t, "read_bytes");
        assert!(manager.task_progress(t.id).is_none(), "no progress once ended");
        let log = env.log(t.id).await;
        let text = env.log_text(t.id).await;
        for needle in [
            "waiting for resources: a task slot on proxy backup-server and on repository main",
            "processing on proxy backup-server",
            "disk done: read",
            "committed to repository main",
        ] {
            assert!(text.contains(needle), "task {} log lacks {needle:?}:\n{text}", t.id);
        }
        assert!(log.windows(2).all(|w| w[0].at <= w[1].at && w[0].id < w[1].id));
    }
    // The raw disks have no CBT; the qcow2 ones are not differencing disks either.
    assert!(env.log_text(tasks[0].id).await.contains("no changed block tracking"));
    // Both disks of a VM are in one restore point.
    assert_eq!(tasks[0].statistics["point_id"], tasks[1].statistics["point_id"]);
    assert_ne!(tasks[0].statistics["point_id"], tasks[2].statistics["point_id"]);
    let st = &session.statistics;
    assert_eq!(st["tasks"], 4);
    assert_eq!(st["tasks_success"], 4);
    assert_eq!(st["tasks_failed"], 0);
    assert_eq!(st["read_bytes"], read_total);
    assert_eq!(st["attempt"], 1);
    assert_eq!(st["trigger"]["kind"], "manual");
    assert_eq!(st["trigger"]["user"], "admin");
    assert!(st["bottleneck"].is_string() && st["busy"]["proxy"].is_number());

    let repo = env.open_repo(&repo_row);
    let scratch = env.dir.path();
    for (i, path) in disks.iter().enumerate() {
        let vm = if i < 2 { "hv1/vm-a" } else { "hv1/vm-b" };
        assert_eq!(
            restored(&repo, vm, (i % 2) as u32, scratch),
            image_bytes(path, scratch),
            "{} restores byte-identical",
            path.display()
        );
    }
    assert!(cairn_repo::verify::verify(&repo, None, &|_| {}).unwrap().ok);

    // A second run stores only what changed, and retention keeps one point.
    qemu_io(&disks[1], &["write -P 0x77 2M 64k"]);
    let sid2 = manager.run_job(job.id, manual()).await.unwrap();
    let session2 = env.wait_session(sid2).await;
    assert_state(&env, &session2, SessionState::Success).await;
    let tasks2 = env.tasks(sid2).await;
    assert_eq!(stat(&tasks2[1], "new_blocks"), 1, "{}", tasks2[1].statistics);
    assert_eq!(stat(&tasks2[0], "new_blocks"), 0, "{}", tasks2[0].statistics);
    assert!(stat(&tasks2[0], "unchanged_blocks") > 0);
    let first_log = env.log_text(tasks2[0].id).await;
    assert!(
        first_log.contains("retention (1 points): 1 kept, 1 removed"),
        "{first_log}"
    );
    assert!(first_log.contains("(incremental)"), "{first_log}");
    let repo = env.open_repo(&repo_row);
    assert_eq!(repo.chain("hv1/vm-a").unwrap().meta().points.len(), 1);
    assert_eq!(restored(&repo, "hv1/vm-a", 1, scratch), image_bytes(&disks[1], scratch));
    assert!(cairn_repo::verify::verify(&repo, None, &|_| {}).unwrap().ok);
    assert!(manager.active_sessions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbt_through_a_qcow2_overlay_reads_only_the_child() {
    let env = Env::new(Backend::Sqlite, "cbt").await;
    let repo_row = env.repository("main", 4, None).await;
    let img = env.images();
    let base = img.join("base.qcow2");
    let child = img.join("child.qcow2");
    qcow2_image(&base, "8M", &["write -P 0x11 0 4M", "write -P 0x22 6M 1M"]);
    let inv = env.inventory(&[("vm-c", vec![base.clone()])]).await;
    let job = env.job("cbt", vec![inv[0].0.id], repo_row.id, |_| {}).await;
    let manager = env.manager(None);

    let run = |what: &'static str| {
        let (manager, env) = (manager.clone(), &env);
        async move {
            let sid = manager.run_job(job.id, manual()).await.unwrap();
            let s = env.wait_session(sid).await;
            assert_state(env, &s, SessionState::Success).await;
            let tasks = env.tasks(sid).await;
            assert_eq!(tasks.len(), 1, "{what}");
            tasks.into_iter().next().unwrap()
        }
    };
    let first = run("base").await;
    assert_eq!(stat(&first, "read_bytes"), 5 << 20, "the allocated 5 MiB");

    // A snapshot: the overlay becomes the disk (same disk key, new path).
    qcow2_overlay(&child, &base, &["write -P 0x33 1M 512k"]);
    env.inventory(&[("vm-c", vec![child.clone()])]).await;
    let second = run("child").await;
    assert_eq!(stat(&second, "read_bytes"), 1 << 20, "only the block the child changed");
    assert_eq!(stat(&second, "read_blocks"), 1);
    let log = env.log_text(second.id).await;
    assert!(
        log.contains("changed block tracking: ") && log.contains("is a differencing disk"),
        "{log}"
    );
    let repo = env.open_repo(&repo_row);
    assert_eq!(
        restored(&repo, "hv1/vm-c", 0, env.dir.path()),
        image_bytes(&child, env.dir.path())
    );

    // The same child again: the previous point was read from the child, not its parent, so the
    // changed extents say nothing and everything is read (the engine's note is logged).
    let third = run("child again").await;
    assert_eq!(stat(&third, "read_bytes"), 5 << 20);
    assert_eq!(stat(&third, "new_blocks"), 0);
    let log = env.log_text(third.id).await;
    assert!(log.contains("was not read from this child's parent"), "{log}");
}

both_backends!(stop_mid_run_keeps_the_repository_and_the_next_run_succeeds);
async fn stop_mid_run_keeps_the_repository_and_the_next_run_succeeds(backend: Backend) {
    let env = Env::new(backend, "stop").await;
    // 48 MiB of incompressible data through a 4 MiB/s write limit: about 12 s unless stopped.
    let repo_row = env.repository("slow", 2, Some(4 << 20)).await;
    let disk = env.images().join("big.img");
    raw_image(&disk, 7, 48 << 20, 48 << 20);
    let inv = env.inventory(&[("vm-s", vec![disk.clone()])]).await;
    let job = env.job("slow", vec![inv[0].0.id], repo_row.id, |_| {}).await;
    let manager = env.manager(None);

    let sid = manager.run_job(job.id, manual()).await.unwrap();
    assert_eq!(manager.active_sessions(), [sid]);
    let task = env
        .wait_for("the task to move data", || async {
            let task = env.tasks(sid).await.into_iter().next()?;
            let p = manager.task_progress(task.id)?;
            (task.state == SessionState::Running && p.done_bytes > 0).then_some((task, p))
        })
        .await;
    assert_eq!(task.1.total_bytes, 48 << 20);
    assert_eq!(env.db.get_session(sid).await.unwrap().state, SessionState::Running);
    match manager.run_job(job.id, manual()).await {
        Err(RunError::AlreadyRunning { session, job }) => {
            assert_eq!((session, job.as_str()), (sid, "slow"));
        }
        other => panic!("a second run must be refused: {other:?}"),
    }
    manager.stop_session(sid).await.unwrap();
    let session = env.wait_session(sid).await;
    assert_state(&env, &session, SessionState::Stopped).await;
    let tasks = env.tasks(sid).await;
    assert_eq!(tasks[0].state, SessionState::Stopped);
    assert!(env.log_text(tasks[0].id).await.contains("stopped by a user"));
    assert_eq!(session.statistics["tasks_stopped"], 1);
    assert!(matches!(manager.stop_session(sid).await, Err(RunError::NotFound(_))));
    assert!(manager.active_sessions().is_empty());

    // Nothing of the stopped run is left: no point, no data file.
    let repo = env.open_repo(&repo_row);
    assert!(repo.list().unwrap().is_empty());
    let chain_dir = repo.chain_dir("hv1/vm-s");
    let leftovers: Vec<String> = std::fs::read_dir(&chain_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.iter().all(|n| n == "lock"), "{leftovers:?}");
    assert!(cairn_repo::verify::verify(&repo, None, &|_| {}).unwrap().ok);

    // Without the limit the next run goes through.
    env.resources
        .set_repository(
            env.repo_id(&repo_row),
            RepositoryLimits {
                max_tasks: 2,
                read_limit: None,
                write_limit: None,
            },
        )
        .unwrap();
    let sid = manager.run_job(job.id, manual()).await.unwrap();
    let session = env.wait_session(sid).await;
    assert_state(&env, &session, SessionState::Success).await;
    let repo = env.open_repo(&repo_row);
    assert_eq!(
        restored(&repo, "hv1/vm-s", 0, env.dir.path()),
        std::fs::read(&disk).unwrap()
    );
    assert!(cairn_repo::verify::verify(&repo, None, &|_| {}).unwrap().ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_vms_are_retried_alone() {
    let env = Env::new(Backend::Sqlite, "retries").await;
    let repo_row = env.repository("main", 4, None).await;
    let img = env.images();
    let good = img.join("a.img");
    let bad = img.join("b.qcow2");
    raw_image(&good, 3, 2 << 20, 2 << 20);
    qcow2_image(&bad, "8M", &["write -P 0x42 0 4M"]);
    let valid = std::fs::read(&bad).unwrap();
    // Truncated: the header is there, the tables and data are not.
    std::fs::write(&bad, &valid[..4096]).unwrap();
    let inv = env
        .inventory(&[("vm-a", vec![good.clone()]), ("vm-b", vec![bad.clone()])])
        .await;
    let (a, b) = (inv[0].0.id, inv[1].0.id);

    // Two retries, no wait: B fails three times, A runs once.
    let job = env
        .job("retry", vec![a, b], repo_row.id, |s| {
            s.retries = 2;
            s.retry_wait_seconds = 0;
        })
        .await;
    let manager = env.manager(None);
    let sid = manager.run_job(job.id, manual()).await.unwrap();
    let session = env.wait_session(sid).await;
    assert_state(&env, &session, SessionState::Failed).await;
    let tasks = env.tasks(sid).await;
    let of = |vm: i64| {
        tasks
            .iter()
            .filter(|t| t.vm_id == Some(vm))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(of(a).len(), 1, "A is not run again");
    assert_eq!(of(a)[0].state, SessionState::Success);
    let b_tasks = of(b);
    assert_eq!(b_tasks.len(), 3, "B: the first try and two retries");
    assert!(b_tasks.iter().all(|t| t.state == SessionState::Failed));
    for (n, t) in b_tasks.iter().enumerate() {
        let log = env.log_text(t.id).await;
        assert!(
            log.contains(&bad.display().to_string()),
            "the error names the image: {log}"
        );
        if n > 0 {
            assert!(log.contains(&format!("retry {n} of 2 of VM hv1/vm-b")), "{log}");
        }
    }
    assert_eq!(session.statistics["attempt"], 3);
    assert_eq!(session.statistics["tasks_failed"], 3);
    assert_eq!(session.statistics["tasks_success"], 1);

    // One retry ten minutes later, on a manual clock; B is repaired before it: warning.
    let clock = ManualClock::new("2026-06-01T10:00:00Z".parse().unwrap());
    let job = env
        .job("retry-later", vec![a, b], repo_row.id, |s| {
            s.retries = 1;
            s.retry_wait_seconds = 600;
        })
        .await;
    let manager = env.manager(Some(clock.clone()));
    let sid = manager.run_job(job.id, manual()).await.unwrap();
    env.wait_for("the first pass to end", || async {
        let tasks = env.tasks(sid).await;
        (tasks.len() == 2 && tasks.iter().all(|t| t.state.is_final())).then_some(())
    })
    .await;
    assert!(
        !env.db.get_session(sid).await.unwrap().state.is_final(),
        "waiting to retry"
    );
    std::fs::write(&bad, &valid).unwrap();
    env.wait_for("the retry to start", || async {
        clock.advance(jiff::SignedDuration::from_secs(600));
        (env.tasks(sid).await.len() == 3).then_some(())
    })
    .await;
    let session = env.wait_session(sid).await;
    assert_state(&env, &session, SessionState::Warning).await;
    let tasks = env.tasks(sid).await;
    let states: Vec<(Option<i64>, SessionState)> = tasks.iter().map(|t| (t.vm_id, t.state)).collect();
    assert_eq!(
        states,
        [
            (Some(a), SessionState::Success),
            (Some(b), SessionState::Failed),
            (Some(b), SessionState::Success)
        ]
    );
    assert_eq!(session.statistics["attempt"], 2);
    let repo = env.open_repo(&repo_row);
    assert_eq!(
        restored(&repo, "hv1/vm-b", 0, env.dir.path()),
        image_bytes(&bad, env.dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_repository_slot_runs_one_task_at_a_time() {
    let env = Env::new(Backend::Sqlite, "slots").await;
    // One slot; 16 MiB per disk at 32 MiB/s keeps each task busy for about half a second.
    let repo_row = env.repository("one-slot", 1, Some(32 << 20)).await;
    let img = env.images();
    let disks: Vec<_> = (0..3).map(|i| img.join(format!("d{i}.img"))).collect();
    for (i, d) in disks.iter().enumerate() {
        raw_image(d, 10 + i as u64, 16 << 20, 16 << 20);
    }
    let inv = env
        .inventory(&[
            ("vm-a", vec![disks[0].clone(), disks[1].clone()]),
            ("vm-b", vec![disks[2].clone()]),
        ])
        .await;
    let job_a = env.job("job-a", vec![inv[0].0.id], repo_row.id, |_| {}).await;
    let job_b = env.job("job-b", vec![inv[1].0.id], repo_row.id, |_| {}).await;
    let manager = env.manager(None);
    let sa = manager.run_job(job_a.id, manual()).await.unwrap();
    let sb = manager.run_job(job_b.id, manual()).await.unwrap();
    let mut saw_waiting = false;
    let mut saw_running = 0usize;
    loop {
        let mut tasks = env.tasks(sa).await;
        tasks.extend(env.tasks(sb).await);
        let running = tasks.iter().filter(|t| t.state == SessionState::Running).count();
        assert!(running <= 1, "two tasks running at once: {tasks:?}");
        let load = env.resources.repository_load(&env.repo_id(&repo_row)).unwrap();
        assert!(load.running <= 1);
        saw_running = saw_running.max(running);
        saw_waiting |= running == 1 && tasks.iter().any(|t| t.state == SessionState::Waiting);
        if tasks.len() == 3 && tasks.iter().all(|t| t.state.is_final()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(saw_waiting, "a task must have waited while another ran");
    for sid in [sa, sb] {
        let s = env.wait_session(sid).await;
        assert_state(&env, &s, SessionState::Success).await;
    }
    let mut tasks = env.tasks(sa).await;
    tasks.extend(env.tasks(sb).await);
    assert_no_overlap(&tasks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_parallel_processing_a_job_runs_one_task_at_a_time() {
    let env = Env::new(Backend::Sqlite, "sequential").await;
    env.resources.set_parallel_processing(false);
    let repo_row = env.repository("main", 4, Some(64 << 20)).await;
    let img = env.images();
    let mut vms = Vec::new();
    for i in 0..3 {
        let d = img.join(format!("v{i}.img"));
        raw_image(&d, 20 + i, 8 << 20, 8 << 20);
        vms.push((format!("vm-{i}"), vec![d]));
    }
    let named: Vec<(&str, Vec<std::path::PathBuf>)> = vms.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let inv = env.inventory(&named).await;
    let job = env
        .job(
            "one-by-one",
            inv.iter().map(|(vm, _)| vm.id).collect(),
            repo_row.id,
            |_| {},
        )
        .await;
    let manager = env.manager(None);
    let sid = manager.run_job(job.id, manual()).await.unwrap();
    let session = env.wait_session(sid).await;
    assert_state(&env, &session, SessionState::Success).await;
    let tasks = env.tasks(sid).await;
    assert_eq!(tasks.len(), 3);
    assert_no_overlap(&tasks);
    // In the job's VM order.
    let mut started: Vec<_> = tasks
        .iter()
        .map(|t| (t.started_at.unwrap(), t.vm_name.clone()))
        .collect();
    started.sort();
    let order: Vec<&str> = started.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(order, ["hv1/vm-0", "hv1/vm-1", "hv1/vm-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_share_a_limited_repository() {
    let env = Env::new(Backend::Sqlite, "share").await;
    // 8 MiB/s for the repository, split between the tasks writing to it.
    let repo_row = env.repository("shared", 2, Some(8 << 20)).await;
    let img = env.images();
    let (da, db) = (img.join("a.img"), img.join("b.img"));
    raw_image(&da, 31, 16 << 20, 16 << 20);
    raw_image(&db, 32, 16 << 20, 16 << 20);
    let inv = env
        .inventory(&[("vm-a", vec![da.clone()]), ("vm-b", vec![db.clone()])])
        .await;
    let job_a = env.job("share-a", vec![inv[0].0.id], repo_row.id, |_| {}).await;
    let job_b = env.job("share-b", vec![inv[1].0.id], repo_row.id, |_| {}).await;
    let manager = env.manager(None);
    let sa = manager.run_job(job_a.id, manual()).await.unwrap();
    let sb = manager.run_job(job_b.id, manual()).await.unwrap();
    let repo_id = env.repo_id(&repo_row);
    env.wait_for("both tasks to run at once", || async {
        let mut tasks = env.tasks(sa).await;
        tasks.extend(env.tasks(sb).await);
        let both = tasks.len() == 2 && tasks.iter().all(|t| t.state == SessionState::Running);
        (both && env.resources.repository_load(&repo_id).unwrap().running == 2).then_some(())
    })
    .await;
    for sid in [sa, sb] {
        let s = env.wait_session(sid).await;
        assert_state(&env, &s, SessionState::Success).await;
    }
    let mut tasks = env.tasks(sa).await;
    tasks.extend(env.tasks(sb).await);
    tasks.sort_by_key(|t| t.started_at);
    // The task that started second shared the limit with the first: half each.
    let second = env.log_text(tasks[1].id).await;
    assert!(second.contains("write rate share 4.0 MiB/s"), "{second}");
    for t in &tasks {
        let throttled = t.statistics["busy"]["throttling"].as_f64().unwrap();
        assert!(throttled > 0.0, "the write limit paced task {}: {}", t.id, t.statistics);
    }
    let repo = env.open_repo(&repo_row);
    assert!(cairn_repo::verify::verify(&repo, None, &|_| {}).unwrap().ok);
    assert_eq!(
        restored(&repo, "hv1/vm-a", 0, env.dir.path()),
        std::fs::read(&da).unwrap()
    );
    assert_eq!(
        restored(&repo, "hv1/vm-b", 0, env.dir.path()),
        std::fs::read(&db).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_backup_window_stops_the_session() {
    let env = Env::new(Backend::Sqlite, "window").await;
    let repo_row = env.repository("slow", 2, Some(4 << 20)).await;
    let disk = env.images().join("big.img");
    raw_image(&disk, 9, 48 << 20, 48 << 20);
    let inv = env.inventory(&[("vm-w", vec![disk])]).await;
    let job = env
        .job("windowed", vec![inv[0].0.id], repo_row.id, |s| {
            s.backup_window = Some("mon-sun 09:00-11:00".into());
        })
        .await;
    // Monday 10:00 UTC (the environment's zone is UTC).
    let clock = ManualClock::new("2026-06-01T10:00:00Z".parse().unwrap());
    let manager = env.manager(Some(clock.clone()));
    let sid = manager.run_job(job.id, Trigger::Schedule).await.unwrap();
    env.wait_for("the task to run", || async {
        let t = env.tasks(sid).await.into_iter().next()?;
        (t.state == SessionState::Running).then_some(())
    })
    .await;
    clock.set("2026-06-01T11:00:00Z".parse().unwrap());
    let session = env.wait_session(sid).await;
    assert_state(&env, &session, SessionState::Failed).await;
    let task = env.tasks(sid).await.remove(0);
    assert_eq!(task.state, SessionState::Stopped);
    let log = env.log_text(task.id).await;
    assert!(log.contains("backup window closed at 2026-06-01T11:00:00Z"), "{log}");
    let error = session.statistics["error"].as_str().unwrap();
    assert!(error.contains("backup window closed"), "{error}");
    assert_eq!(session.statistics["trigger"]["kind"], "schedule");
    let repo = env.open_repo(&repo_row);
    assert!(repo.list().unwrap().is_empty());
    assert!(cairn_repo::verify::verify(&repo, None, &|_| {}).unwrap().ok);

    // Outside the window the job does not start.
    match manager.run_job(job.id, manual()).await {
        Err(RunError::Invalid(text)) => assert!(text.contains("backup window"), "{text}"),
        other => panic!("a run outside the window must be refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_running_and_waiting_sessions() {
    let env = Env::new(Backend::Sqlite, "shutdown").await;
    // One slot: the second job's task waits for the first's.
    let repo_row = env.repository("slow", 1, Some(4 << 20)).await;
    let (big, small) = (env.images().join("big.img"), env.images().join("small.img"));
    raw_image(&big, 5, 32 << 20, 32 << 20);
    raw_image(&small, 6, 1 << 20, 1 << 20);
    let inv = env.inventory(&[("vm-x", vec![big]), ("vm-y", vec![small])]).await;
    let long = env.job("long", vec![inv[0].0.id], repo_row.id, |_| {}).await;
    let queued = env.job("queued", vec![inv[1].0.id], repo_row.id, |_| {}).await;
    let manager = env.manager(None);
    let s_long = manager.run_job(long.id, manual()).await.unwrap();
    env.wait_for("the first task to run", || async {
        let t = env.tasks(s_long).await.into_iter().next()?;
        (t.state == SessionState::Running).then_some(())
    })
    .await;
    let s_queued = manager.run_job(queued.id, manual()).await.unwrap();
    let waiting = env
        .wait_for("the second task to wait for its slot", || async {
            let t = env.tasks(s_queued).await.into_iter().next()?;
            let log = env.log_text(t.id).await;
            log.contains("waiting for resources").then_some(t)
        })
        .await;
    assert_eq!(waiting.state, SessionState::Waiting);
    assert_eq!(env.db.get_session(s_queued).await.unwrap().state, SessionState::Waiting);
    manager.shutdown().await;
    assert!(manager.active_sessions().is_empty());
    for sid in [s_long, s_queued] {
        let session = env.db.get_session(sid).await.unwrap();
        assert_eq!(
            session.state,
            SessionState::Stopped,
            "shutdown waits for every session to end"
        );
        let task = env.tasks(sid).await.remove(0);
        assert_eq!(task.state, SessionState::Stopped);
        assert!(env.log_text(task.id).await.contains("the server is shutting down"));
    }
    let repo = env.open_repo(&repo_row);
    assert!(repo.list().unwrap().is_empty());
}

both_backends!(recovery_after_a_restart_fails_left_over_sessions);
async fn recovery_after_a_restart_fails_left_over_sessions(backend: Backend) {
    let env = Env::new(backend, "recovery").await;
    let repo_row = env.repository("main", 2, None).await;
    let disk = env.images().join("r.img");
    raw_image(&disk, 4, 1 << 20, 1 << 20);
    let inv = env.inventory(&[("vm-r", vec![disk])]).await;
    let job = env.job("recover", vec![inv[0].0.id], repo_row.id, |_| {}).await;
    let db = &env.db;
    let t0 = jiff::Timestamp::now();

    // What a killed server leaves: a running session with a running and a waiting task …
    let left = db.create_session(job.id, t0).await.unwrap();
    db.set_session_state(left.id, SessionState::Running, t0).await.unwrap();
    let mut left_tasks = Vec::new();
    for disk_name in ["d0", "d1"] {
        let t = db
            .create_task(&NewTask {
                session_id: left.id,
                vm_id: Some(inv[0].0.id),
                disk_id: None,
                vm_name: "hv1/vm-r".into(),
                disk_name: disk_name.into(),
            })
            .await
            .unwrap();
        left_tasks.push(t.id);
    }
    db.set_task_state(left_tasks[0], SessionState::Running, t0)
        .await
        .unwrap();
    // … and a session that had ended.
    let done = db.create_session(job.id, t0).await.unwrap();
    db.set_session_state(done.id, SessionState::Success, t0).await.unwrap();

    let manager = env.manager(None);
    assert_eq!(manager.recover_after_restart().await.unwrap(), 1);
    let left = db.get_session(left.id).await.unwrap();
    assert_eq!(left.state, SessionState::Failed);
    assert!(left.ended_at.is_some());
    let error = left.statistics["error"].as_str().unwrap();
    assert!(
        error.starts_with("the server stopped during this session (restarted at "),
        "{error}"
    );
    for id in left_tasks {
        let t = db.get_task(id).await.unwrap();
        assert_eq!(t.state, SessionState::Failed);
        assert!(t.ended_at.is_some());
        let log = env.log(id).await;
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].level, cairn_configdb::LogLevel::Error);
        assert!(
            log[0]
                .text
                .starts_with("the server stopped during this session (restarted at ")
        );
    }
    assert_eq!(db.get_session(done.id).await.unwrap().state, SessionState::Success);
    assert_eq!(manager.recover_after_restart().await.unwrap(), 0, "nothing left");

    // The job runs normally afterwards.
    let sid = manager.run_job(job.id, manual()).await.unwrap();
    let session = env.wait_session(sid).await;
    assert_state(&env, &session, SessionState::Success).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_disks_are_left_out_and_missing_ones_fail_their_vm() {
    let env = Env::new(Backend::Sqlite, "missing").await;
    let repo_row = env.repository("main", 4, None).await;
    let img = env.images();
    let (a0, a1, b0) = (img.join("a0.img"), img.join("a1.img"), img.join("b0.img"));
    for (i, d) in [&a0, &a1, &b0].into_iter().enumerate() {
        raw_image(d, 40 + i as u64, 1 << 20, 1 << 20);
    }
    let inv = env
        .inventory(&[("vm-a", vec![a0.clone(), a1.clone()]), ("vm-b", vec![b0.clone()])])
        .await;
    let (a, b) = (inv[0].0.id, inv[1].0.id);
    let excluding = env
        .job("excluding", vec![a, b], repo_row.id, |s| {
            s.excluded_disk_ids = vec![inv[0].1[1].id]
        })
        .await;
    let manager = env.manager(None);
    let sid = manager.run_job(excluding.id, manual()).await.unwrap();
    let session = env.wait_session(sid).await;
    assert_state(&env, &session, SessionState::Success).await;
    let names: Vec<(String, String)> = env
        .tasks(sid)
        .await
        .iter()
        .map(|t| (t.vm_name.clone(), t.disk_name.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("hv1/vm-a".to_string(), "a0.img".to_string()),
            ("hv1/vm-b".into(), "b0.img".into())
        ]
    );
    let repo = env.open_repo(&repo_row);
    assert_eq!(
        restored(&repo, "hv1/vm-a", 0, env.dir.path()),
        std::fs::read(&a0).unwrap()
    );

    // A rescan finds vm-a without its second disk and no vm-b at all.
    env.inventory(&[("vm-a", vec![a0.clone()])]).await;
    let all = env.job("all", vec![a, b], repo_row.id, |_| {}).await;
    let sid = manager.run_job(all.id, manual()).await.unwrap();
    let session = env.wait_session(sid).await;
    assert_state(&env, &session, SessionState::Failed).await;
    let tasks = env.tasks(sid).await;
    assert_eq!(tasks.len(), 3);
    assert!(tasks.iter().all(|t| t.state == SessionState::Failed));
    let (log_a0, log_a1, log_b) = (
        env.log_text(tasks[0].id).await,
        env.log_text(tasks[1].id).await,
        env.log_text(tasks[2].id).await,
    );
    assert!(
        log_a0.contains("not backed up: disk a1.img") && log_a0.contains("a restore point needs every disk of the VM"),
        "{log_a0}"
    );
    assert!(
        log_a1.contains("disk a1.img (") && log_a1.contains("was not found by the last scan of host hv1"),
        "{log_a1}"
    );
    assert!(
        log_b.contains("VM vm-b was not found by the last scan of host hv1"),
        "{log_b}"
    );

    // The job that leaves the missing disk out still backs up vm-a.
    let sid = manager.run_job(excluding.id, manual()).await.unwrap();
    let session = env.wait_session(sid).await;
    assert_state(&env, &session, SessionState::Failed).await;
    let states: Vec<SessionState> = env.tasks(sid).await.iter().map(|t| t.state).collect();
    assert_eq!(states, [SessionState::Success, SessionState::Failed]);
}
