//! The distributed data movers on three "hosts": `cairn server`, a proxy agent and a repository
//! agent, each a real process in a network namespace of its own (crate `cairn-testnet`).
//!
//! ```text
//!   srv 10.231.0.1 ──┐
//!   prx 10.231.0.2 ──┼── LAN (bridge): control traffic, heartbeats
//!   rep 10.231.0.3 ──┘
//!   prx 10.232.0.2 ═══ rep 10.232.0.3: the data link (veth, or emulated with delay and loss)
//! ```
//!
//! The repository agent advertises 10.232.0.3, so blocks go over the data link while control
//! goes over the LAN. One topology serves every scenario, in order: full and incremental backups
//! over a clean link; a delayed, lossy link; the data link cut mid-transfer; kill -9 of the
//! repository agent (restarted during the retry wait); kill -9 of the proxy agent; certificates
//! the server must refuse. Every point is restored and compared with a copy of the images taken
//! at its time. Needs root and iproute2; fails (never skips) without them.

mod server_common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn_testnet::{Lan, Link, LinkKind, Netns};
use serde_json::Value;
use server_common::{ADMIN_PASSWORD, MIB, assert_same_image, check_code, make_image, tool, wait_for, with_stdin};

const SRV_IP: &str = "10.231.0.1";
const PRX_IP: &str = "10.231.0.2";
const REP_IP: &str = "10.231.0.3";
const PRX_DATA_IP: &str = "10.232.0.2";
const REP_DATA_IP: &str = "10.232.0.3";
const PORT: u16 = 8520;
const DATA_PORT: u16 = 8521;

/// Size of the raw disk and the region of it that holds random data.
const RAW_SIZE: u64 = 48 * MIB;
const RANDOM_AT: u64 = 8 * MIB;
const RANDOM_LEN: u64 = 24 * MIB;

/// The three hosts and everything running on them; processes are killed first on drop, then the
/// links and namespaces go.
struct Hosts {
    procs: Vec<(String, Child)>,
    data_link: Option<Link>,
    /// Kept for its lifetime: the control network.
    _lan: Lan,
    srv: Netns,
    prx: Netns,
    rep: Netns,
    bin: PathBuf,
    /// The CLI's HOME and CAIRN_CONFIG_DIR (login state).
    home: PathBuf,
    /// The server's data folder.
    srv_data: PathBuf,
    url: String,
    logs: Vec<PathBuf>,
    tmp: tempfile::TempDir,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("---- {} (last lines) ----", log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Hosts {
    /// The namespaces, the LAN, a veth data link and a logged-in `cairn server` in srv.
    fn start() -> Hosts {
        let srv = Netns::new("srv");
        let prx = Netns::new("prx");
        let rep = Netns::new("rep");
        let mut lan = Lan::new("lan");
        lan.join(&srv, &format!("{SRV_IP}/24"));
        lan.join(&prx, &format!("{PRX_IP}/24"));
        lan.join(&rep, &format!("{REP_IP}/24"));
        let data_link = Link::new(
            &prx,
            &format!("{PRX_DATA_IP}/24"),
            &rep,
            &format!("{REP_DATA_IP}/24"),
            LinkKind::Veth,
        );
        let tmp = tempfile::tempdir().expect("temporary folder");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).expect("home folder");
        let srv_data = tmp.path().join("srv");
        let mut hosts = Hosts {
            procs: Vec::new(),
            data_link: Some(data_link),
            _lan: lan,
            srv,
            prx,
            rep,
            bin: assert_cmd::cargo::cargo_bin("cairn"),
            home,
            url: format!("https://{SRV_IP}:{PORT}"),
            srv_data,
            logs: Vec::new(),
            tmp,
        };
        hosts.start_server();
        let mut login = hosts.cairn(["login", &hosts.url, "--user", "admin", "--password-stdin", "--ca-cert"]);
        login.arg(hosts.srv_data.join("ca.pem"));
        let out = with_stdin(login, &format!("{ADMIN_PASSWORD}\n"));
        check_code("cairn login", &out, 0);
        hosts
    }

    fn start_server(&mut self) {
        let stderr = self.tmp.path().join("server.stderr");
        self.logs.push(stderr.clone());
        let mut cmd = self.srv.command(&self.bin);
        cmd.arg("server")
            .arg("--data")
            .arg(&self.srv_data)
            .args(["--listen", &format!("{SRV_IP}:{PORT}"), "--name", SRV_IP])
            .args(["--agent-heartbeat", "1", "--time-zone", "UTC"])
            .arg("--default-repository")
            .arg(self.tmp.path().join("default-repository"))
            .env("CAIRN_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("CAIRN_LOG", "info")
            .env_remove("CAIRN_PASSWORD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("server stderr file"));
        let mut child = cmd.spawn().expect("cannot start `ip netns exec … cairn server`");
        let stdout = child.stdout.take().expect("server stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        self.procs.push(("server".into(), child));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("`cairn server` printed its listening line");
            if let Some(url) = line.split("listening on ").nth(1) {
                assert_eq!(url.trim(), self.url, "the server listens on the LAN address");
                break;
            }
        }
    }

    /// A `cairn` client command in the srv namespace, with this test's login state.
    fn cairn<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = self.srv.command(&self.bin);
        c.env("HOME", &self.home)
            .env("CAIRN_CONFIG_DIR", &self.home)
            .env_remove("CAIRN_SERVER")
            .env_remove("CAIRN_TOKEN")
            .env_remove("CAIRN_CA_CERT")
            .env_remove("CAIRN_PASSWORD")
            .env_remove("CAIRN_LOG")
            .stdin(Stdio::null())
            .args(args);
        c
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cairn(args).output().expect("cannot run cairn");
        check_code(&format!("cairn {}", args.join(" ")), &out, 0).0
    }

    #[track_caller]
    fn ok_json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("`cairn {}` printed no JSON ({e}):\n{text}", args.join(" ")))
    }

    fn agent_dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(format!("agent-{name}"))
    }

    fn netns_of(&self, name: &str) -> &Netns {
        if name.starts_with("rep") { &self.rep } else { &self.prx }
    }

    /// Starts agent `name` in its namespace: enrolled with a new token for `roles`, or (`roles`
    /// None) restarted from its data folder alone.
    fn start_agent(&mut self, name: &str, roles: Option<&str>) {
        let n = self.logs.len();
        let log = self.tmp.path().join(format!("agent-{name}-{n}.log"));
        self.logs.push(log.clone());
        let mut cmd = self.netns_of(name).command(&self.bin);
        cmd.arg("agent").arg("--data").arg(self.agent_dir(name));
        if let Some(roles) = roles {
            let token = self.ok_json(&["agent", "token", "--roles", roles, "--json"]);
            let token = token["token"].as_str().expect("a token").to_owned();
            cmd.args(["--server", &self.url, "--token", &token, "--name", name])
                .arg("--ca-cert")
                .arg(self.srv_data.join("ca.pem"));
        }
        if name.starts_with("rep") {
            cmd.args(["--listen", &format!("0.0.0.0:{DATA_PORT}"), "--advertise", REP_DATA_IP]);
        }
        cmd.env_remove("CAIRN_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log file"));
        let child = cmd.spawn().expect("cannot start `ip netns exec … cairn agent`");
        self.procs.push((name.to_string(), child));
    }

    /// `cairn agent list` entry of `name`.
    fn agent(&self, name: &str) -> Option<Value> {
        let all = self.ok_json(&["agent", "list", "--json"]);
        all.as_array()?.iter().find(|a| a["name"] == name).cloned()
    }

    /// Waits until agent `name` is online with a reported address, heard from after `after`.
    fn wait_online(&self, name: &str, after: Option<jiff::Timestamp>) -> Value {
        wait_for(&format!("agent {name} online"), 60, || {
            let a = self.agent(name)?;
            let seen: jiff::Timestamp = a["last_seen_at"].as_str()?.parse().ok()?;
            let fresh = after.is_none_or(|t| seen > t);
            (a["state"] == "online" && a["address"].is_string() && fresh).then_some(a)
        })
    }

    /// kill -9 of agent `name`.
    fn kill9(&mut self, name: &str) {
        let i = self.procs.iter().position(|(n, _)| n == name).expect("agent started");
        let (_, mut child) = self.procs.remove(i);
        // `ip netns exec` execs the program itself: the child is the agent, not a wrapper.
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap_or_default();
        assert_eq!(comm.trim(), "cairn", "the child of `ip netns exec` is the agent");
        // Child::kill sends SIGKILL.
        child.kill().expect("kill -9");
        let status = child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{name} died of SIGKILL"
        );
    }

    /// `cairn job run JOB --wait` in the background, its output in a file.
    fn spawn_job(&mut self, job: &str) -> (Child, PathBuf) {
        let n = self.logs.len();
        let out = self.tmp.path().join(format!("job-{job}-{n}.out"));
        let mut cmd = self.cairn(["job", "run", job, "--wait"]);
        let file = std::fs::File::create(&out).expect("job output file");
        cmd.stdout(file.try_clone().expect("dup")).stderr(file);
        (cmd.spawn().expect("cannot run `cairn job run`"), out)
    }

    /// Waits (up to 4 minutes) for a job run started by [`Hosts::spawn_job`]: (exit code, text).
    fn wait_job(&self, mut child: Child, out: &Path) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(240);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the job run did not end within 240 s:\n{}\n---- cairn session show ----\n{}",
                    std::fs::read_to_string(out).unwrap_or_default(),
                    self.session_text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut text = std::fs::read_to_string(out).unwrap_or_default();
        // `job run --wait` stops printing a task's log once the task is final, but the VM's
        // last lines (the proxy's summary, the commit) come after its first disk is done: the
        // whole session as the server has it.
        text.push_str("\n---- cairn session show ----\n");
        text.push_str(&self.session_text());
        (status.code().unwrap_or(-1), text)
    }

    /// `cairn session show` of the newest session: every task's whole log.
    fn session_text(&self) -> String {
        let id = newest_session(self)["id"].as_i64().expect("a session id");
        self.ok(&["session", "show", &id.to_string()])
    }

    fn run_job(&mut self, job: &str) -> (i32, String) {
        let (child, out) = self.spawn_job(job);
        self.wait_job(child, &out)
    }

    /// Bytes done by the newest session's running tasks, if one is running.
    fn running_progress(&self) -> Option<(u64, u64)> {
        let list = self.ok_json(&["session", "list", "--json"]);
        let id = list["sessions"].as_array()?.first()?["id"].as_i64()?;
        let show = self.ok_json(&["session", "show", &id.to_string(), "--json"]);
        let mut done = 0;
        let mut total = 0;
        for t in show["tasks"].as_array()? {
            if let Some(p) = t.get("progress").filter(|p| p.is_object()) {
                done += p["done_bytes"].as_u64().unwrap_or(0);
                total += p["total_bytes"].as_u64().unwrap_or(0);
            }
        }
        (total > 0).then_some((done, total))
    }

    /// Waits until the running session has processed at least `bytes` (and is not done).
    fn wait_progress(&self, bytes: u64) -> (u64, u64) {
        wait_for(&format!("{bytes} bytes of the backup processed"), 120, || {
            self.running_progress().filter(|(done, _)| *done >= bytes)
        })
    }
}

/// The VM's images, and copies of them as they were at each point.
struct Vm {
    disk0: PathBuf,
    disk1: PathBuf,
    snapshots: PathBuf,
}

impl Vm {
    fn create(root: &Path) -> Vm {
        let dir = root.join("images").join("web01");
        let vm = Vm {
            disk0: dir.join("disk0.raw"),
            disk1: dir.join("disk1.qcow2"),
            snapshots: root.join("snapshots"),
        };
        std::fs::create_dir_all(&dir).expect("image folder");
        let f = std::fs::File::create(&vm.disk0).expect("raw image");
        f.set_len(RAW_SIZE).expect("raw image size");
        vm.randomize(1);
        make_image(
            &vm.disk1,
            "qcow2",
            16 * MIB,
            &[(0x41, MIB, 2 * MIB), (0x42, 9 * MIB, 64 * 1024)],
        );
        vm
    }

    /// New random data in the raw disk's random region (24 MiB that must all be sent again).
    fn randomize(&self, seed: u64) {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut buf = Vec::with_capacity(RANDOM_LEN as usize);
        while (buf.len() as u64) < RANDOM_LEN {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes());
        }
        write_at(&self.disk0, RANDOM_AT, &buf);
    }

    /// A small change of both disks.
    fn touch(&self, pattern: u8) {
        write_at(&self.disk0, 40 * MIB, &[pattern; 8192]);
        let cmd = format!("write -P {pattern} {} 65536", 12 * MIB);
        tool(
            "qemu-io",
            &["-f", "qcow2", "-c", &cmd, self.disk1.to_str().expect("UTF-8 path")],
        );
    }

    /// Copies both disks as they are now under `label`.
    fn snapshot(&self, label: &str) -> [PathBuf; 2] {
        let dir = self.snapshots.join(label);
        std::fs::create_dir_all(&dir).expect("snapshot folder");
        let copies = [dir.join("disk0.raw"), dir.join("disk1.qcow2")];
        std::fs::copy(&self.disk0, &copies[0]).expect("copying disk0");
        std::fs::copy(&self.disk1, &copies[1]).expect("copying disk1");
        copies
    }
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).expect("open image");
    f.write_all_at(data, offset).expect("write image");
}

/// The local view of the repository folder (no server involved).
struct Repo {
    bin: PathBuf,
    path: PathBuf,
    password_file: PathBuf,
    restores: PathBuf,
}

impl Repo {
    fn cairn(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .arg("--repo")
            .arg(&self.path)
            .arg("--password-file")
            .arg(&self.password_file)
            .env_remove("CAIRN_PASSWORD")
            .env_remove("CAIRN_CONFIG_DIR")
            .stdin(Stdio::null());
        c
    }

    /// Point ids, oldest first.
    fn points(&self) -> Vec<String> {
        let out = self.cairn(&["points", "--json"]).output().expect("cairn points");
        let (text, _) = check_code("cairn points --repo", &out, 0);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("points JSON ({e}): {text}"));
        let Some(chains) = v.as_array() else {
            panic!("points JSON is a list of VMs: {text}");
        };
        assert!(chains.len() <= 1, "one VM in the repository: {text}");
        chains
            .iter()
            .flat_map(|c| c["points"].as_array().cloned().unwrap_or_default())
            .map(|p| p["id"].as_str().expect("point id").to_owned())
            .collect()
    }

    fn verify(&self) {
        let out = self.cairn(&["verify"]).output().expect("cairn verify");
        check_code("cairn verify --repo", &out, 0);
    }

    /// Restores both disks of `point` and compares them with `images`.
    fn assert_restores(&self, point: &str, images: &[PathBuf; 2]) {
        for (disk, image) in images.iter().enumerate() {
            let to = self.restores.join(format!("{point}-{disk}.raw"));
            let _ = std::fs::remove_file(&to);
            let mut c = self.cairn(&["restore", "--vm", "hv1/web01", "--point", point, "--format", "raw"]);
            c.arg("--disk").arg(disk.to_string()).arg("--to").arg(&to);
            let out = c.output().expect("cairn restore");
            check_code(&format!("cairn restore --point {point} --disk {disk}"), &out, 0);
            assert_same_image(&to, image);
            std::fs::remove_file(&to).expect("removing a restored image");
        }
    }
}

/// Checks that the repository has exactly one point more than `history` and records it with a
/// copy of the images as they are now.
#[track_caller]
fn record(label: &str, repo: &Repo, vm: &Vm, history: &mut Vec<(String, [PathBuf; 2])>) {
    let points = repo.points();
    assert_eq!(points.len(), history.len() + 1, "{label}: one new point: {points:?}");
    let known: Vec<&String> = history.iter().map(|(p, _)| p).collect();
    assert_eq!(
        points[..history.len()].iter().collect::<Vec<_>>(),
        known,
        "{label}: earlier points kept"
    );
    let new = points.last().expect("a point").clone();
    history.push((new, vm.snapshot(label)));
}

/// The number before `what` in `text` (e.g. "3 reconnection(s)").
fn count_before(text: &str, what: &str) -> Option<u64> {
    let at = text.find(what)?;
    text[..at].trim_end().rsplit(' ').next()?.parse().ok()
}

#[test]
fn data_movers_across_three_hosts_survive_link_faults_and_killed_agents() {
    let started = Instant::now();
    let mut hosts = Hosts::start();
    hosts.start_agent("prx01", Some("proxy"));
    hosts.start_agent("rep01", Some("repository"));
    hosts.wait_online("prx01", None);
    let rep = hosts.wait_online("rep01", None);
    assert_eq!(
        rep["address"],
        format!("{REP_DATA_IP}:{DATA_PORT}"),
        "the repository agent advertises its data link address"
    );
    let prx = hosts.agent("prx01").expect("prx01 listed");
    assert!(
        prx["address"].as_str().is_some_and(|a| a.starts_with(PRX_IP)),
        "the proxy reaches the server over the LAN: {prx}"
    );

    let backups = hosts.tmp.path().join("backups");
    let path = backups.to_str().expect("UTF-8 path").to_owned();
    let out = hosts.ok(&[
        "repository",
        "add",
        "linux",
        "--agent",
        "rep01",
        "--path",
        &path,
        "--max-tasks",
        "4",
    ]);
    assert!(out.contains("added repository linux"), "{out}");
    let repos = hosts.ok_json(&["repository", "list", "--json"]);
    let repo_id = repos
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "linux"))
        .and_then(|r| r["id"].as_i64())
        .unwrap_or_else(|| panic!("repository linux listed: {repos}"));
    let restores = hosts.tmp.path().join("restores");
    std::fs::create_dir_all(&restores).expect("restore folder");
    let repo = Repo {
        bin: hosts.bin.clone(),
        path: backups.clone(),
        password_file: hosts
            .srv_data
            .join("secrets")
            .join(format!("repository-{repo_id}.password")),
        restores,
    };
    assert!(repo.password_file.is_file(), "{} exists", repo.password_file.display());

    let vm = Vm::create(hosts.tmp.path());
    let images = hosts.tmp.path().join("images");
    hosts.ok(&[
        "host",
        "add",
        "image-folder",
        "--name",
        "hv1",
        "--path",
        images.to_str().expect("UTF-8"),
    ]);
    hosts.ok(&[
        "job",
        "create",
        "j1",
        "--vm",
        "hv1/web01",
        "--repository",
        "linux",
        "--retain",
        "20",
        "--retries",
        "1",
        "--retry-wait",
        "6s",
    ]);
    // All points, oldest first, with the images as they were.
    let mut history: Vec<(String, [PathBuf; 2])> = Vec::new();

    // a. Full, then incremental, over the clean veth data link.
    let (code, text) = hosts.run_job("j1");
    assert_eq!(code, 0, "a: the full backup succeeds:\n{text}");
    assert!(
        text.contains("proxy prx01 reads, repository agent rep01"),
        "a: data path:\n{text}"
    );
    assert!(
        text.contains(&format!("({REP_DATA_IP}:{DATA_PORT})")),
        "a: over the data link:\n{text}"
    );
    assert!(
        text.contains("(full) of hv1/web01 committed"),
        "a: a full point:\n{text}"
    );
    record("a-full", &repo, &vm, &mut history);
    vm.touch(0x51);
    let (code, text) = hosts.run_job("j1");
    assert_eq!(code, 0, "a: the incremental backup succeeds:\n{text}");
    assert!(
        text.contains("(incremental) of hv1/web01 committed"),
        "a: an incremental point:\n{text}"
    );
    record("a-incremental", &repo, &vm, &mut history);
    for (point, images) in &history {
        repo.assert_restores(point, images);
    }
    repo.verify();
    eprintln!("a. clean link: 2 points at {:?}", started.elapsed());

    // b. An emulated data link: 20 ms one-way delay, 0.1 % loss.
    drop(hosts.data_link.take());
    hosts.data_link = Some(Link::new(
        &hosts.prx,
        &format!("{PRX_DATA_IP}/24"),
        &hosts.rep,
        &format!("{REP_DATA_IP}/24"),
        LinkKind::Emulated {
            delay: Duration::from_millis(20),
            loss: 0.001,
        },
    ));
    vm.randomize(2);
    vm.touch(0x52);
    let (code, text) = hosts.run_job("j1");
    assert_eq!(code, 0, "b: a backup over a delayed, lossy link succeeds:\n{text}");
    let dropped = hosts.data_link.as_ref().map_or(0, Link::dropped);
    assert!(
        dropped > 0,
        "b: the emulated link dropped packets (it carried the data)"
    );
    record("b-lossy", &repo, &vm, &mut history);
    let (point, images) = history.last().expect("b point");
    repo.assert_restores(point, images);
    eprintln!("b. lossy link: {dropped} packets dropped, at {:?}", started.elapsed());

    // Back to a veth data link; the repository's writes slowed so faults hit mid-transfer.
    drop(hosts.data_link.take());
    hosts.data_link = Some(Link::new(
        &hosts.prx,
        &format!("{PRX_DATA_IP}/24"),
        &hosts.rep,
        &format!("{REP_DATA_IP}/24"),
        LinkKind::Veth,
    ));
    hosts.ok(&["repository", "set", "linux", "--write-limit", "3MiB"]);

    // c. The data link cut mid-transfer: first for 4 s, which TCP rides out (the data channel's
    // I/O timeout is 30 s), then for 35 s, which drops the streams: they reconnect once the link
    // is back and resume from the last acknowledged block.
    vm.randomize(3);
    let (job, out) = hosts.spawn_job("j1");
    for (cut, at) in [(4, 3 * MIB), (35, 9 * MIB)] {
        let (done, total) = hosts.wait_progress(at);
        assert!(
            done < total,
            "c: the transfer is still running at the {cut} s cut ({done} of {total})"
        );
        let link = hosts.data_link.as_ref().expect("data link");
        link.set_a_up(false);
        std::thread::sleep(Duration::from_secs(cut));
        link.set_a_up(true);
        let (after, _) = hosts
            .running_progress()
            .expect("c: the session still runs after the cut");
        eprintln!("c. {cut} s cut at {done} bytes; {after} bytes when the link came back");
    }
    let (code, text) = hosts.wait_job(job, &out);
    assert_eq!(code, 0, "c: the backup survives a cut data link:\n{text}");
    let reconnects = count_before(&text, "reconnection(s)").unwrap_or_else(|| panic!("c: proxy summary:\n{text}"));
    assert!(reconnects >= 1, "c: the proxy reconnected after the cut:\n{text}");
    record("c-cut", &repo, &vm, &mut history);
    let (point, images) = history.last().expect("c point");
    repo.assert_restores(point, images);
    eprintln!("c. cut link: {reconnects} reconnection(s), at {:?}", started.elapsed());

    // d. kill -9 of the repository agent mid-task; restarted during the retry wait.
    vm.randomize(4);
    let (job, out) = hosts.spawn_job("j1");
    hosts.wait_progress(4 * MIB);
    hosts.kill9("rep01");
    let killed_at = jiff::Timestamp::now();
    wait_for("rep01 offline", 60, || {
        (hosts.agent("rep01")?["state"] != "online").then_some(())
    });
    // The server notices the loss (its log says so) before the agent is back.
    wait_for("the server to log the lost repository agent", 60, || {
        hosts.session_text().contains("agent rep01 is lost").then_some(())
    });
    assert!(job_running(&hosts), "d: the session waits for its retry");
    hosts.start_agent("rep01", None);
    hosts.wait_online("rep01", Some(killed_at));
    let (code, text) = hosts.wait_job(job, &out);
    assert_eq!(code, 0, "d: a session that ends warning exits 0:\n{text}");
    assert!(
        text.contains("retry 1 of 1 of VM hv1/web01"),
        "d: the retry ran:\n{text}"
    );
    assert!(
        text.contains("agent rep01 is lost: no heartbeat for"),
        "d: the loss is logged:\n{text}"
    );
    let session = newest_session(&hosts);
    assert_eq!(
        session["state"], "warning",
        "d: the retry saves the session: {session}\n{text}"
    );
    record("d-rep-killed", &repo, &vm, &mut history);
    for (point, images) in &history {
        repo.assert_restores(point, images);
    }
    repo.verify();
    eprintln!("d. repository agent killed: at {:?}", started.elapsed());

    // e. kill -9 of the proxy agent mid-task, no retries: the session fails, no new point.
    hosts.ok(&["job", "edit", "j1", "--retries", "0"]);
    vm.randomize(5);
    let before = repo.points();
    let (job, out) = hosts.spawn_job("j1");
    hosts.wait_progress(4 * MIB);
    hosts.kill9("prx01");
    let (code, text) = hosts.wait_job(job, &out);
    assert_ne!(code, 0, "e: the session fails:\n{text}");
    assert!(
        text.contains("agent prx01 is lost"),
        "e: the lost proxy is named:\n{text}"
    );
    assert_eq!(newest_session(&hosts)["state"], "failed", "e: {text}");
    assert_eq!(repo.points(), before, "e: no new point");
    for (point, images) in &history {
        repo.assert_restores(point, images);
    }
    repo.verify();
    eprintln!("e. proxy agent killed: at {:?}", started.elapsed());

    // f. Refused certificates: another CA's, and an expired one from the server's CA.
    let agents_before = hosts
        .ok_json(&["agent", "list", "--json"])
        .as_array()
        .map_or(0, Vec::len);
    for (case, (cert, key), alert) in [
        ("other-ca", other_ca_certificate(), "UnknownCA"),
        ("expired", expired_certificate(&hosts.srv_data), "CertificateExpired"),
    ] {
        let dir = hosts.tmp.path().join(format!("agent-{case}"));
        copy_dir(&hosts.agent_dir("prx01"), &dir);
        std::fs::write(dir.join("agent.pem"), cert).expect("agent.pem");
        std::fs::write(dir.join("agent-key.pem"), key).expect("agent-key.pem");
        let mut cmd = hosts.prx.command(&hosts.bin);
        cmd.arg("agent").arg("--data").arg(&dir);
        let (code, stderr) = run_bounded(cmd, 60);
        assert!(
            code.is_some_and(|c| c != 0),
            "f ({case}): the agent exits non-zero (code {code:?}): {stderr}"
        );
        let lower = stderr.to_lowercase();
        assert!(
            lower.contains("certificate") && (lower.contains("refused") || lower.contains("tls")),
            "f ({case}): the agent says why: {stderr}"
        );
        assert!(
            stderr.contains(alert),
            "f ({case}): the TLS alert {alert} is named: {stderr}"
        );
        eprintln!("f. {case}: {}", stderr.trim());
    }
    let agents_after = hosts.ok_json(&["agent", "list", "--json"]);
    assert_eq!(
        agents_after.as_array().map_or(0, Vec::len),
        agents_before,
        "f: no new agent: {agents_after}"
    );
    eprintln!("all scenarios: {:?}", started.elapsed());
}

fn newest_session(hosts: &Hosts) -> Value {
    let list = hosts.ok_json(&["session", "list", "--json"]);
    list["sessions"][0].clone()
}

fn job_running(hosts: &Hosts) -> bool {
    let s = newest_session(hosts);
    !matches!(s["state"].as_str(), Some("success" | "warning" | "failed" | "stopped"))
}

/// Runs `cmd`; kills it if it is still running after `secs`. (exit code, stderr).
fn run_bounded(mut cmd: Command, secs: u64) -> (Option<i32>, String) {
    let err = tempfile::NamedTempFile::new().expect("temporary file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.reopen().expect("reopen"));
    let mut child = cmd.spawn().expect("cannot run cairn");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(err.path()).unwrap_or_default();
    let code = match status {
        Some(s) => s.code(),
        None => {
            return (None, format!("(still running after {secs} s, killed) {stderr}"));
        }
    };
    (code, stderr)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("agent folder copy");
    for entry in std::fs::read_dir(from).expect("agent folder") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// A client certificate and key from a CA the server never saw.
fn other_ca_certificate() -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name.push(DnType::CommonName, "another CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["agent-1.cairn".to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, "prx01");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

/// A client certificate signed by the server's own CA (`DATA/ca-key.pem`) that expired.
fn expired_certificate(srv_data: &Path) -> (String, String) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(srv_data.join("ca-key.pem")).expect("ca-key.pem"))
        .expect("the server's CA key");
    let ca_pem = std::fs::read_to_string(srv_data.join("ca.pem")).expect("ca.pem");
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("the server's CA");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["agent-1.cairn".to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, "prx01");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.signed_by(&key, &issuer).expect("certificate");
    (cert.pem(), key.serialize_pem())
}
