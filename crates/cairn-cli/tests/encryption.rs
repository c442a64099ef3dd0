//! End-to-end tests of encrypted (aes-256-gcm) repositories: round trips,
//! password handling, and that nothing of the backed-up data or the VM's
//! name can be read from the repository files.

mod e2e_common;

use std::path::Path;
use std::process::Command;

use e2e_common::*;

const PASSWORD: &str = "correct horse battery staple";
const MARKER: &str = "CAIRN-SECRET-MARKER-xyz";

fn with_password(mut c: Command, pw: &str) -> Command {
    c.env("CAIRN_PASSWORD", pw);
    c
}

fn init_encrypted(repo: &Path) {
    let mut c = cairn(["repo", "init", "--json", "--encryption", "aes-256-gcm"]);
    c.arg(repo);
    let v = ok_json(with_password(c, PASSWORD));
    assert_eq!(v["encryption"], "aes-256-gcm");
}

fn backup_enc(repo: &Path, vm: &str, extra: &[&str], disk: &Path) -> serde_json::Value {
    let mut c = cairn(["backup", "--json", "--vm", vm]);
    c.arg("--repo").arg(repo).args(extra).arg(disk);
    ok_json(with_password(c, PASSWORD))
}

#[test]
fn encrypted_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_encrypted(&repo);
    let disk = tmp.path().join("disk.raw");
    write_disk(
        &disk,
        24 * MIB + 4096,
        &[
            (0, 5 * MIB, Fill::Text(1)),
            (8 * MIB, 3 * MIB, Fill::Random(2)),
            (20 * MIB, 4 * MIB + 4096, Fill::Text(3)),
        ],
    );
    let v0 = tmp.path().join("v0.raw");
    std::fs::copy(&disk, &v0).unwrap();
    let b1 = backup_enc(&repo, "vm1", &[], &disk);
    assert_eq!(session(&b1), "full");
    patch_disk(&disk, 9 * MIB, 8 * KIB, Fill::Random(4));
    let b2 = backup_enc(&repo, "vm1", &["--compression", "lz4"], &disk);
    assert_eq!(session(&b2), "incremental");
    assert_eq!(stat(&b2, "new_blocks"), 1);

    for (id, expected) in [(point_id(&b1), &v0), (point_id(&b2), &disk)] {
        let out = tmp.path().join(format!("{id}.out"));
        let mut c = cairn(["restore", "--vm", "vm1", "--point", &id]);
        c.arg("--repo").arg(&repo).arg("--to").arg(&out);
        ok(with_password(c, PASSWORD));
        assert_same_file(expected, &out);
    }
    let mut c = cairn(["verify", "--json"]);
    c.arg("--repo").arg(&repo);
    assert_eq!(ok_json(with_password(c, PASSWORD))["ok"], true);

    // Every block record in the data files is flagged encrypted (byte 6 of
    // its header) and its payload carries the nonce and tag overhead.
    let chain = only_chain_dir(&repo);
    let mut n = 0;
    for f in all_files(&chain)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "full" || e == "inc"))
    {
        let bytes = std::fs::read(f).unwrap();
        for r in records(f) {
            assert_eq!(
                bytes[r.offset as usize + 6] & 1,
                1,
                "record at {} of {} is not encrypted",
                r.offset,
                f.display()
            );
            n += 1;
        }
    }
    assert_eq!(n, 13 + 1, "records in the data files");
}

#[test]
fn wrong_password_is_refused_by_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_encrypted(&repo);
    let disk = tmp.path().join("disk.raw");
    write_disk(&disk, 4 * MIB, &[(0, 2 * MIB, Fill::Random(9))]);
    backup_enc(&repo, "vm1", &[], &disk);
    let out = tmp.path().join("out.raw");

    let repo_s = repo.to_str().unwrap();
    let disk_s = disk.to_str().unwrap();
    let out_s = out.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["points", "--repo", repo_s],
        vec!["backup", "--repo", repo_s, "--vm", "vm1", disk_s],
        vec!["restore", "--repo", repo_s, "--vm", "vm1", "--to", out_s],
        vec!["verify", "--repo", repo_s],
        vec!["retain", "--repo", repo_s, "--keep", "1"],
    ];
    for args in &commands {
        let (_, err) = fails(with_password(cairn(args), "not the password"), 2);
        assert!(err.contains("wrong password"), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} created the output file");

        let (_, err) = fails(cairn(args), 2);
        assert!(
            err.contains("CAIRN_PASSWORD") && err.contains("--password-file"),
            "{args:?} without password: {err}"
        );
    }
    // Nothing was changed by the refused commands.
    let mut c = cairn(["points", "--json", "--vm", "vm1"]);
    c.arg("--repo").arg(&repo);
    assert_eq!(
        ok_json(with_password(c, PASSWORD))[0]["points"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// `cmd` run in a new session, without a controlling terminal (so a
/// password prompt cannot reach whoever runs the tests).
fn without_terminal(mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| rustix::process::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
    cmd.stdin(std::process::Stdio::null());
    cmd
}

#[test]
fn init_needs_a_password() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    // Encrypted is the default: without a password and a terminal, nothing is created.
    for args in [&["repo", "init"][..], &["repo", "init", "--encryption", "aes-256-gcm"]] {
        let mut c = cairn(args);
        c.arg(&repo);
        let (_, err) = fails(without_terminal(c), 2);
        assert!(
            err.contains("CAIRN_PASSWORD") && err.contains("--password-file") && err.contains("--encryption none"),
            "the error must say every way out: {err}"
        );
        assert!(!repo.exists(), "a failed init must create nothing");
    }

    let mut c = cairn(["repo", "init", "--encryption", "aes-256-gcm"]);
    c.arg(&repo);
    let (_, err) = fails(with_password(c, ""), 2);
    assert!(err.contains("password is empty"), "{err}");
    assert!(
        !repo.exists() || std::fs::read_dir(&repo).unwrap().next().is_none(),
        "a failed init must create nothing"
    );

    let mut c = cairn(["repo", "init", "--encryption", "rot13"]);
    c.arg(&repo);
    let (_, err) = fails(c, 2);
    assert!(err.contains("rot13"), "{err}");
}

#[test]
fn init_encrypts_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let mut c = cairn(["repo", "init", "--json"]);
    c.arg(&repo);
    let v = ok_json(with_password(c, PASSWORD));
    assert_eq!(v["encryption"], "aes-256-gcm");
    let disk = tmp.path().join("disk.raw");
    write_disk(&disk, 2 * MIB, &[(0, MIB, Fill::Text(5))]);
    let mut c = cairn(["backup", "--vm", "vm1"]);
    c.arg("--repo").arg(&repo).arg(&disk);
    let (_, err) = fails(c, 2);
    assert!(
        err.contains("encrypted"),
        "a backup without the password is refused: {err}"
    );
    backup_enc(&repo, "vm1", &[], &disk);

    // Unencrypted only when asked, and then private to its owner too.
    let plain = tmp.path().join("plain");
    let mut c = cairn(["repo", "init", "--json", "--encryption", "none"]);
    c.arg(&plain);
    assert_eq!(ok_json(without_terminal(c))["encryption"], "none");
}

/// Runs `cairn repo init REPO` on a pseudo-terminal (util-linux `script`),
/// typing each of `answers` only once the prompt before it was shown, so
/// what the terminal shows after a prompt is exactly what cairn echoed.
/// Returns the terminal's output and whether cairn succeeded.
fn init_on_a_terminal(repo: &Path, answers: &[&str]) -> (String, bool) {
    use std::io::{Read, Write};
    let script = require_tool("script", "bsdutils");
    let bin = assert_cmd::cargo::cargo_bin("cairn");
    let mut child = Command::new(script)
        .arg("-qec")
        .arg(format!("{} repo init {}", bin.display(), repo.display()))
        .arg("/dev/null")
        .env_remove("CAIRN_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run script");
    let mut stdout = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let mut stdin = child.stdin.take().unwrap();
    for (i, answer) in answers.iter().enumerate() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while seen.lock().unwrap().matches("assword").count() <= i {
            assert!(
                std::time::Instant::now() < deadline,
                "prompt {} not shown; the terminal shows: {:?}",
                i + 1,
                seen.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The prompt is printed just before echo is turned off: give the
        // terminal settings a moment, as a person typing would.
        std::thread::sleep(std::time::Duration::from_millis(300));
        stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
    }
    drop(stdin);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let out = seen.lock().unwrap().clone();
    (out, status.success())
}

#[test]
fn init_asks_for_the_password_twice_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let (out, ok) = init_on_a_terminal(&repo, &[PASSWORD, PASSWORD]);
    assert!(ok, "init on a terminal failed: {out}");
    assert!(
        out.contains("Password for the new repository") && out.contains("Same password again"),
        "{out}"
    );
    assert!(!out.contains(PASSWORD), "the password was echoed: {out}");
    assert!(out.contains("aes-256-gcm"), "{out}");
    let disk = tmp.path().join("disk.raw");
    write_disk(&disk, 2 * MIB, &[(0, MIB, Fill::Random(6))]);
    backup_enc(&repo, "vm1", &[], &disk);

    let other = tmp.path().join("other");
    let (out, ok) = init_on_a_terminal(&other, &[PASSWORD, "something else"]);
    assert!(!ok, "two different passwords were accepted: {out}");
    assert!(out.contains("differ"), "{out}");
    assert!(!other.exists(), "a failed init must create nothing");
}

#[test]
fn password_file() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let pw_file = tmp.path().join("pw");
    std::fs::write(&pw_file, "from a file\n").unwrap();
    let mut c = cairn(["repo", "init", "--encryption", "aes-256-gcm", "--password-file"]);
    c.arg(&pw_file).arg(&repo);
    ok(c);

    let disk = tmp.path().join("disk.raw");
    write_disk(&disk, 6 * MIB, &[(MIB, 3 * MIB, Fill::Text(11))]);
    let mut c = cairn(["backup", "--json", "--vm", "vm1", "--password-file"]);
    c.arg(&pw_file).arg("--repo").arg(&repo).arg(&disk);
    // The file wins over a wrong CAIRN_PASSWORD.
    let b = ok_json(with_password(c, "wrong"));
    assert_eq!(session(&b), "full");

    // The trailing newline is not part of the password: the same password
    // given through the environment opens the repository.
    let out = tmp.path().join("out.raw");
    let mut c = cairn(["restore", "--vm", "vm1"]);
    c.arg("--repo").arg(&repo).arg("--to").arg(&out);
    ok(with_password(c, "from a file"));
    assert_same_file(&disk, &out);

    let bad = tmp.path().join("bad-pw");
    std::fs::write(&bad, "from a fil\n").unwrap();
    let mut c = cairn(["points", "--password-file"]);
    c.arg(&bad).arg("--repo").arg(&repo);
    let (_, err) = fails(c, 2);
    assert!(err.contains("wrong password"), "{err}");

    let missing = tmp.path().join("no-such-pw-file");
    let mut c = cairn(["points", "--password-file"]);
    c.arg(&missing).arg("--repo").arg(&repo);
    let (_, err) = fails(c, 2);
    assert!(
        err.contains("no-such-pw-file"),
        "the error must name the password file: {err}"
    );
}

/// Searches every file under `repo` for each needle; returns (needle, file) hits.
fn scan(repo: &Path, needles: &[&[u8]]) -> Vec<(String, String)> {
    let mut hits = Vec::new();
    let files = all_files(repo);
    assert!(files.len() >= 5, "too few files to scan: {files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for n in needles {
            if contains(&bytes, n) {
                hits.push((String::from_utf8_lossy(n).into_owned(), f.display().to_string()));
            }
        }
    }
    hits
}

/// A disk full of a marker text, with a telling name, backed up by a VM with a telling name.
fn secret_disk(dir: &Path) -> std::path::PathBuf {
    let disk = dir.join("secret-disk-path.raw");
    let text: Vec<u8> = MARKER.as_bytes().iter().copied().cycle().take(MIB as usize).collect();
    let mut mixed = random_bytes(5, MIB as usize);
    for i in (0..mixed.len()).step_by(4096) {
        mixed[i..i + MARKER.len()].copy_from_slice(MARKER.as_bytes());
    }
    write_disk(
        &disk,
        8 * MIB,
        &[
            (0, MIB, Fill::Bytes(text)),
            (2 * MIB, MIB, Fill::Bytes(mixed)),
            (5 * MIB, MIB, Fill::Random(6)),
        ],
    );
    disk
}

#[test]
fn no_plaintext_in_an_encrypted_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = secret_disk(tmp.path());
    let needles: [&[u8]; 4] = [
        MARKER.as_bytes(),
        b"SECRET-MARKER",
        b"secret-vm-name",
        b"secret-disk-path",
    ];

    // Control: without encryption and compression the scan does find the data,
    // so an empty result below means something.
    let plain = tmp.path().join("plain");
    init_repo(&plain);
    backup(&plain, "secret-vm-name", &["--compression", "none"], &[&disk]);
    let hits = scan(&plain, &needles);
    assert!(
        hits.iter().any(|(n, f)| n == MARKER && f.ends_with(".full")),
        "control scan found nothing: {hits:?}"
    );

    let repo = tmp.path().join("enc");
    init_encrypted(&repo);
    for codec in ["none", "zstd:1", "lz4"] {
        backup_enc(&repo, "secret-vm-name", &["--compression", codec, "--full"], &disk);
    }
    patch_disk(
        &disk,
        3 * MIB,
        MIB,
        Fill::Bytes(
            MARKER
                .as_bytes()
                .iter()
                .copied()
                .cycle()
                .skip(3)
                .take(MIB as usize)
                .collect(),
        ),
    );
    backup_enc(&repo, "secret-vm-name", &["--compression", "none"], &disk);
    let mut c = cairn(["retain", "--keep", "2"]);
    c.arg("--repo").arg(&repo);
    ok(with_password(c, PASSWORD));

    let hits = scan(&repo, &needles);
    assert!(hits.is_empty(), "plaintext found in the encrypted repository: {hits:?}");
    // The repository still works.
    let out = tmp.path().join("out.raw");
    let mut c = cairn(["restore", "--vm", "secret-vm-name"]);
    c.arg("--repo").arg(&repo).arg("--to").arg(&out);
    ok(with_password(c, PASSWORD));
    assert_same_file(&disk, &out);
}

#[test]
fn tampered_encrypted_data_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_encrypted(&repo);
    let disk = tmp.path().join("disk.raw");
    write_disk(&disk, 4 * MIB, &[(0, 4 * MIB, Fill::Text(12))]);
    let id = point_id(&backup_enc(&repo, "vm1", &["--block-size", "1M"], &disk));
    let chain = only_chain_dir(&repo);
    let full = chain.join("00000001.full");
    let recs = records(&full);
    assert_eq!(recs.len(), 4);
    // Change one ciphertext byte of one record.
    flip_byte(&full, recs[1].payload_offset() + 40);
    // And one of another, this time fixing the record's checksums the way
    // an attacker could: only the authenticated encryption can tell.
    let r = &recs[2];
    flip_byte(&full, r.payload_offset() + 40);
    fix_record_checksums(&full, r);

    let mut c = verify_cmd(&repo);
    c.env("CAIRN_PASSWORD", PASSWORD);
    let report = json_with_code(c, 1);
    let p = &report["chains"][0]["points"][0];
    assert_eq!(p["id"].as_str().unwrap(), id);
    assert_eq!(p["damaged_blocks"], serde_json::json!({"0": 2}));
    let problems = p["problems"].to_string();
    // (Records are written in the order the workers finish, so which block
    // each one holds is not known here.)
    assert!(problems.contains("block payload: checksum mismatch"), "{problems}");
    assert!(problems.contains("decryption failed"), "{problems}");
    let out = tmp.path().join("out.raw");
    let mut c = restore_cmd(&repo, "vm1", "latest", 0, &out);
    c.env("CAIRN_PASSWORD", PASSWORD);
    let (_, err) = fails(c, 2);
    assert!(err.contains("00000001.full"), "{err}");
    assert!(!out.exists());
}

/// CRC-32C (Castagnoli), as the record format uses.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Recomputes the payload and header CRCs of a record in place.
fn fix_record_checksums(path: &Path, r: &Record) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut payload = vec![0u8; r.stored_len as usize];
    f.read_exact_at(&mut payload, r.payload_offset()).unwrap();
    let mut h = [0u8; 64];
    f.read_exact_at(&mut h, r.offset).unwrap();
    h[48..52].copy_from_slice(&crc32c(&payload).to_le_bytes());
    let hc = crc32c(&h[..60]);
    h[60..64].copy_from_slice(&hc.to_le_bytes());
    f.write_all_at(&h, r.offset).unwrap();
    f.sync_all().unwrap();
}
