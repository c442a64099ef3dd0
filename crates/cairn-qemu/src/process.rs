//! Starting and stopping QEMU processes.
//!
//! [`QemuProcess::spawn`] runs `qemu-system-x86_64` with arguments (e.g. from
//! [`crate::config::VmConfig::command_line`]) either as a child process or, when they
//! have `-daemonize` (with `-pidfile`), as a
//! daemon whose pid comes from the pid file; then it waits until the QMP socket accepts
//! connections. The process is killed (SIGKILL) when the handle is dropped, unless
//! [`QemuProcess::detach`] released it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use crate::qmp::Qmp;
use crate::{Error, Result};

/// The QEMU binary [`QemuProcess::spawn`] runs.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// How much of a child's standard error is kept for error messages.
const STDERR_TAIL: usize = 16 << 10;

/// A running QEMU process.
#[derive(Debug)]
pub struct QemuProcess {
    child: Option<tokio::process::Child>,
    pid: u32,
    qmp_socket: PathBuf,
    daemonized: bool,
    detached: bool,
    exited: bool,
    stderr: Arc<Mutex<Vec<u8>>>,
}

fn option_value<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str)
}

impl QemuProcess {
    /// Starts [`QEMU_BINARY`] with `args` (e.g. from
    /// [`crate::config::VmConfig::command_line`]) and waits up to `timeout` until the QMP
    /// socket `qmp_socket` answers with a greeting. With `-daemonize` in `args`, `-pidfile`
    /// is required: the call returns once the daemon runs, its pid read from the file.
    pub async fn spawn(args: &[String], qmp_socket: &Path, timeout: Duration) -> Result<QemuProcess> {
        QemuProcess::spawn_with(QEMU_BINARY, args, qmp_socket, timeout).await
    }

    /// Like [`QemuProcess::spawn`] with another binary.
    pub async fn spawn_with(
        program: &str,
        args: &[String],
        qmp_socket: &Path,
        timeout: Duration,
    ) -> Result<QemuProcess> {
        let argv = args;
        let daemonized = argv.iter().any(|a| a == "-daemonize");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut process = if daemonized {
            let pidfile = option_value(argv, "-pidfile")
                .ok_or_else(|| Error::Invalid("-daemonize needs -pidfile to know the QEMU process".into()))?;
            let output = tokio::time::timeout(
                timeout,
                tokio::process::Command::new(program)
                    .args(args)
                    .stdin(Stdio::null())
                    .output(),
            )
            .await
            .map_err(|_| Error::Process(format!("{program} did not daemonize within {timeout:?}")))?
            .map_err(|e| Error::Process(format!("starting {program}: {e}")))?;
            if !output.status.success() {
                return Err(Error::Process(format!(
                    "{program} failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
            let text = std::fs::read_to_string(pidfile)
                .map_err(|e| Error::Process(format!("reading QEMU pid file {pidfile}: {e}")))?;
            let pid = text
                .trim()
                .parse::<u32>()
                .map_err(|e| Error::Process(format!("QEMU pid file {pidfile} holds {text:?}: {e}")))?;
            QemuProcess {
                child: None,
                pid,
                qmp_socket: qmp_socket.to_owned(),
                daemonized: true,
                detached: false,
                exited: false,
                stderr,
            }
        } else {
            let mut child = tokio::process::Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| Error::Process(format!("starting {program}: {e}")))?;
            let pid = child
                .id()
                .ok_or_else(|| Error::Process(format!("{program} exited at once")))?;
            if let Some(mut pipe) = child.stderr.take() {
                let tail = stderr.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = pipe.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                        t.extend_from_slice(&buf[..n]);
                        if t.len() > STDERR_TAIL {
                            let cut = t.len() - STDERR_TAIL;
                            t.drain(..cut);
                        }
                    }
                });
            }
            QemuProcess {
                child: Some(child),
                pid,
                qmp_socket: qmp_socket.to_owned(),
                daemonized: false,
                detached: false,
                exited: false,
                stderr,
            }
        };
        process.wait_for_qmp(timeout).await?;
        Ok(process)
    }

    async fn wait_for_qmp(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                // Give the stderr reader a moment to collect the last words.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(Error::Process(format!(
                    "QEMU (pid {}) exited during start: {}",
                    self.pid,
                    self.stderr_tail()
                )));
            }
            // QEMU creates the socket early in its start; the greeting comes only once its
            // main loop runs (a start that fails later, e.g. on a missing image, never sends it).
            if let Ok(stream) = tokio::net::UnixStream::connect(&self.qmp_socket).await {
                let mut line = String::new();
                let left = deadline.saturating_duration_since(Instant::now());
                let mut reader = tokio::io::BufReader::new(stream);
                if let Ok(Ok(n)) = tokio::time::timeout(left, reader.read_line(&mut line)).await
                    && n > 0
                    && line.contains("\"QMP\"")
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Process(format!(
                    "QMP socket {} not accepting after {timeout:?}: {}",
                    self.qmp_socket.display(),
                    self.stderr_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp_socket
    }

    /// The last part of the child's standard error (empty for a daemon).
    pub fn stderr_tail(&self) -> String {
        let t = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&t).trim().to_owned()
    }

    /// Connects a QMP client (QEMU accepts one client per monitor socket at a time).
    pub async fn connect(&self, timeout: Duration) -> Result<Qmp> {
        Ok(Qmp::connect(&self.qmp_socket, timeout).await?)
    }

    /// True while the process exists (a zombie counts as ended).
    pub fn is_running(&mut self) -> bool {
        if self.exited {
            return false;
        }
        let running = match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => pid_alive(self.pid),
        };
        if !running {
            self.exited = true;
        }
        running
    }

    /// Waits up to `timeout` for the process to end; true when it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = &mut self.child {
                let left = deadline.saturating_duration_since(Instant::now());
                return match tokio::time::timeout(left, child.wait()).await {
                    Ok(_) => {
                        self.exited = true;
                        true
                    }
                    Err(_) => false,
                };
            }
            if !self.is_running() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks QEMU to quit (`quit` over `qmp`, or over a new connection when `None`), waits up
    /// to `timeout`, then kills it. Ok when the process is gone.
    pub async fn quit(&mut self, qmp: Option<&Qmp>, timeout: Duration) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let asked = match qmp {
            Some(q) => q.quit().await.map_err(Error::from),
            None => match self.connect(timeout.min(Duration::from_secs(5))).await {
                Ok(q) => q.quit().await.map_err(Error::from),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = &asked {
            tracing::warn!(target: "cairn_qemu::process", pid = self.pid, "quit over QMP failed, killing: {e}");
        } else if self.wait_exit(timeout).await {
            return Ok(());
        }
        self.kill().await
    }

    /// Kills the process with SIGKILL (as a crash would) and waits until it is gone.
    pub async fn kill(&mut self) -> Result<()> {
        if self.exited {
            return Ok(());
        }
        match &mut self.child {
            Some(child) => {
                let _ = child.start_kill();
                child
                    .wait()
                    .await
                    .map_err(|e| Error::Process(format!("waiting for QEMU pid {}: {e}", self.pid)))?;
                self.exited = true;
                Ok(())
            }
            None => {
                // SAFETY: kill(2) with a pid we started; no memory is involved.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
                if self.wait_exit(Duration::from_secs(30)).await {
                    Ok(())
                } else {
                    Err(Error::Process(format!(
                        "QEMU pid {} survived SIGKILL for 30 s",
                        self.pid
                    )))
                }
            }
        }
    }

    /// Lets the process run on after the handle is dropped; returns its pid.
    pub fn detach(mut self) -> u32 {
        self.detached = true;
        // Dropping a tokio child does not kill it (no kill_on_drop); tokio reaps it when it ends.
        self.child.take();
        self.pid
    }

    /// True when started with `-daemonize`.
    pub fn is_daemon(&self) -> bool {
        self.daemonized
    }
}

/// The process whose id the pid file at `path` holds (QEMU's `-pidfile`), when it still runs.
/// QEMU removes its pid file when it exits; a missing or unreadable file is `None`.
pub fn running_pid(path: &Path) -> Option<u32> {
    let pid = std::fs::read_to_string(path).ok()?.trim().parse::<u32>().ok()?;
    pid_alive(pid).then_some(pid)
}

/// True while process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name; Z (zombie) and X (dead) are gone.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|s| s != 'Z' && s != 'X'),
        Err(_) => false,
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if self.detached || self.exited {
            return;
        }
        match &mut self.child {
            Some(child) => {
                let _ = child.start_kill();
            }
            None => {
                if pid_alive(self.pid) {
                    // SAFETY: kill(2) with a pid we started.
                    unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
    }
}
