//! The command-line client against a real `cairn server` process (HTTPS with its own CA, real
//! qemu-img images, a real repository), once with SQLite and once with PostgreSQL as the
//! configuration database: login, inventory, jobs, `job run --wait`, sessions, restores
//! through the server, roles and tokens, and the exit codes of every outcome.

mod server_common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use server_common::*;

fn arr<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("{what} is not an array: {v}"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

/// The restore points of `vm` (`HOST/VM`) in the default repository, oldest first.
fn points_of(srv: &Server, vm: &str) -> Vec<Value> {
    let all = ok_json(srv.cairn(["points", "--repository", "default", "--json"]));
    let chain = arr(&all, "points")
        .iter()
        .find(|c| c["vm"] == vm)
        .unwrap_or_else(|| panic!("no restore points of {vm}: {all}"));
    arr(&chain["points"], "points").clone()
}

fn restore(srv: &Server, args: &[&str], to: &Path) -> Value {
    let mut c = srv.cairn(["restore", "--repository", "default", "--json"]);
    c.args(args).arg("--to").arg(to);
    ok_json(c)
}

both_backends!(backup_and_restore_through_the_server);
fn backup_and_restore_through_the_server(backend: Backend) {
    let srv = Server::start(backend, "backup");
    srv.login_admin();
    let me = ok_json(srv.cairn(["whoami", "--json"]));
    assert_eq!(me["name"], "admin");
    assert_eq!(me["role"], "administrator");

    // Two VMs: web01 with one raw disk, db01 with a qcow2 and a raw disk.
    let vms = srv.tmp.path().join("vms");
    let web = vms.join("web01/disk0.raw");
    let db0 = vms.join("db01/disk0.qcow2");
    let db1 = vms.join("db01/disk1.raw");
    make_image(&web, "raw", 8 * MIB, &[(0x41, 0, MIB), (0x5a, 5 * MIB, MIB)]);
    make_image(&db0, "qcow2", 8 * MIB, &[(0x42, MIB, 2 * MIB)]);
    make_image(&db1, "raw", 4 * MIB, &[(0x43, 3 * MIB, MIB)]);

    let mut c = srv.cairn(["host", "add", "image-folder", "--name", "lab", "--json", "--path"]);
    c.arg(&vms);
    let added = ok_json(c);
    assert_eq!(added["host"]["name"], "lab");
    assert_eq!(arr(&added["vms"], "vms").len(), 2);
    let hosts = ok_json(srv.cairn(["host", "list", "--json"]));
    assert_eq!(arr(&hosts, "hosts").len(), 1);
    assert_eq!(hosts[0]["name"], "lab");
    assert_eq!(hosts[0]["vms"], 2);

    let vm_list = ok_json(srv.cairn(["vm", "list", "--host", "lab", "--json"]));
    let db = arr(&vm_list, "vms")
        .iter()
        .find(|v| v["name"] == "db01")
        .expect("db01 is listed");
    assert_eq!(db["host"], "lab");
    let formats: Vec<&str> = arr(&db["disks"], "disks").iter().map(|d| str_of(d, "format")).collect();
    assert!(formats.contains(&"qcow2") && formats.contains(&"raw"), "{formats:?}");
    let text = ok(srv.cairn(["vm", "list"]));
    assert!(
        text.contains("lab/db01") && text.contains("disk0.qcow2") && text.contains("8.0 MiB"),
        "{text}"
    );

    // An unknown VM is refused with the names close to it (a usage error: exit code 2).
    let (_, err) = run_code(
        srv.cairn(["job", "create", "x", "--vm", "web1", "--repository", "default"]),
        2,
    );
    assert!(err.contains("no VM named \"web1\"") && err.contains("web01"), "{err}");

    let job = ok_json(srv.cairn([
        "job",
        "create",
        "nightly",
        "--vm",
        "web01",
        "--vm",
        "lab/db01",
        "--repository",
        "default",
        "--schedule",
        "daily 22:00",
        "--retain",
        "3",
        "--json",
    ]));
    assert_eq!(job["schedule"], "daily 22:00");
    assert_eq!(job["retention_points"], 3);
    assert_eq!(arr(&job["vm_ids"], "vm_ids").len(), 2);
    let jobs = ok_json(srv.cairn(["job", "list", "--json"]));
    assert_eq!(jobs[0]["name"], "nightly");
    assert!(str_of(&jobs[0], "next_run").ends_with("T22:00:00Z"), "{jobs}");
    let text = ok(srv.cairn(["job", "list"]));
    assert!(
        text.contains("nightly") && text.contains("daily 22:00") && text.contains("22:00:00"),
        "{text}"
    );

    // Run and follow the session.
    let (out, _) = run_code(srv.cairn(["job", "run", "nightly", "--wait"]), 0);
    for task in [
        "lab/web01/disk0.raw: success",
        "lab/db01/disk0.qcow2: success",
        "lab/db01/disk1.raw: success",
    ] {
        assert!(out.contains(task), "missing {task:?} in:\n{out}");
    }
    assert!(out.contains("of job nightly: success"), "{out}");
    assert!(out.contains("tasks: 3 (3 success"), "{out}");
    assert!(out.contains("bottleneck: "), "{out}");

    let sessions = ok_json(srv.cairn(["session", "list", "--json"]));
    let first = &arr(&sessions["sessions"], "sessions")[0];
    assert_eq!(first["state"], "success");
    assert_eq!(first["job_name"], "nightly");
    let sid = first["id"].as_i64().expect("session id").to_string();

    let text = ok(srv.cairn(["session", "show", &sid]));
    for want in [
        "of job nightly: success",
        "lab/web01/disk0.raw",
        "lab/db01/disk0.qcow2",
        "lab/db01/disk1.raw",
        "BOTTLENECK",
        "busy: source",
        "log of lab/db01/disk1.raw:",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let shown = ok_json(srv.cairn(["session", "show", &sid, "--json"]));
    let tasks = arr(&shown["tasks"], "tasks");
    assert_eq!(tasks.len(), 3);
    for t in tasks {
        assert_eq!(t["state"], "success");
        assert!(t["statistics"]["bottleneck"].is_string(), "{t}");
        assert!(!arr(&t["log"], "log").is_empty(), "task without log lines: {t}");
    }

    // Restores through the server, byte for byte.
    let out_dir = srv.tmp.path().join("restored");
    std::fs::create_dir_all(&out_dir).unwrap();
    let web_copy = srv.tmp.path().join("web01-first.raw");
    std::fs::copy(&web, &web_copy).unwrap();
    let r = restore(&srv, &["--vm", "web01"], &out_dir.join("web01.raw"));
    assert_eq!(r["vm"], "lab/web01");
    assert_eq!(r["virtual_size"], 8 * MIB);
    assert_same_image(&web, &out_dir.join("web01.raw"));
    restore(
        &srv,
        &["--vm", "lab/db01", "--disk", "0", "--format", "qcow2"],
        &out_dir.join("db01-0.qcow2"),
    );
    assert_same_image(&db0, &out_dir.join("db01-0.qcow2"));
    restore(&srv, &["--vm", "db01", "--disk", "1"], &out_dir.join("db01-1.raw"));
    assert_same_image(&db1, &out_dir.join("db01-1.raw"));
    // A restore never overwrites a file.
    let mut c = srv.cairn(["restore", "--repository", "default", "--vm", "web01", "--to"]);
    c.arg(out_dir.join("web01.raw"));
    let (_, err) = run_code(c, 1);
    assert!(err.contains("already exists"), "{err}");

    // A second point after a change: latest is the changed disk, the first point the old one.
    make_image_write(&web, "raw", 0x77, 2 * MIB, MIB);
    let done = ok_json(srv.cairn(["job", "run", "nightly", "--wait", "--json"]));
    assert_eq!(done["session"]["state"], "success");
    assert_eq!(arr(&done["tasks"], "tasks").len(), 3);
    let points = points_of(&srv, "lab/web01");
    assert_eq!(points.len(), 2, "{points:?}");
    restore(&srv, &["--vm", "web01"], &out_dir.join("web01-latest.raw"));
    assert_same_image(&web, &out_dir.join("web01-latest.raw"));
    let first_id = str_of(&points[0], "id");
    restore(
        &srv,
        &["--vm", "web01", "--point", &first_id[..6]],
        &out_dir.join("web01-first.raw"),
    );
    assert_same_image(&web_copy, &out_dir.join("web01-first.raw"));
    let text = ok(srv.cairn(["points", "--repository", "default", "--vm", "web01"]));
    assert!(
        text.contains("VM lab/web01 (2 points)") && text.contains(first_id),
        "{text}"
    );

    // job edit changes the schedule; job show reflects it.
    let before = jobs[0]["version"].as_i64().unwrap();
    let edited = ok_json(srv.cairn(["job", "edit", "nightly", "--schedule", "weekly sat 03:00", "--json"]));
    assert_eq!(edited["schedule"], "weekly sat 03:00");
    assert_eq!(edited["retention_points"], 3, "edit kept the other settings");
    assert!(edited["version"].as_i64().unwrap() > before);
    let text = ok(srv.cairn(["job", "show", "nightly"]));
    assert!(
        text.contains("weekly sat 03:00") && text.contains("lab/web01, lab/db01"),
        "{text}"
    );
    assert!(text.contains("03:00:00"), "next run on Saturday 03:00: {text}");
    // Excluded disks, backup window, enable and disable.
    let edited = ok_json(srv.cairn([
        "job",
        "edit",
        "nightly",
        "--exclude-disk",
        "db01:disk1.raw",
        "--window",
        "mon-fri 20:00-06:00",
        "--json",
    ]));
    assert_eq!(arr(&edited["excluded_disk_ids"], "excluded").len(), 1);
    assert_eq!(edited["backup_window"], "mon-fri 20:00-06:00");
    let text = ok(srv.cairn(["job", "show", "nightly"]));
    assert!(
        text.contains("lab/db01:disk1.raw") && text.contains("mon-fri 20:00-06:00"),
        "{text}"
    );
    let (_, err) = run_code(
        srv.cairn(["job", "edit", "nightly", "--exclude-disk", "db01:disk7.raw"]),
        2,
    );
    assert!(
        err.contains("disk0.qcow2") && err.contains("disk1.raw"),
        "names the VM's disks: {err}"
    );
    let disabled = ok_json(srv.cairn(["job", "disable", "nightly", "--json"]));
    assert_eq!(disabled["enabled"], false);
    assert!(ok(srv.cairn(["job", "list"])).contains("disabled"));
    let enabled = ok_json(srv.cairn(["job", "enable", "nightly", "--json"]));
    assert_eq!(enabled["enabled"], true);

    // A new VM appears on the next rescan.
    make_image(&vms.join("app01/disk0.raw"), "raw", 2 * MIB, &[(0x44, 0, MIB)]);
    let rescanned = ok_json(srv.cairn(["host", "rescan", "lab", "--json"]));
    assert_eq!(arr(&rescanned["vms"], "vms").len(), 3);
    // An unknown name is a usage error (exit code 2), with the near names.
    let (_, err) = run_code(srv.cairn(["host", "rescan", "labs"]), 2);
    assert!(err.contains("no host named \"labs\" (did you mean lab?)"), "{err}");

    let (_, err) = run_code(
        srv.cairn(["job", "edit", "nightly", "--schedule", "every blue moon"]),
        1,
    );
    assert!(err.starts_with("error: ") && err.contains("schedule"), "{err}");
    let shown = ok_json(srv.cairn(["job", "show", "nightly", "--json"]));
    assert_eq!(shown["schedule"], "weekly sat 03:00", "a refused edit changes nothing");
}

/// Writes `len` bytes of `pattern` at `offset` of an existing image.
fn make_image_write(path: &Path, format: &str, pattern: u8, offset: u64, len: u64) {
    let cmd = format!("write -P {pattern} {offset} {len}");
    tool("qemu-io", &["-f", format, "-c", &cmd, path.to_str().unwrap()]);
}

both_backends!(logins_roles_and_tokens);
fn logins_roles_and_tokens(backend: Backend) {
    let srv = Server::start(backend, "roles");
    let client_json = srv.config.join("client.json");

    let (_, err) = run_code(srv.cairn(["whoami"]), 2);
    assert!(err.contains("not logged in — run `cairn login URL`"), "{err}");

    let out = srv.login_as(&srv.config, "admin", "not the password");
    let (_, err) = check_code("login with a wrong password", &out, 2);
    assert!(err.contains("wrong user name or password"), "{err}");
    assert!(!client_json.exists());

    // Without the CA the server's certificate cannot be verified: the error says what to pass.
    let mut c = srv.cairn(["login", &srv.url, "--password-stdin"]);
    c.stdin(Stdio::piped());
    let out = with_stdin(c, &format!("{ADMIN_PASSWORD}\n"));
    let (_, err) = check_code("login without --ca-cert", &out, 2);
    assert!(err.contains("--ca-cert DATA/ca.pem"), "{err}");
    // Without --password-stdin and without a terminal the password cannot be asked for.
    let mut c = srv.cairn(["login", &srv.url, "--ca-cert"]);
    c.arg(&srv.ca);
    let (_, err) = run_code(c, 2);
    assert!(err.contains("--password-stdin"), "{err}");

    srv.login_admin();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&client_json), 0o600);
    assert_eq!(mode(&srv.config), 0o700);
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&client_json).unwrap()).unwrap();
    assert_eq!(stored["url"], srv.url.as_str());
    assert_eq!(stored["user"], "admin");
    assert!(str_of(&stored, "ca_cert").contains("BEGIN CERTIFICATE"));
    assert!(str_of(&stored, "token").starts_with("cairn_"));

    // A job for the viewer to try.
    let vms = srv.tmp.path().join("vms");
    make_image(&vms.join("app/disk0.raw"), "raw", 2 * MIB, &[(0x61, 0, MIB)]);
    let mut c = srv.cairn(["host", "add", "image-folder", "--path"]);
    c.arg(&vms);
    ok(c);
    ok(srv.cairn(["job", "create", "nightly", "--vm", "app", "--repository", "default"]));

    let out = with_stdin(
        srv.cairn(["user", "add", "alice", "--role", "viewer", "--password-stdin"]),
        "alice-password\n",
    );
    check_code("user add", &out, 0);
    let users = ok_json(srv.cairn(["user", "list", "--json"]));
    let alice = arr(&users, "users")
        .iter()
        .find(|u| u["name"] == "alice")
        .expect("alice");
    assert_eq!(alice["role"], "viewer");

    let viewer = srv.tmp.path().join("viewer-client");
    let out = srv.login_as(&viewer, "alice", "alice-password");
    check_code("viewer login", &out, 0);
    let jobs = ok_json(srv.cairn_as(&viewer, ["job", "list", "--json"]));
    assert_eq!(jobs[0]["name"], "nightly", "a viewer reads jobs");
    let (_, err) = run_code(srv.cairn_as(&viewer, ["job", "run", "nightly"]), 2);
    assert!(err.contains("your role viewer may not run jobs"), "{err}");
    let (_, err) = run_code(srv.cairn_as(&viewer, ["user", "list"]), 2);
    assert!(err.contains("your role viewer may not"), "{err}");

    // Role and password changes.
    let out = with_stdin(
        srv.cairn(["user", "set", "alice", "--role", "restore-operator", "--password-stdin"]),
        "new-alice-password\n",
    );
    check_code("user set", &out, 0);
    let out = srv.login_as(&viewer, "alice", "alice-password");
    check_code("login with the old password", &out, 2);
    let out = srv.login_as(&viewer, "alice", "new-alice-password");
    check_code("login with the new password", &out, 0);
    let me = ok_json(srv.cairn_as(&viewer, ["whoami", "--json"]));
    assert_eq!(me["role"], "restore-operator");

    // API tokens work through CAIRN_TOKEN with --server and --ca-cert, and end when removed.
    let token = ok_json(srv.cairn([
        "token",
        "create",
        "--description",
        "ci",
        "--expires-days",
        "3",
        "--json",
    ]));
    let secret = str_of(&token, "token").to_string();
    assert!(secret.starts_with("cairn_"));
    let tid = token["id"].as_i64().unwrap().to_string();
    let empty = srv.tmp.path().join("no-login");
    let with_token = |args: &[&str]| {
        let mut c = srv.cairn_as(&empty, args);
        c.env("CAIRN_TOKEN", &secret)
            .args(["--server", &srv.url, "--ca-cert"])
            .arg(&srv.ca);
        c
    };
    let me = ok_json(with_token(&["whoami", "--json"]));
    assert_eq!(me["name"], "admin");
    let tokens = ok_json(srv.cairn(["token", "list", "--json"]));
    assert!(
        arr(&tokens, "tokens")
            .iter()
            .any(|t| t["description"] == "ci" && t.get("token").is_none()),
        "{tokens}"
    );
    ok(srv.cairn(["token", "remove", &tid]));
    let (_, err) = run_code(with_token(&["whoami"]), 2);
    assert!(err.contains("not logged in"), "{err}");

    ok(srv.cairn(["user", "remove", "alice"]));
    let (_, err) = run_code(srv.cairn_as(&viewer, ["whoami"]), 2);
    assert!(err.contains("not logged in"), "a removed user's login ends: {err}");

    let text = ok(srv.cairn(["logout"]));
    assert!(text.contains("logged out"), "{text}");
    assert!(!client_json.exists());
    let (_, err) = run_code(srv.cairn(["job", "list"]), 2);
    assert!(err.contains("not logged in"), "{err}");
}

both_backends!(exit_codes_of_failed_and_stopped_sessions);
fn exit_codes_of_failed_and_stopped_sessions(backend: Backend) {
    let srv = Server::start(backend, "exits");
    srv.login_admin();
    let vms = srv.tmp.path().join("vms");
    random_raw_image(&vms.join("slow/disk0.raw"), 6 * MIB, 7);
    make_image(&vms.join("gone/disk0.raw"), "raw", 2 * MIB, &[(0x67, 0, MIB)]);
    let mut c = srv.cairn(["host", "add", "image-folder", "--name", "lab", "--path"]);
    c.arg(&vms);
    ok(c);

    // Settings, proxies and repository limits.
    let settings = ok_json(srv.cairn(["settings", "--parallel-processing", "off", "--json"]));
    assert_eq!(settings["parallel_processing"], false);
    let settings = ok_json(srv.cairn(["settings", "--json"]));
    assert_eq!(settings["parallel_processing"], false);
    assert_eq!(settings["time_zone"], "UTC");
    ok(srv.cairn(["settings", "--parallel-processing", "on"]));
    let proxies = ok_json(srv.cairn(["proxy", "list", "--json"]));
    let proxy = str_of(&proxies[0], "name").to_string();
    let changed = ok_json(srv.cairn(["proxy", "set", &proxy, "--max-tasks", "3", "--json"]));
    assert_eq!(changed["max_tasks"], 3);
    let repo = ok_json(srv.cairn(["repository", "set", "default", "--write-limit", "256KiB", "--json"]));
    assert_eq!(repo["write_limit_bytes"], 256 * 1024);
    let text = ok(srv.cairn(["repository", "list"]));
    assert!(text.contains("256.0 KiB/s"), "{text}");

    // A stopped session: exit code 3. 6 MiB of random data at 256 KiB/s take ~24 s.
    ok(srv.cairn(["job", "create", "slow", "--vm", "slow", "--repository", "default"]));
    let follower = srv
        .cairn(["job", "run", "slow", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairn job run --wait");
    let sid = wait_for("the slow session to run", 60, || {
        let list = ok_json(srv.cairn(["session", "list", "--job", "slow", "--json"]));
        let s = list["sessions"].get(0)?.clone();
        (s["state"] == "running").then(|| s["id"].as_i64().unwrap())
    });
    let (_, err) = run_code(srv.cairn(["job", "run", "slow"]), 1);
    assert!(err.contains("already running"), "{err}");
    ok(srv.cairn(["job", "stop", "slow"]));
    let out = follower.wait_with_output().unwrap();
    let (stdout, stderr) = check_code("job run slow --wait (stopped)", &out, 3);
    assert!(stdout.contains(": stopped"), "{stdout}\n{stderr}");
    let shown = ok_json(srv.cairn(["session", "show", &sid.to_string(), "--json"]));
    assert_eq!(shown["session"]["state"], "stopped");
    let (_, err) = run_code(srv.cairn(["session", "stop", &sid.to_string()]), 1);
    assert!(err.contains("already ended"), "{err}");
    ok(srv.cairn(["repository", "set", "default", "--write-limit", "none"]));

    // A failed session: exit code 1 (no retries, its disk vanished after the scan).
    ok(srv.cairn([
        "job",
        "create",
        "broken",
        "--vm",
        "gone",
        "--repository",
        "default",
        "--retries",
        "0",
    ]));
    std::fs::remove_file(vms.join("gone/disk0.raw")).unwrap();
    let (stdout, stderr) = run_code(srv.cairn(["job", "run", "broken", "--wait"]), 1);
    assert!(stdout.contains("of job broken: failed"), "{stdout}");
    assert!(stderr.contains("failed"), "{stderr}");

    // Paging through sessions.
    let page = ok_json(srv.cairn(["session", "list", "--limit", "1", "--json"]));
    assert_eq!(arr(&page["sessions"], "sessions").len(), 1);
    assert!(page["next_cursor"].is_string(), "{page}");
    let all = ok_json(srv.cairn(["session", "list", "--limit", "1", "--all", "--json"]));
    assert_eq!(arr(&all["sessions"], "sessions").len(), 2);
    assert!(all["next_cursor"].is_null());

    // Removing: a job, the host it used, a repository added and removed again.
    ok(srv.cairn(["job", "remove", "broken"]));
    ok(srv.cairn(["job", "remove", "slow"]));
    ok(srv.cairn(["host", "remove", "lab"]));
    let extra = srv.tmp.path().join("extra-repo");
    let mut c = srv.cairn([
        "repository",
        "add",
        "extra",
        "--encryption",
        "none",
        "--max-tasks",
        "2",
        "--json",
        "--path",
    ]);
    c.arg(&extra);
    let added = ok_json(c);
    assert_eq!(added["encrypted"], false);
    assert!(
        std::fs::read_dir(&extra).unwrap().next().is_some(),
        "the repository was created in its folder"
    );
    ok(srv.cairn(["repository", "remove", "extra"]));
    let repos = ok_json(srv.cairn(["repository", "list", "--json"]));
    assert_eq!(arr(&repos, "repositories").len(), 1);
}

/// The current TOTP code of `secret`, `offset` seconds from now.
fn totp_code(secret: &str, offset: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    cairn_server::auth::totp::code_at(secret, (now + offset) as u64).unwrap()
}

/// The value after `label` on a line of `text` (`  secret: ABC` → `ABC`).
fn printed(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))
}

both_backends!(second_factor_passwords_audit_and_restore_folders);
fn second_factor_passwords_audit_and_restore_folders(backend: Backend) {
    let srv = Server::start(backend, "security");
    srv.login_admin();
    let out = with_stdin(
        srv.cairn(["user", "add", "bob", "--role", "restore-operator", "--password-stdin"]),
        "bob-password\n",
    );
    check_code("user add", &out, 0);
    let bob = srv.tmp.path().join("bob-client");
    check_code("bob logs in", &srv.login_as(&bob, "bob", "bob-password"), 0);

    // Bob sets up a second factor without a terminal: setup, then confirm.
    let setup = ok_json(srv.cairn_as(&bob, ["totp", "setup", "--json"]));
    let secret = str_of(&setup, "secret").to_string();
    let (_, err) = run_code(srv.cairn_as(&bob, ["totp", "confirm", "000000"]), 1);
    assert!(err.contains("the code is wrong"), "{err}");
    ok(srv.cairn_as(&bob, ["totp", "confirm", &totp_code(&secret, -30)]));
    let out = srv.login_as(&bob, "bob", "bob-password");
    let (_, err) = check_code("login without a code and without a terminal", &out, 2);
    assert!(err.contains("--totp-code"), "{err}");
    let mut c = srv.cairn_as(
        &bob,
        ["login", &srv.url, "--user", "bob", "--password-stdin", "--ca-cert"],
    );
    c.arg(&srv.ca).arg("--totp-code").arg(totp_code(&secret, 0));
    check_code("login with the code", &with_stdin(c, "bob-password\n"), 0);

    // Bob's own password: every other login ends, the stored one is replaced.
    let other = srv.tmp.path().join("bob-other");
    let mut c = srv.cairn_as(
        &other,
        ["login", &srv.url, "--user", "bob", "--password-stdin", "--ca-cert"],
    );
    c.arg(&srv.ca).arg("--totp-code").arg(totp_code(&secret, 30));
    check_code("a second login of bob", &with_stdin(c, "bob-password\n"), 0);
    let out = with_stdin(
        srv.cairn_as(&bob, ["password", "--password-stdin"]),
        "bob-password\nbob-new-password\n",
    );
    check_code("cairn password", &out, 0);
    ok(srv.cairn_as(&bob, ["whoami"]));
    let (_, err) = run_code(srv.cairn_as(&other, ["whoami"]), 2);
    assert!(err.contains("not logged in"), "{err}");
    ok(srv.cairn(["user", "reset-totp", "bob"]));
    let (_, err) = run_code(srv.cairn_as(&bob, ["whoami"]), 2);
    assert!(err.contains("not logged in"), "the reset ends bob's logins: {err}");
    check_code(
        "login without a second factor",
        &srv.login_as(&bob, "bob", "bob-new-password"),
        0,
    );

    // Restores go only beneath the restore folders.
    let vms = srv.tmp.path().join("vms");
    make_image(&vms.join("app/disk0.raw"), "raw", 2 * MIB, &[(0x61, 0, MIB)]);
    let mut c = srv.cairn(["host", "add", "image-folder", "--path"]);
    c.arg(&vms);
    ok(c);
    ok(srv.cairn(["job", "create", "nightly", "--vm", "app", "--repository", "default"]));
    ok(srv.cairn(["job", "run", "nightly", "--wait"]));
    let mut c = srv.cairn_as(&bob, ["restore", "--repository", "default", "--vm", "app", "--to"]);
    c.arg("/etc/cron.d/cairn-cli-test");
    let (_, err) = run_code(c, 1);
    assert!(err.contains("is not beneath an allowed folder"), "{err}");
    assert!(!Path::new("/etc/cron.d/cairn-cli-test").exists());
    let only = srv.tmp.path().join("restores");
    std::fs::create_dir(&only).unwrap();
    let mut c = srv.cairn(["settings", "--restore-folder"]);
    c.arg(&only);
    let shown = ok(c);
    assert!(
        shown.contains(&format!("restore folders: {}", only.display())),
        "{shown}"
    );
    let restored = only.join("app.raw");
    let mut c = srv.cairn_as(&bob, ["restore", "--repository", "default", "--vm", "app", "--to"]);
    c.arg(&restored);
    ok(c);
    assert_eq!(
        std::fs::metadata(&restored).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_same_image(&restored, &vms.join("app/disk0.raw"));

    // Administrators must have a second factor: a login without one can only set it up.
    ok(srv.cairn(["settings", "--require-totp-for-admins", "on"]));
    let out = srv.login_as(&srv.config, "admin", ADMIN_PASSWORD);
    let (_, err) = check_code("admin login that needs a set-up", &out, 0);
    let secret = printed(&err, "secret:");
    let (_, err) = run_code(srv.cairn(["job", "list"]), 2);
    assert!(err.contains("must use a second factor"), "{err}");
    ok(srv.cairn(["totp", "confirm", &totp_code(&secret, 0)]));
    ok(srv.cairn(["job", "list"]));

    // Everything above is in the audit log, which is intact.
    let entries = ok_json(srv.cairn(["audit", "list", "--json", "--user", "bob", "--limit", "1000"]));
    let actions: Vec<&str> = arr(&entries, "audit").iter().map(|e| str_of(e, "action")).collect();
    for wanted in ["login", "totp.setup", "totp.enable", "password.change", "restore.disk"] {
        assert!(actions.contains(&wanted), "{wanted} missing: {actions:?}");
    }
    let text = ok(srv.cairn(["audit", "list", "--limit", "5"]));
    assert!(text.contains("ACTION") && text.contains("admin"), "{text}");
    let text = ok(srv.cairn(["audit", "verify"]));
    assert!(text.contains("audit log intact"), "{text}");

    // Everything the server wrote in its data folder is its own.
    let mut pending = vec![srv.data.clone()];
    while let Some(p) = pending.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o077, 0, "{}", p.display());
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
}
