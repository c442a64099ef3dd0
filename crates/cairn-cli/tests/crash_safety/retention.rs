use super::*;

/// 20 retention runs killed at random moments, each on a chain of 6 points
/// with large increments, keeping 1 to 5 of them.
fn kill_during_retention(test: &str, seed: u64, method: &[&str]) {
    const POINTS: usize = 6;
    const TRIALS: usize = 20;
    let forward = method.contains(&"forward");
    let mut rng = Rng::new(test_seed(test, seed));
    let (tmp, disk, repo) = disk_and_repo(48 * MIB, &mut rng);
    let mut chain = Chain::new(&repo, &disk, tmp.path(), "1M", method);
    chain.grow(&mut rng);
    chain.grow_to(POINTS, &mut rng);

    // How long an uninterrupted retention takes for each `--keep`, timed on
    // copies of the repository; the copies also check the expected outcome.
    let mut took = BTreeMap::new();
    let points = repo.points(VM);
    for keep in 1..POINTS {
        let copy = Repo {
            root: tmp.path().join("calibration"),
        };
        copy_tree(&repo.root, &copy.root);
        let started = Instant::now();
        copy.retain(VM, keep);
        took.insert(keep, started.elapsed());
        assert_eq!(
            copy.ids(VM),
            after_retention(&points, keep, forward),
            "{test}: retain --keep {keep} on a copy"
        );
        std::fs::remove_dir_all(&copy.root).unwrap();
    }
    eprintln!("{test}: uninterrupted retention by --keep: {took:?}");

    let mut tally = Tally::default();
    for (trial, frac) in stratified(&mut rng, TRIALS, 1.3).into_iter().enumerate() {
        chain.grow_to(POINTS, &mut rng);
        let points = repo.points(VM);
        let old: Vec<String> = points.iter().map(|p| p.id.clone()).collect();
        let keep = 1 + trial % (POINTS - 1);
        let expected = after_retention(&points, keep, forward);
        let delay = took[&keep].mul_f64(frac);
        let ctx = format!(
            "{test} trial {trial} (--keep {keep} of {}, killed after {delay:?})",
            old.len()
        );
        let (ending, _, finished) = run_and_kill(repo.retain_cmd(VM, keep), delay);
        if let Some(t) = finished {
            // One timing on a busy machine can be far off; runs that end by
            // themselves pull the estimate back.
            took.insert(keep, (took[&keep] + t) / 2);
        }

        let left = repo.leftovers(VM);
        let now = repo.ids(VM);
        assert!(
            now == old || now == expected,
            "{ctx}: the chain lists {now:?}; expected the points before ({old:?}) or the ones retention keeps ({expected:?})"
        );
        if ending == Ending::Completed {
            assert_eq!(now, expected, "{ctx}: retain exited 0");
        }
        tally.add(match (ending, now == expected && now != old, left.is_empty()) {
            (Ending::Completed, ..) => "finished before the kill",
            (Ending::Killed, true, _) => "killed after the commit",
            (Ending::Killed, false, false) => "killed before the commit, after writing",
            (Ending::Killed, false, true) => "killed before writing anything (or nothing to remove)",
        });

        repo.verify_ok(&ctx);
        chain.saved.check_all(&repo, VM, &now, tmp.path(), &ctx);

        // A backup and a retention run after the kill work and clean up.
        let id = chain.grow(&mut rng);
        let after = repo.leftovers(VM);
        assert!(
            after.is_empty(),
            "{ctx}: the backup after the kill left files not accounted for: {after:?} (after the kill: {left:?})"
        );
        chain
            .saved
            .check_all(&repo, VM, &[id], tmp.path(), &format!("{ctx}, next backup"));
        let expected = after_retention(&repo.points(VM), keep, forward);
        repo.retain(VM, keep);
        let ids = repo.ids(VM);
        assert_eq!(ids, expected, "{ctx}: retain --keep {keep} after the next backup");
        chain.saved.keep_only(&ids);
        let after = repo.leftovers(VM);
        assert!(
            after.is_empty(),
            "{ctx}: the retention after the kill left files not accounted for: {after:?}"
        );
        // Space of removed points is given back, also what an interrupted run left unpunched.
        let (needed, allocated) = repo.space(VM);
        assert!(
            allocated <= needed + 4 * MIB,
            "{ctx}: the chain's data files occupy {allocated} bytes, its points need {needed}"
        );
    }
    tally.print(&format!("{test}: where the kills landed"));
    let ids = repo.ids(VM);
    chain
        .saved
        .check_all(&repo, VM, &ids, tmp.path(), &format!("{test}: at the end"));
    assert!(
        tally.get("killed before the commit, after writing") + tally.get("killed after the commit") > 0,
        "{test}: no kill interrupted a retention run midway; the kill times do not cover it"
    );
}

#[test]
fn kill_during_retention_forever_forward() {
    kill_during_retention("kill_during_retention_forever_forward", 0x6b69_6c6c_0003, &[]);
}

#[test]
fn kill_during_retention_forward() {
    kill_during_retention(
        "kill_during_retention_forward",
        0x6b69_6c6c_0004,
        &["--method", "forward", "--full-every", "2", "--full-kind", "synthetic"],
    );
}
