//! Test support for end-to-end tests with a real Debian guest (scripts/guest-image.sh):
//! build or reuse the cached image, boot it under TCG on a qcow2 overlay (or any drive),
//! wait for its guest agent, run workloads that write files with known SHA-256 sums,
//! check files and filesystems (in the guest and, for image files, from the host), shut
//! it down through the agent. Dropping a [`Guest`] kills its QEMU.
//!
//! Include it with `#[path = "../../cairn-qemu/tests/common/guest.rs"] mod guest;` from
//! another crate's test (it needs `cairn-qemu`, `tokio` and `serde_json`); its functions
//! panic with a message naming the cause, as test helpers do. Host tools: qemu-system-x86
//! and qemu-utils (QEMU), e2fsprogs (e2fsck, debugfs), coreutils (sha256sum).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_qemu::process::QemuProcess;
use cairn_qemu::qga::{ExecOutput, GuestAgent};
use cairn_qemu::qmp::Qmp;
use serde_json::Value;

/// Default limit for a boot to reach the guest agent (TCG on a busy machine is slow);
/// `CAIRN_GUEST_BOOT_TIMEOUT` (seconds) overrides it.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default timeout of guest agent commands (a freeze under TCG can take seconds).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a guest may take to power off after `guest-shutdown`.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);
/// The guest's memory and CPUs.
pub const MEMORY_MIB: u32 = 512;
/// Virtual CPUs of the guest.
pub const CPUS: u32 = 2;
/// The root partition's offset in the guest image (MBR, partition 1 at sector 2048).
pub const ROOT_PARTITION_OFFSET: u64 = 1 << 20;

/// The boot timeout: `CAIRN_GUEST_BOOT_TIMEOUT` seconds, else [`BOOT_TIMEOUT`].
pub fn boot_timeout() -> Duration {
    std::env::var("CAIRN_GUEST_BOOT_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(BOOT_TIMEOUT)
}

/// Panics naming the Debian package when a host tool is missing.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "the guest tests need `{tool}`: install the Debian package {package} (apt-get install -y {package})"
    );
}

/// The workspace root (the folder holding `scripts/guest-image.sh`), found upwards from
/// the including crate's manifest folder.
pub fn workspace_root() -> PathBuf {
    let start = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    start
        .ancestors()
        .find(|dir| dir.join("scripts/guest-image.sh").is_file())
        .unwrap_or_else(|| panic!("no scripts/guest-image.sh above {}", start.display()))
        .to_owned()
}

/// The cached guest image: `CAIRN_GUEST_IMAGE` if set, else what `scripts/guest-image.sh`
/// prints (it builds the image the first time, as root, in about a minute; then it is
/// reused until the script changes). Panics with the script's output when it fails.
pub fn guest_image() -> PathBuf {
    static IMAGE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut cached = IMAGE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = cached.as_ref() {
        return path.clone();
    }
    let path = match std::env::var_os("CAIRN_GUEST_IMAGE") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "CAIRN_GUEST_IMAGE={} is not a file", p.display());
            p
        }
        None => {
            let script = workspace_root().join("scripts/guest-image.sh");
            let started = Instant::now();
            let out = Command::new("bash")
                .arg(&script)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "{} failed ({}):\n{}",
                script.display(),
                out.status,
                tail_lines(&stderr, 40)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let p = PathBuf::from(line);
            assert!(
                p.is_file(),
                "{} printed {line:?}, which is not a file; its log:\n{}",
                script.display(),
                tail_lines(&stderr, 40)
            );
            if stderr.contains("built ") {
                eprintln!(
                    "guest image built in {:.1} s: {}",
                    started.elapsed().as_secs_f64(),
                    stderr.lines().last().unwrap_or("")
                );
            }
            p
        }
    };
    *cached = Some(path.clone());
    path
}

/// Runs a host command; panics with its output when it fails. Returns stdout.
pub fn host(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img info` of an image as JSON.
pub fn image_info(image: &Path) -> Value {
    let text = host(
        "qemu-img",
        &["info", "--output=json", "-U", image.to_str().expect("UTF-8 image path")],
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("qemu-img info {}: {e}: {text}", image.display()))
}

/// Creates a qcow2 overlay at `overlay` whose backing file is `base` (format probed).
pub fn create_overlay(base: &Path, overlay: &Path) {
    let base = std::fs::canonicalize(base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    let format = image_info(&base)["format"]
        .as_str()
        .unwrap_or_else(|| panic!("qemu-img info {} shows no format", base.display()))
        .to_owned();
    host(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            &format,
            "-b",
            base.to_str().expect("UTF-8 image path"),
            overlay.to_str().expect("UTF-8 overlay path"),
        ],
    );
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of a serial log file (empty when it does not exist).
pub fn serial_tail(path: &Path, n: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    tail_lines(&String::from_utf8_lossy(&bytes), n)
}

/// SHA-256 of `data` in lowercase hex (host `sha256sum`).
pub fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running sha256sum (coreutils): {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("sha256sum output");
    writer.join().expect("sha256sum writer").expect("writing to sha256sum");
    assert!(out.status.success(), "sha256sum failed");
    first_word(&String::from_utf8_lossy(&out.stdout))
}

fn first_word(text: &str) -> String {
    text.split_whitespace().next().unwrap_or("").to_owned()
}

/// `size` bytes of deterministic pseudo-random content for `seed` (xorshift64*), so a
/// test can write a file and recompute what it must contain.
pub fn pattern(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(size);
    out
}

/// The arguments of `qemu-system-x86_64` (without the program, as
/// [`QemuProcess::spawn`] takes them) for a test guest: TCG, 512 MiB, 2 CPUs, no default devices, serial
/// console to `serial_log`, `drive` (options after `-drive`, without `if`/`id`, e.g.
/// `file=disk.qcow2,format=qcow2` or `file=nbd+unix:///cairn-0?socket=/x.sock,format=raw`)
/// on virtio-blk as the boot disk, the guest agent channel on `qga_socket`, QMP on
/// `qmp_socket`, then `extra`.
pub fn guest_args(
    drive: &str,
    qmp_socket: &Path,
    qga_socket: &Path,
    serial_log: &Path,
    extra: &[String],
) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "-name".into(),
        "cairn-guest".into(),
        "-accel".into(),
        "tcg".into(),
        "-m".into(),
        MEMORY_MIB.to_string(),
        "-smp".into(),
        CPUS.to_string(),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", serial_log.display()),
        "-drive".into(),
        format!("{drive},if=none,id=disk0"),
        "-device".into(),
        "virtio-blk-pci,drive=disk0,id=vdisk0,bootindex=1".into(),
        "-chardev".into(),
        format!("socket,path={},server=on,wait=off,id=qga0", qga_socket.display()),
        "-device".into(),
        "virtio-serial-pci,id=vserial0".into(),
        "-device".into(),
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0,id=qga-port0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_socket.display()),
    ];
    argv.extend(extra.iter().cloned());
    argv
}

/// Waits until the agent on `qga_socket` answers `guest-sync-delimited` and `guest-ping`
/// (polling on one connection, so the reply comes as soon as the agent reads its port).
/// Returns the agent (commands time out after [`AGENT_TIMEOUT`]). Panics when `process`
/// ends or `timeout` passes, with the serial log's tail and QEMU's stderr.
pub async fn wait_for_agent(
    qga_socket: &Path,
    process: &mut QemuProcess,
    serial_log: &Path,
    timeout: Duration,
) -> GuestAgent {
    wait_agent(qga_socket, Some(process), serial_log, timeout).await
}

/// Like [`wait_for_agent`] for a VM this test did not start (no process to watch).
pub async fn wait_for_agent_attached(qga_socket: &Path, serial_log: &Path, timeout: Duration) -> GuestAgent {
    wait_agent(qga_socket, None, serial_log, timeout).await
}

async fn wait_agent(
    qga_socket: &Path,
    mut process: Option<&mut QemuProcess>,
    serial_log: &Path,
    timeout: Duration,
) -> GuestAgent {
    let started = Instant::now();
    let fail = |process: &Option<&mut QemuProcess>, what: String| -> ! {
        panic!(
            "{what}\n--- serial log {} (last 40 lines) ---\n{}\n--- QEMU stderr ---\n{}",
            serial_log.display(),
            serial_tail(serial_log, 40),
            process.as_ref().map(|p| p.stderr_tail()).unwrap_or_default()
        )
    };
    let agent = match GuestAgent::open(qga_socket, AGENT_TIMEOUT).await {
        Ok(agent) => agent,
        Err(e) => fail(&process, format!("opening the guest agent socket: {e}")),
    };
    let mut last_error = String::from("no answer yet");
    loop {
        if let Some(p) = process.as_deref_mut()
            && !p.is_running()
        {
            let what = format!(
                "QEMU (pid {}) ended before the guest agent answered ({last_error})",
                p.pid()
            );
            fail(&process, what);
        }
        let elapsed = started.elapsed();
        if elapsed >= timeout {
            fail(
                &process,
                format!("the guest agent did not answer within {timeout:?} ({last_error})"),
            );
        }
        let attempt = Duration::from_secs(2).min(timeout - elapsed);
        match tokio::time::timeout(attempt, agent.sync()).await {
            Ok(Ok(())) => match agent.ping().await {
                Ok(()) => return agent,
                Err(e) => last_error = format!("guest-ping: {e}"),
            },
            Ok(Err(e)) => {
                last_error = e.to_string();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => last_error = format!("guest-sync-delimited: no reply within {attempt:?}"),
        }
    }
}

/// A booted test guest. Dropping it kills QEMU.
pub struct Guest {
    /// The folder holding the overlay, sockets and serial log.
    pub dir: PathBuf,
    /// The boot disk's file (the overlay for [`Guest::boot`]; `None` for other drives).
    pub disk: Option<PathBuf>,
    /// QMP socket.
    pub qmp_socket: PathBuf,
    /// Guest agent socket.
    pub qga_socket: PathBuf,
    /// Serial console log.
    pub serial_log: PathBuf,
    /// QEMU's arguments (after `qemu-system-x86_64`).
    pub args: Vec<String>,
    /// The QEMU process, when the test started it (`None` after [`Guest::attach`]).
    pub process: Option<QemuProcess>,
    /// A QMP connection (QEMU takes one client per socket: share this one).
    pub qmp: Qmp,
    /// From starting QEMU to the first successful `guest-ping`.
    pub boot_time: Duration,
    agent: GuestAgent,
}

impl Guest {
    /// Boots `image` (any format; usually [`guest_image`] or a restored disk) through a
    /// new qcow2 overlay `dir/disk.qcow2`, so `image` stays unchanged, and waits for the
    /// guest agent. `extra` is appended to QEMU's command line.
    pub async fn boot(dir: &Path, image: &Path, extra: &[String]) -> Guest {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let overlay = dir.join("disk.qcow2");
        let _ = std::fs::remove_file(&overlay);
        create_overlay(image, &overlay);
        let drive = format!("file={},format=qcow2", overlay.display());
        let mut guest = Guest::boot_drive(dir, &drive, extra).await;
        guest.disk = Some(overlay);
        guest
    }

    /// Boots from a `-drive` specification (see [`guest_args`]; e.g. an NBD export for
    /// instant recovery, or a restored image used in place) and waits for the agent.
    pub async fn boot_drive(dir: &Path, drive: &str, extra: &[String]) -> Guest {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let qmp_socket = dir.join("qmp.sock");
        let qga_socket = dir.join("qga.sock");
        let serial_log = dir.join("serial.log");
        for stale in [&qmp_socket, &qga_socket, &serial_log] {
            let _ = std::fs::remove_file(stale);
        }
        let args = guest_args(drive, &qmp_socket, &qga_socket, &serial_log, extra);
        Guest::launch(dir, args, &qmp_socket, &qga_socket, &serial_log).await
    }

    /// Starts `qemu-system-x86_64` with `args` (which must use these sockets and serial
    /// log), connects QMP and waits for the guest agent within [`boot_timeout`].
    pub async fn launch(
        dir: &Path,
        args: Vec<String>,
        qmp_socket: &Path,
        qga_socket: &Path,
        serial_log: &Path,
    ) -> Guest {
        require_tool("qemu-system-x86_64", "qemu-system-x86");
        let started = Instant::now();
        let timeout = boot_timeout();
        let mut process = QemuProcess::spawn(&args, qmp_socket, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("starting the guest (qemu-system-x86_64 {}): {e}", args.join(" ")));
        let qmp = process
            .connect(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("connecting QMP {}: {e}", qmp_socket.display()));
        let agent = wait_for_agent(qga_socket, &mut process, serial_log, timeout).await;
        let boot_time = started.elapsed();
        eprintln!(
            "guest (pid {}) reached its agent {:.1} s after start",
            process.pid(),
            boot_time.as_secs_f64()
        );
        Guest {
            dir: dir.to_owned(),
            disk: None,
            qmp_socket: qmp_socket.to_owned(),
            qga_socket: qga_socket.to_owned(),
            serial_log: serial_log.to_owned(),
            args,
            process: Some(process),
            qmp,
            boot_time,
            agent,
        }
    }

    /// Takes over a guest QEMU that something else started (e.g. cairn restoring a VM):
    /// connects to its QMP socket, waits for its agent within [`boot_timeout`]. `serial_log`
    /// is only read for error messages. Dropping the result leaves QEMU running;
    /// [`Guest::shutdown`] waits until QEMU closes its QMP socket.
    pub async fn attach(dir: &Path, qmp_socket: &Path, qga_socket: &Path, serial_log: &Path) -> Guest {
        let started = Instant::now();
        let qmp = Qmp::connect(qmp_socket, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("connecting QMP {}: {e}", qmp_socket.display()));
        let agent = wait_for_agent_attached(qga_socket, serial_log, boot_timeout()).await;
        Guest {
            dir: dir.to_owned(),
            disk: None,
            qmp_socket: qmp_socket.to_owned(),
            qga_socket: qga_socket.to_owned(),
            serial_log: serial_log.to_owned(),
            args: Vec::new(),
            process: None,
            qmp,
            boot_time: started.elapsed(),
            agent,
        }
    }

    /// True while QEMU runs (its process, or for an attached guest its QMP connection).
    pub fn is_running(&mut self) -> bool {
        match &mut self.process {
            Some(p) => p.is_running(),
            None => !self.qmp.is_closed(),
        }
    }

    /// Waits up to `timeout` for QEMU to exit; true when it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        if let Some(p) = &mut self.process {
            return p.wait_exit(timeout).await;
        }
        let deadline = Instant::now() + timeout;
        while !self.qmp.is_closed() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// The guest agent (clones share the connection).
    pub fn agent(&self) -> &GuestAgent {
        &self.agent
    }

    /// The serial log's last `n` lines.
    pub fn serial_tail(&self, n: usize) -> String {
        serial_tail(&self.serial_log, n)
    }

    /// Runs `program` with `args` in the guest and returns what it did (no check).
    pub async fn exec(&self, program: &str, args: &[&str]) -> ExecOutput {
        self.agent
            .exec(program, args, None)
            .await
            .unwrap_or_else(|e| panic!("guest-exec {program} {args:?}: {e}"))
    }

    /// Runs a `/bin/sh -c` script in the guest; panics when it fails. Returns its stdout.
    pub async fn sh(&self, script: &str) -> String {
        let out = self.exec("/bin/sh", &["-c", script]).await;
        assert!(
            out.success(),
            "guest script failed with code {}: {script}\nstdout: {}\nstderr: {}",
            out.code,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `data` to `path` in the guest through the agent (`guest-file-write`), makes it
    /// durable (`sync`), checks the guest's `sha256sum` against the host's, and returns it.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> String {
        self.agent
            .write_file(path, data)
            .await
            .unwrap_or_else(|e| panic!("writing guest file {path}: {e}"));
        let expected = sha256_hex(data);
        let got = self
            .sh(&format!("sync {} && sha256sum {}", quote(path), quote(path)))
            .await;
        assert_eq!(
            first_word(&got),
            expected,
            "sha256 of guest file {path} after writing it"
        );
        expected
    }

    /// Writes [`pattern`]`(size, seed)` to `path` (see [`Guest::write_file`]); returns its sha256.
    pub async fn write_pattern_file(&self, path: &str, size: usize, seed: u64) -> String {
        self.write_file(path, &pattern(size, seed)).await
    }

    /// Writes `size` random bytes to `path` inside the guest (`/dev/urandom`, fast for
    /// large workloads), makes them durable and returns the guest's sha256 of the file.
    pub async fn write_random_file(&self, path: &str, size: u64) -> String {
        let p = quote(path);
        let out = self
            .sh(&format!(
                "mkdir -p \"$(dirname {p})\" && head -c {size} /dev/urandom > {p} && sync {p} && \
                 test \"$(stat -c %s {p})\" = {size} && sha256sum {p}"
            ))
            .await;
        let sum = first_word(&out);
        assert_eq!(sum.len(), 64, "sha256sum of {path} printed {out:?}");
        sum
    }

    /// Overwrites `len` bytes of an existing guest file at `offset` with random data (no
    /// truncation), syncs, and returns the file's new sha256 — a partial change for
    /// incremental backups.
    pub async fn overwrite_random(&self, path: &str, offset: u64, len: u64) -> String {
        let p = quote(path);
        let out = self
            .sh(&format!(
                "head -c {len} /dev/urandom | dd of={p} bs=64K seek={offset} oflag=seek_bytes conv=notrunc \
                 status=none && sync {p} && sha256sum {p}"
            ))
            .await;
        first_word(&out)
    }

    /// The sha256 of a guest file, `None` when it does not exist.
    pub async fn sha256(&self, path: &str) -> Option<String> {
        let p = quote(path);
        let out = self
            .sh(&format!("if [ -e {p} ]; then sha256sum {p}; else echo missing; fi"))
            .await;
        let word = first_word(&out);
        (word != "missing").then_some(word)
    }

    /// The sha256 of each guest file in `paths` (`None` when missing), by path.
    pub async fn checksums<'a>(&self, paths: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, Option<String>> {
        let mut sums = BTreeMap::new();
        for path in paths {
            sums.insert(path.to_owned(), self.sha256(path).await);
        }
        sums
    }

    /// Panics unless every file in `expected` (path → sha256) exists with that checksum.
    pub async fn assert_checksums(&self, expected: &BTreeMap<String, String>) {
        let got = self.checksums(expected.keys().map(String::as_str)).await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(path, sum)| got.get(*path).and_then(|g| g.as_ref()) != Some(*sum))
            .map(|(path, sum)| format!("{path}: expected {sum}, found {:?}", got[path]))
            .collect();
        assert!(wrong.is_empty(), "guest files differ:\n{}", wrong.join("\n"));
    }

    /// Runs `sync` in the guest.
    pub async fn sync(&self) {
        self.sh("sync").await;
    }

    /// Waits (up to 120 s) until systemd finished booting the guest (`is-system-running
    /// --wait`); returns the state (`running`, or `degraded` when a unit failed).
    pub async fn wait_booted(&self) -> String {
        let out = self
            .agent
            .exec_timeout(
                "/bin/systemctl",
                &["is-system-running", "--wait"],
                None,
                Duration::from_secs(120),
            )
            .await
            .unwrap_or_else(|e| panic!("systemctl is-system-running --wait: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The kernel's messages about the guest's filesystems and disks since boot (EXT4-fs,
    /// JBD2, I/O errors, blk_update_request, Buffer I/O).
    pub async fn fs_messages(&self) -> Vec<String> {
        let out = self.sh("dmesg").await;
        out.lines()
            .filter(|l| {
                l.contains("EXT4-fs") || l.contains("JBD2") || l.contains("I/O error") || l.contains("Buffer I/O")
            })
            .map(str::to_owned)
            .collect()
    }

    /// Whether the root filesystem's journal was replayed at this boot (true after a crash
    /// or a crash-consistent copy; false after a clean shutdown or a frozen-filesystem copy).
    pub async fn journal_recovered(&self) -> bool {
        self.fs_messages()
            .await
            .iter()
            .any(|l| l.contains("recovery complete") || l.contains("recovering journal"))
    }

    /// Panics when the kernel reported filesystem errors or I/O errors, or when the root
    /// filesystem is not mounted read-write (ext4 remounts read-only on errors).
    pub async fn assert_fs_clean(&self) {
        let bad: Vec<String> = self
            .fs_messages()
            .await
            .into_iter()
            .filter(|l| {
                let lower = l.to_lowercase();
                lower.contains("error")
                    || lower.contains("corrupt")
                    || lower.contains("remounting filesystem read-only")
            })
            .collect();
        assert!(
            bad.is_empty(),
            "the guest kernel reports filesystem problems:\n{}",
            bad.join("\n")
        );
        let options = self.sh("findmnt -no OPTIONS /").await;
        assert!(
            options.split(',').any(|o| o.trim() == "rw"),
            "the guest's root is not read-write: {options}"
        );
    }

    /// Shuts the guest down through the agent (`guest-shutdown`, after systemd finished
    /// booting) and waits for QEMU to exit; retries while the guest refuses. Returns the
    /// time from the request to QEMU's exit. Panics with the serial log's tail when QEMU
    /// does not exit within [`SHUTDOWN_TIMEOUT`].
    pub async fn shutdown(mut self) -> Duration {
        self.wait_booted().await;
        let started = Instant::now();
        let mut attempts = Vec::new();
        loop {
            match self.agent.shutdown().await {
                Ok(()) => {
                    if self.wait_exit(Duration::from_secs(30)).await {
                        break;
                    }
                    attempts.push("no exit within 30 s".to_owned());
                }
                Err(e) => {
                    attempts.push(e.to_string());
                    if !self.is_running() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            if started.elapsed() > SHUTDOWN_TIMEOUT {
                panic!(
                    "the guest did not power off within {SHUTDOWN_TIMEOUT:?} after guest-shutdown ({})\n\
                     --- serial log (last 40 lines) ---\n{}",
                    attempts.join("; "),
                    self.serial_tail(40)
                );
            }
        }
        started.elapsed()
    }

    /// Ends QEMU at once, as a power cut would (the guest gets no chance to flush): SIGKILL
    /// for a guest this test started, QMP `quit` for an attached one. Waits until it is gone.
    pub async fn kill(mut self) {
        match &mut self.process {
            Some(p) => p.kill().await.unwrap_or_else(|e| panic!("killing the guest: {e}")),
            None => {
                // QEMU may close the connection before answering.
                let _ = self.qmp.quit().await;
                assert!(
                    self.wait_exit(Duration::from_secs(30)).await,
                    "QEMU did not quit within 30 s"
                );
            }
        }
    }
}

/// Single-quotes a path for `sh -c`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Copies any image qemu-img reads (qcow2 with backing chain, raw, VHDX, `nbd+unix://…`)
/// to a sparse raw file in `scratch`; returns its path.
pub fn to_raw(image: &str, scratch: &Path) -> PathBuf {
    std::fs::create_dir_all(scratch).unwrap_or_else(|e| panic!("creating {}: {e}", scratch.display()));
    let raw = scratch.join(format!(
        "check-{}-{}.raw",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    host(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-O",
            "raw",
            image,
            raw.to_str().expect("UTF-8 scratch path"),
        ],
    );
    raw
}

/// The byte offset of the first partition in a raw disk image (from its MBR).
pub fn first_partition_offset(raw: &Path) -> u64 {
    let mut mbr = [0u8; 512];
    let mut file = std::fs::File::open(raw).unwrap_or_else(|e| panic!("opening {}: {e}", raw.display()));
    std::io::Read::read_exact(&mut file, &mut mbr).unwrap_or_else(|e| panic!("reading {}: {e}", raw.display()));
    assert_eq!(&mbr[510..], &[0x55, 0xAA], "{} has no MBR", raw.display());
    let start = u32::from_le_bytes([mbr[454], mbr[455], mbr[456], mbr[457]]);
    assert!(start > 0, "{}: partition 1 is empty", raw.display());
    u64::from(start) * 512
}

/// Runs `e2fsck -fn` (read-only, forced) on the root filesystem of `image` (a guest disk in
/// any format qemu-img reads, converted to raw in `scratch` first, then removed). `Ok`
/// with its report when clean; `Err` with the report when e2fsck found problems (also a
/// journal that needs recovery, i.e. an unclean copy).
pub fn e2fsck_image(image: &Path, scratch: &Path) -> Result<String, String> {
    require_tool("e2fsck", "e2fsprogs");
    let raw = to_raw(image.to_str().expect("UTF-8 image path"), scratch);
    let result = e2fsck_raw(&raw);
    let _ = std::fs::remove_file(&raw);
    result
}

/// Like [`e2fsck_image`] on a raw disk image in place (no copy; never written).
pub fn e2fsck_raw(raw: &Path) -> Result<String, String> {
    let offset = first_partition_offset(raw);
    let device = format!("{}?offset={offset}", raw.display());
    let out = Command::new("e2fsck")
        .args(["-f", "-n", &device])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running e2fsck (e2fsprogs): {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // With a journal to replay (an unclean copy) e2fsck -n skips the replay and says so.
    if out.status.success() && !report.contains("journal recovery") {
        Ok(report)
    } else {
        Err(format!("e2fsck -fn {device} ({}):\n{report}", out.status))
    }
}

/// Reads a file out of the root filesystem of a raw disk image with `debugfs` (never
/// written); `None` when the file does not exist.
pub fn read_file_from_raw(raw: &Path, path: &str, scratch: &Path) -> Option<Vec<u8>> {
    require_tool("debugfs", "e2fsprogs");
    let offset = first_partition_offset(raw);
    let device = format!("{}?offset={offset}", raw.display());
    let target = scratch.join(format!("debugfs-{}", std::process::id()));
    let _ = std::fs::remove_file(&target);
    let out = Command::new("debugfs")
        .args(["-R", &format!("dump {path} {}", target.display()), &device])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running debugfs (e2fsprogs): {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("File not found") {
        return None;
    }
    assert!(
        out.status.success(),
        "debugfs dump {path} from {device} failed: {stderr}"
    );
    let data = std::fs::read(&target).unwrap_or_else(|e| panic!("debugfs dump of {path}: {e}: {stderr}"));
    let _ = std::fs::remove_file(&target);
    Some(data)
}
