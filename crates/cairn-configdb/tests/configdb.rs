//! Behaviour of the configuration database; every test runs on SQLite and on PostgreSQL.

mod common;

use std::collections::HashSet;

use cairn_api::spec::{BlockSize, Compression, Consistency, Method, Retention};
use cairn_configdb::{
    ConfigDb, DiscoveredDisk, DiscoveredVm, Error, HostKind, JobSpec, LogLevel, NewHost, NewProxy, NewRepository,
    NewTask, NewToken, Role, SessionCursor, SessionQuery, SessionState, TokenKind,
};
use common::Fixture;
use jiff::{SignedDuration, Timestamp};

fn repo(name: &str, is_default: bool) -> NewRepository {
    NewRepository {
        agent_id: None,
        name: name.into(),
        path: format!("/backups/{name}"),
        is_default,
        max_tasks: 4,
        read_limit_bytes: None,
        write_limit_bytes: Some(100 << 20),
    }
}

fn job(name: &str, repository_id: i64, vm_ids: Vec<i64>) -> JobSpec {
    JobSpec {
        name: name.into(),
        vm_ids,
        excluded_disk_ids: vec![],
        repository_id,
        block_size: BlockSize::DEFAULT,
        compression: Compression::Zstd(3),
        encryption: None,
        method: Method::Forward,
        retention_points: Retention::try_from(7).expect("retention"),
        schedule: Some("0 22 * * *".into()),
        backup_window: None,
        retries: 3,
        retry_wait_seconds: 600,
        enabled: true,
        consistency: Consistency::Online,
        require_app_consistency: false,
        pre_freeze_script: None,
        post_thaw_script: None,
    }
}

fn vm(id: &str, disks: &[&str]) -> DiscoveredVm {
    DiscoveredVm {
        external_id: id.into(),
        name: format!("vm {id}"),
        disks: disks
            .iter()
            .map(|d| DiscoveredDisk {
                key: (*d).into(),
                name: (*d).into(),
                path: format!("/images/{id}/{d}.qcow2"),
                format: "qcow2".into(),
                capacity_bytes: 10 << 30,
            })
            .collect(),
    }
}

/// A repository, an image-folder host with VMs `a` (disks 0, 1) and `b` (disk 0), and a job over both.
async fn setup(db: &ConfigDb) -> (i64, Vec<i64>, i64) {
    let repository = db.create_repository(&repo("main", true)).await.expect("repository");
    let host = db
        .create_host(&NewHost {
            name: "images".into(),
            kind: HostKind::ImageFolder,
            location: "/images".into(),
        })
        .await
        .expect("host");
    let vms = db
        .sync_host_inventory(host.id, &[vm("a", &["d0", "d1"]), vm("b", &["d0"])], Timestamp::now())
        .await
        .expect("inventory");
    let vm_ids: Vec<i64> = vms.iter().map(|v| v.id).collect();
    let created = db
        .create_job(&job("nightly", repository.id, vm_ids.clone()))
        .await
        .expect("job");
    (repository.id, vm_ids, created.id)
}

fn ts(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).expect("timestamp")
}

async fn migrations_apply_twice(f: &Fixture) {
    f.db.create_user(
        "admin",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        Role::Administrator,
    )
    .await
    .expect("user");
    for _ in 0..2 {
        let again = ConfigDb::open(&f.url).await.expect("reopen applies no migration twice");
        let users = again.list_users().await.expect("users");
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].role, Role::Administrator);
        again.close().await;
    }
}
both_backends!(migrations_apply_twice);

async fn job_round_trip_and_version_conflict(f: &Fixture) {
    let db = &f.db;
    let (repository, vms, id) = setup(db).await;
    let loaded = db.get_job(id).await.expect("get job");
    assert_eq!(loaded.version, 1);
    assert_eq!(loaded.spec, job("nightly", repository, vms.clone()));
    assert_eq!(
        db.find_job_by_name("nightly").await.expect("find").map(|j| j.id),
        Some(id)
    );

    // Two users load version 1 and both save: the first wins, the second is told to reload.
    let disks = db.list_disks(vms[0]).await.expect("disks");
    let mut first = loaded.spec.clone();
    first.vm_ids = vec![vms[1], vms[0]];
    first.excluded_disk_ids = vec![disks[1].id];
    first.compression = Compression::Lz4;
    let mut second = loaded.spec.clone();
    second.enabled = false;
    let saved = db.update_job(id, loaded.version, &first).await.expect("first save");
    assert_eq!(saved.version, 2);
    assert_eq!(saved.spec, first);
    let err = db
        .update_job(id, loaded.version, &second)
        .await
        .expect_err("stale save");
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert_eq!(db.get_job(id).await.expect("reload").spec, first);

    assert!(matches!(
        db.update_job(id + 1000, 1, &first).await,
        Err(Error::NotFound { .. })
    ));
    db.set_job_enabled(id, false).await.expect("disable");
    let jobs = db.list_jobs().await.expect("list");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].version, 3);
    assert!(!jobs[0].spec.enabled);
    assert_eq!(jobs[0].spec.vm_ids, vec![vms[1], vms[0]]);
    assert_eq!(jobs[0].spec.excluded_disk_ids, vec![disks[1].id]);
}
both_backends!(job_round_trip_and_version_conflict);

async fn unique_names_are_duplicates(f: &Fixture) {
    let db = &f.db;
    let (repository, vms, _) = setup(db).await;
    let dup = |r: Result<_, Error>| matches!(r, Err(Error::Duplicate { .. }));
    assert!(dup(db
        .create_job(&job("nightly", repository, vms.clone()))
        .await
        .map(|_| ())));
    assert!(dup(db.create_repository(&repo("main", false)).await.map(|_| ())));
    let host = NewHost {
        name: "images".into(),
        kind: HostKind::Qemu,
        location: "qemu+ssh://h".into(),
    };
    assert!(dup(db.create_host(&host).await.map(|_| ())));
    let user = db.create_user("alice", "h", Role::Viewer).await.expect("user");
    assert!(dup(db
        .create_user("alice", "h2", Role::Administrator)
        .await
        .map(|_| ())));
    let proxy = NewProxy {
        agent_id: None,
        name: "server".into(),
        address: None,
        max_tasks: 2,
    };
    db.create_proxy(&proxy).await.expect("proxy");
    assert!(dup(db.create_proxy(&proxy).await.map(|_| ())));
    let token = NewToken {
        user_id: user.id,
        kind: TokenKind::Api,
        token_hash: "h1".into(),
        description: "".into(),
        expires_at: None,
        scope: cairn_configdb::TokenScope::Full,
    };
    db.create_token(&token).await.expect("token");
    assert!(dup(db.create_token(&token).await.map(|_| ())));
    // Renaming onto a taken name is a duplicate too.
    let other = db.create_job(&job("weekly", repository, vec![])).await.expect("job");
    assert!(dup(db
        .update_job(other.id, other.version, &job("nightly", repository, vec![]))
        .await
        .map(|_| ())));

    // Only one default repository: a new default takes over.
    let second = db
        .create_repository(&repo("second", true))
        .await
        .expect("second default");
    assert_eq!(
        db.default_repository().await.expect("default").map(|r| r.id),
        Some(second.id)
    );
    assert!(!db.get_repository(repository).await.expect("first").settings.is_default);
    // Out-of-range values are rejected by the schema.
    let mut bad = repo("bad", false);
    bad.max_tasks = 0;
    assert!(matches!(db.create_repository(&bad).await, Err(Error::Invalid { .. })));
}
both_backends!(unique_names_are_duplicates);

async fn foreign_keys_and_cascades(f: &Fixture) {
    let db = &f.db;
    let (repository, vms, job_id) = setup(db).await;
    // References to missing objects are refused.
    assert!(matches!(
        db.create_job(&job("x", repository + 99, vec![])).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        db.create_job(&job("y", repository, vec![vms[0] + 99])).await,
        Err(Error::NotFound { .. })
    ));
    assert!(
        db.find_job_by_name("y").await.expect("find").is_none(),
        "a failed create leaves nothing behind"
    );
    // A repository used by a job cannot be deleted.
    let in_use = db.delete_repository(repository).await;
    assert!(matches!(in_use, Err(Error::Conflict { .. })), "{in_use:?}");

    let session = db.create_session(job_id, Timestamp::now()).await.expect("session");
    let disk = db.list_disks(vms[0]).await.expect("disks")[0].clone();
    let task = db
        .create_task(&NewTask {
            session_id: session.id,
            vm_id: Some(vms[0]),
            disk_id: Some(disk.id),
            vm_name: "vm a".into(),
            disk_name: disk.name.clone(),
        })
        .await
        .expect("task");
    db.assign_task(task.id, None, Some(repository)).await.expect("assign");
    db.append_task_log(task.id, LogLevel::Info, "reading", Timestamp::now())
        .await
        .expect("log");

    // Deleting a VM removes it from the job; the task keeps its history without the reference.
    db.delete_vm(vms[0]).await.expect("delete VM");
    assert_eq!(db.get_job(job_id).await.expect("job").spec.vm_ids, vec![vms[1]]);
    let kept = db.get_task(task.id).await.expect("task");
    assert_eq!((kept.vm_id, kept.disk_id, kept.vm_name.as_str()), (None, None, "vm a"));
    assert!(matches!(db.get_disk(disk.id).await, Err(Error::NotFound { .. })));

    // Deleting the job removes its sessions, tasks and logs; then the repository can go.
    db.delete_job(job_id).await.expect("delete job");
    assert!(matches!(db.get_session(session.id).await, Err(Error::NotFound { .. })));
    assert!(matches!(db.get_task(task.id).await, Err(Error::NotFound { .. })));
    assert!(db.task_log(task.id, None, 10).await.expect("log").is_empty());
    db.delete_repository(repository).await.expect("delete repository");
    assert!(matches!(db.delete_job(job_id).await, Err(Error::NotFound { .. })));

    // Deleting a user removes their tokens.
    let user = db.create_user("bob", "h", Role::RestoreOperator).await.expect("user");
    let token = NewToken {
        user_id: user.id,
        kind: TokenKind::Login,
        token_hash: "bob".into(),
        description: "".into(),
        expires_at: None,
        scope: cairn_configdb::TokenScope::Full,
    };
    db.create_token(&token).await.expect("token");
    db.delete_user(user.id).await.expect("delete user");
    assert!(
        db.find_valid_token("bob", Timestamp::now())
            .await
            .expect("lookup")
            .is_none()
    );
    let orphan = NewToken {
        user_id: user.id,
        ..token
    };
    assert!(matches!(db.create_token(&orphan).await, Err(Error::NotFound { .. })));
}
both_backends!(foreign_keys_and_cascades);

async fn paged_sessions_in_order(f: &Fixture) {
    let db = &f.db;
    let (repository, _, nightly) = setup(db).await;
    let weekly = db.create_job(&job("weekly", repository, vec![])).await.expect("job").id;
    const COUNT: i64 = 5000;
    for i in 0..COUNT {
        // Three sessions share each start time, so ties are broken by id; two jobs interleave.
        let job = if i % 5 == 0 { weekly } else { nightly };
        db.create_session(job, ts((i * 7919 % COUNT) / 3))
            .await
            .expect("session");
    }
    for (filter, expected) in [
        (None, COUNT),
        (Some(weekly), COUNT / 5),
        (Some(nightly), COUNT - COUNT / 5),
    ] {
        let mut seen = HashSet::new();
        let mut all = Vec::new();
        let mut query = SessionQuery {
            job_id: filter,
            after: None,
            limit: 97,
        };
        loop {
            let page = db.list_sessions(&query).await.expect("page");
            assert!(page.sessions.len() <= 97);
            all.extend(page.sessions);
            match page.next {
                // The cursor survives its text form, as an API page token.
                Some(next) => query.after = Some(next.to_string().parse::<SessionCursor>().expect("token")),
                None => break,
            }
        }
        assert_eq!(all.len() as i64, expected, "filter {filter:?}");
        for s in &all {
            assert!(seen.insert(s.id), "session {} listed twice", s.id);
            if let Some(job) = filter {
                assert_eq!(s.job_id, job);
            }
        }
        for pair in all.windows(2) {
            assert!(
                (pair[0].started_at, pair[0].id) > (pair[1].started_at, pair[1].id),
                "newest first"
            );
        }
    }
}
both_backends!(paged_sessions_in_order);

async fn job_names_and_last_sessions(f: &Fixture) {
    let db = &f.db;
    let (repository, _, nightly) = setup(db).await;
    let weekly = db.create_job(&job("weekly", repository, vec![])).await.expect("job").id;
    let idle = db.create_job(&job("idle", repository, vec![])).await.expect("job").id;
    // Ties on the start time are broken by id, as in the session list.
    let mut newest = std::collections::HashMap::new();
    for (i, job) in [nightly, weekly, nightly, weekly, nightly, nightly]
        .into_iter()
        .enumerate()
    {
        let s = db
            .create_session(job, ts(if i >= 4 { 100 } else { i as i64 }))
            .await
            .expect("session");
        newest.insert(job, s.id);
    }
    let last = db.last_sessions().await.expect("last sessions");
    assert_eq!(last.len(), 2, "a job without sessions has no entry: {last:?}");
    assert_eq!(last[&nightly].id, newest[&nightly]);
    assert_eq!(last[&weekly].id, newest[&weekly]);
    assert!(!last.contains_key(&idle));

    let names = db.job_names(&[nightly, idle, 987_654]).await.expect("names");
    assert_eq!(names.len(), 2, "unknown ids are left out: {names:?}");
    assert_eq!(names[&nightly], "nightly");
    assert_eq!(names[&idle], "idle");
    assert!(db.job_names(&[]).await.expect("no ids").is_empty());
}
both_backends!(job_names_and_last_sessions);

async fn restart_marks_running_sessions_failed(f: &Fixture) {
    let db = &f.db;
    let (_, _, job_id) = setup(db).await;
    let waiting = db.create_session(job_id, ts(1)).await.expect("session");
    let running = db.create_session(job_id, ts(2)).await.expect("session");
    let done = db.create_session(job_id, ts(3)).await.expect("session");
    db.set_session_state(running.id, SessionState::Running, ts(4))
        .await
        .expect("state");
    db.set_session_state(done.id, SessionState::Success, ts(5))
        .await
        .expect("state");
    let task = NewTask {
        session_id: running.id,
        vm_id: None,
        disk_id: None,
        vm_name: "v".into(),
        disk_name: "d".into(),
    };
    let task = db.create_task(&task).await.expect("task");
    db.set_task_state(task.id, SessionState::Running, ts(6))
        .await
        .expect("task state");
    db.set_task_statistics(task.id, &serde_json::json!({"read_bytes": 42}))
        .await
        .expect("stats");
    db.set_session_statistics(done.id, &serde_json::json!({"bottleneck": "source"}))
        .await
        .expect("stats");

    assert_eq!(db.mark_running_sessions_failed(ts(100)).await.expect("mark"), 2);
    for id in [waiting.id, running.id] {
        let s = db.get_session(id).await.expect("session");
        assert_eq!((s.state, s.ended_at), (SessionState::Failed, Some(ts(100))));
    }
    let s = db.get_session(done.id).await.expect("session");
    assert_eq!((s.state, s.ended_at), (SessionState::Success, Some(ts(5))));
    assert_eq!(s.statistics["bottleneck"], "source");
    let t = db.get_task(task.id).await.expect("task");
    assert_eq!(
        (t.state, t.started_at, t.ended_at),
        (SessionState::Failed, Some(ts(6)), Some(ts(100)))
    );
    assert_eq!(t.statistics["read_bytes"], 42);
    assert_eq!(db.mark_running_sessions_failed(ts(200)).await.expect("mark again"), 0);
}
both_backends!(restart_marks_running_sessions_failed);

async fn tokens_by_hash_and_expiry(f: &Fixture) {
    let db = &f.db;
    let user = db.create_user("carol", "h", Role::Viewer).await.expect("user");
    let now = ts(0);
    let hour = SignedDuration::from_hours(1);
    for (hash, expires_at) in [
        ("valid", Some(now + hour)),
        ("expired", Some(now - hour)),
        ("forever", None),
    ] {
        let token = NewToken {
            user_id: user.id,
            kind: TokenKind::Api,
            token_hash: hash.into(),
            description: hash.into(),
            expires_at,
            scope: cairn_configdb::TokenScope::Full,
        };
        db.create_token(&token).await.expect("token");
    }
    let (token, owner) = db
        .find_valid_token("valid", now)
        .await
        .expect("lookup")
        .expect("valid token");
    assert_eq!(
        (token.expires_at, owner.name.as_str(), owner.role),
        (Some(now + hour), "carol", Role::Viewer)
    );
    assert!(db.find_valid_token("expired", now).await.expect("lookup").is_none());
    assert!(db.find_valid_token("unknown", now).await.expect("lookup").is_none());
    assert!(
        db.find_valid_token("forever", now + hour * 1000)
            .await
            .expect("lookup")
            .is_some()
    );
    assert!(
        db.find_valid_token("valid", now + hour)
            .await
            .expect("lookup")
            .is_none(),
        "expiry is exclusive"
    );
    assert_eq!(db.delete_expired_tokens(now).await.expect("purge"), 1);
    let left: Vec<String> = db
        .list_tokens(user.id)
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.token_hash)
        .collect();
    assert_eq!(left, ["valid", "forever"]);
}
both_backends!(tokens_by_hash_and_expiry);

async fn inventory_settings_proxies_and_logs(f: &Fixture) {
    let db = &f.db;
    let (_, vms, job_id) = setup(db).await;
    let host = db.list_hosts().await.expect("hosts")[0].clone();
    assert_eq!(host.kind, HostKind::ImageFolder);
    // A second discovery run: VM b and disk d1 of a are gone, c is new; ids of known objects stay.
    let again = db
        .sync_host_inventory(host.id, &[vm("a", &["d0"]), vm("c", &["d0"])], Timestamp::now())
        .await
        .expect("rediscover");
    let by_name: Vec<(String, bool)> = again.iter().map(|v| (v.external_id.clone(), v.present)).collect();
    assert_eq!(by_name, [("a".into(), true), ("b".into(), false), ("c".into(), true)]);
    assert_eq!(again[0].id, vms[0]);
    let disks: Vec<(String, bool)> = db
        .list_disks(vms[0])
        .await
        .expect("disks")
        .into_iter()
        .map(|d| (d.key, d.present))
        .collect();
    assert_eq!(disks, [("d0".into(), true), ("d1".into(), false)]);
    assert_eq!(
        db.get_job(job_id).await.expect("job").spec.vm_ids,
        vms,
        "jobs keep missing VMs"
    );
    assert_eq!(db.list_vms(Some(host.id)).await.expect("vms").len(), 3);

    assert_eq!(
        db.get_setting(cairn_configdb::SETTING_PARALLEL_PROCESSING)
            .await
            .expect("get"),
        None
    );
    db.set_setting(cairn_configdb::SETTING_PARALLEL_PROCESSING, "false")
        .await
        .expect("set");
    db.set_setting(cairn_configdb::SETTING_PARALLEL_PROCESSING, "true")
        .await
        .expect("set again");
    assert_eq!(
        db.list_settings().await.expect("list"),
        [("parallel_processing".into(), "true".into())]
    );
    assert!(db.delete_setting("parallel_processing").await.expect("delete"));

    let server = db
        .create_proxy(&NewProxy {
            agent_id: None,
            name: "server".into(),
            address: None,
            max_tasks: 4,
        })
        .await
        .expect("proxy");
    let renamed = NewProxy {
        agent_id: None,
        name: "backup server".into(),
        address: None,
        max_tasks: 8,
    };
    assert_eq!(
        db.update_proxy(server.id, &renamed).await.expect("update").settings,
        renamed
    );
    assert_eq!(db.list_proxies().await.expect("proxies").len(), 1);

    let session = db.create_session(job_id, Timestamp::now()).await.expect("session");
    let task = NewTask {
        session_id: session.id,
        vm_id: Some(vms[0]),
        disk_id: None,
        vm_name: "a".into(),
        disk_name: "d0".into(),
    };
    let task = db.create_task(&task).await.expect("task");
    db.assign_task(task.id, Some(server.id), None).await.expect("assign");
    let mut ids = Vec::new();
    for i in 0..25 {
        let level = if i == 24 { LogLevel::Error } else { LogLevel::Info };
        ids.push(
            db.append_task_log(task.id, level, &format!("line {i}"), ts(i))
                .await
                .expect("log"),
        );
    }
    let first = db.task_log(task.id, None, 10).await.expect("log");
    assert_eq!(first.len(), 10);
    let rest = db.task_log(task.id, Some(first[9].id), 100).await.expect("log");
    assert_eq!(rest.len(), 15);
    assert_eq!(
        (rest[14].text.as_str(), rest[14].level, rest[14].at),
        ("line 24", LogLevel::Error, ts(24))
    );
    db.delete_proxy(server.id).await.expect("delete proxy");
    assert_eq!(db.list_tasks(session.id).await.expect("tasks")[0].proxy_id, None);
}
both_backends!(inventory_settings_proxies_and_logs);

#[tokio::test]
async fn unknown_url_scheme_is_invalid() {
    assert!(matches!(
        ConfigDb::open("mysql://localhost/x").await,
        Err(Error::Invalid { .. })
    ));
}

#[tokio::test]
async fn open_sqlite_path_uses_wal_and_foreign_keys() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("data folder?#").join("config.db");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("folder");
    let db = ConfigDb::open_sqlite(&path).await.expect("open");
    assert_eq!(db.backend(), cairn_configdb::Backend::Sqlite);
    db.set_setting("k", "v").await.expect("write");
    db.close().await;
    // Inspect the file with a plain connection.
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect_with(&sqlx::sqlite::SqliteConnectOptions::new().filename(&path))
        .await
        .expect("connect");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
    // The keyset query walks the index in order: no sort, no table scan.
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT id, job_id, state, started_at, ended_at, statistics FROM sessions \
         WHERE (started_at, id) < (1, 2) ORDER BY started_at DESC, id DESC LIMIT 50",
    )
    .fetch_all(&mut conn)
    .await
    .expect("plan");
    let plan: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
    assert!(plan.iter().any(|p| p.contains("sessions_started")), "{plan:?}");
    assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT id FROM sessions WHERE job_id = 1 AND (started_at, id) < (1, 2) \
         ORDER BY started_at DESC, id DESC LIMIT 50",
    )
    .fetch_all(&mut conn)
    .await
    .expect("plan");
    let plan: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
    assert!(plan.iter().any(|p| p.contains("sessions_job_started")), "{plan:?}");
    assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
}
