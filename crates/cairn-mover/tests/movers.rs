//! Both data movers in one process over real TLS on 127.0.0.1, with a real encrypted repository
//! and real disk images: the source reads the images and sends what the target's engine plans
//! to read; the test plays the backup server (relays read plans, cancels).

mod common;

use std::process::Command;

use cairn_mover::MoverError;
use cairn_mover::protocol::{DiskDescription, Instruction, TaskEvent};
use cairn_transfer::{Block, Bytes, PeerPolicy, Sender, SenderConfig, ServerName, TransferId, sender_tls_config};
use common::*;

/// Blocks of `data` (1 MiB each, the last one short) that are all zeros, among `blocks`.
fn zero_blocks_among(data: &[u8], blocks: &[u64]) -> u64 {
    blocks
        .iter()
        .filter(|&&b| {
            let start = (b * BS) as usize;
            let end = (start + BS as usize).min(data.len());
            data[start..end].iter().all(|&x| x == 0)
        })
        .count() as u64
}

/// Bytes of `blocks` of a disk of `size` bytes (the last block may be short).
fn bytes_of(size: u64, blocks: &[u64]) -> u64 {
    blocks.iter().map(|&b| (size - b * BS).min(BS)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_backup_of_two_disks_restores_byte_for_byte() {
    let site = Site::new().await;
    let size0 = 24 * BS;
    let size1 = 9 * BS + BS / 2;
    let data0 = disk_content(size0, &[0, 3, 4, 10, 23], 1);
    let data1 = disk_content(size1, &[1, 5, 9], 2);
    let (path0, path1) = (site.path("vm1-disk0.raw"), site.path("vm1-disk1.raw"));
    write_raw(&path0, &data0);
    write_raw(&path1, &data1);

    let out = backup(&site, BackupSpec::new("vm1", &[&path0, &path1])).await;
    let (point, kind, _) = out.committed();
    assert_eq!(kind, "full");
    assert_eq!(out.target.as_ref().expect("committed").point, point);

    // The source described both disks as they are.
    let described = out
        .source_events
        .iter()
        .find_map(|e| match e {
            TaskEvent::Described { disks } => Some(disks.clone()),
            _ => None,
        })
        .expect("Described");
    assert_eq!(
        described.iter().map(|d| d.virtual_size).collect::<Vec<_>>(),
        vec![size0, size1]
    );
    assert!(described.iter().all(|d| d.changed.is_none()), "raw files have no CBT");

    // Every disk was started and finished, in order, with its own statistics.
    let mut order = Vec::new();
    for e in &out.target_events {
        match e {
            TaskEvent::DiskStarting { disk, .. } => order.push(format!("start {disk}")),
            TaskEvent::DiskFinished { disk, stats, .. } => {
                order.push(format!("finish {disk}"));
                let random = if *disk == 0 { 5 } else { 3 };
                assert_eq!(stats.new_blocks, random, "new blocks of disk {disk}: {stats:?}");
            }
            _ => {}
        }
    }
    assert_eq!(order, ["start 0", "finish 0", "start 1", "finish 1"]);

    // The source sent exactly what the target planned, zero blocks as empty markers.
    let plan0 = out.planned_blocks(0);
    let plan1 = out.planned_blocks(1);
    assert!(plan0.contains(&23) && plan1.contains(&9), "plans {plan0:?} {plan1:?}");
    let summary = out.summary();
    assert_eq!(summary.blocks, (plan0.len() + plan1.len()) as u64);
    let zeros = zero_blocks_among(&data0, &plan0) + zero_blocks_among(&data1, &plan1);
    assert!(zeros > 0, "the test images should have zero blocks the source reads");
    assert_eq!(summary.zero_blocks, zeros);
    assert_eq!(summary.read_bytes, bytes_of(size0, &plan0) + bytes_of(size1, &plan1));
    // Only the eight random blocks carried bytes (the last one is half a block).
    assert_eq!(summary.sent_bytes, 7 * BS + BS / 2);
    assert_eq!(summary.streams, 3);

    assert_eq!(site.restore("vm1", &point, 0), data0, "disk 0 restored");
    assert_eq!(site.restore("vm1", &point, 1), data1, "disk 1 restored");
    assert_eq!(site.points("vm1").len(), 1);
}

/// New stats of the target's `DiskFinished` for `disk`.
fn finished_stats(out: &Outcome, disk: u32) -> cairn_repo::PointStats {
    out.target_events
        .iter()
        .find_map(|e| match e {
            TaskEvent::DiskFinished { disk: d, stats, .. } if *d == disk => Some(stats.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no DiskFinished for disk {disk}: {:#?}", out.target_events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_backup_is_incremental_and_both_points_restore() {
    let site = Site::new().await;
    let size = 8 * BS;
    let old = disk_content(size, &[0, 2, 5, 7], 11);
    let path = site.path("vm2-disk0.raw");
    write_raw(&path, &old);
    let first = backup(&site, BackupSpec::new("vm2", &[&path])).await;
    let (first_point, first_kind, _) = first.committed();
    assert_eq!(first_kind, "full");

    // One stored block changes, one zero block gets data.
    let mut new = old.clone();
    scramble_block(&mut new, 2, 12);
    scramble_block(&mut new, 6, 13);
    write_raw(&path, &new);
    let second = backup(&site, BackupSpec::new("vm2", &[&path])).await;
    let (second_point, second_kind, _) = second.committed();
    assert_eq!(second_kind, "incremental");
    assert_ne!(second_point, first_point);
    let stats = finished_stats(&second, 0);
    assert_eq!(stats.new_blocks, 2, "{stats:?}");
    assert_eq!(stats.unchanged_blocks, 3, "{stats:?}");

    let points = site.points("vm2");
    assert_eq!(
        points.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        vec![first_point.clone(), second_point.clone()]
    );
    assert_eq!(site.restore("vm2", &second_point, 0), new, "the new point");
    assert_eq!(site.restore("vm2", &first_point, 0), old, "the first point");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_differencing_child_of_the_last_source_sends_only_its_changes() {
    let site = Site::new().await;
    let size = 6 * BS;
    let base_data = disk_content(size, &[0, 1, 2, 3, 4, 5], 21);
    let base = site.path("vm3-base.raw");
    write_raw(&base, &base_data);
    let first = backup(&site, BackupSpec::new("vm3", &[&base])).await;
    let (first_point, _, _) = first.committed();
    assert_eq!(first.planned_blocks(0), (0..6).collect::<Vec<_>>());

    // A snapshot: the VM now writes into a qcow2 child of the file the first point was read from.
    let child = site.path("vm3-child.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(&base)
        .args(["-F", "raw"])
        .arg(&child));
    run(Command::new("qemu-io").args(["-c", "write -P 0x55 1M 1M"]).arg(&child));
    let expected = site.path("vm3-child-flat.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&child)
        .arg(&expected));
    let expected = std::fs::read(&expected).expect("read the converted child");
    assert_ne!(expected, base_data);

    let second = backup(&site, BackupSpec::new("vm3", &[&child])).await;
    let (second_point, kind, notes) = second.committed();
    assert_eq!(kind, "incremental");
    let description = second
        .source_events
        .iter()
        .find_map(|e| match e {
            TaskEvent::Described { disks } => Some(disks[0].clone()),
            _ => None,
        })
        .expect("Described");
    assert_eq!(description.changed, Some(vec![[BS, BS]]), "{description:?}");
    assert!(description.changed_since.is_some());
    assert!(
        notes.iter().all(|n| !n.contains("every allocated block")),
        "CBT was refused: {notes:?}"
    );
    // Only the changed block was planned, read and sent.
    let plans = second
        .target_events
        .iter()
        .filter(|e| matches!(e, TaskEvent::ReadPlan { .. }))
        .count();
    assert_eq!(plans, 1);
    let runs: u64 = second
        .target_events
        .iter()
        .filter_map(|e| match e {
            TaskEvent::ReadPlan { runs, .. } => Some(runs.iter().map(|r| r[1]).sum::<u64>()),
            _ => None,
        })
        .sum();
    assert_eq!(runs, 1);
    assert_eq!(second.planned_blocks(0), vec![1]);
    assert_eq!(second.summary().blocks, 1);
    assert_eq!(second.summary().read_bytes, BS);

    assert_eq!(site.restore("vm3", &second_point, 0), expected, "the child's point");
    assert_eq!(site.restore("vm3", &first_point, 0), base_data, "the base's point");
}

/// Block size of the cancelled backups: far more blocks than the target's inbox and the
/// transfer's window hold together, so the source cannot have sent everything when the cancel comes.
const SMALL_BLOCK: u32 = 256 << 10;
/// Size of the cancelled backups' disk: 192 blocks of 256 KiB, about 24 s of writing at 2 MiB/s.
const CANCEL_DISK: u64 = 48 * BS;

/// A VM with one 48 MiB disk of random blocks backed up once; returns its path, content and point.
async fn backed_up_vm(site: &Site, vm: &str) -> (std::path::PathBuf, Vec<u8>, String) {
    let data = disk_content(CANCEL_DISK, &(0..48).collect::<Vec<_>>(), 31);
    let path = site.path(&format!("{vm}-disk0.raw"));
    write_raw(&path, &data);
    let mut spec = BackupSpec::new(vm, &[&path]);
    spec.block_size = SMALL_BLOCK;
    let out = backup(site, spec).await;
    let (point, _, _) = out.committed();
    (path, data, point)
}

/// Starts a throttled second backup of `path` with every block changed, and waits until the
/// target has written part of it.
async fn slow_second_backup(site: &Site, vm: &str, path: &std::path::Path) -> Running {
    let changed = disk_content(CANCEL_DISK, &(0..48).collect::<Vec<_>>(), 32);
    write_raw(path, &changed);
    let mut spec = BackupSpec::new(vm, &[path]);
    spec.write_rate = Some(2 << 20);
    // The source is paced too: the target's engine and inbox buffer many blocks, and the source
    // must still be sending when the cancel comes.
    spec.network_rate = Some(4 << 20);
    spec.block_size = SMALL_BLOCK;
    let running = start_backup(site, spec).await;
    running
        .target_link
        .wait_for("Progress", |e| match e {
            TaskEvent::Progress { done_bytes, .. } if *done_bytes > 0 => Some(()),
            _ => None,
        })
        .await;
    assert!(
        !running.source.is_finished() && !running.target.is_finished(),
        "the backup should still be running"
    );
    running
}

/// After a cancelled backup: nothing new committed, the old point intact and restorable.
fn assert_untouched(site: &Site, vm: &str, point: &str, data: &[u8], out: &Outcome) {
    let points = site.points(vm);
    assert_eq!(
        points.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        vec![point],
        "a cancelled backup must not commit"
    );
    assert!(
        !out.target_events
            .iter()
            .any(|e| matches!(e, TaskEvent::Committed { .. })),
        "{:#?}",
        out.target_events
    );
    assert_eq!(site.restore(vm, point, 0), data, "the previous point");
    let report = cairn_repo::verify::verify(&site.open_repo(), Some(vm), &|_| {}).expect("verify");
    assert!(report.ok, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_mid_transfer_stops_both_ends_and_commits_nothing() {
    let site = Site::new().await;
    let (path, data, point) = backed_up_vm(&site, "vm4").await;
    let running = slow_second_backup(&site, "vm4", &path).await;

    // The server cancels both tasks, as it does when the user stops a job (the source first, as
    // the server does: the target's end of the transfer must not reach the source before its cancel).
    let reason = "stopped by admin";
    for (tx, task) in [(&running.to_source, running.source_task), (&running.to_target, 0)] {
        // A task that already ended has dropped its channel; the results below tell why.
        let _ = tx.send(Instruction::Cancel {
            task,
            reason: reason.into(),
        });
    }
    let out = running.finish().await;
    assert_cancelled(&out, reason);
    assert_untouched(&site, "vm4", &point, &data, &out);
}

/// Both ends of `out` ended cancelled with `reason`.
fn assert_cancelled(out: &Outcome, reason: &str) {
    match &out.target {
        Err(MoverError::Cancelled(r)) => assert_eq!(r, reason),
        other => panic!("the target should be cancelled: {other:?}"),
    }
    match &out.source {
        Err(MoverError::Cancelled(r)) => assert_eq!(r, reason),
        other => panic!("the source should be cancelled: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_in_the_servers_answer_stops_both_ends() {
    let site = Site::new().await;
    let (path, data, point) = backed_up_vm(&site, "vm5").await;
    let running = slow_second_backup(&site, "vm5", &path).await;
    let reason = "the backup window closed";
    for link in [&running.source_link, &running.target_link] {
        link.control.lock().expect("control").cancel = Some(reason.into());
    }
    let out = running.finish().await;
    assert_cancelled(&out, reason);
    assert_untouched(&site, "vm5", &point, &data, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_pinned_to_another_proxy_refuses_the_streams() {
    let site = Site::new().await;
    let data = disk_content(3 * BS, &[0, 2], 41);
    let path = site.path("vm6-disk0.raw");
    write_raw(&path, &data);
    // The target expects the transfer from another data mover of the same CA.
    let other = site.pki.identity("proxy-9.cairn");
    let mut spec = BackupSpec::new("vm6", &[&path]);
    spec.source_fingerprint = Some(other.fingerprint().to_string());
    let running = start_backup(&site, spec).await;

    let source = join("source", running.source).await;
    let error = match source {
        Err(MoverError::Channel(e)) => e.to_string(),
        other => panic!("the source should fail on the refused streams: {other:?}"),
    };
    assert!(error.contains("accepts streams only from"), "{error}");
    // The server then cancels the target, which was waiting for blocks that never came.
    running
        .to_target
        .send(Instruction::Cancel {
            task: 0,
            reason: "the proxy failed".into(),
        })
        .expect("send cancel");
    let target = join("target", running.target).await;
    assert!(matches!(target, Err(MoverError::Cancelled(_))), "{target:?}");
    assert!(site.points("vm6").is_empty(), "nothing may be committed");
    assert!(
        !running
            .target_link
            .events()
            .iter()
            .any(|e| matches!(e, TaskEvent::Committed { .. }))
    );
}

/// Runs a source alone for a one-disk VM of `blocks` blocks, hands it `plan`, and returns how it
/// ended.
async fn source_with_plan(site: &Site, blocks: u64, disk: u32, runs: Vec<[u64; 2]>) -> MoverError {
    let path = site.path(&format!("plan-{}.raw", site.task_number()));
    write_raw(&path, &disk_content(blocks * BS - BS / 4, &[0], 51));
    let task = source_task(site, "vm7", &[path], &TransferId::random().to_string(), 1);
    let number = task.task;
    let (handle, link, to_source) = spawn_source(site, task);
    link.wait_for("Described", |e| matches!(e, TaskEvent::Described { .. }).then_some(()))
        .await;
    to_source
        .send(Instruction::ReadPlan {
            task: number,
            disk,
            runs,
        })
        .expect("send plan");
    let result = join("source", handle).await;
    drop(to_source);
    match result {
        Err(e) => e,
        Ok(summary) => panic!("a bad read plan was accepted: {summary:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_plan_past_the_end_is_refused_naming_the_disk() {
    let site = Site::new().await;
    // 3 blocks (the last one short): block 3 does not exist.
    let e = source_with_plan(&site, 3, 0, vec![[0, 1], [2, 2]]).await;
    assert!(matches!(e, MoverError::Protocol(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "bad instruction from the server: the read plan of disk 0 names block 3, past its end (3 blocks)"
    );
    let e = source_with_plan(&site, 3, 0, vec![[0, 3], [0, 1]]).await;
    assert_eq!(
        e.to_string(),
        "bad instruction from the server: the read plan of disk 0 names more blocks than it has"
    );
    let e = source_with_plan(&site, 3, 4, vec![[0, 1]]).await;
    assert_eq!(
        e.to_string(),
        "bad instruction from the server: a read plan for disk 4, but the VM has 1 disks"
    );
    let e = source_with_plan(&site, 3, 0, vec![[u64::MAX, 2]]).await;
    assert!(matches!(e, MoverError::Protocol(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_block_of_the_wrong_length_fails_the_backup_naming_the_disk() {
    let site = Site::new().await;
    let transfer = TransferId::random();
    let description = DiskDescription {
        describe: "/proxy/vm8-disk0.raw".into(),
        virtual_size: 2 * BS,
        logical_sector: 512,
        physical_sector: 512,
        identity: None,
        allocation: vec![[0, 2 * BS]],
        changed: None,
        changed_since: None,
    };
    let task = target_task(&site, "vm8", &transfer.to_string(), vec![description]);
    let (handle, link, _to_target) = spawn_target(&site, task, None);
    let runs = link
        .wait_for("ReadPlan", |e| match e {
            TaskEvent::ReadPlan { runs, .. } => Some(runs.clone()),
            _ => None,
        })
        .await;
    assert_eq!(runs, vec![[0, 2]]);

    // A proxy that sends 1000 bytes for a 1 MiB block.
    let tls = sender_tls_config(&site.proxy, PeerPolicy::pinned(site.agent.fingerprint())).expect("sender TLS");
    let mut config = SenderConfig::new(
        site.receiver.local_addr(),
        ServerName::try_from(AGENT_NAME.to_string()).expect("name"),
        tls,
        transfer,
    );
    config.streams = 1;
    let sender = within("connect", Sender::connect(config)).await.expect("connect");
    within(
        "send",
        sender.send(Block {
            disk: 0,
            offset: 0,
            data: Bytes::from(vec![7u8; 1000]),
        }),
    )
    .await
    .expect("send");

    let result = join("target", handle).await;
    sender.abort("test over").await;
    let error = match result {
        Err(e @ MoverError::Engine(_)) => cairn_mover::error_chain(&e),
        other => panic!("the target should fail: {other:?}"),
    };
    assert!(error.contains("/proxy/vm8-disk0.raw"), "{error}");
    assert!(
        error.contains("the proxy sent 1000 bytes for the block at offset 0, the engine reads 1048576"),
        "{error}"
    );
    assert!(site.points("vm8").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_start_write_rate_holds_until_the_server_answers() {
    let site = Site::new().await;
    let data = disk_content(3 * BS, &[0, 1, 2], 61);
    let path = site.path("vm9-disk0.raw");
    write_raw(&path, &data);
    // The links answer with an empty Control (no rate named yet), as a link does before the
    // server's first answer: the task's own start rate must stay.
    let mut spec = BackupSpec::new("vm9", &[&path]);
    spec.write_rate = Some(4 << 20);
    let out = backup(&site, spec).await;
    let (point, _, _) = out.committed();
    let throttled = out
        .target_events
        .iter()
        .find_map(|e| match e {
            TaskEvent::DiskFinished { throttle_secs, .. } => Some(*throttle_secs),
            _ => None,
        })
        .expect("DiskFinished");
    // 3 MiB of random data at 4 MiB/s: the later blocks wait for the first ones.
    assert!(throttled > 0.0, "the write rate was not applied");
    assert_eq!(site.restore("vm9", &point, 0), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_previous_point_names_what_each_disk_was_read_from() {
    let site = Site::new().await;
    let none = cairn_mover::target::previous_point(&site.repo, PASSWORD, "vm9").expect("no point yet");
    assert_eq!(none, cairn_mover::target::PreviousPoint::default());

    let size = 4 * BS;
    let (path0, path1) = (site.path("vm9-disk0.raw"), site.path("vm9-disk1.raw"));
    write_raw(&path0, &disk_content(size, &[0, 2], 31));
    write_raw(&path1, &disk_content(size, &[1], 32));
    let out = backup(&site, BackupSpec::new("vm9", &[&path0, &path1])).await;
    let (point, _, _) = out.committed();
    let found = cairn_mover::target::previous_point(&site.repo, PASSWORD, "vm9").expect("the point");
    assert_eq!(found.point.as_deref(), Some(point.as_str()));
    let sources = found.sources;
    let stored = &site.points("vm9")[0];
    let expected: Vec<(u32, String)> = stored
        .disks
        .iter()
        .filter_map(|d| d.source_id.clone().map(|s| (d.disk, s)))
        .collect();
    assert_eq!(sources.len(), 2, "both raw files have an identity: {stored:?}");
    assert_eq!(sources, expected);

    // Another VM of the same repository has none; a wrong password is an error naming the folder.
    let other = cairn_mover::target::previous_point(&site.repo, PASSWORD, "vm10").expect("other VM");
    assert_eq!(other.point, None);
    let err = cairn_mover::target::previous_point(&site.repo, "not the password", "vm9").expect_err("wrong password");
    let text = cairn_mover::error_chain(&err);
    assert!(text.contains(&site.repo.display().to_string()), "{text}");
}
