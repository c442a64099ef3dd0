//! Helpers shared by the NBD tests: tool checks, qemu-img/qemu-io wrappers,
//! a `qemu-nbd` process guard, test images with known contents, and an
//! in-memory writable export.
#![allow(dead_code)]

use std::io;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_nbd::{Endpoint, ExportBackend, StatusExtent};

/// Panics naming the package unless `tool` is on PATH: these tests never skip.
pub fn require(tool: &str) {
    let package = match tool {
        "qemu-img" | "qemu-io" | "qemu-nbd" => "qemu-utils",
        "nbdinfo" | "nbdcopy" => "libnbd-bin",
        "nbdkit" => "nbdkit",
        "qemu-storage-daemon" => "qemu-system-common",
        _ => "?",
    };
    assert!(
        cairn_testkit::tools::installed(tool, &[]),
        "{tool} is needed by this test but is not installed: apt-get install {package} \
         (scripts/test.sh installs it)"
    );
}

pub use cairn_testkit::tools::run;

/// Runs a tool after checking it is installed.
pub fn tool(name: &str, args: &[&str]) -> String {
    require(name);
    run(Command::new(name).args(args))
}

/// `p` as UTF-8 (test paths always are).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Polls `f` every 10 ms until it returns true, panicking after 30 s.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the tests use it at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// A running NBD server process (`qemu-nbd`, `nbdkit`), killed when dropped.
pub struct Peer {
    child: Child,
    name: String,
    /// Where it listens.
    pub ep: Endpoint,
}

impl Peer {
    /// Starts `program ARGS` and waits until a full handshake with `export`
    /// at `ep` works (or, when `export` is None, until the Unix socket exists).
    pub fn start(program: &str, args: &[String], ep: Endpoint, export: Option<&str>) -> Self {
        require(program);
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let mut p = Peer {
            child,
            name: program.to_string(),
            ep,
        };
        wait_until(&format!("{program} to listen"), || {
            p.check_alive();
            match (export, &p.ep) {
                (Some(x), ep) => probe(ep, x),
                (None, Endpoint::Unix(path)) => path.exists(),
                (None, Endpoint::Tcp(_)) => panic!("TCP peers need an export to probe"),
            }
        });
        p
    }

    /// `qemu-nbd ARGS IMAGE` on a Unix socket (`-k`), persistent, shared by up to 8 clients.
    pub fn qemu_nbd_unix(socket: &Path, args: &[&str], image: &Path) -> Self {
        Peer::qemu_nbd(&["-k", s(socket)], args, image, Endpoint::Unix(socket.to_path_buf()))
    }

    /// `qemu-nbd ARGS IMAGE` on TCP 127.0.0.1 (a free port).
    pub fn qemu_nbd_tcp(args: &[&str], image: &Path) -> Self {
        let port = free_port().to_string();
        Peer::qemu_nbd(
            &["-b", "127.0.0.1", "-p", &port],
            args,
            image,
            Endpoint::Tcp(format!("127.0.0.1:{port}")),
        )
    }

    /// `qemu-nbd LISTEN ARGS IMAGE`, persistent, shared by up to 8 clients, reached at `endpoint`.
    fn qemu_nbd(listen: &[&str], args: &[&str], image: &Path, endpoint: Endpoint) -> Self {
        let mut a: Vec<String> = ["-t", "-e", "8"].iter().chain(listen).map(|x| x.to_string()).collect();
        a.extend(args.iter().map(|x| x.to_string()));
        a.push(s(image).to_string());
        Peer::start("qemu-nbd", &a, endpoint, Some(export_arg(args)))
    }

    /// `nbdkit -f -U SOCKET ARGS` (foreground); `export` as for [`Peer::start`].
    pub fn nbdkit_unix(socket: &Path, args: &[&str], export: Option<&str>) -> Self {
        let mut a: Vec<String> = ["-f", "-U", s(socket)].iter().map(|x| x.to_string()).collect();
        a.extend(args.iter().map(|x| x.to_string()));
        Peer::start("nbdkit", &a, Endpoint::Unix(socket.to_path_buf()), export)
    }

    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early: {status}", self.name);
        }
    }
}

/// The export named by `-x NAME` in qemu-nbd arguments ("" without one).
fn export_arg<'a>(args: &[&'a str]) -> &'a str {
    args.iter().position(|a| *a == "-x").map(|i| args[i + 1]).unwrap_or("")
}

/// True when a full handshake with `export` works (a bare connect-and-close
/// makes the servers log errors).
fn probe(ep: &Endpoint, export: &str) -> bool {
    let opts = cairn_nbd::ClientOptions {
        export: export.to_string(),
        ..Default::default()
    };
    match cairn_nbd::NbdClient::connect(ep, &opts) {
        Ok(c) => c.disconnect().is_ok(),
        Err(_) => false,
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test image holds: (offset, length, byte pattern) writes, in order.
pub const WRITES: &[(u64, u64, u8)] = &[
    (0, 65536, 0x11),
    (200_000, 70_000, 0x22),
    (3 << 20, 1 << 20, 0x33),
    ((33 << 20) - 4096, 12288, 0x44), // straddles the 32 MiB read split
    ((40 << 20) - 65536, 65536, 0x55),
];
/// A range zeroed after the writes (a qcow2 zero cluster inside data).
pub const ZEROED: (u64, u64) = ((3 << 20) + 65536, 131072);
/// Size of the test image.
pub const IMAGE_SIZE: u64 = 40 << 20;

/// Creates a 40 MiB qcow2 at `path` with [`WRITES`] and [`ZEROED`] applied,
/// and returns the bytes it must read as.
pub fn make_qcow2(path: &Path) -> Vec<u8> {
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(path), &IMAGE_SIZE.to_string()],
    );
    let mut cmds: Vec<String> = Vec::new();
    let mut expected = vec![0u8; IMAGE_SIZE as usize];
    for &(o, l, p) in WRITES {
        cmds.push(format!("write -q -P {p} {o} {l}"));
        expected[o as usize..(o + l) as usize].fill(p);
    }
    cmds.push(format!("write -q -z {} {}", ZEROED.0, ZEROED.1));
    expected[ZEROED.0 as usize..(ZEROED.0 + ZEROED.1) as usize].fill(0);
    qemu_io(path, "qcow2", &cmds);
    expected
}

/// Runs `qemu-io -f FORMAT -c CMD... TARGET`.
pub fn qemu_io(target: &Path, format: &str, cmds: &[String]) -> String {
    require("qemu-io");
    let mut c = Command::new("qemu-io");
    c.args(["-f", format]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(target);
    run(&mut c)
}

/// Converts `image` to raw with qemu-img and returns the bytes.
pub fn qemu_raw(image: &Path, format: &str) -> Vec<u8> {
    let out = image.with_extension("converted.raw");
    tool("qemu-img", &["convert", "-f", format, "-O", "raw", s(image), s(&out)]);
    let bytes = std::fs::read(&out).expect("read converted image");
    let _ = std::fs::remove_file(&out);
    bytes
}

/// The extents `qemu-img map --output=json` marks as data, merged.
pub fn qemu_data_map(image: &Path, format: &str) -> Vec<(u64, u64)> {
    let json = tool("qemu-img", &["map", "--output=json", "-f", format, s(image)]);
    let mut out: Vec<(u64, u64)> = Vec::new();
    // One object per line: {"start": N, "length": N, "depth": 0, "present": true, "zero": false, "data": true, ...}
    for line in json.lines() {
        let field = |name: &str| -> Option<&str> {
            let i = line.find(&format!("\"{name}\":"))?;
            let rest = line[i + name.len() + 3..].trim_start();
            Some(rest.split([',', '}']).next()?.trim())
        };
        let (Some(start), Some(length), Some(data)) = (field("start"), field("length"), field("data")) else {
            continue;
        };
        if data != "true" {
            continue;
        }
        let (start, length): (u64, u64) = (start.parse().unwrap(), length.parse().unwrap());
        match out.last_mut() {
            Some(last) if last.0 + last.1 == start => last.1 += length,
            _ => out.push((start, length)),
        }
    }
    out
}

/// A writable in-memory export.
pub struct MemExport {
    pub data: Mutex<Vec<u8>>,
}

impl MemExport {
    pub fn new(data: Vec<u8>) -> Self {
        MemExport { data: Mutex::new(data) }
    }
}

impl ExportBackend for MemExport {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn writable(&self) -> bool {
        true
    }
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.data.lock().unwrap();
        d[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// A read-only export whose block status alternates data and hole every
/// `step` bytes (to make replies long), reading as `i % 251` where data.
pub struct Striped {
    pub size: u64,
    pub step: u64,
}

impl ExportBackend for Striped {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = if (at / self.step).is_multiple_of(2) {
                (at % 251) as u8
            } else {
                0
            };
        }
        Ok(())
    }
    fn block_status(&self, offset: u64, length: u64) -> io::Result<Vec<StatusExtent>> {
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < offset + length {
            let next = ((pos / self.step) + 1) * self.step;
            let flags = if (pos / self.step).is_multiple_of(2) { 0 } else { 3 };
            out.push(StatusExtent {
                offset: pos,
                length: next.min(offset + length) - pos,
                flags,
            });
            pos = next;
        }
        Ok(out)
    }
}
