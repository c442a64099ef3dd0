//! Shared helpers for cairn-qemu's tests: QEMU VMs without a guest OS under TCG,
//! disk images, guest-visible writes through HMP `qemu-io`, NBD reads with
//! `qemu-img`/`nbdinfo`, and a scripted fake guest agent for protocol tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cairn_qemu::process::QemuProcess;
use cairn_qemu::qmp::Qmp;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub const MIB: u64 = 1 << 20;
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a command and panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A qcow2 image of `size` bytes, optionally with `pattern` written over `[0, fill)`.
pub fn qcow2(path: &Path, size: u64, fill: Option<(u8, u64)>) {
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path.to_str().unwrap(), &size.to_string()],
    );
    if let Some((pattern, len)) = fill {
        run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                &format!("write -P {pattern} 0 {len}"),
                path.to_str().unwrap(),
            ],
        );
    }
}

/// The arguments of a VM without guest OS: `pc` machine, TCG, 128 MiB, no default devices.
pub fn base_argv(qmp_socket: &Path, paused: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-m",
        "128",
        "-nodefaults",
        "-display",
        "none",
        "-qmp",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("unix:{},server=on,wait=off", qmp_socket.display()));
    if paused {
        a.push("-S".into());
    }
    a
}

/// `-drive if=none,id=<drive>` + `-device virtio-blk-pci,drive=<drive>,id=<device>`.
pub fn drive_args(file: &Path, drive: &str, device: &str) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("if=none,id={drive},file={},format=qcow2", file.display()),
        "-device".into(),
        format!("virtio-blk-pci,drive={drive},id={device}"),
    ]
}

/// `-blockdev` file+qcow2 nodes (`<node>`) + `-device ide-hd` on `ide.<bus>`.
pub fn blockdev_ide_args(file: &Path, node: &str, device: &str, bus: u32) -> Vec<String> {
    vec![
        "-blockdev".into(),
        format!("driver=file,filename={},node-name={node}-file", file.display()),
        "-blockdev".into(),
        format!("driver=qcow2,file={node}-file,node-name={node}"),
        "-device".into(),
        format!("ide-hd,drive={node},id={device},bus=ide.{bus},unit=0"),
    ]
}

/// A guest agent channel with nothing behind it (no guest OS).
pub fn qga_args(socket: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=qga0,path={},server=on,wait=off", socket.display()),
        "-device".into(),
        "virtio-serial-pci,id=vser0".into(),
        "-device".into(),
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0,id=qgaport".into(),
    ]
}

/// A running test VM; dropping it kills QEMU (also when an assertion failed).
pub struct TestVm {
    pub process: QemuProcess,
    pub qmp: Qmp,
    pub qmp_socket: PathBuf,
}

pub async fn start(argv: Vec<String>, qmp_socket: &Path) -> TestVm {
    let process = QemuProcess::spawn(&argv, qmp_socket, TIMEOUT)
        .await
        .expect("start QEMU");
    let qmp = process.connect(TIMEOUT).await.expect("connect QMP");
    TestVm {
        process,
        qmp,
        qmp_socket: qmp_socket.to_owned(),
    }
}

impl TestVm {
    /// Quits QEMU cleanly (images closed, bitmaps stored).
    pub async fn quit(mut self) {
        self.process.quit(Some(&self.qmp), TIMEOUT).await.expect("quit QEMU");
    }

    /// Kills QEMU with SIGKILL.
    pub async fn crash(mut self) {
        self.process.kill().await.expect("kill QEMU");
    }
}

/// A guest-visible write through HMP `qemu-io` on drive/device `device`. HMP answers
/// with an empty text when the command ran (qemu-io's own report goes to QEMU's stdout),
/// so tests check the effect elsewhere (exports, bitmap counts).
pub async fn guest_write(qmp: &Qmp, device: &str, pattern: u8, offset: u64, len: u64) {
    let out = qmp
        .human_monitor_command(&format!("qemu-io {device} \"write -P 0x{pattern:02x} {offset} {len}\""))
        .await
        .expect("qemu-io over HMP");
    assert!(out.trim().is_empty(), "qemu-io write on {device} failed: {out}");
}

/// A model of disk content: `size` bytes built from pattern writes.
pub struct Model(pub Vec<u8>);

impl Model {
    pub fn new(size: u64) -> Self {
        Model(vec![0; size as usize])
    }
    pub fn write(&mut self, pattern: u8, offset: u64, len: u64) {
        self.0[offset as usize..(offset + len) as usize].fill(pattern);
    }
}

/// Reads a whole NBD export with `qemu-img convert -O raw`.
pub fn read_export(uri: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("export-{}.raw", std::process::id()));
    let _ = std::fs::remove_file(&out);
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", uri, out.to_str().unwrap()],
    );
    let data = std::fs::read(&out).expect("read converted export");
    let _ = std::fs::remove_file(&out);
    data
}

/// First differing offset of two buffers, for messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Extents `(offset, length, flags)` of `context` on the export (`nbdinfo --map`).
pub fn nbd_map(uri: &str, context: &str) -> Vec<(u64, u64, u32)> {
    let text = run("nbdinfo", &[&format!("--map={context}"), "--json", uri]);
    let list: Vec<Value> = serde_json::from_str(&text).expect("nbdinfo --json");
    list.iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["type"].as_u64().unwrap() as u32,
            )
        })
        .collect()
}

/// The dirty ranges (flag bit 0) of a dirty-bitmap context, merged.
pub fn dirty_ranges(uri: &str, context: &str) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (offset, length, flags) in nbd_map(uri, context) {
        if flags & 1 == 0 {
            continue;
        }
        match out.last_mut() {
            Some((o, l)) if *o + *l == offset => *l += length,
            _ => out.push((offset, length)),
        }
    }
    out
}

/// A raw NBD client attached to `export` (fixed newstyle, `NBD_OPT_EXPORT_NAME`) that
/// stays connected until dropped: a reader that is still there at teardown.
pub fn nbd_attach(socket: &Path, export: &str) -> std::os::unix::net::UnixStream {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect NBD socket");
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap(); // FIXED_NEWSTYLE | NO_ZEROES
    s.write_all(b"IHAVEOPT").unwrap();
    s.write_all(&1u32.to_be_bytes()).unwrap(); // NBD_OPT_EXPORT_NAME
    s.write_all(&(export.len() as u32).to_be_bytes()).unwrap();
    s.write_all(export.as_bytes()).unwrap();
    let mut info = [0u8; 10]; // size + transmission flags
    s.read_exact(&mut info).unwrap();
    s
}

/// Everything cairn could leave in QEMU: exports, jobs, `cairn-*` nodes, `cairn-*` bitmaps
/// other than those in `checkpoints`.
pub async fn cairn_objects(qmp: &Qmp, checkpoints: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for e in qmp.query_block_exports().await.unwrap() {
        found.push(format!("export {}", e.id));
    }
    for j in qmp.query_block_jobs().await.unwrap() {
        found.push(format!("job {}", j.device));
    }
    let nodes: Vec<Value> = qmp.execute_as("query-named-block-nodes", Value::Null).await.unwrap();
    for n in &nodes {
        let name = n["node-name"].as_str().unwrap_or("");
        if name.starts_with("cairn-") {
            found.push(format!("node {name}"));
        }
        if n["drv"] == "copy-before-write" {
            found.push(format!("filter {name}"));
        }
        for b in n["dirty-bitmaps"].as_array().into_iter().flatten() {
            if let Some(b) = b["name"].as_str()
                && b.starts_with("cairn-")
                && !checkpoints.contains(&b)
            {
                found.push(format!("bitmap {b} on {name}"));
            }
        }
    }
    found
}

/// Files in a directory.
pub fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `check` until true or the deadline (generous; no timing asserted).
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- a scripted fake guest agent (protocol tests only; real agents are in guest*.rs) ----

/// How the fake answers one command: `Some(reply)` (the whole JSON object) after `delay`,
/// or `None` for no answer.
pub type Handler = Arc<dyn Fn(&str, &Value) -> (Option<Value>, Duration) + Send + Sync>;

/// Commands the fake received, with the time of arrival.
#[derive(Clone, Default)]
pub struct AgentLog(
    pub Arc<Mutex<Vec<(String, Value, SystemTime)>>>,
    pub Arc<std::sync::atomic::AtomicUsize>,
);

impl AgentLog {
    /// How many `guest-sync-delimited` the fake answered.
    pub fn syncs(&self) -> usize {
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn commands(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|(c, _, _)| c.clone()).collect()
    }
    pub fn time_of(&self, command: &str) -> Option<SystemTime> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(c, _, _)| c == command)
            .map(|(_, _, t)| *t)
    }
}

/// A fake agent on one end of a socket pair: answers `guest-sync-delimited` as qemu-ga
/// does (0xFF then the id) and everything else through `handler`. `stale` is written
/// before the first reply (left over from a "previous client").
pub fn fake_agent(handler: Handler, stale: &[u8]) -> (UnixStream, AgentLog) {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let log = AgentLog::default();
    let log2 = log.clone();
    let stale = stale.to_vec();
    tokio::spawn(async move {
        let (mut rd, mut wr) = theirs.into_split();
        if !stale.is_empty() {
            let _ = wr.write_all(&stale).await;
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend(chunk[..n].iter().filter(|&&b| b != 0xFF));
            // One command at a time, in order, as qemu-ga does.
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let Ok(msg) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let command = msg["execute"].as_str().unwrap_or("").to_owned();
                let args = msg.get("arguments").cloned().unwrap_or(Value::Null);
                if command == "guest-sync-delimited" {
                    log2.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut reply = vec![0xFF];
                    reply.extend(json!({ "return": args["id"] }).to_string().bytes());
                    reply.push(b'\n');
                    let _ = wr.write_all(&reply).await;
                    continue;
                }
                log2.0
                    .lock()
                    .unwrap()
                    .push((command.clone(), args.clone(), SystemTime::now()));
                let (reply, delay) = handler(&command, &args);
                tokio::time::sleep(delay).await;
                if let Some(reply) = reply {
                    let mut line = reply.to_string().into_bytes();
                    line.push(b'\n');
                    let _ = wr.write_all(&line).await;
                }
            }
        }
    });
    (ours, log)
}

/// A handler answering ping, info, freeze (2 filesystems), thaw and status.
pub fn cooperative_agent() -> Handler {
    Arc::new(|command, _args| {
        let ret = match command {
            "guest-ping" => json!({}),
            "guest-fsfreeze-freeze" | "guest-fsfreeze-thaw" => json!(2),
            "guest-fsfreeze-status" => json!("thawed"),
            "guest-exec" => json!({ "pid": 7 }),
            "guest-exec-status" => json!({ "exited": true, "exitcode": 0 }),
            _ => {
                return (
                    Some(json!({ "error": { "class": "CommandNotFound", "desc": "no" } })),
                    Duration::ZERO,
                );
            }
        };
        (Some(json!({ "return": ret })), Duration::ZERO)
    })
}
