use super::*;

// ------------------------------------------------------------ kill -9 at each step

/// The system calls that change a repository, with how many calls of each
/// to kill at (the first N; the loop also stops once an operation makes
/// fewer calls). Data writes are left to the random kills, which land in
/// them most of the time; these steps are narrow windows random kills
/// rarely hit.
const STEPS: &[(&str, usize)] = &[
    ("fsync,fdatasync", 20),
    ("rename,renameat,renameat2", 10),
    ("unlink,unlinkat", 20),
    ("ftruncate", 5),
    ("fallocate", 4),
    ("copy_file_range", 8),
];

/// Backups killed (with strace) on entering each fsync, rename, unlink,
/// truncate and block copy in turn: an incremental, a synthetic full and an
/// active full. Each kill also lands on the cleanup of what the previous one
/// left.
#[test]
fn kill_at_each_step_of_backup() {
    require_tool("strace", "strace");
    let test = "kill_at_each_step_of_backup";
    let mut rng = Rng::new(test_seed(test, 0x6b69_6c6c_0006));
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk0.raw");
    create_disk(&disk, 16 * MIB, 0.2, &mut rng);
    let repo = Repo::init(&tmp.path().join("repo"));
    let mut saved = Saved::new(&tmp.path().join("saved"));
    let sessions: [(&str, &[&str]); 3] = [
        ("incremental", &["--block-size", "256K"]),
        (
            "synthetic full",
            &["--block-size", "256K", "--method", "forward", "--full-every", "1"],
        ),
        ("active full", &["--block-size", "256K", "--full"]),
    ];
    let (id, _) = repo.backup(VM, &disk, sessions[0].1);
    saved.save(&id, &disk);

    let mut tally = Tally::default();
    for (session, args) in sessions {
        for &(syscalls, max) in STEPS {
            for nth in 1..=max {
                let ctx = format!("{test}: {session} killed on entering call {nth} of {syscalls}");
                let before = repo.ids(VM);
                scribble(&disk, &mut rng, 3, 256 * KIB);
                let (ending, _) = run_killable(kill_at_syscall(&repo.backup_cmd(VM, &disk, args), syscalls, nth));
                let now = repo.ids(VM);
                assert!(
                    now.starts_with(&before) && now.len() <= before.len() + 1,
                    "{ctx}: points before {before:?}, after {now:?}"
                );
                let committed = now.len() > before.len();
                if ending == Ending::Completed {
                    assert!(committed, "{ctx}: backup exited 0 but listed no new point");
                }
                if committed {
                    saved.save(now.last().unwrap(), &disk);
                }
                repo.verify_ok(&ctx);
                saved.check_all(&repo, VM, &now, tmp.path(), &ctx);
                if ending == Ending::Completed {
                    break; // it makes fewer than `nth` such calls
                }
                tally.add(if committed {
                    "killed after the commit"
                } else {
                    "killed before the commit"
                });
            }
            // The next backup works and leaves nothing behind.
            let (id, _) = repo.backup(VM, &disk, args);
            saved.save(&id, &disk);
            let left = repo.leftovers(VM);
            assert!(
                left.is_empty(),
                "{test}: {session}: the backup after kills at {syscalls} left {left:?}"
            );
            saved.check_all(
                &repo,
                VM,
                &[id],
                tmp.path(),
                &format!("{test}: {session}, after kills at {syscalls}"),
            );
            repo.retain(VM, 2);
            saved.keep_only(&repo.ids(VM));
        }
    }
    tally.print(&format!("{test}: kills"));
    assert!(
        tally.get("killed before the commit") > 0 && tally.get("killed after the commit") > 0,
        "{test}: kills missed the commit"
    );
}

/// Retention runs killed (with strace) on entering each fsync, rename,
/// unlink, truncate, hole punch and block copy in turn, for both methods.
#[test]
fn kill_at_each_step_of_retention() {
    require_tool("strace", "strace");
    let test = "kill_at_each_step_of_retention";
    let mut rng = Rng::new(test_seed(test, 0x6b69_6c6c_0007));
    let methods: [(&str, &[&str]); 2] = [
        ("forever forward", &[]),
        ("forward", &["--method", "forward", "--full-every", "2"]),
    ];
    let mut tally = Tally::default();
    for (method, method_args) in methods {
        let forward = !method_args.is_empty();
        let (tmp, disk, repo) = disk_and_repo(16 * MIB, &mut rng);
        let mut chain = Chain::new(&repo, &disk, tmp.path(), "256K", method_args);
        chain.grow(&mut rng);
        for &(syscalls, max) in STEPS {
            for nth in 1..=max {
                let ctx = format!("{test}: {method} retain --keep 1 killed on entering call {nth} of {syscalls}");
                chain.grow_to(4, &mut rng);
                let points = repo.points(VM);
                let old: Vec<String> = points.iter().map(|p| p.id.clone()).collect();
                let expected = after_retention(&points, 1, forward);
                let (ending, _) = run_killable(kill_at_syscall(&repo.retain_cmd(VM, 1), syscalls, nth));
                let now = repo.ids(VM);
                assert!(
                    now == old || now == expected,
                    "{ctx}: the chain lists {now:?}; expected {old:?} or {expected:?}"
                );
                if ending == Ending::Completed {
                    assert_eq!(now, expected, "{ctx}: retain exited 0");
                }
                repo.verify_ok(&ctx);
                chain.saved.check_all(&repo, VM, &now, tmp.path(), &ctx);
                if ending == Ending::Completed {
                    break;
                }
                tally.add(if now == old {
                    "killed before the commit"
                } else {
                    "killed after the commit"
                });
            }
            // A backup and a retention run after the kills work and clean up.
            chain.grow(&mut rng);
            let left = repo.leftovers(VM);
            assert!(
                left.is_empty(),
                "{test}: {method}: the backup after kills at {syscalls} left {left:?}"
            );
            let expected = after_retention(&repo.points(VM), 1, forward);
            repo.retain(VM, 1);
            let ids = repo.ids(VM);
            assert_eq!(ids, expected, "{test}: {method}: retain after kills at {syscalls}");
            chain.saved.keep_only(&ids);
            chain.saved.check_all(
                &repo,
                VM,
                &ids,
                tmp.path(),
                &format!("{test}: {method}, after kills at {syscalls}"),
            );
            let (needed, allocated) = repo.space(VM);
            assert!(
                allocated <= needed + MIB,
                "{test}: {method}: data files occupy {allocated} bytes, the points need {needed}"
            );
        }
    }
    tally.print(&format!("{test}: kills"));
    assert!(
        tally.get("killed before the commit") > 0 && tally.get("killed after the commit") > 0,
        "{test}: kills missed the commit"
    );
}
