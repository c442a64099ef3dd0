//! Backups through agents on one machine: a real `cairn server`, a proxy agent and a repository
//! agent as separate processes. The repository is created by its agent; a job's data goes proxy →
//! repository agent over the data channel; restores through the server run on the repository
//! agent; with the proxy agent gone the server itself sends. (Faults between hosts are in
//! tests/agents_netns.rs.)

mod server_common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use server_common::agents::*;
use server_common::*;

/// Kills the agent processes when the test ends, passed or not.
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts agent `name` again from its data folder (no token).
fn restart_agent(srv: &Server, name: &str, extra: &[&str]) -> Child {
    let dir = srv.tmp.path().join(format!("agent-{name}"));
    let log = srv.tmp.path().join(format!("agent-{name}-again.log"));
    let mut cmd: Command = srv.cairn(["agent", "--data"]);
    cmd.arg(&dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("agent log"));
    cmd.spawn().expect("cannot start `cairn agent`")
}

/// `cairn job run NAME --wait`: (exit code, everything printed, then the whole session with
/// every log line as `cairn session show` prints it).
fn run_job(srv: &Server, job: &str) -> (i32, String) {
    let out = srv.cairn(["job", "run", job, "--wait"]).output().expect("job run");
    let (text, _) = job_run_report(srv, &out);
    (out.status.code().unwrap_or(-1), text)
}

fn restore_via_server(srv: &Server, disk: u32, to: &Path) {
    let to = to.to_str().expect("UTF-8 path");
    ok(srv.cairn([
        "restore",
        "--repository",
        "linux",
        "--vm",
        "hv1/web01",
        "--disk",
        &disk.to_string(),
        "--to",
        to,
    ]));
}

fn backups_through_agents(backend: Backend) {
    let srv = Server::start_with(backend, "agent_backup", &["--agent-heartbeat", "1"]);
    srv.login_admin();
    let mut agents = Agents(vec![
        spawn_agent(&srv, "prx01", "proxy", &[]),
        spawn_agent(&srv, "rep01", "repository", &["--listen", "127.0.0.1:0"]),
    ]);
    for name in ["prx01", "rep01"] {
        wait_for(&format!("agent {name} online with its address"), 60, || {
            let a = agent_state(&srv, name)?;
            (a["state"] == "online" && a["address"].is_string()).then_some(())
        });
    }
    let rep = agent_state(&srv, "rep01").unwrap();
    assert!(
        rep["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "a repository agent reports its data channel address: {rep}"
    );

    // Repositories on agents: bad requests name the problem; a good one is created by the agent.
    let backups = srv.tmp.path().join("backups");
    let path = backups.to_str().unwrap();
    let (_, err) = run_code(
        srv.cairn(["repository", "add", "linux", "--agent", "nosuch", "--path", path]),
        2,
    );
    assert!(err.contains("there is no agent named \"nosuch\""), "{err}");
    let (_, err) = run_code(
        srv.cairn(["repository", "add", "linux", "--agent", "prx01", "--path", path]),
        1,
    );
    assert!(err.contains("repository role"), "{err}");
    let (out, _) = run_code(
        srv.cairn([
            "repository",
            "add",
            "linux",
            "--agent",
            "rep01",
            "--path",
            path,
            "--max-tasks",
            "2",
            "--rate",
            "500MB/s",
        ]),
        0,
    );
    assert!(out.contains("added repository linux"), "{out}");
    assert!(backups.join("config").is_file(), "the agent created the repository");
    let password_file = srv.data.join("secrets").join("repository-2.password");
    assert!(password_file.is_file(), "the server keeps the password");

    // A VM of two disks.
    let images = srv.tmp.path().join("images");
    let disk0 = images.join("web01").join("disk0.raw");
    random_raw_image(&disk0, 12 << 20, 7);
    let disk1 = images.join("web01").join("disk1.qcow2");
    make_image(
        &disk1,
        "qcow2",
        8 << 20,
        &[(0x41, 1 << 20, 2 << 20), (0x42, 6 << 20, 65536)],
    );
    ok(srv.cairn([
        "host",
        "add",
        "image-folder",
        "--name",
        "hv1",
        "--path",
        images.to_str().unwrap(),
    ]));
    ok(srv.cairn([
        "job",
        "create",
        "j1",
        "--vm",
        "hv1/web01",
        "--repository",
        "linux",
        "--retries",
        "0",
    ]));

    let (code, text) = run_job(&srv, "j1");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("proxy prx01 reads, repository agent rep01"), "{text}");
    assert!(
        text.contains("(full) of hv1/web01 committed to repository linux by agent rep01"),
        "{text}"
    );
    assert!(
        text.contains("on the repository's data mover"),
        "retention runs on the agent: {text}"
    );
    let proxies = ok_json(srv.cairn(["proxy", "list", "--json"]));
    let prx = proxies
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "prx01")
        .expect("prx01 is a proxy");
    assert!(prx["agent_id"].is_i64(), "{prx}");

    // Restores through the server run on the repository agent.
    let first0 = srv.tmp.path().join("first0.raw");
    std::fs::copy(&disk0, &first0).unwrap();
    let r0 = srv.tmp.path().join("r0.raw");
    let r1 = srv.tmp.path().join("r1.raw");
    restore_via_server(&srv, 0, &r0);
    restore_via_server(&srv, 1, &r1);
    assert_same_image(&r0, &disk0);
    assert_same_image(&r1, &disk1);
    let (_, err) = run_code(
        srv.cairn([
            "restore",
            "--repository",
            "linux",
            "--vm",
            "hv1/web01",
            "--to",
            r0.to_str().unwrap(),
        ]),
        1,
    );
    assert!(err.contains("already exists"), "never over an existing file: {err}");

    // An incremental after a change.
    let mut data = std::fs::read(&disk0).unwrap();
    data[5 << 20..(5 << 20) + 4096].fill(0x77);
    std::fs::write(&disk0, &data).unwrap();
    let (code, text) = run_job(&srv, "j1");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("(incremental) of hv1/web01"), "{text}");
    let r0b = srv.tmp.path().join("r0b.raw");
    restore_via_server(&srv, 0, &r0b);
    assert_same_image(&r0b, &disk0);

    // The repository as the agent left it: two points, every block checks out, the first point
    // still restores to the first content.
    let pw = format!("--password-file={}", password_file.display());
    let points = ok(srv.cairn(["points", "--repo", path, &pw]));
    assert!(points.contains("incremental") && points.contains("full"), "{points}");
    ok(srv.cairn(["verify", "--repo", path, &pw]));

    // Both agents renew their key and certificate when asked; the backup after that goes over
    // the data channel pinned to the new certificates, and the old ones are refused.
    let mut old = Vec::new();
    for name in ["prx01", "rep01"] {
        let dir = srv.tmp.path().join(format!("agent-{name}"));
        let before = agent_state(&srv, name).unwrap();
        old.push((
            name,
            before["cert_fingerprint"].clone(),
            std::fs::read(dir.join("agent-key.pem")).unwrap(),
            std::fs::read(dir.join("agent.pem")).unwrap(),
        ));
        let (out, _) = run_code(srv.cairn(["agent", "renew", name]), 0);
        assert!(out.contains(&format!("agent {name} renews")), "{out}");
    }
    let listed = ok(srv.cairn(["agent", "list"]));
    assert!(listed.contains("CERTIFICATE ENDS"), "{listed}");
    for (name, fingerprint, key, cert) in &old {
        let now = wait_for(&format!("agent {name} renewed and online"), 60, || {
            let a = agent_state(&srv, name)?;
            (a["cert_fingerprint"] != *fingerprint
                && a["state"] == "online"
                && a["renew_certificate"] == false
                && a["address"].is_string())
            .then_some(a)
        });
        let dir = srv.tmp.path().join(format!("agent-{name}"));
        assert_ne!(
            &std::fs::read(dir.join("agent-key.pem")).unwrap(),
            key,
            "{name}: a new key"
        );
        assert_ne!(
            &std::fs::read(dir.join("agent.pem")).unwrap(),
            cert,
            "{name}: a new certificate"
        );
        let stored: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("agent.json")).unwrap()).unwrap();
        assert_eq!(stored["cert_fingerprint"], now["cert_fingerprint"], "{name}");
        for leftover in ["agent-key.next.pem", "agent.next.pem"] {
            assert!(!dir.join(leftover).exists(), "{name}: {leftover} left behind");
        }
        let log = std::fs::read_to_string(srv.tmp.path().join(format!("agent-{name}.log"))).unwrap();
        assert!(log.contains("renewed its certificate"), "{log}");
    }
    for (name, _, key, cert) in &old {
        let pem = format!("{}{}", String::from_utf8_lossy(cert), String::from_utf8_lossy(key));
        let client = reqwest::blocking::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&srv.ca).unwrap()).unwrap()])
            .identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        let resp = client
            .post(format!("{}/api/v1/agents/heartbeat", srv.url))
            .json(&serde_json::json!({"version": "1", "max_tasks": 1, "free_bytes": 0}))
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{name}'s old certificate");
    }
    data[6 << 20..(6 << 20) + 4096].fill(0x78);
    std::fs::write(&disk0, &data).unwrap();
    let (code, text) = run_job(&srv, "j1");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("proxy prx01 reads, repository agent rep01"), "{text}");
    let r0r = srv.tmp.path().join("r0r.raw");
    restore_via_server(&srv, 0, &r0r);
    assert_same_image(&r0r, &disk0);

    // A network rule between the proxy and the repository agent (both 127.0.0.1 here) paces the
    // proxy's sending; the wait is reported as throttling.
    ok(srv.cairn([
        "throttle",
        "add",
        "--from",
        "127.0.0.0/8",
        "--to",
        "127.0.0.1",
        "--limit",
        "4MB/s",
    ]));
    let (code, text) = run_job(&srv, "j1");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("network throttling applies: rule 1 (127.0.0.0/8 ↔ 127.0.0.1/32, 4 MB/s"),
        "{text}"
    );
    let waited: f64 = text
        .lines()
        .find_map(|l| {
            l.split(" s waiting on network throttling")
                .next()
                .filter(|_| l.contains("waiting on network"))
        })
        .and_then(|l| l.rsplit(", ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no throttling figure in the proxy's summary: {text}"));
    // 12 MiB at 4 MB/s: about 3 s, of which the first blocks go at once.
    assert!(waited > 1.5, "waited {waited} s on the network rule: {text}");
    let busy = text.lines().find(|l| l.contains("busy:")).unwrap_or_default();
    assert!(
        !busy.contains("throttling 0%"),
        "throttling shows in the statistics: {busy}"
    );
    ok(srv.cairn(["throttle", "remove", "1"]));

    // The repository agent killed mid-task and started again at once, before it could miss a
    // heartbeat: the server sees a new process, fails the VM (the task died with the old one)
    // and the retry makes the point.
    ok(srv.cairn(["repository", "set", "linux", "--write-limit", "2MiB"]));
    random_raw_image(&disk0, 12 << 20, 99);
    ok(srv.cairn([
        "job",
        "create",
        "j2",
        "--vm",
        "hv1/web01",
        "--repository",
        "linux",
        "--retries",
        "1",
        "--retry-wait",
        "2s",
    ]));
    let points_before = ok(srv.cairn(["points", "--repo", path, &pw]))
        .matches("incremental")
        .count();
    let rep_log = srv.tmp.path().join("agent-rep01.log");
    let started = || {
        std::fs::read_to_string(&rep_log)
            .unwrap_or_default()
            .matches("backing up hv1/web01")
            .count()
    };
    let before = started();
    let run = srv
        .cairn(["job", "run", "j2", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("job run");
    wait_for("the repository agent to start the backup", 60, || {
        (started() > before).then_some(())
    });
    let mut rep = agents.0.remove(1);
    rep.kill().expect("kill -9 the repository agent");
    let _ = rep.wait();
    agents
        .0
        .push(restart_agent(&srv, "rep01", &["--listen", "127.0.0.1:0"]));
    let out = run.wait_with_output().expect("job run");
    let (text, _) = job_run_report(&srv, &out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("agent rep01 was restarted while it ran this task"),
        "{text}"
    );
    assert!(text.contains("retry 1 of 1") && text.contains("warning"), "{text}");
    let points_after = ok(srv.cairn(["points", "--repo", path, &pw]))
        .matches("incremental")
        .count();
    assert_eq!(points_after, points_before + 1, "the retry made one new point");
    ok(srv.cairn(["verify", "--repo", path, &pw]));
    let r0c = srv.tmp.path().join("r0c.raw");
    restore_via_server(&srv, 0, &r0c);
    assert_same_image(&r0c, &disk0);
    ok(srv.cairn(["repository", "set", "linux", "--write-limit", "0"]));

    // Without a proxy agent the server itself sends to the repository agent.
    let mut prx = agents.0.remove(0);
    assert!(agent_state(&srv, "prx01").is_some());
    let _ = prx.kill();
    let _ = prx.wait();
    wait_for("prx01 offline", 30, || {
        (agent_state(&srv, "prx01")?["state"] == "offline").then_some(())
    });
    let (code, text) = run_job(&srv, "j1");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("(this server) reads, repository agent rep01"), "{text}");
}
both_backends!(backups_through_agents);
