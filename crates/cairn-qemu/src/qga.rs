//! A client of the QEMU guest agent (`qemu-ga`), reached through its own Unix
//! socket: QEMU's `-chardev socket,id=qga0,path=…,server=on,wait=off` with
//! `-device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0`.
//!
//! The agent channel has no greeting and no request ids, and a previous client
//! may have left a reply unread in it. So the client resynchronises with
//! `guest-sync-delimited` (a `0xFF` byte resets the agent's parser; the agent
//! answers with `0xFF` then `{"return": ID}`; everything before the marker and
//! every reply that is not ours is dropped) when it connects and after any
//! command whose reply did not arrive. Commands run one at a time.
//!
//! ```no_run
//! # async fn f() -> Result<(), cairn_qemu::qga::AgentError> {
//! use std::time::Duration;
//! let agent = cairn_qemu::qga::GuestAgent::connect("/run/vms/web01.qga".as_ref(), Duration::from_secs(5)).await?;
//! let frozen = agent.fsfreeze_freeze().await?;
//! agent.fsfreeze_thaw().await?;
//! let out = agent.exec("/bin/uname", &["-r"], None).await?;
//! println!("{frozen} filesystems, kernel {}", String::from_utf8_lossy(&out.stdout));
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long [`GuestAgent::exec`] waits for the guest process to end.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(300);
/// Bytes per `guest-file-read` / `guest-file-write` call.
const FILE_CHUNK: usize = 1 << 20;
/// Largest reply accepted from the agent.
const MAX_REPLY: usize = 64 << 20;

/// What can go wrong talking to the guest agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The socket could not be opened.
    #[error("connecting to guest agent socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent answered with an error.
    #[error("guest agent command {command}: {class}: {desc}")]
    Command {
        /// The command name.
        command: String,
        /// The agent's error class.
        class: String,
        /// The agent's description.
        desc: String,
    },
    /// No reply in time (the agent may not run in the guest).
    #[error("guest agent command {command}: no reply within {timeout:?}")]
    Timeout {
        /// The command name.
        command: String,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The connection ended.
    #[error("guest agent command {command}: connection closed")]
    Closed {
        /// The command name.
        command: String,
    },
    /// Reading or writing the socket failed.
    #[error("guest agent command {command}: {source}")]
    Io {
        /// The command name.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The reply was not what the protocol says.
    #[error("guest agent command {command}: {detail}")]
    Protocol {
        /// The command name.
        command: String,
        /// What was wrong.
        detail: String,
    },
}

/// Result of guest agent operations.
pub type Result<T> = std::result::Result<T, AgentError>;

/// One command the agent knows (`guest-info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCommand {
    /// Command name.
    pub name: String,
    /// False when the guest's configuration disabled it.
    pub enabled: bool,
    /// False for commands that do not answer on success (`guest-shutdown`).
    #[serde(rename = "success-response", default)]
    pub success_response: bool,
}

/// `guest-info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Agent version.
    pub version: String,
    /// The commands it supports.
    pub supported_commands: Vec<AgentCommand>,
}

impl AgentInfo {
    /// True when `name` is supported and enabled.
    pub fn supports(&self, name: &str) -> bool {
        self.supported_commands.iter().any(|c| c.name == name && c.enabled)
    }
}

/// Frozen state of the guest's filesystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezeStatus {
    /// Filesystems are writable.
    Thawed,
    /// Filesystems are frozen.
    Frozen,
}

/// How a guest process ended and what it printed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Exit code; 128 + signal number when a signal ended it.
    pub code: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// True when the agent cut the output short (its buffer limit).
    pub truncated: bool,
}

impl ExecOutput {
    /// True when the process exited with code 0.
    pub fn success(&self) -> bool {
        self.code == 0 && self.signal.is_none()
    }
}

/// Splits the agent's byte stream into JSON objects (pure; no I/O).
#[derive(Debug, Default)]
pub(crate) struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Drops everything up to and including the first `0xFF`; true when one was found.
    pub(crate) fn skip_to_sentinel(&mut self) -> bool {
        match self.buf.iter().position(|&b| b == 0xFF) {
            Some(i) => {
                self.buf.drain(..=i);
                true
            }
            None => {
                self.buf.clear();
                false
            }
        }
    }

    /// The next complete JSON object, if the buffer holds one. Bytes before an
    /// object's `{` (whitespace, `0xFF` markers, garbage) are dropped.
    pub(crate) fn next_object(&mut self) -> std::result::Result<Option<Value>, String> {
        let Some(start) = self.buf.iter().position(|&b| b == b'{') else {
            // Keep nothing that cannot begin an object.
            self.buf.clear();
            return Ok(None);
        };
        if start > 0 {
            let dropped = &self.buf[..start];
            if dropped.iter().any(|b| !b.is_ascii_whitespace() && *b != 0xFF) {
                tracing::debug!(target: "cairn_qemu::qga", "dropping {} bytes before a reply", dropped.len());
            }
            self.buf.drain(..start);
        }
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        for (i, &b) in self.buf.iter().enumerate() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        let object: Vec<u8> = self.buf.drain(..=i).collect();
                        return serde_json::from_slice(&object).map(Some).map_err(|e| {
                            format!(
                                "invalid JSON from the agent ({e}): {}",
                                String::from_utf8_lossy(&object)
                            )
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

struct Conn {
    stream: Option<UnixStream>,
    framer: Framer,
    /// Set before a command is sent, cleared when its reply was read: a command that
    /// timed out or was cancelled leaves it set, so the next one resynchronises first.
    needs_sync: bool,
}

struct AgentInner {
    path: Option<PathBuf>,
    conn: tokio::sync::Mutex<Conn>,
    timeout: Duration,
}

/// A guest agent connection. Clones share it.
#[derive(Clone)]
pub struct GuestAgent {
    inner: Arc<AgentInner>,
}

impl std::fmt::Debug for GuestAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestAgent").field("path", &self.inner.path).finish()
    }
}

static SYNC_COUNTER: AtomicU64 = AtomicU64::new(0);

fn sync_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = SYNC_COUNTER.fetch_add(1, Ordering::Relaxed);
    // Stays well inside the agent's int64 and JSON's exact integer range.
    ((u64::from(nanos) << 12) ^ (u64::from(std::process::id()) << 20) ^ n) & ((1 << 52) - 1)
}

impl GuestAgent {
    /// Connects to the agent socket at `path` and resynchronises; fails when the agent
    /// does not answer within `timeout` (e.g. it does not run in the guest). `timeout`
    /// is also the default timeout of every command.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<GuestAgent> {
        let agent = GuestAgent::open(path, timeout).await?;
        agent.sync().await?;
        Ok(agent)
    }

    /// Opens the socket without talking to the agent yet: the first command resynchronises.
    /// Useful when a missing agent should surface as that command's error.
    pub async fn open(path: &Path, timeout: Duration) -> Result<GuestAgent> {
        let stream = connect_socket(path, timeout).await?;
        Ok(GuestAgent::new(Some(path.to_owned()), Some(stream), timeout))
    }

    /// Wraps a stream connected elsewhere (a socket pair in tests); it is never reopened.
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> GuestAgent {
        GuestAgent::new(None, Some(stream), timeout)
    }

    fn new(path: Option<PathBuf>, stream: Option<UnixStream>, timeout: Duration) -> GuestAgent {
        GuestAgent {
            inner: Arc::new(AgentInner {
                path,
                conn: tokio::sync::Mutex::new(Conn {
                    stream,
                    framer: Framer::default(),
                    needs_sync: true,
                }),
                timeout,
            }),
        }
    }

    /// The socket path, when opened by path.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The default command timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Resynchronises the channel now (`guest-sync-delimited`).
    pub async fn sync(&self) -> Result<()> {
        let mut conn = self.inner.conn.lock().await;
        self.ensure_open(&mut conn, "guest-sync-delimited").await?;
        let timeout = self.inner.timeout;
        match tokio::time::timeout(timeout, sync_conn(&mut conn)).await {
            Ok(result) => result,
            Err(_) => Err(AgentError::Timeout {
                command: "guest-sync-delimited".into(),
                timeout,
            }),
        }
    }

    /// Runs `command` with `args` (an object, or `null`) under the default timeout and
    /// returns the agent's `return` value.
    pub async fn execute(&self, command: &str, args: Value) -> Result<Value> {
        self.execute_timeout(command, args, self.inner.timeout).await
    }

    /// Like [`GuestAgent::execute`] with its own timeout (resynchronising included).
    pub async fn execute_timeout(&self, command: &str, args: Value, timeout: Duration) -> Result<Value> {
        let mut conn = self.inner.conn.lock().await;
        self.ensure_open(&mut conn, command).await?;
        let work = async {
            if conn.needs_sync {
                sync_conn(&mut conn).await?;
            }
            conn.needs_sync = true;
            send(&mut conn, command, &args).await?;
            let reply = read_object(&mut conn, command).await?;
            conn.needs_sync = false;
            reply_value(command, reply)
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(AgentError::Timeout {
                command: command.to_owned(),
                timeout,
            }),
        };
        if let Err(AgentError::Closed { .. } | AgentError::Io { .. }) = &result {
            // Reopen on the next command (QEMU's chardev accepts a new client).
            conn.stream = None;
        }
        result
    }

    async fn ensure_open(&self, conn: &mut Conn, command: &str) -> Result<()> {
        if conn.stream.is_some() {
            return Ok(());
        }
        match &self.inner.path {
            Some(path) => {
                conn.stream = Some(connect_socket(path, self.inner.timeout).await?);
                conn.framer = Framer::default();
                conn.needs_sync = true;
                Ok(())
            }
            None => Err(AgentError::Closed {
                command: command.to_owned(),
            }),
        }
    }

    /// `guest-ping`.
    pub async fn ping(&self) -> Result<()> {
        self.execute("guest-ping", Value::Null).await.map(drop)
    }

    /// `guest-info`.
    pub async fn info(&self) -> Result<AgentInfo> {
        let value = self.execute("guest-info", Value::Null).await?;
        decode("guest-info", value)
    }

    /// `guest-fsfreeze-freeze` under the default timeout: returns how many filesystems froze.
    pub async fn fsfreeze_freeze(&self) -> Result<u64> {
        self.fsfreeze_freeze_timeout(self.inner.timeout).await
    }

    /// `guest-fsfreeze-freeze` with its own timeout. After a timeout the guest may still be
    /// freezing: call [`GuestAgent::fsfreeze_thaw`] anyway.
    pub async fn fsfreeze_freeze_timeout(&self, timeout: Duration) -> Result<u64> {
        let value = self
            .execute_timeout("guest-fsfreeze-freeze", Value::Null, timeout)
            .await?;
        decode("guest-fsfreeze-freeze", value)
    }

    /// `guest-fsfreeze-thaw`: returns how many filesystems thawed.
    pub async fn fsfreeze_thaw(&self) -> Result<u64> {
        let value = self.execute("guest-fsfreeze-thaw", Value::Null).await?;
        decode("guest-fsfreeze-thaw", value)
    }

    /// `guest-fsfreeze-status`.
    pub async fn fsfreeze_status(&self) -> Result<FreezeStatus> {
        let value = self.execute("guest-fsfreeze-status", Value::Null).await?;
        decode("guest-fsfreeze-status", value)
    }

    /// Runs `path` with `args` in the guest (no shell), feeding `stdin`, and waits up to
    /// [`DEFAULT_EXEC_TIMEOUT`] for it to end.
    pub async fn exec(&self, path: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<ExecOutput> {
        self.exec_timeout(path, args, stdin, DEFAULT_EXEC_TIMEOUT).await
    }

    /// Like [`GuestAgent::exec`], waiting up to `timeout` for the process to end
    /// (`guest-exec`, then `guest-exec-status` polled). On timeout the process keeps running.
    pub async fn exec_timeout(
        &self,
        path: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let mut request = json!({ "path": path, "arg": args, "capture-output": true });
        if let Some(input) = stdin {
            request["input-data"] = Value::String(B64.encode(input));
        }
        let started = self.execute("guest-exec", request).await?;
        let pid = started["pid"].as_i64().ok_or_else(|| AgentError::Protocol {
            command: "guest-exec".into(),
            detail: format!("no pid in {started}"),
        })?;
        let command = format!("guest-exec {path}");
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            let status = self.execute("guest-exec-status", json!({ "pid": pid })).await?;
            if status["exited"].as_bool() == Some(true) {
                let field = |name: &str| -> Result<Vec<u8>> {
                    match status.get(name).and_then(Value::as_str) {
                        Some(text) => B64.decode(text).map_err(|e| AgentError::Protocol {
                            command: command.clone(),
                            detail: format!("{name} is not base64: {e}"),
                        }),
                        None => Ok(Vec::new()),
                    }
                };
                let signal = status.get("signal").and_then(Value::as_i64).map(|s| s as i32);
                let code = match (status.get("exitcode").and_then(Value::as_i64), signal) {
                    (Some(code), _) => code as i32,
                    (None, Some(sig)) => 128 + sig,
                    (None, None) => -1,
                };
                return Ok(ExecOutput {
                    code,
                    signal,
                    stdout: field("out-data")?,
                    stderr: field("err-data")?,
                    truncated: status["out-truncated"].as_bool() == Some(true)
                        || status["err-truncated"].as_bool() == Some(true),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(AgentError::Timeout { command, timeout });
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    /// Reads a whole guest file.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let handle = self.file_open(path, "r").await?;
        let result = async {
            let mut data = Vec::new();
            loop {
                let chunk = self
                    .execute("guest-file-read", json!({ "handle": handle, "count": FILE_CHUNK }))
                    .await?;
                let text = chunk["buf-b64"].as_str().unwrap_or("");
                let bytes = B64.decode(text).map_err(|e| AgentError::Protocol {
                    command: "guest-file-read".into(),
                    detail: format!("{path}: buf-b64 is not base64: {e}"),
                })?;
                data.extend_from_slice(&bytes);
                if chunk["eof"].as_bool() == Some(true) || bytes.is_empty() {
                    return Ok(data);
                }
            }
        }
        .await;
        let closed = self.file_close(handle).await;
        let data = result?;
        closed?;
        Ok(data)
    }

    /// Writes `data` to a guest file, creating or truncating it.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let handle = self.file_open(path, "w").await?;
        let result = async {
            let mut done = 0;
            while done < data.len() {
                let end = (done + FILE_CHUNK).min(data.len());
                let reply = self
                    .execute(
                        "guest-file-write",
                        json!({ "handle": handle, "buf-b64": B64.encode(&data[done..end]) }),
                    )
                    .await?;
                let written = reply["count"].as_u64().unwrap_or(0) as usize;
                if written == 0 {
                    return Err(AgentError::Protocol {
                        command: "guest-file-write".into(),
                        detail: format!("{path}: the agent wrote nothing at offset {done}"),
                    });
                }
                done += written.min(end - done);
            }
            self.execute("guest-file-flush", json!({ "handle": handle }))
                .await
                .map(drop)
        }
        .await;
        let closed = self.file_close(handle).await;
        result?;
        closed
    }

    async fn file_open(&self, path: &str, mode: &str) -> Result<i64> {
        let value = self
            .execute("guest-file-open", json!({ "path": path, "mode": mode }))
            .await?;
        value.as_i64().ok_or_else(|| AgentError::Protocol {
            command: "guest-file-open".into(),
            detail: format!("{path}: expected a handle, got {value}"),
        })
    }

    async fn file_close(&self, handle: i64) -> Result<()> {
        self.execute("guest-file-close", json!({ "handle": handle }))
            .await
            .map(drop)
    }

    /// `guest-shutdown` with mode `powerdown`. The agent does not answer on success; an
    /// error reply within a second is returned.
    pub async fn shutdown(&self) -> Result<()> {
        self.shutdown_mode("powerdown").await
    }

    /// `guest-shutdown` with `mode` `powerdown`, `halt` or `reboot`.
    pub async fn shutdown_mode(&self, mode: &str) -> Result<()> {
        let mut conn = self.inner.conn.lock().await;
        self.ensure_open(&mut conn, "guest-shutdown").await?;
        let timeout = self.inner.timeout;
        let command = "guest-shutdown";
        let send_it = async {
            if conn.needs_sync {
                sync_conn(&mut conn).await?;
            }
            conn.needs_sync = true;
            send(&mut conn, command, &json!({ "mode": mode })).await
        };
        tokio::time::timeout(timeout, send_it)
            .await
            .map_err(|_| AgentError::Timeout {
                command: command.into(),
                timeout,
            })??;
        match tokio::time::timeout(Duration::from_secs(1), read_object(&mut conn, command)).await {
            Ok(Ok(reply)) => reply_value(command, reply).map(drop),
            // No reply (the agent is going down) or the connection closed: success.
            Ok(Err(_)) | Err(_) => Ok(()),
        }
    }
}

async fn connect_socket(path: &Path, timeout: Duration) -> Result<UnixStream> {
    match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(AgentError::Connect {
            path: path.to_owned(),
            source,
        }),
        Err(_) => Err(AgentError::Connect {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            ),
        }),
    }
}

fn decode<T: serde::de::DeserializeOwned>(command: &str, value: Value) -> Result<T> {
    serde_json::from_value(value.clone()).map_err(|e| AgentError::Protocol {
        command: command.to_owned(),
        detail: format!("unexpected reply {}: {e}", crate::qmp::truncate(value.to_string())),
    })
}

fn reply_value(command: &str, reply: Value) -> Result<Value> {
    if let Some(value) = reply.get("return") {
        return Ok(value.clone());
    }
    if let Some(err) = reply.get("error") {
        return Err(AgentError::Command {
            command: command.to_owned(),
            class: err["class"].as_str().unwrap_or("GenericError").to_owned(),
            desc: err["desc"].as_str().unwrap_or("(no description)").to_owned(),
        });
    }
    Err(AgentError::Protocol {
        command: command.to_owned(),
        detail: format!(
            "reply without return or error: {}",
            crate::qmp::truncate(reply.to_string())
        ),
    })
}

async fn send(conn: &mut Conn, command: &str, args: &Value) -> Result<()> {
    let mut message = json!({ "execute": command });
    if !args.is_null() {
        message["arguments"] = args.clone();
    }
    let mut line = message.to_string().into_bytes();
    line.push(b'\n');
    write_bytes(conn, command, &line).await
}

async fn write_bytes(conn: &mut Conn, command: &str, bytes: &[u8]) -> Result<()> {
    let stream = conn.stream.as_mut().ok_or_else(|| AgentError::Closed {
        command: command.to_owned(),
    })?;
    stream.write_all(bytes).await.map_err(|source| AgentError::Io {
        command: command.to_owned(),
        source,
    })
}

async fn fill(conn: &mut Conn, command: &str) -> Result<()> {
    let stream = conn.stream.as_mut().ok_or_else(|| AgentError::Closed {
        command: command.to_owned(),
    })?;
    let mut buf = [0u8; 16 << 10];
    let n = stream.read(&mut buf).await.map_err(|source| AgentError::Io {
        command: command.to_owned(),
        source,
    })?;
    if n == 0 {
        return Err(AgentError::Closed {
            command: command.to_owned(),
        });
    }
    conn.framer.push(&buf[..n]);
    if conn.framer.buffered() > MAX_REPLY {
        return Err(AgentError::Protocol {
            command: command.to_owned(),
            detail: "reply too large".into(),
        });
    }
    Ok(())
}

async fn read_object(conn: &mut Conn, command: &str) -> Result<Value> {
    loop {
        match conn.framer.next_object() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => fill(conn, command).await?,
            Err(detail) => {
                return Err(AgentError::Protocol {
                    command: command.to_owned(),
                    detail,
                });
            }
        }
    }
}

/// `guest-sync-delimited`: 0xFF resets the agent's parser; its reply starts with 0xFF.
async fn sync_conn(conn: &mut Conn) -> Result<()> {
    const COMMAND: &str = "guest-sync-delimited";
    let id = sync_id();
    conn.needs_sync = true;
    conn.framer = Framer::default();
    let mut message = vec![0xFF];
    message.extend_from_slice(
        json!({ "execute": COMMAND, "arguments": { "id": id } })
            .to_string()
            .as_bytes(),
    );
    message.push(b'\n');
    write_bytes(conn, COMMAND, &message).await?;
    'resync: loop {
        while !conn.framer.skip_to_sentinel() {
            fill(conn, COMMAND).await?;
        }
        // Replies after the marker: ours, or stale ones to skip (an earlier sync's among them).
        loop {
            match conn.framer.next_object() {
                Ok(Some(reply)) => {
                    if reply.get("return").and_then(Value::as_u64) == Some(id) {
                        conn.needs_sync = false;
                        return Ok(());
                    }
                    tracing::debug!(target: "cairn_qemu::qga", "skipping stale reply during sync: {reply}");
                }
                Ok(None) => fill(conn, COMMAND).await?,
                Err(detail) => {
                    tracing::debug!(target: "cairn_qemu::qga", "skipping unparsable bytes during sync: {detail}");
                    continue 'resync;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_splits_objects_across_pushes_and_strings() {
        let mut f = Framer::default();
        f.push(b"  {\"return\": {\"a\": \"}{\\\"\"");
        assert_eq!(f.next_object().unwrap(), None);
        f.push(b"}}\n{\"return\": 5}");
        assert_eq!(f.next_object().unwrap(), Some(json!({"return": {"a": "}{\""}})));
        assert_eq!(f.next_object().unwrap(), Some(json!({"return": 5})));
        assert_eq!(f.next_object().unwrap(), None);
    }

    #[test]
    fn framer_drops_stale_bytes_before_sentinel() {
        let mut f = Framer::default();
        f.push(b"{\"return\": 1}\n{\"ret");
        f.push(&[0xFF]);
        f.push(b"{\"return\": 42}\n");
        assert!(f.skip_to_sentinel());
        assert_eq!(f.next_object().unwrap(), Some(json!({"return": 42})));
        let mut g = Framer::default();
        g.push(b"garbage");
        assert!(!g.skip_to_sentinel());
        assert_eq!(g.buffered(), 0);
    }

    #[test]
    fn framer_reports_invalid_json() {
        let mut f = Framer::default();
        f.push(b"{\"return\": nope}");
        assert!(f.next_object().is_err());
    }
}
