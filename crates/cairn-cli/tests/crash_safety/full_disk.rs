use super::*;

// ------------------------------------------------------------ full disk

/// A tmpfs mounted for the life of the value (unmounted on drop, also when
/// the test panics).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}. The full-disk test needs root and util-linux's mount"));
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs at {} ({}): {}. The full-disk test needs root (it runs `mount -t tmpfs`); \
             run the tests as root, e.g. with scripts/test.sh",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { dir: dir.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

const PAGE: u64 = 4096;

/// Fills the file system of `path` with one file until it is full, then
/// frees exactly `free` bytes (a multiple of the page size) of it.
fn fill_up(path: &Path, free: u64) {
    let mut f = File::create(path).unwrap();
    let buf = vec![0x5au8; MIB as usize];
    let mut chunk = buf.len();
    loop {
        match f.write(&buf[..chunk]) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) && chunk > PAGE as usize => chunk = PAGE as usize,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let len = f.metadata().unwrap().len().div_ceil(PAGE) * PAGE;
    assert!(len >= free, "only {len} bytes were free, {free} wanted");
    f.set_len(len - free).unwrap();
}

/// Asserts that a failed command reported ENOSPC and named a file of the repository.
fn assert_enospc(out: &std::process::Output, repo: &Repo, ctx: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{ctx}: expected exit code 2:\n{}",
        show(out)
    );
    assert!(
        err.contains("No space left on device"),
        "{ctx}: the error does not say the disk is full:\n{}",
        show(out)
    );
    assert!(
        err.contains(&*repo.root.to_string_lossy()),
        "{ctx}: the error does not name the file that could not be written:\n{}",
        show(out)
    );
    err
}

/// A repository on a 48 MiB tmpfs: a backup that cannot fit fails with a
/// clear error and harms nothing; then the free space is set so that a
/// backup runs out of it at every stage of its commit (data file, index,
/// metadata), and a retention run on a full disk; each time the points
/// before stay intact and the next operation cleans up.
#[test]
fn full_disk() {
    let test = "full_disk";
    let mut rng = Rng::new(test_seed(test, 0x6b69_6c6c_0005));
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    let _tmpfs = Tmpfs::mount(&mnt, "48m");
    let repo = Repo::init(&mnt.join("repo"));
    let filler = mnt.join("filler");
    let disk = tmp.path().join("disk0.raw");
    let mut saved = Saved::new(&tmp.path().join("saved"));
    std::fs::File::create(&disk).unwrap().set_len(64 * MIB).unwrap();
    write_region(&disk, 0, 8 * MIB, Fill::Random, &mut rng);
    write_region(&disk, 8 * MIB, 8 * MIB, Fill::Text, &mut rng);
    write_region(&disk, 40 * MIB, 4 * MIB, Fill::Pattern, &mut rng);

    let (p1, _) = repo.backup(VM, &disk, &[]);
    saved.save(&p1, &disk);

    // 40 MiB of new random data cannot fit next to the first point.
    write_region(&disk, 16 * MIB, 40 * MIB, Fill::Random, &mut rng);
    let out = output(repo.backup_cmd(VM, &disk, &[]));
    let err = assert_enospc(&out, &repo, "backup of 40 MiB new data on a full disk");
    eprintln!("{test}: the backup that does not fit says: {}", err.trim());
    repo.verify_ok("after the failed backup");
    assert_eq!(repo.ids(VM), std::slice::from_ref(&p1), "after the failed backup");
    saved.check_all(
        &repo,
        VM,
        std::slice::from_ref(&p1),
        tmp.path(),
        "after the failed backup",
    );
    // Retention has nothing to remove but must work on the full repository.
    repo.retain(VM, 1);

    // Space allows a small backup: the disk as at the first point, plus two
    // changed blocks.
    std::fs::copy(saved.copy_of(&p1), &disk).unwrap();
    let small = |rng: &mut Rng| {
        write_region(&disk, 20 * MIB, MIB, Fill::Random, rng);
        write_region(&disk, 50 * MIB, MIB, Fill::Random, rng);
    };
    let small_args = ["--compression", "none"];
    small(&mut rng);
    let (p2, _) = repo.backup(VM, &disk, &small_args);
    saved.save(&p2, &disk);
    saved.check_all(
        &repo,
        VM,
        &repo.ids(VM),
        tmp.path(),
        "small backup after the failed one",
    );
    let left = repo.leftovers(VM);
    assert!(left.is_empty(), "leftovers after the small backup: {left:?}");
    assert!(
        tmp_files(&repo.root).is_empty(),
        "*.tmp files after the small backup: {:?}",
        tmp_files(&repo.root)
    );

    // Every backup below changes the same two blocks again, so its data file
    // is as long as this one's.
    let data_len = {
        let r = cairn_repo::Repository::open(&repo.root, None).unwrap();
        let meta = r.read_meta(&r.chain_dir(VM)).unwrap();
        meta.files.last().unwrap().committed_len
    };
    assert!(
        data_len > 2 * MIB && data_len % PAGE == 0,
        "{test}: data file of a two-block backup has {data_len} bytes"
    );
    // Free space from two pages short of the data file to well past the
    // whole commit: the backup fails writing its data file, its index or the
    // metadata, or succeeds.
    let mut stages = Tally::default();
    for pages in -2i64..=5 {
        let free = (data_len as i64 + pages * PAGE as i64) as u64;
        let ctx = format!("{test}: backup with {free} bytes free (data file {data_len} bytes)");
        let before = repo.ids(VM);
        small(&mut rng);
        fill_up(&filler, free);
        let out = output(repo.backup_cmd(VM, &disk, &small_args));
        std::fs::remove_file(&filler).unwrap();
        let now = repo.ids(VM);
        if out.status.success() {
            assert_eq!(now.len(), before.len() + 1, "{ctx}");
            saved.save(now.last().unwrap(), &disk);
            stages.add("succeeded");
        } else {
            let err = assert_enospc(&out, &repo, &ctx);
            assert_eq!(now, before, "{ctx}: a failed backup changed the points");
            // The failed run removed what it wrote; nothing waits for the next one.
            let left = repo.leftovers(VM);
            assert!(left.is_empty(), "{ctx}: the failed backup left {left:?}");
            assert!(tmp_files(&repo.root).is_empty(), "{ctx}: {:?}", tmp_files(&repo.root));
            stages.add(if err.contains("chain.meta") {
                "failed writing the metadata"
            } else if err.contains(".idx") {
                "failed writing the index"
            } else {
                "failed writing the data file"
            });
        }
        repo.verify_ok(&ctx);
        saved.check_all(&repo, VM, &now, tmp.path(), &ctx);
    }
    stages.print(&format!("{test}: how the backups with little free space ended"));
    for stage in ["failed writing the data file", "succeeded"] {
        assert!(
            stages.get(stage) > 0,
            "{test}: no backup {stage}; the free space sweep missed its mark"
        );
    }
    assert!(
        stages.get("failed writing the index") + stages.get("failed writing the metadata") > 0,
        "{test}: no backup failed in its commit; the free space sweep missed its mark"
    );

    // A backup on a disk without a free byte fails at its first write and
    // leaves nothing behind (no empty data file, no index), in the same run.
    let before = repo.ids(VM);
    small(&mut rng);
    fill_up(&filler, 0);
    let out = output(repo.backup_cmd(VM, &disk, &small_args));
    let left = repo.leftovers(VM);
    let tmps = tmp_files(&repo.root);
    std::fs::remove_file(&filler).unwrap();
    assert_enospc(&out, &repo, "backup with 0 bytes free");
    assert!(left.is_empty(), "{test}: a backup with 0 bytes free left {left:?}");
    assert!(tmps.is_empty(), "{test}: a backup with 0 bytes free left {tmps:?}");
    assert_eq!(repo.ids(VM), before, "{test}: a failed backup changed the points");

    // Retention on a disk without a free byte: the chain's space reserve
    // makes room for its commit, so it removes the points and gives their
    // space back (merging increments into the full may wait for space).
    // Dropping the two oldest points frees the second one's data file: the
    // later backups all rewrote its two blocks.
    assert!(before.len() >= 4, "{test}: {before:?}");
    let keep = before.len() - 2;
    fill_up(&filler, 0);
    let free_before = rustix::fs::statvfs(&mnt).map(|s| s.f_bavail * s.f_frsize).unwrap_or(0);
    let out = output(repo.retain_cmd(VM, keep));
    let free_after = rustix::fs::statvfs(&mnt).map(|s| s.f_bavail * s.f_frsize).unwrap_or(0);
    std::fs::remove_file(&filler).unwrap();
    assert!(
        out.status.success(),
        "{test}: retain --keep {keep} with 0 bytes free failed:\n{}",
        show(&out)
    );
    eprintln!("{test}: retain with 0 bytes free gave back {free_before} → {free_after} bytes free");
    assert!(
        free_after >= free_before + MIB,
        "{test}: retain with 0 bytes free gave too little space back ({free_before} → {free_after} bytes free)"
    );
    let now = repo.ids(VM);
    assert_eq!(now, before[2..], "retain --keep {keep} on a full disk");
    repo.verify_ok("after retain on a full disk");
    saved.check_all(&repo, VM, &now, tmp.path(), "after retain on a full disk");
    let left = repo.leftovers(VM);
    assert!(left.is_empty(), "leftovers after retain on a full disk: {left:?}");
    assert!(
        repo.root
            .join("chains")
            .read_dir()
            .unwrap()
            .all(|d| d.unwrap().path().join("reserve").exists()),
        "{test}: the reserve was not allocated again after retention gave space back"
    );

    // Room for metadata but not for merging increments into the full file:
    // retention must still drop the points and give their space back (the
    // merge waits for a later run).
    if now.len() > 1 {
        fill_up(&filler, 256 << 10);
        let free_before = rustix::fs::statvfs(&mnt).map(|s| s.f_bavail * s.f_frsize).unwrap_or(0);
        let out = output(repo.retain_cmd(VM, 1));
        let free_after = rustix::fs::statvfs(&mnt).map(|s| s.f_bavail * s.f_frsize).unwrap_or(0);
        std::fs::remove_file(&filler).unwrap();
        assert!(
            out.status.success(),
            "{test}: retain with little free space failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            repo.ids(VM),
            [before.last().unwrap().clone()],
            "{test}: retain --keep 1 with little free space"
        );
        assert!(
            free_after > free_before,
            "{test}: retain gave no space back ({free_before} → {free_after} bytes free)"
        );
        repo.verify_ok("after retain with little free space");
        saved.check_all(
            &repo,
            VM,
            &repo.ids(VM),
            tmp.path(),
            "after retain with little free space",
        );
    }

    // With space back, retention works and cleans what the failures left.
    repo.retain(VM, 1);
    let ids = repo.ids(VM);
    assert_eq!(ids, [before.last().unwrap().clone()], "retain --keep 1");
    repo.verify_ok("after retain");
    saved.check_all(&repo, VM, &ids, tmp.path(), "after retain");
    let left = repo.leftovers(VM);
    assert!(left.is_empty(), "leftovers after retain: {left:?}");
    assert!(
        tmp_files(&repo.root).is_empty(),
        "*.tmp files after retain: {:?}",
        tmp_files(&repo.root)
    );
}
