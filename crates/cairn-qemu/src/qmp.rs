//! An async QMP client: one Unix-socket connection to a QEMU monitor.
//!
//! [`Qmp::connect`] reads the greeting and leaves capabilities negotiation
//! (`qmp_capabilities`). Every command carries a numeric `id`; a reader task
//! matches replies to waiting callers, so commands may run concurrently from
//! clones of one [`Qmp`]. Asynchronous events go to a broadcast channel
//! ([`Qmp::events`], [`Qmp::wait_event`]). A command that gets no reply within
//! its timeout fails with [`QmpError::Timeout`]; a late reply is dropped.
//!
//! ```no_run
//! # async fn f() -> Result<(), cairn_qemu::qmp::QmpError> {
//! use std::time::Duration;
//! let qmp = cairn_qemu::qmp::Qmp::connect("/run/vms/web01.qmp".as_ref(), Duration::from_secs(10)).await?;
//! let status = qmp.query_status().await?;
//! println!("{} running={}", status.status, status.running);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// Longest line the reader accepts from QEMU (replies of big VMs are large, never this large).
const MAX_LINE: usize = 64 << 20;

/// What can go wrong talking QMP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// The socket could not be opened.
    #[error("connecting to QMP socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The socket accepted the connection but QEMU sent no greeting in time: another client
    /// holds the monitor (QEMU serves one client per QMP socket), or QEMU hangs.
    #[error(
        "QMP handshake on {path}: no greeting within {timeout:?} (is another client connected to this monitor? \
         QEMU serves one client per QMP socket)"
    )]
    NoGreeting {
        /// The socket path.
        path: PathBuf,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The greeting or capabilities negotiation failed.
    #[error("QMP handshake on {path}: {reason}")]
    Handshake {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// QEMU answered the command with an error.
    #[error("QMP command {command}: {class}: {desc}")]
    Command {
        /// The command name.
        command: String,
        /// QEMU's error class (`GenericError`, `DeviceNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// The connection ended before the reply came.
    #[error("QMP command {command}: connection closed")]
    Closed {
        /// The command name.
        command: String,
    },
    /// No reply within the timeout.
    #[error("QMP command {command}: no reply within {timeout:?}")]
    Timeout {
        /// The command name.
        command: String,
        /// How long the client waited.
        timeout: Duration,
    },
    /// Writing the command failed.
    #[error("QMP command {command}: sending failed: {source}")]
    Send {
        /// The command name.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// QEMU's reply did not have the expected shape.
    #[error("QMP command {command}: unexpected reply {reply}: {detail}")]
    Reply {
        /// The command name.
        command: String,
        /// The reply, as JSON text.
        reply: String,
        /// What did not fit.
        detail: String,
    },
    /// [`Qmp::wait_event`] saw no matching event in time.
    #[error("waiting for QMP event {event}: none within {timeout:?}")]
    EventTimeout {
        /// The event name.
        event: String,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The event stream ended (connection closed) while waiting.
    #[error("waiting for QMP event {event}: connection closed")]
    EventClosed {
        /// The event name.
        event: String,
    },
}

impl QmpError {
    /// QEMU's error class when QEMU answered with an error.
    pub fn class(&self) -> Option<&str> {
        match self {
            QmpError::Command { class, .. } => Some(class),
            _ => None,
        }
    }

    /// QEMU's error description when QEMU answered with an error.
    pub fn desc(&self) -> Option<&str> {
        match self {
            QmpError::Command { desc, .. } => Some(desc),
            _ => None,
        }
    }

    /// True when the socket answered but QEMU sent no greeting: most likely another client
    /// holds the monitor (a backup in progress), so the VM runs but cannot be asked now.
    pub fn is_busy(&self) -> bool {
        matches!(self, QmpError::NoGreeting { .. })
    }

    /// True when the connection is gone (closed or never came back).
    pub fn is_closed(&self) -> bool {
        matches!(
            self,
            QmpError::Closed { .. } | QmpError::Send { .. } | QmpError::EventClosed { .. }
        )
    }
}

/// Result of QMP operations.
pub type Result<T> = std::result::Result<T, QmpError>;

/// The time QEMU stamped on an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}

/// An asynchronous QMP event (`STOP`, `RESUME`, `BLOCK_JOB_CANCELLED`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QmpEvent {
    /// The event name.
    pub event: String,
    /// The event's data (`null` when it has none).
    #[serde(default)]
    pub data: Value,
    /// When QEMU emitted it.
    #[serde(default)]
    pub timestamp: Timestamp,
}

/// The VM's run state (`query-status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStatus {
    /// QEMU's run state: `running`, `paused`, `prelaunch`, `shutdown`, ...
    pub status: String,
    /// True when the vCPUs run.
    pub running: bool,
}

/// One entry of `query-block-exports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockExportInfo {
    /// Export id.
    pub id: String,
    /// Export type (`nbd`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The exported node.
    #[serde(rename = "node-name")]
    pub node_name: String,
    /// True while the export is being removed.
    #[serde(rename = "shutting-down", default)]
    pub shutting_down: bool,
}

/// One entry of `query-block-jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockJobInfo {
    /// The job id (QMP calls it `device`).
    pub device: String,
    /// Job type (`backup`, `mirror`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Job status (`running`, `ready`, `concluded`, ...).
    pub status: String,
    /// Bytes done.
    #[serde(default)]
    pub offset: u64,
    /// Bytes to do (an estimate).
    #[serde(default)]
    pub len: u64,
    /// True once a mirror job is in sync.
    #[serde(default)]
    pub ready: bool,
}

/// One property of a QOM object (`qom-list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QomProperty {
    /// Property name.
    pub name: String,
    /// Property type (`child<virtio-blk-pci>`, `link<bus>`, `str`, ...).
    #[serde(rename = "type")]
    pub kind: String,
}

type Reply = std::result::Result<Value, (String, String)>;

struct Pending {
    closed: bool,
    waiters: HashMap<u64, oneshot::Sender<Reply>>,
}

struct Shared {
    pending: Mutex<Pending>,
    events: broadcast::Sender<QmpEvent>,
}

struct Inner {
    path: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    greeting: Value,
    timeout: Duration,
    reader: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A QMP connection. Clones share the connection; it closes when the last clone is dropped.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp").field("path", &self.inner.path).finish()
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Pending> {
    shared.pending.lock().unwrap_or_else(|e| e.into_inner())
}

impl Qmp {
    /// Connects to the QMP socket at `path`, reads the greeting and negotiates
    /// capabilities, all within `timeout`. `timeout` is also the default timeout
    /// of every command ([`Qmp::execute`]).
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Handshake {
                path: path.to_owned(),
                reason: format!("connect did not complete within {timeout:?}"),
            })?
            .map_err(|source| QmpError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let greeting = tokio::time::timeout(timeout, read_json_line(&mut reader))
            .await
            .map_err(|_| QmpError::NoGreeting {
                path: path.to_owned(),
                timeout,
            })?
            .map_err(|reason| QmpError::Handshake {
                path: path.to_owned(),
                reason,
            })?
            .ok_or_else(|| QmpError::Handshake {
                path: path.to_owned(),
                reason: "connection closed before the greeting".into(),
            })?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Handshake {
                path: path.to_owned(),
                reason: format!("not a QMP greeting: {greeting}"),
            });
        }
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                closed: false,
                waiters: HashMap::new(),
            }),
            events: broadcast::channel(1024).0,
        });
        let reader = tokio::spawn(read_loop(reader, shared.clone(), path.to_owned()));
        let qmp = Qmp {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: tokio::sync::Mutex::new(write),
                shared,
                next_id: AtomicU64::new(1),
                greeting,
                timeout,
                reader,
            }),
        };
        qmp.execute("qmp_capabilities", Value::Null)
            .await
            .map_err(|e| QmpError::Handshake {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(qmp)
    }

    /// The socket path this client connected to.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The default command timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// QEMU's version from the greeting: (major, minor, micro).
    pub fn version(&self) -> (u64, u64, u64) {
        let v = &self.inner.greeting["QMP"]["version"]["qemu"];
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        (n("major"), n("minor"), n("micro"))
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.shared).closed
    }

    /// Runs `command` with `args` (an object, or `null` for none) under the default timeout
    /// and returns QEMU's `return` value.
    pub async fn execute(&self, command: &str, args: Value) -> Result<Value> {
        self.execute_timeout(command, args, self.inner.timeout).await
    }

    /// Like [`Qmp::execute`] with its own timeout.
    pub async fn execute_timeout(&self, command: &str, args: Value, timeout: Duration) -> Result<Value> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.inner.shared);
            if pending.closed {
                return Err(QmpError::Closed {
                    command: command.to_owned(),
                });
            }
            pending.waiters.insert(id, tx);
        }
        // Removes the waiter however this future ends (timeout, error, drop).
        struct Unregister<'a>(&'a Shared, u64);
        impl Drop for Unregister<'_> {
            fn drop(&mut self) {
                lock(self.0).waiters.remove(&self.1);
            }
        }
        let _unregister = Unregister(&self.inner.shared, id);
        let mut message = json!({ "execute": command, "id": id });
        match args {
            Value::Null => {}
            Value::Object(ref map) if map.is_empty() => {}
            args => message["arguments"] = args,
        }
        let mut line = message.to_string();
        line.push('\n');
        tracing::trace!(target: "cairn_qemu::qmp", path = %self.inner.path.display(), "-> {line}");
        let work = async {
            {
                let mut writer = self.inner.writer.lock().await;
                writer
                    .write_all(line.as_bytes())
                    .await
                    .map_err(|source| QmpError::Send {
                        command: command.to_owned(),
                        source,
                    })?;
            }
            match rx.await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err((class, desc))) => Err(QmpError::Command {
                    command: command.to_owned(),
                    class,
                    desc,
                }),
                Err(_) => Err(QmpError::Closed {
                    command: command.to_owned(),
                }),
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(QmpError::Timeout {
                command: command.to_owned(),
                timeout,
            }),
        }
    }

    /// Runs `command` and decodes its return value into `T`.
    pub async fn execute_as<T: serde::de::DeserializeOwned>(&self, command: &str, args: Value) -> Result<T> {
        let value = self.execute(command, args).await?;
        decode(command, value)
    }

    /// A receiver of every event from now on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.inner.shared.events.subscribe()
    }

    /// Waits up to `timeout` for an event called `name` for which `pred` is true.
    /// Only events emitted after this call are seen; to avoid missing one caused by a
    /// command, subscribe with [`Qmp::events`] before the command and use [`wait_for`].
    pub async fn wait_event(
        &self,
        name: &str,
        pred: impl Fn(&QmpEvent) -> bool,
        timeout: Duration,
    ) -> Result<QmpEvent> {
        let mut rx = self.events();
        wait_for(&mut rx, name, pred, timeout).await
    }

    // ---- typed helpers ----

    /// `query-status`.
    pub async fn query_status(&self) -> Result<RunStatus> {
        self.execute_as("query-status", Value::Null).await
    }

    /// `stop`: pauses the vCPUs.
    pub async fn stop(&self) -> Result<()> {
        self.execute("stop", Value::Null).await.map(drop)
    }

    /// `cont`: resumes the vCPUs.
    pub async fn cont(&self) -> Result<()> {
        self.execute("cont", Value::Null).await.map(drop)
    }

    /// `quit`: QEMU exits. A connection that closes before the reply counts as success.
    pub async fn quit(&self) -> Result<()> {
        match self.execute("quit", Value::Null).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_closed() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `system_powerdown`: ACPI power button.
    pub async fn system_powerdown(&self) -> Result<()> {
        self.execute("system_powerdown", Value::Null).await.map(drop)
    }

    /// `human-monitor-command`: runs an HMP command and returns its output text.
    /// HMP reports most failures in the text, not as a QMP error.
    pub async fn human_monitor_command(&self, command_line: &str) -> Result<String> {
        let value = self
            .execute("human-monitor-command", json!({ "command-line": command_line }))
            .await?;
        match value {
            Value::String(s) => Ok(s),
            other => Err(QmpError::Reply {
                command: "human-monitor-command".into(),
                reply: other.to_string(),
                detail: "expected a string".into(),
            }),
        }
    }

    /// `qom-get`.
    pub async fn qom_get(&self, path: &str, property: &str) -> Result<Value> {
        self.execute("qom-get", json!({ "path": path, "property": property }))
            .await
    }

    /// `qom-list`.
    pub async fn qom_list(&self, path: &str) -> Result<Vec<QomProperty>> {
        self.execute_as("qom-list", json!({ "path": path })).await
    }

    /// `query-block-exports`.
    pub async fn query_block_exports(&self) -> Result<Vec<BlockExportInfo>> {
        self.execute_as("query-block-exports", Value::Null).await
    }

    /// `query-block-jobs`.
    pub async fn query_block_jobs(&self) -> Result<Vec<BlockJobInfo>> {
        self.execute_as("query-block-jobs", Value::Null).await
    }

    /// `block-dirty-bitmap-add`.
    pub async fn bitmap_add(&self, node: &str, name: &str, persistent: bool, disabled: bool) -> Result<()> {
        let args = json!({ "node": node, "name": name, "persistent": persistent, "disabled": disabled });
        self.execute("block-dirty-bitmap-add", args).await.map(drop)
    }

    /// `block-dirty-bitmap-remove` (also deletes a persistent bitmap from the image).
    pub async fn bitmap_remove(&self, node: &str, name: &str) -> Result<()> {
        self.execute("block-dirty-bitmap-remove", json!({ "node": node, "name": name }))
            .await
            .map(drop)
    }

    /// `blockdev-add` with the given options object.
    pub async fn blockdev_add(&self, options: Value) -> Result<()> {
        self.execute("blockdev-add", options).await.map(drop)
    }

    /// `blockdev-del`.
    pub async fn blockdev_del(&self, node: &str) -> Result<()> {
        self.execute("blockdev-del", json!({ "node-name": node }))
            .await
            .map(drop)
    }

    /// `block-job-cancel` with `force` (a paused or ready job ends at once too).
    pub async fn block_job_cancel(&self, job: &str) -> Result<()> {
        self.execute("block-job-cancel", json!({ "device": job, "force": true }))
            .await
            .map(drop)
    }

    /// `block-export-del` in `hard` mode (connected clients are dropped). The export
    /// disappears asynchronously: poll [`Qmp::query_block_exports`] or wait for
    /// `BLOCK_EXPORT_DELETED`.
    pub async fn block_export_del(&self, id: &str) -> Result<()> {
        self.execute("block-export-del", json!({ "id": id, "mode": "hard" }))
            .await
            .map(drop)
    }

    /// `nbd-server-start` on a Unix socket.
    pub async fn nbd_server_start_unix(&self, socket: &Path) -> Result<()> {
        let args = json!({ "addr": { "type": "unix", "data": { "path": socket.to_string_lossy() } } });
        self.execute("nbd-server-start", args).await.map(drop)
    }

    /// `nbd-server-stop`.
    pub async fn nbd_server_stop(&self) -> Result<()> {
        self.execute("nbd-server-stop", Value::Null).await.map(drop)
    }

    /// `transaction` of `actions` (each `{"type": ..., "data": {...}}`): all or nothing.
    pub async fn transaction(&self, actions: Vec<Value>) -> Result<()> {
        self.execute("transaction", json!({ "actions": actions }))
            .await
            .map(drop)
    }
}

/// Waits on `rx` up to `timeout` for an event called `name` for which `pred` is true.
pub async fn wait_for(
    rx: &mut broadcast::Receiver<QmpEvent>,
    name: &str,
    pred: impl Fn(&QmpEvent) -> bool,
    timeout: Duration,
) -> Result<QmpEvent> {
    let work = async {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.event == name && pred(&ev) => return Ok(ev),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(target: "cairn_qemu::qmp", "event receiver lagged, {n} events lost");
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(QmpError::EventClosed { event: name.to_owned() });
                }
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| QmpError::EventTimeout {
            event: name.to_owned(),
            timeout,
        })?
}

fn decode<T: serde::de::DeserializeOwned>(command: &str, value: Value) -> Result<T> {
    serde_json::from_value(value.clone()).map_err(|e| QmpError::Reply {
        command: command.to_owned(),
        reply: truncate(value.to_string()),
        detail: e.to_string(),
    })
}

pub(crate) fn truncate(mut s: String) -> String {
    if s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Reads one newline-terminated JSON value; `Ok(None)` at end of stream.
async fn read_json_line(reader: &mut BufReader<OwnedReadHalf>) -> std::result::Result<Option<Value>, String> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut *reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(None);
        }
        if buf.len() >= MAX_LINE && buf.last() != Some(&b'\n') {
            return Err(format!("line longer than {MAX_LINE} bytes"));
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        return serde_json::from_str(text)
            .map(Some)
            .map_err(|e| format!("invalid JSON {}: {e}", truncate(text.into())));
    }
}

async fn read_loop(mut reader: BufReader<OwnedReadHalf>, shared: Arc<Shared>, path: PathBuf) {
    loop {
        match read_json_line(&mut reader).await {
            Ok(Some(msg)) => dispatch(&shared, msg, &path),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(target: "cairn_qemu::qmp", path = %path.display(), "QMP read failed: {e}");
                break;
            }
        }
    }
    let mut pending = lock(&shared);
    pending.closed = true;
    // Dropping the senders wakes every waiter with "connection closed".
    pending.waiters.clear();
}

fn dispatch(shared: &Shared, msg: Value, path: &Path) {
    tracing::trace!(target: "cairn_qemu::qmp", path = %path.display(), "<- {msg}");
    if msg.get("event").is_some() {
        match serde_json::from_value::<QmpEvent>(msg) {
            Ok(ev) => {
                // No receivers is fine.
                let _ = shared.events.send(ev);
            }
            Err(e) => tracing::warn!(target: "cairn_qemu::qmp", "malformed QMP event: {e}"),
        }
        return;
    }
    let Some(id) = msg.get("id").and_then(Value::as_u64) else {
        let text = truncate(msg.to_string());
        tracing::warn!(target: "cairn_qemu::qmp", path = %path.display(), "QMP message without id: {text}");
        return;
    };
    let reply: Reply = if let Some(ret) = msg.get("return") {
        Ok(ret.clone())
    } else if let Some(err) = msg.get("error") {
        Err((
            err["class"].as_str().unwrap_or("GenericError").to_owned(),
            err["desc"].as_str().unwrap_or("(no description)").to_owned(),
        ))
    } else {
        Err((
            "InvalidReply".into(),
            format!("reply without return or error: {}", truncate(msg.to_string())),
        ))
    };
    let waiter = lock(shared).waiters.remove(&id);
    if let Some(tx) = waiter {
        let _ = tx.send(reply);
    } else {
        tracing::debug!(target: "cairn_qemu::qmp", "reply to id {id} after its caller gave up");
    }
}
