//! File permissions: an unencrypted repository holds guest data in clear,
//! so everything cairn creates in it is private to its owner (folders 0700,
//! files 0600) whatever the umask; a restored image is 0600 unless
//! `--file-mode` asks otherwise, and never setuid, setgid or sticky.

mod e2e_common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use e2e_common::*;

/// `cmd` run with umask 000, the most permissive one.
fn open_umask(mut cmd: Command) -> Command {
    // SAFETY: umask is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::umask(rustix::fs::Mode::empty());
            Ok(())
        });
    }
    cmd
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every folder and file under `root` (itself included), with its mode.
fn modes(root: &Path) -> Vec<(String, bool, u32)> {
    let mut out = vec![(root.display().to_string(), true, mode(root))];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let is_dir = p.is_dir();
            out.push((p.display().to_string(), is_dir, mode(&p)));
            if is_dir {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn an_unencrypted_repository_is_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let mut c = cairn(["repo", "init", "--encryption", "none"]);
    c.arg(&repo);
    ok(open_umask(c));
    let disk = tmp.path().join("disk.raw");
    write_disk(&disk, 4 * MIB, &[(0, 2 * MIB, Fill::Random(1))]);
    for seed in 2..5 {
        patch_disk(&disk, MIB, 64 * KIB, Fill::Random(seed));
        let mut c = cairn(["backup", "--vm", "vm"]);
        c.arg("--repo").arg(&repo).arg(&disk);
        ok(open_umask(c));
    }
    let mut c = cairn(["retain", "--vm", "vm", "--keep", "2"]);
    c.arg("--repo").arg(&repo);
    ok(open_umask(c));
    let mut c = cairn(["repo", "repair"]);
    c.arg("--repo").arg(&repo);
    ok(open_umask(c));

    let all = modes(&repo);
    let names: Vec<&str> = all.iter().map(|(n, _, _)| n.rsplit('/').next().unwrap()).collect();
    for expected in ["chains", "config", "chain.meta", "lock", "reserve", "00000001.full"] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
    assert!(names.iter().any(|n| n.ends_with(".inc")) && names.iter().any(|n| n.ends_with(".idx")));
    for (path, is_dir, m) in &all {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*m, want, "{path} has mode {m:o}, {want:o} expected");
    }
}

#[test]
fn restored_images_are_0600_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_repo(&repo);
    let disk = tmp.path().join("disk.raw");
    write_disk(&disk, 2 * MIB, &[(0, MIB, Fill::Text(3))]);
    backup(&repo, "vm", &[], &[&disk]);

    for format in ["raw", "qcow2"] {
        let out = tmp.path().join(format!("default.{format}"));
        let mut c = restore_cmd(&repo, "vm", "latest", 0, &out);
        c.args(["--format", format]);
        ok(open_umask(c));
        assert_eq!(mode(&out), 0o600, "{format}");
    }
    for (arg, want) in [("640", 0o640), ("0644", 0o644), ("0o400", 0o400)] {
        let out = tmp.path().join(format!("asked-{want:o}.raw"));
        let mut c = restore_cmd(&repo, "vm", "latest", 0, &out);
        c.args(["--file-mode", arg]);
        ok(c);
        assert_eq!(mode(&out), want, "--file-mode {arg}");
        assert_same_file(&disk, &out);
    }
    for (arg, says) in [
        ("4755", "setuid"),
        ("1777", "sticky"),
        ("2750", "setgid"),
        ("rw", "octal"),
        ("1000", "setuid"),
    ] {
        let out = tmp.path().join("refused.raw");
        let mut c = restore_cmd(&repo, "vm", "latest", 0, &out);
        c.args(["--file-mode", arg]);
        let (_, err) = fails(c, 2);
        assert!(err.contains(says) && err.contains(arg), "--file-mode {arg}: {err}");
        assert!(!out.exists(), "--file-mode {arg} was refused but a file was written");
    }
}
