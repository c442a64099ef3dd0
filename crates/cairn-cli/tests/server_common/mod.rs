//! Helpers for the tests of the server commands (`server_cli.rs`): a real `cairn server`
//! process on a free port of 127.0.0.1 with a temporary data folder (SQLite, or a fresh
//! database of its own on the PostgreSQL server of `CAIRN_TEST_POSTGRES_URL`), `cairn` client
//! commands with a temporary login folder, and small disk images made by qemu-img.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn_testkit::postgres::{admin_url, unique_name, with_database};
use serde_json::Value;

pub mod agents;

pub const MIB: u64 = 1 << 20;

/// The first administrator's password of every test server.
pub const ADMIN_PASSWORD: &str = "admin-test-password";

/// Where the configuration database lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in the data folder.
    Sqlite,
    /// A database of its own on the PostgreSQL server of `CAIRN_TEST_POSTGRES_URL`.
    Postgres,
}

/// A fresh PostgreSQL database, dropped at the end.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create(test: &str) -> PgDatabase {
        let admin_url = admin_url("the server command tests (they run against PostgreSQL too)");
        let name = unique_name(&format!("cairn_cli_{test}"));
        psql(&admin_url, &format!("CREATE DATABASE \"{name}\""));
        let url = with_database(&admin_url, &name);
        PgDatabase { admin_url, name, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(&self.admin_url)
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name))
            .output();
    }
}

/// Runs one SQL command with psql, which must succeed.
fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .arg(url)
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("cannot run psql (install postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `cairn server` and a login folder for its clients. Killed on drop.
pub struct Server {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The server's data folder.
    pub data: PathBuf,
    /// `DATA/ca.pem`.
    pub ca: PathBuf,
    /// The default repository's folder.
    pub repository: PathBuf,
    /// The client's login folder (CAIRN_CONFIG_DIR).
    pub config: PathBuf,
    /// The temporary folder everything is in.
    pub tmp: tempfile::TempDir,
    stderr_path: PathBuf,
    _pg: Option<PgDatabase>,
}

impl Server {
    /// Starts a server on a free port and waits for its `listening on` line.
    pub fn start(backend: Backend, test: &str) -> Server {
        Server::start_with(backend, test, &[])
    }

    /// [`Server::start`] with more `cairn server` arguments.
    pub fn start_with(backend: Backend, test: &str, extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("temporary folder");
        let data = tmp.path().join("data");
        let repository = tmp.path().join("repository");
        let config = tmp.path().join("client");
        let stderr_path = tmp.path().join("server.stderr");
        let pg = (backend == Backend::Postgres).then(|| PgDatabase::create(test));
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("cairn"));
        cmd.arg("server")
            .arg("--data")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--default-repository")
            .arg(&repository)
            .args(["--time-zone", "UTC"])
            // Restores may go anywhere in the test's folder (never into the data folder).
            .arg("--restore-folder")
            .arg(tmp.path())
            .args(extra);
        if let Some(pg) = &pg {
            cmd.arg("--database").arg(&pg.url);
        }
        cmd.env("CAIRN_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("CAIRN_LOG", "info")
            .env_remove("CAIRN_PASSWORD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("server stderr file"));
        let mut child = cmd.spawn().expect("cannot start `cairn server`");
        let stdout = child.stdout.take().expect("server stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Reads to the end so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut printed = String::new();
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    printed.push_str(&line);
                    printed.push('\n');
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        break rest.trim().to_string();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "`cairn server` did not print its listening line in time\nstdout:\n{printed}\nstderr:\n{}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
            }
        };
        assert!(url.starts_with("https://127.0.0.1:"), "listening on {url:?}");
        Server {
            child,
            url,
            ca: data.join("ca.pem"),
            data,
            repository,
            config,
            tmp,
            stderr_path,
            _pg: pg,
        }
    }

    /// A `cairn` client command using this test's login folder (and no settings inherited from
    /// whoever runs the tests).
    pub fn cairn<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cairn_as(&self.config, args)
    }

    /// A `cairn` client command with login folder `config`.
    pub fn cairn_as<I, S>(&self, config: &Path, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("cairn"));
        detach_from_terminal(&mut c);
        c.env("CAIRN_CONFIG_DIR", config)
            .env_remove("CAIRN_SERVER")
            .env_remove("CAIRN_TOKEN")
            .env_remove("CAIRN_CA_CERT")
            .env_remove("CAIRN_PASSWORD")
            .env_remove("CAIRN_LOG")
            .stdin(Stdio::null())
            .args(args);
        c
    }

    /// `cairn login URL --user USER --password-stdin --ca-cert DATA/ca.pem` into `config`.
    pub fn login_as(&self, config: &Path, user: &str, password: &str) -> Output {
        let mut c = self.cairn_as(
            config,
            ["login", &self.url, "--user", user, "--password-stdin", "--ca-cert"],
        );
        c.arg(&self.ca);
        with_stdin(c, &format!("{password}\n"))
    }

    /// Logs in as the administrator into the test's login folder (must succeed).
    pub fn login_admin(&self) {
        let out = self.login_as(&self.config, "admin", ADMIN_PASSWORD);
        assert!(
            out.status.success(),
            "admin login failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.stderr()
        );
    }

    /// What the server printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- server stderr ----\n{}", self.stderr());
        }
    }
}

/// Runs the command in a session of its own, without a controlling terminal, so a password
/// prompt fails the same way whether or not the tests run in a terminal.
pub fn detach_from_terminal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| rustix::process::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
}

/// Runs `cmd` with `input` on its standard input.
pub fn with_stdin(mut cmd: Command, input: &str) -> Output {
    use std::io::Write;
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot run cairn");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("writing stdin");
    }
    child.wait_with_output().expect("waiting for cairn")
}

fn describe(cmd: &Command) -> String {
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    format!("cairn {}", args.join(" "))
}

/// Runs `cmd`, which must exit with `code`; returns (stdout, stderr).
#[track_caller]
pub fn run_code(mut cmd: Command, code: i32) -> (String, String) {
    let out = cmd.output().expect("cannot run the cairn binary");
    check_code(&describe(&cmd), &out, code)
}

/// Checks the exit code of `out`; returns (stdout, stderr).
#[track_caller]
pub fn check_code(what: &str, out: &Output, code: i32) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "`{what}`: expected exit code {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// Runs `cmd`, which must succeed; returns its stdout.
#[track_caller]
pub fn ok(cmd: Command) -> String {
    run_code(cmd, 0).0
}

/// Runs `cmd` (with `--json`), which must succeed; parses its stdout.
#[track_caller]
pub fn ok_json(cmd: Command) -> Value {
    let text = ok(cmd);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("output is not JSON ({e}):\n{text}"))
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `secs` seconds.
#[track_caller]
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------- disk images

/// Runs a tool that must succeed.
#[track_caller]
pub fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates an image of `size` bytes in `format` with qemu-img and writes `writes`
/// (`(pattern byte, offset, length)`) into it with qemu-io.
pub fn make_image(path: &Path, format: &str, size: u64, writes: &[(u8, u64, u64)]) {
    std::fs::create_dir_all(path.parent().expect("image folder")).expect("image folder");
    let p = path.to_str().expect("UTF-8 path");
    tool("qemu-img", &["create", "-q", "-f", format, p, &size.to_string()]);
    for (pattern, offset, len) in writes {
        let cmd = format!("write -P {pattern} {offset} {len}");
        tool("qemu-io", &["-f", format, "-c", &cmd, p]);
    }
}

/// A raw image of `size` bytes of incompressible pseudo-random data.
pub fn random_raw_image(path: &Path, size: u64, seed: u64) {
    std::fs::create_dir_all(path.parent().expect("image folder")).expect("image folder");
    let mut x = seed | 1;
    let mut buf = Vec::with_capacity(size as usize);
    while (buf.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(size as usize);
    std::fs::write(path, buf).expect("writing a random image");
}

/// `qemu-img compare` of two images (formats detected), which must say they are identical.
#[track_caller]
pub fn assert_same_image(a: &Path, b: &Path) {
    let out = Command::new("qemu-img")
        .arg("compare")
        .arg(a)
        .arg(b)
        .output()
        .expect("cannot run qemu-img");
    assert!(
        out.status.success(),
        "{} and {} differ: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Defines `mod $name { sqlite, postgres }`, each running `fn $name(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::server_common::Backend::Sqlite);
            }

            #[test]
            fn postgres() {
                super::$name($crate::server_common::Backend::Postgres);
            }
        }
    };
}
