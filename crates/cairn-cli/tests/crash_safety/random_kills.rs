use super::*;

/// 24 backups killed at random moments, on a chain with points to protect:
/// incrementals, incrementals with CBT, active fulls, with every codec.
#[test]
fn kill_during_backup() {
    const TRIALS: usize = 24;
    let test = "kill_during_backup";
    let mut rng = Rng::new(test_seed(test, 0x6b69_6c6c_0001));
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk0.raw");
    create_disk(&disk, 64 * MIB, 0.3, &mut rng);
    let repo = Repo::init(&tmp.path().join("repo"));
    let mut saved = Saved::new(&tmp.path().join("saved"));
    let cbt = tmp.path().join("changed.txt");
    let bs = ["--block-size", "256K"];

    // The two points to protect: a full and an incremental. How long they
    // take is the yardstick for the kill times.
    let (id, full_time) = repo.backup(VM, &disk, &bs);
    saved.save(&id, &disk);
    scribble(&disk, &mut rng, 20, 2 * MIB);
    let (id, inc_time) = repo.backup(VM, &disk, &bs);
    saved.save(&id, &disk);
    // Estimated length of each kind of backup, refined by every backup that
    // runs to its end.
    let mut est: BTreeMap<&str, f64> = [
        ("incremental", inc_time.as_secs_f64()),
        ("incremental with CBT", inc_time.as_secs_f64()),
        ("active full", full_time.as_secs_f64()),
    ]
    .into();
    eprintln!("{test}: uninterrupted full {full_time:?}, incremental {inc_time:?}");

    // Changes since the last committed point: what a CBT file must list.
    let mut pending: Vec<(u64, u64)> = Vec::new();
    let mut tally = Tally::default();
    for (trial, frac) in stratified(&mut rng, TRIALS, 1.3).into_iter().enumerate() {
        let before = repo.ids(VM);
        let count = rng.range(2, 40) as usize;
        pending.extend(scribble(&disk, &mut rng, count, 4 * MIB));
        let mut extra = s(&bs);
        let codec = *rng.pick(&["none", "lz4", "zstd:1", "zstd:3"]);
        extra.extend(s(&["--compression", codec]));
        let kind = match trial % 4 {
            3 => {
                extra.push("--full".into());
                "active full"
            }
            1 => {
                write_cbt(&cbt, &pending);
                extra.extend(["--cbt".to_string(), format!("0={}", cbt.display())]);
                "incremental with CBT"
            }
            _ => "incremental",
        };
        let delay = Duration::from_secs_f64(est[kind] * frac);
        let ctx = format!("{test} trial {trial} ({kind}, killed after {delay:?})");
        let (ending, _, finished) = run_and_kill(repo.backup_cmd(VM, &disk, &strs(&extra)), delay);
        if let Some(took) = finished {
            est.insert(kind, 0.5 * est[kind] + 0.5 * took.as_secs_f64());
        }

        let left = repo.leftovers(VM);
        let now = repo.ids(VM);
        assert!(
            now.starts_with(&before) && now.len() <= before.len() + 1,
            "{ctx}: points before the backup {before:?}, after the kill {now:?}"
        );
        let committed = now.len() == before.len() + 1;
        if ending == Ending::Completed {
            assert!(committed, "{ctx}: backup exited 0 but no new point is listed: {now:?}");
        }
        tally.add(match (ending, committed, left.is_empty()) {
            (Ending::Completed, ..) => "finished before the kill",
            (Ending::Killed, true, _) => "killed after the commit",
            (Ending::Killed, false, false) => "killed while writing (left files behind)",
            (Ending::Killed, false, true) => "killed before writing anything",
        });
        if committed {
            saved.save(now.last().unwrap(), &disk);
            pending.clear();
        }

        repo.verify_ok(&ctx);
        saved.check_all(&repo, VM, &now, tmp.path(), &ctx);

        // The next backup works, cleans up, and restores the current disk.
        pending.extend(scribble(&disk, &mut rng, 3, 512 * KIB));
        let (id, took) = repo.backup(VM, &disk, &bs);
        for kind in ["incremental", "incremental with CBT"] {
            est.insert(kind, 0.7 * est[kind] + 0.3 * took.as_secs_f64());
        }
        saved.save(&id, &disk);
        pending.clear();
        let after = repo.leftovers(VM);
        assert!(
            after.is_empty(),
            "{ctx}: the backup after the kill left files not accounted for: {after:?} (after the kill: {left:?})"
        );
        saved.check_all(&repo, VM, &[id], tmp.path(), &format!("{ctx}, next backup"));

        // Keep the chain short so each trial restores only a few points.
        repo.retain(VM, 2);
        saved.keep_only(&repo.ids(VM));
    }
    tally.print(&format!("{test}: where the kills landed"));
    assert!(
        tally.get("killed while writing (left files behind)") > 0,
        "{test}: no kill interrupted a backup while it wrote; the kill times do not cover the backup"
    );
}

/// The first backup of a VM killed at random moments: the repository's other
/// VM is untouched, the half-made chain is not reported as a damaged one, and
/// the next backup of the new VM works.
#[test]
fn kill_during_first_backup_of_a_vm() {
    const TRIALS: usize = 8;
    let test = "kill_during_first_backup_of_a_vm";
    let mut rng = Rng::new(test_seed(test, 0x6b69_6c6c_0002));
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk0.raw");
    create_disk(&disk, 32 * MIB, 0.2, &mut rng);
    let repo = Repo::init(&tmp.path().join("repo"));
    let mut saved = Saved::new(&tmp.path().join("saved"));
    let (id, full_time) = repo.backup(VM, &disk, &[]);
    saved.save(&id, &disk);

    let mut tally = Tally::default();
    for (trial, frac) in stratified(&mut rng, TRIALS, 1.3).into_iter().enumerate() {
        let vm = format!("new{trial}");
        let delay = full_time.mul_f64(frac);
        let ctx = format!("{test} trial {trial} (killed after {delay:?})");
        let (ending, _, _) = run_and_kill(repo.backup_cmd(&vm, &disk, &[]), delay);

        let mut c = cairn(["points", "--json", "--vm", &vm, "--repo"]);
        c.arg(&repo.root);
        let listed = output(c);
        let committed = listed.status.success();
        if committed {
            assert_eq!(repo.ids(&vm).len(), 1, "{ctx}");
            tally.add(if ending == Ending::Completed {
                "finished before the kill"
            } else {
                "killed after the commit"
            });
        } else {
            assert_eq!(
                ending,
                Ending::Killed,
                "{ctx}: backup exited 0 but its VM has no points:\n{}",
                show(&listed)
            );
            let err = String::from_utf8_lossy(&listed.stderr);
            assert!(
                err.contains("no backups of VM"),
                "{ctx}: points --vm {vm}:\n{}",
                show(&listed)
            );
            tally.add("killed before the commit");
        }

        repo.verify_ok(&ctx);
        saved.check_all(&repo, VM, &repo.ids(VM), tmp.path(), &ctx);
        // A VM whose first backup never committed has no backups; it is not a
        // chain whose points are all lost.
        let mut c = cairn(["verify", "-q", "--vm", &vm, "--repo"]);
        c.arg(&repo.root);
        let v = output(c);
        if committed {
            assert!(v.status.success(), "{ctx}: verify --vm {vm}:\n{}", show(&v));
        } else {
            assert_eq!(
                v.status.code(),
                Some(2),
                "{ctx}: verify --vm {vm} of a VM without backups:\n{}",
                show(&v)
            );
            assert!(
                String::from_utf8_lossy(&v.stderr).contains("no backups of VM"),
                "{ctx}: verify --vm {vm}:\n{}",
                show(&v)
            );
        }

        let (id, _) = repo.backup(&vm, &disk, &[]);
        let left = repo.leftovers(&vm);
        assert!(
            left.is_empty(),
            "{ctx}: the backup after the kill left files not accounted for: {left:?}"
        );
        let ids = repo.ids(&vm);
        assert_eq!(ids.last(), Some(&id), "{ctx}");
        let out = tmp.path().join("restored.raw");
        ok(repo.restore_cmd(&vm, &id, &out));
        assert_same_image(&disk, &out, &format!("{ctx}: next backup"));
        std::fs::remove_file(&out).unwrap();
    }
    tally.print(&format!("{test}: where the kills landed"));
    assert!(
        tally.get("killed before the commit") > 0,
        "{test}: no kill interrupted a first backup"
    );
}

/// Regression: a first backup killed before its commit leaves a chain folder
/// without `chain.meta`; `verify --vm` called that "DAMAGED … every restore
/// point of it is lost" (exit 1) although the VM never had a point, while
/// `verify` and `points --vm` said there were no backups. The folder is made
/// here exactly as such a kill leaves it.
#[test]
fn verify_of_a_vm_whose_first_backup_was_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let disk = tmp.path().join("disk0.raw");
    create_disk(&disk, 8 * MIB, 0.2, &mut Rng::new(7));
    let dir = cairn_repo::Repository::open(&repo.root, None).unwrap().chain_dir("new");
    std::fs::create_dir_all(&dir).unwrap();
    File::create(dir.join("lock")).unwrap();
    std::fs::write(dir.join("00000001.full.tmp"), vec![0u8; 4096]).unwrap();

    let mut c = cairn(["verify", "--vm", "new", "--repo"]);
    c.arg(&repo.root);
    let out = output(c);
    assert_eq!(
        out.status.code(),
        Some(2),
        "verify --vm of a VM without backups:\n{}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no backups of VM \"new\""),
        "{}",
        show(&out)
    );
    repo.verify_ok("a repository with an interrupted first backup");

    // The next backup of the VM removes the leftover.
    repo.backup("new", &disk, &[]);
    assert!(repo.leftovers("new").is_empty(), "{:?}", repo.leftovers("new"));
    let mut c = cairn(["verify", "-q", "--vm", "new", "--repo"]);
    c.arg(&repo.root);
    ok(c);
}

// ------------------------------------------------------------ kill -9 during retention
