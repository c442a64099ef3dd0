//! Point-in-time views against a real `qemu-system-x86_64` (no guest OS, TCG): guest-visible
//! writes go through HMP `qemu-io`, the export is read with `qemu-img` and `nbdinfo`.

mod common;

use cairn_qemu::disks::list_disks;
use cairn_qemu::view::{self, Cbt, DiskRequest, LiveView, ViewRequest};
use cairn_qemu::{Error, Qmp};
use common::*;
use std::path::Path;

const SIZE: u64 = 16 * MIB;

fn request(dir: &Path, disks: Vec<DiskRequest>) -> ViewRequest {
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    ViewRequest {
        disks,
        scratch_dir: scratch,
        socket: dir.join("nbd.sock"),
    }
}

fn disk(node: &str, since: Option<&str>, next: &str) -> DiskRequest {
    DiskRequest {
        node: node.into(),
        since: since.map(Into::into),
        next: next.into(),
        persistent: true,
    }
}

async fn take(qmp: &Qmp, req: &ViewRequest) -> LiveView {
    let prepared = view::prepare(qmp, req).await.expect("prepare");
    let mut live = prepared.commit(qmp).await.expect("commit");
    live.export(qmp).await.expect("export");
    live
}

async fn node_of(qmp: &Qmp, device: &str) -> String {
    let disks = list_disks(qmp).await.unwrap();
    cairn_qemu::disks::find_disk(&disks, device)
        .unwrap_or_else(|| panic!("no disk {device}: {disks:?}"))
        .node
        .clone()
}

/// A VM with one new qcow2 disk `d/d0.qcow2` of [`SIZE`] (drive `drive0`, device `disk0`), and
/// the disk's node.
async fn one_disk_vm(d: &Path) -> (TestVm, String) {
    let img = d.join("d0.qcow2");
    qcow2(&img, SIZE, None);
    let qmp_socket = d.join("qmp.sock");
    let mut argv = base_argv(&qmp_socket, true);
    argv.extend(drive_args(&img, "drive0", "disk0"));
    let vm = start(argv, &qmp_socket).await;
    let node = node_of(&vm.qmp, "disk0").await;
    (vm, node)
}

#[tokio::test]
async fn full_view_is_point_in_time_and_teardown_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img0 = d.join("d0.qcow2");
    let img1 = d.join("d1.qcow2");
    qcow2(&img0, SIZE, Some((0x11, 4 * MIB)));
    qcow2(&img1, SIZE, None);
    let qmp_socket = d.join("qmp.sock");
    let mut argv = base_argv(&qmp_socket, true);
    argv.extend(drive_args(&img0, "drive0", "disk0"));
    argv.extend(blockdev_ide_args(&img1, "fmt1", "disk1", 0));
    let vm = start(argv, &qmp_socket).await;
    let qmp = &vm.qmp;

    let disks = list_disks(qmp).await.unwrap();
    assert_eq!(disks.len(), 2, "{disks:?}");
    assert_eq!(disks[0].device, "disk0");
    assert_eq!(disks[0].backend.as_deref(), Some("drive0"));
    assert!(
        disks[0].node.starts_with('#'),
        "auto node name expected: {}",
        disks[0].node
    );
    assert_eq!(disks[1].device, "disk1");
    assert_eq!(disks[1].node, "fmt1");
    assert_eq!((disks[0].virtual_size, disks[0].format.as_str()), (SIZE, "qcow2"));

    let mut model0 = Model::new(SIZE);
    model0.write(0x11, 0, 4 * MIB);
    let mut model1 = Model::new(SIZE);
    guest_write(qmp, "drive0", 0xab, MIB, 64 << 10).await;
    model0.write(0xab, MIB, 64 << 10);
    guest_write(qmp, "-d disk1", 0xcd, 2 * MIB, MIB).await;
    model1.write(0xcd, 2 * MIB, MIB);

    let req = request(d, vec![disk(&disks[0].node, None, "cp1"), disk("disk1", None, "cp1")]);
    let mut live = take(qmp, &req).await;
    assert_eq!(
        live.disks()[0].cbt,
        Cbt::Full {
            reason: "no previous checkpoint".into()
        }
    );
    assert_eq!(live.disks()[1].node, "fmt1", "device ids resolve to nodes");
    assert!(live.disks().iter().all(|v| v.dirty_context.is_none()));
    // While the view exists the disk is still listed by its format node, through the filter.
    let during = list_disks(qmp).await.unwrap();
    assert_eq!(during[0].node, disks[0].node);
    assert!(during[0].bitmap("cp1").is_some_and(|b| b.recording && b.persistent));

    // Overwrite after the instant: the live disks change, the export does not.
    guest_write(qmp, "drive0", 0xee, 0, 2 * MIB).await;
    guest_write(qmp, "-d disk1", 0xee, 2 * MIB + 4096, 4096).await;
    let counts: Vec<u64> = list_disks(qmp)
        .await
        .unwrap()
        .iter()
        .map(|d| d.bitmap("cp1").unwrap().count)
        .collect();
    assert_eq!(
        counts,
        vec![2 * MIB, 64 << 10],
        "the writes after the instant reached the live disks"
    );
    for (i, model) in [(0, &model0), (1, &model1)] {
        let data = read_export(&live.uri(&live.disks()[i]), d);
        assert_eq!(
            first_difference(&data, &model.0),
            None,
            "export {i} differs from the disk at the view instant"
        );
    }
    let scratch_files = files_in(&req.scratch_dir);
    assert_eq!(scratch_files.len(), 2, "{scratch_files:?}");

    // A reader still attached at teardown is disconnected, not waited for.
    let reader = nbd_attach(live.socket(), "cairn-0");
    live.finish(qmp, true).await.expect("finish");
    drop(reader);
    assert_eq!(cairn_objects(qmp, &["cp1"]).await, Vec::<String>::new());
    assert_eq!(
        files_in(&req.scratch_dir),
        Vec::<String>::new(),
        "scratch files removed"
    );
    let after = list_disks(qmp).await.unwrap();
    for d in &after {
        let cp = d.bitmap("cp1").expect("next checkpoint kept");
        assert!(cp.recording && cp.persistent && !cp.inconsistent);
    }
    // Idempotent.
    live.finish(qmp, false).await.expect("finish again");
    assert!(after[0].bitmap("cp1").is_some());
    assert!(
        list_disks(qmp).await.unwrap()[0].bitmap("cp1").is_some(),
        "a second finish changes nothing"
    );
}

#[tokio::test]
async fn incremental_view_exports_exactly_the_dirty_regions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (vm, node) = one_disk_vm(d).await;
    let qmp = &vm.qmp;

    let mut first = take(qmp, &request(d, vec![disk("disk0", None, "cp1")])).await;
    first.finish(qmp, true).await.unwrap();

    guest_write(qmp, "drive0", 0x21, MIB, 64 << 10).await;
    guest_write(qmp, "drive0", 0x22, 5 * MIB, 128 << 10).await;

    let req = request(d, vec![disk(&node, Some("cp1"), "cp2")]);
    let mut second = take(qmp, &req).await;
    let vd = second.disks()[0].clone();
    assert_eq!(vd.cbt, Cbt::Incremental { since: "cp1".into() });
    assert_eq!(vd.dirty_context.as_deref(), Some("qemu:dirty-bitmap:cairn-tmp-0"));
    // A write after the instant is not in the view's bitmap.
    guest_write(qmp, "drive0", 0x23, 9 * MIB, 64 << 10).await;
    let uri = second.uri(&vd);
    assert_eq!(
        dirty_ranges(&uri, vd.dirty_context.as_deref().unwrap()),
        vec![(MIB, 64 << 10), (5 * MIB, 128 << 10)]
    );
    let mut model = Model::new(SIZE);
    model.write(0x21, MIB, 64 << 10);
    model.write(0x22, 5 * MIB, 128 << 10);
    assert_eq!(first_difference(&read_export(&uri, d), &model.0), None);

    second.finish(qmp, false).await.expect("finish(false)");
    assert_eq!(cairn_objects(qmp, &["cp1"]).await, Vec::<String>::new());
    let disks = list_disks(qmp).await.unwrap();
    assert!(disks[0].bitmap("cp2").is_none(), "next removed on failure");
    let cp1 = disks[0].bitmap("cp1").expect("since kept on failure");
    assert!(cp1.recording, "since kept recording");
    // cp1 covers the two regions and the later write: nothing is lost for the retry.
    assert_eq!(cp1.count, (64 << 10) + (128 << 10) + (64 << 10));

    // The retry sees all three writes; success makes cp3 the checkpoint and drops cp1.
    let mut retry = take(qmp, &request(d, vec![disk(&node, Some("cp1"), "cp3")])).await;
    let vd = retry.disks()[0].clone();
    assert_eq!(
        dirty_ranges(&retry.uri(&vd), vd.dirty_context.as_deref().unwrap()),
        vec![(MIB, 64 << 10), (5 * MIB, 128 << 10), (9 * MIB, 64 << 10)]
    );
    retry.finish(qmp, true).await.unwrap();
    let disks = list_disks(qmp).await.unwrap();
    let names: Vec<&str> = disks[0].bitmaps.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, vec!["cp3"]);
}

#[tokio::test]
async fn checkpoint_survives_clean_restart_and_is_dropped_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("d0.qcow2");
    qcow2(&img, SIZE, None);
    let qmp_socket = d.join("qmp.sock");
    let argv = || {
        let mut a = base_argv(&qmp_socket, true);
        a.extend(drive_args(&img, "drive0", "disk0"));
        a
    };

    let vm = start(argv(), &qmp_socket).await;
    let mut v = take(&vm.qmp, &request(d, vec![disk("disk0", None, "cp1")])).await;
    v.finish(&vm.qmp, true).await.unwrap();
    guest_write(&vm.qmp, "drive0", 0x31, 3 * MIB, 64 << 10).await;
    vm.quit().await;

    // Clean restart: the bitmap is back, recording, with the write made before the quit.
    let vm = start(argv(), &qmp_socket).await;
    let disks = list_disks(&vm.qmp).await.unwrap();
    let cp1 = disks[0]
        .bitmap("cp1")
        .expect("persistent bitmap after a clean restart")
        .clone();
    assert!(cp1.recording && cp1.persistent && !cp1.inconsistent, "{cp1:?}");
    assert_eq!(cp1.count, 64 << 10);
    let mut v = take(&vm.qmp, &request(d, vec![disk("disk0", Some("cp1"), "cp2")])).await;
    assert!(v.disks()[0].cbt.is_incremental());
    v.finish(&vm.qmp, true).await.unwrap();
    vm.quit().await;

    // A bitmap loaded from the image is marked in use; after kill -9 it comes back
    // inconsistent → full backup with a reason, and the bitmap is removed.
    let vm = start(argv(), &qmp_socket).await;
    assert!(
        list_disks(&vm.qmp).await.unwrap()[0]
            .bitmap("cp2")
            .is_some_and(|b| b.recording)
    );
    guest_write(&vm.qmp, "drive0", 0x32, 4 * MIB, 64 << 10).await;
    vm.crash().await;
    let vm = start(argv(), &qmp_socket).await;
    let disks = list_disks(&vm.qmp).await.unwrap();
    assert!(
        disks[0].bitmap("cp2").is_some_and(|b| b.inconsistent),
        "{:?}",
        disks[0].bitmaps
    );
    let prepared = view::prepare(&vm.qmp, &request(d, vec![disk("disk0", Some("cp2"), "cp3")]))
        .await
        .unwrap();
    match &prepared.disks()[0].cbt {
        Cbt::Full { reason } => assert!(reason.contains("inconsistent"), "{reason}"),
        other => panic!("expected a full backup, got {other:?}"),
    }
    assert!(
        list_disks(&vm.qmp).await.unwrap()[0].bitmap("cp2").is_none(),
        "inconsistent bitmap removed"
    );
    let mut v = prepared.commit(&vm.qmp).await.unwrap();
    v.export(&vm.qmp).await.unwrap();
    v.finish(&vm.qmp, true).await.unwrap();
    let disks = list_disks(&vm.qmp).await.unwrap();
    let names: Vec<&str> = disks[0].bitmaps.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, vec!["cp3"]);

    // A bitmap created in a session that ends with kill -9 never reached the image: missing.
    vm.crash().await;
    let vm = start(argv(), &qmp_socket).await;
    assert!(list_disks(&vm.qmp).await.unwrap()[0].bitmaps.is_empty());
    let prepared = view::prepare(&vm.qmp, &request(d, vec![disk("disk0", Some("cp3"), "cp4")]))
        .await
        .unwrap();
    match &prepared.disks()[0].cbt {
        Cbt::Full { reason } => assert!(
            reason.contains("missing") && reason.contains("without saving its persistent bitmaps"),
            "the likely cause is named: {reason}"
        ),
        other => panic!("expected a full backup, got {other:?}"),
    }
    prepared.abort(&vm.qmp).await.unwrap();
    assert_eq!(cairn_objects(&vm.qmp, &[]).await, Vec::<String>::new());
}

#[tokio::test]
async fn failures_in_the_middle_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (vm, node) = one_disk_vm(d).await;
    let qmp = &vm.qmp;
    let mut v = take(qmp, &request(d, vec![disk("disk0", None, "cp1")])).await;
    v.finish(qmp, true).await.unwrap();

    // Commit fails: the transaction's bitmap-add collides with a bitmap added after prepare.
    let req = request(d, vec![disk("disk0", Some("cp1"), "cp2")]);
    let prepared = view::prepare(qmp, &req).await.unwrap();
    assert_eq!(files_in(&req.scratch_dir).len(), 1);
    qmp.bitmap_add(&node, "cp2", false, false).await.unwrap();
    let err = prepared.commit(qmp).await.expect_err("commit must fail");
    assert!(matches!(err, Error::Qmp(_)), "{err}");
    assert!(err.to_string().contains("transaction"), "{err}");
    assert_eq!(cairn_objects(qmp, &["cp1"]).await, Vec::<String>::new());
    assert_eq!(files_in(&req.scratch_dir), Vec::<String>::new());
    qmp.bitmap_remove(&node, "cp2").await.unwrap();

    // Export fails: somebody else's NBD server runs. finish(false) removes cairn's objects
    // and leaves the foreign server and export alone.
    let foreign = d.join("foreign.sock");
    qmp.nbd_server_start_unix(&foreign).await.unwrap();
    qmp.execute(
        "block-export-add",
        serde_json::json!({"type": "nbd", "id": "foreign", "node-name": node, "writable": false}),
    )
    .await
    .unwrap();
    let prepared = view::prepare(qmp, &req).await.unwrap();
    let mut live = prepared.commit(qmp).await.unwrap();
    let err = live.export(qmp).await.expect_err("export must fail");
    assert!(err.to_string().contains("nbd-server-start"), "{err}");
    live.finish(qmp, false).await.expect("finish after a failed export");
    assert_eq!(cairn_objects(qmp, &["cp1"]).await, vec!["export foreign".to_string()]);
    assert_eq!(files_in(&req.scratch_dir), Vec::<String>::new());
    let disks = list_disks(qmp).await.unwrap();
    assert!(disks[0].bitmap("cp1").is_some_and(|b| b.recording));
    assert!(disks[0].bitmap("cp2").is_none());
    let listed = run(
        "nbdinfo",
        &["--list", &format!("nbd+unix:///?socket={}", foreign.display())],
    );
    assert!(listed.contains("foreign"), "{listed}");
    qmp.block_export_del("foreign").await.unwrap();
    eventually("foreign export gone", async || {
        qmp.query_block_exports().await.unwrap().is_empty()
    })
    .await;
    qmp.nbd_server_stop().await.unwrap();

    // Leftovers of an earlier view make prepare refuse, naming them.
    let mut crashed = take(qmp, &req).await;
    crashed.export(qmp).await.expect("export is idempotent");
    drop(crashed);
    let err = view::prepare(qmp, &req).await.expect_err("leftovers");
    assert!(err.to_string().contains("cleanup_leftovers"), "{err}");
}

#[tokio::test]
async fn cleanup_leftovers_after_a_crashed_view() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img0 = d.join("d0.qcow2");
    let img1 = d.join("d1.qcow2");
    qcow2(&img0, SIZE, None);
    qcow2(&img1, SIZE, None);
    let qmp_socket = d.join("qmp.sock");
    let mut argv = base_argv(&qmp_socket, true);
    argv.extend(drive_args(&img0, "drive0", "disk0"));
    argv.extend(blockdev_ide_args(&img1, "fmt1", "disk1", 0));
    let vm = start(argv, &qmp_socket).await;
    let qmp = &vm.qmp;

    let mut v = take(
        qmp,
        &request(d, vec![disk("disk0", None, "cp1"), disk("disk1", None, "cp1")]),
    )
    .await;
    v.finish(qmp, true).await.unwrap();
    let req = request(
        d,
        vec![disk("disk0", Some("cp1"), "cp2"), disk("disk1", Some("cp1"), "cp2")],
    );
    let live = take(qmp, &req).await;
    let uri = live.uri(&live.disks()[1]);
    // cairn "crashes" while a reader is connected.
    let reader = std::process::Command::new("nbdinfo")
        .args(["--map", &uri])
        .output()
        .unwrap();
    assert!(reader.status.success());
    drop(live);
    assert!(!cairn_objects(qmp, &["cp1", "cp2"]).await.is_empty());

    let removed = view::cleanup_leftovers(qmp, &[]).await.expect("cleanup");
    for expected in [
        "export cairn-0",
        "export cairn-1",
        "NBD server",
        "job cairn-fleece-0",
        "job cairn-fleece-1",
        "node cairn-scratch-0",
        "node cairn-scratch-1",
    ] {
        assert!(removed.iter().any(|r| r == expected), "{expected} not in {removed:?}");
    }
    assert_eq!(
        removed.iter().filter(|r| r.starts_with("file ")).count(),
        2,
        "{removed:?}"
    );
    assert_eq!(
        removed.iter().filter(|r| r.starts_with("bitmap cairn-tmp-")).count(),
        2,
        "{removed:?}"
    );
    assert_eq!(cairn_objects(qmp, &["cp1", "cp2"]).await, Vec::<String>::new());
    assert_eq!(files_in(&req.scratch_dir), Vec::<String>::new());
    assert_eq!(
        view::cleanup_leftovers(qmp, &[]).await.unwrap(),
        Vec::<String>::new(),
        "nothing left the second time"
    );

    // The checkpoints are untouched; the crashed run's cp2 is recreated by the retry.
    let mut retry = take(qmp, &req).await;
    assert!(
        retry.warnings().iter().any(|w| w.contains("leftover bitmap cp2")),
        "{:?}",
        retry.warnings()
    );
    assert!(retry.disks().iter().all(|v| v.cbt.is_incremental()));
    retry.finish(qmp, true).await.unwrap();
    assert_eq!(cairn_objects(qmp, &["cp2"]).await, Vec::<String>::new());
}
