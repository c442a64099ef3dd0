//! Restores through the server are repository tasks: they wait for a task slot like backup tasks
//! and read at their share of the repository's read rate limit. Real server (TLS, SQLite and
//! PostgreSQL), real qemu-img images and repositories; the shares and the waiting are read from
//! the server's resource scheduler, never inferred from timing.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_resources::{Direction, RateUsage, RepositoryId};
use cairn_testkit::rng::xorshift_bytes;
use common::{Backend, TestServer, default_repository, run, vm_id, write_at};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const MIB: u64 = 1 << 20;

/// An image folder `images` with one VM `vm1` (a 4 MiB raw disk whose first 2 MiB are random);
/// adds it as a host and returns the VM's id.
async fn add_vm(t: &TestServer) -> i64 {
    let images = t.path("images");
    std::fs::create_dir_all(&images).unwrap();
    let disk = images.join("vm1.img");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&disk)
        .arg("4M"));
    write_at(&disk, 0, &xorshift_bytes(1, 2 * MIB as usize));
    let (status, body) = t
        .post("/api/v1/hosts", json!({"kind": "image-folder", "path": images}))
        .await;
    assert_eq!(status, 201, "{body}");
    vm_id(&body, "vm1")
}

async fn patch_repository(t: &TestServer, repo: i64, body: Value) -> Value {
    let (status, answer) = t
        .call(
            Method::PATCH,
            &format!("/api/v1/repositories/{repo}"),
            Some(&t.admin),
            Some(&body),
        )
        .await;
    assert_eq!(status, 200, "PATCH {body}: {answer}");
    answer
}

/// A job backing up `vm` to `repo` in 256 KiB blocks; returns its id.
async fn create_job(t: &TestServer, vm: i64, repo: i64) -> i64 {
    let (status, job) = t
        .post(
            "/api/v1/jobs",
            json!({"name": "nightly", "vm_ids": [vm], "repository_id": repo, "block_size": 262144}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    job["id"].as_i64().unwrap()
}

async fn start_job(t: &TestServer, job: i64) -> i64 {
    let (status, body) = t.post(&format!("/api/v1/jobs/{job}/run"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    body["session_id"].as_i64().unwrap()
}

/// Polls a session until it ends (generous deadline) and asserts it succeeded.
async fn wait_for_success(t: &TestServer, id: i64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let detail = t.get(&format!("/api/v1/sessions/{id}")).await;
        let state = detail["session"]["state"].as_str().unwrap().to_owned();
        if !["waiting", "running"].contains(&state.as_str()) {
            assert_eq!(state, "success", "{detail}");
            return;
        }
        assert!(Instant::now() < deadline, "session {id} did not end: {detail}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `POST /restores` in the background (as the administrator).
fn spawn_restore(t: &TestServer, body: Value) -> JoinHandle<(u16, Value)> {
    let request = t
        .client
        .post(format!("{}/api/v1/restores", t.base))
        .bearer_auth(&t.admin)
        .json(&body);
    tokio::spawn(async move {
        let resp = request.send().await.expect("restore request");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("restore answer is JSON"))
    })
}

fn rate(t: &TestServer, repo: i64, direction: Direction) -> RateUsage {
    t.server
        .state()
        .resources
        .repository_rate(&RepositoryId::new(repo.to_string()), direction)
        .expect("the server registered the repository")
}

/// Polls until `done` holds (generous deadline); `what` names the awaited state in the failure.
/// Fails at once if one of `restores` ended before, since then the state can no longer come.
async fn wait_until(what: &str, restores: &[&JoinHandle<(u16, Value)>], mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if done() {
            return;
        }
        assert!(
            restores.iter().all(|r| !r.is_finished()),
            "a restore ended before {what}"
        );
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_restored(path: &Path, expected: &[u8]) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len(), 4 * MIB as usize, "{}", path.display());
    assert!(
        &bytes[..expected.len()] == expected,
        "{}: restored bytes differ",
        path.display()
    );
    assert!(bytes[expected.len()..].iter().all(|b| *b == 0), "{}", path.display());
}

async fn restores_share_the_read_limit(backend: Backend) {
    let t = TestServer::start(backend, "restore_share").await;
    let vm = add_vm(&t).await;
    let repo = default_repository(&t).await;
    let answer = patch_repository(&t, repo, json!({"read_limit_bytes": MIB, "write_limit_bytes": null})).await;
    assert_eq!(answer["read_limit_bytes"], MIB);
    // Applied at once, each direction with its own limit.
    assert_eq!(
        rate(&t, repo, Direction::Read),
        RateUsage {
            tasks: 0,
            limit: Some(MIB),
            share: Some(MIB)
        }
    );
    assert_eq!(rate(&t, repo, Direction::Write).limit, None);
    let job = create_job(&t, vm, repo).await;
    let session = start_job(&t, job).await;
    wait_for_success(&t, session).await;
    let original = xorshift_bytes(1, 2 * MIB as usize);

    // One restore: its lease's share is the whole read limit. Restoring 2 MiB at 1 MiB/s takes
    // about two seconds, long enough to watch the scheduler.
    let restore =
        |name: &str| json!({"repository_id": repo, "vm": "images/vm1", "disk": 0, "target_path": t.path(name)});
    let first = spawn_restore(&t, restore("first.raw"));
    wait_until("the first restore runs", &[&first], || {
        rate(&t, repo, Direction::Read).tasks == 1
    })
    .await;
    assert_eq!(
        rate(&t, repo, Direction::Read),
        RateUsage {
            tasks: 1,
            limit: Some(MIB),
            share: Some(MIB)
        }
    );
    assert_eq!(
        t.server
            .state()
            .resources
            .repository_load(&RepositoryId::new(repo.to_string()))
            .map(|l| l.running),
        Some(1),
        "the restore holds a repository task slot"
    );
    assert_eq!(rate(&t, repo, Direction::Write).tasks, 0, "a restore is a reader");

    // A second restore: both get half.
    let second = spawn_restore(&t, restore("second.raw"));
    wait_until("both restores run", &[&first, &second], || {
        rate(&t, repo, Direction::Read).tasks == 2
    })
    .await;
    assert_eq!(
        rate(&t, repo, Direction::Read),
        RateUsage {
            tasks: 2,
            limit: Some(MIB),
            share: Some(MIB / 2)
        }
    );

    // PATCH applies at once to the running restores; the write limit leaves them alone.
    patch_repository(&t, repo, json!({"write_limit_bytes": 3 * MIB})).await;
    let read = rate(&t, repo, Direction::Read);
    assert_eq!(
        (read.limit, read.share),
        (Some(MIB), Some(MIB / read.tasks.max(1) as u64))
    );
    assert_eq!(rate(&t, repo, Direction::Write).limit, Some(3 * MIB));
    patch_repository(&t, repo, json!({"read_limit_bytes": 8 * MIB})).await;
    let read = rate(&t, repo, Direction::Read);
    assert_eq!(read.limit, Some(8 * MIB));
    assert_eq!(read.share, Some(8 * MIB / read.tasks.max(1) as u64));

    for (handle, name) in [(first, "first.raw"), (second, "second.raw")] {
        let (status, stats) = handle.await.unwrap();
        assert_eq!(status, 200, "{stats}");
        assert_eq!(stats["blocks"], 8, "{stats}");
        assert_restored(&t.path(name), &original);
    }
    assert_eq!(
        rate(&t, repo, Direction::Read).tasks,
        0,
        "the restores freed their slots"
    );
    assert_eq!(
        t.server
            .state()
            .resources
            .repository_load(&RepositoryId::new(repo.to_string()))
            .map(|l| l.running),
        Some(0)
    );
    t.stop().await;
}

both_backends!(restores_share_the_read_limit);

async fn a_restore_waits_for_the_backups_slot(backend: Backend) {
    let t = TestServer::start(backend, "restore_wait").await;
    let vm = add_vm(&t).await;
    let repo = default_repository(&t).await;
    patch_repository(&t, repo, json!({"max_tasks": 1})).await;
    let job = create_job(&t, vm, repo).await;
    let session = start_job(&t, job).await;
    wait_for_success(&t, session).await;
    let points = t
        .get(&format!("/api/v1/repositories/{repo}/points?vm=images/vm1"))
        .await;
    let point = points[0]["points"][0]["id"].clone();
    assert!(point.is_string(), "{points}");
    let original = xorshift_bytes(1, 2 * MIB as usize);

    // New data and a write limit: the next backup writes 2 MiB at 1 MiB/s, holding the
    // repository's only task slot for about two seconds.
    write_at(&t.path("images/vm1.img"), 0, &xorshift_bytes(2, 2 * MIB as usize));
    patch_repository(&t, repo, json!({"write_limit_bytes": MIB})).await;
    let session = start_job(&t, job).await;
    let resources = t.server.state().resources.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rate(&t, repo, Direction::Write).tasks == 0 {
        assert!(Instant::now() < deadline, "the backup task never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The restore (of the first point) queues behind the backup's slot.
    let restore = spawn_restore(
        &t,
        json!({"repository_id": repo, "vm": "images/vm1", "point": point, "disk": 0,
               "target_path": t.path("restored.raw")}),
    );
    wait_until("the restore waits for a slot", &[&restore], || resources.waiting() == 1).await;
    assert_eq!(
        rate(&t, repo, Direction::Write).tasks,
        1,
        "the backup still holds the slot"
    );
    assert_eq!(rate(&t, repo, Direction::Read).tasks, 0, "the restore has not started");

    let (status, stats) = restore.await.unwrap();
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["point"], point);
    // The restore could only start once the backup's task had freed the slot.
    assert_eq!(rate(&t, repo, Direction::Write).tasks, 0);
    assert_eq!(resources.waiting(), 0);
    assert_restored(&t.path("restored.raw"), &original);
    wait_for_success(&t, session).await;
    t.stop().await;
}

both_backends!(a_restore_waits_for_the_backups_slot);
