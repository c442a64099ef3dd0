//! Network test support for cairn (dev-only): Linux network namespaces, joined by veth pairs, by
//! a "LAN" (a bridge in a namespace of its own) or by an emulated link with delay and loss, and
//! ways to run commands and code inside a namespace. Everything made is deleted on drop, even
//! when a test fails.
//!
//! Needs root and iproute2 (`ip`); [`require_root_and_iproute2`] (called by every constructor)
//! panics with the reason when either is missing, so tests fail loudly instead of skipping.
//!
//! Why an emulated link: the kernel these tests run on has no `sch_netem`
//! (CONFIG_NET_SCH_NETEM is off and there are no modules), so `tc qdisc add … netem` fails with
//! "Specified qdisc kind is unknown". The emulator does what netem does at the IP layer: a TUN
//! device in each namespace, and per direction a thread that drops packets at random with the
//! given probability and releases the others after the given delay, with netem's default queue
//! limit of 1000 packets.
//!
//! ```no_run
//! use cairn_testnet::{Lan, Link, LinkKind, Netns};
//! let a = Netns::new("a");
//! let b = Netns::new("b");
//! let mut lan = Lan::new("lan");
//! lan.join(&a, "10.1.0.1/24");
//! lan.join(&b, "10.1.0.2/24");
//! let data = Link::new(&a, "10.2.0.1/24", &b, "10.2.0.2/24", LinkKind::Veth);
//! let out = a.command("ping").args(["-c1", "10.2.0.2"]).output().unwrap();
//! assert!(out.status.success());
//! data.set_a_up(false); // a cut link
//! ```
#![warn(missing_docs)]

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The sender's address of a [`NetPair`].
pub const SENDER_IP: &str = "10.77.0.1";
/// The receiver's address of a [`NetPair`].
pub const RECEIVER_IP: &str = "10.77.0.2";

/// Runs a command (program and arguments), panicking with its output when it fails.
#[track_caller]
pub fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?}: {e} (needs iproute2: apt-get install iproute2)",
            args[0]
        )
    });
    assert!(
        out.status.success(),
        "{} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Panics (never skips) when not running as root or when iproute2 is missing.
pub fn require_root_and_iproute2() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests make network namespaces and need root (running as uid {euid}); they fail rather than skip"
    );
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("`ip -V` failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("`ip` not found ({e}): these tests need iproute2 (apt-get install iproute2) and root"),
    }
}

/// A number unique within this process, for names.
fn next_id() -> usize {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A new interface name (at most 15 bytes): `c` + `kind` + pid + `x` + counter.
fn interface_name(kind: char) -> String {
    let name = format!("c{kind}{}x{}", std::process::id(), next_id());
    assert!(name.len() <= 15, "interface name {name} too long");
    name
}

/// Sets interface `dev` of namespace `ns` up or down.
#[track_caller]
pub fn set_link(ns: &str, dev: &str, up: bool) {
    run(&["ip", "-n", ns, "link", "set", dev, if up { "up" } else { "down" }]);
}

/// A named network namespace (`ip netns add`), with its loopback up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace named `cairn-TAG-PID-N` (unique to this process and call).
    #[track_caller]
    pub fn new(tag: &str) -> Netns {
        require_root_and_iproute2();
        let name = format!("cairn-{tag}-{}-{}", std::process::id(), next_id());
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`: a command that runs `program` inside this namespace (add its
    /// arguments to the result). `ip` execs the program itself, so the child's pid is the
    /// program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a new thread inside this namespace (sockets it creates live there).
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        in_netns(&self.name, f)
    }

    /// Sets interface `dev` of this namespace up or down.
    #[track_caller]
    pub fn set_link(&self, dev: &str, up: bool) {
        set_link(&self.name, dev, up);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes the interfaces in it (and a veth's peer with it).
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
    }
}

/// Runs `f` on a new thread inside network namespace `ns` (sockets it creates live there).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(&path);
        f()
    })
}

fn enter_netns(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns with a valid namespace fd changes only the calling thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// How two namespaces are joined.
#[derive(Debug, Clone, Copy)]
pub enum LinkKind {
    /// A veth pair: the kernel's own link, no impairment.
    Veth,
    /// TUN devices and a user-space link with this one-way delay and loss probability, applied
    /// in each direction (like netem on both ends of a veth pair).
    Emulated {
        /// One-way delay of every packet.
        delay: Duration,
        /// Probability (0..=1) that a packet is dropped, per direction.
        loss: f64,
    },
}

/// A point-to-point link between two namespaces; removed on drop (the namespaces stay, so a
/// link can be replaced by another kind).
pub struct Link {
    a_ns: String,
    a_if: String,
    b_ns: String,
    b_if: String,
    veth: bool,
    emulator: Option<Emulator>,
}

impl Link {
    /// Joins `a` and `b`: side a gets address `a_cidr` (e.g. `10.2.0.1/24`), side b `b_cidr`;
    /// both interfaces are up.
    #[track_caller]
    pub fn new(a: &Netns, a_cidr: &str, b: &Netns, b_cidr: &str, kind: LinkKind) -> Link {
        let mut link = Link {
            a_ns: a.name.clone(),
            a_if: interface_name('a'),
            b_ns: b.name.clone(),
            b_if: interface_name('b'),
            veth: matches!(kind, LinkKind::Veth),
            emulator: None,
        };
        match kind {
            LinkKind::Veth => {
                run(&[
                    "ip", "link", "add", &link.a_if, "type", "veth", "peer", "name", &link.b_if,
                ]);
                run(&["ip", "link", "set", &link.a_if, "netns", &link.a_ns]);
                run(&["ip", "link", "set", &link.b_if, "netns", &link.b_ns]);
            }
            LinkKind::Emulated { delay, loss } => {
                let fa = open_tun_in(&link.a_ns, &link.a_if);
                let fb = open_tun_in(&link.b_ns, &link.b_if);
                link.emulator = Some(Emulator::start(fa, fb, delay, loss));
            }
        }
        for (ns, dev, cidr) in [(&link.a_ns, &link.a_if, a_cidr), (&link.b_ns, &link.b_if, b_cidr)] {
            run(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev]);
            set_link(ns, dev, true);
        }
        link
    }

    /// Side a's interface name (in a's namespace).
    pub fn a_if(&self) -> &str {
        &self.a_if
    }

    /// Side b's interface name (in b's namespace).
    pub fn b_if(&self) -> &str {
        &self.b_if
    }

    /// Sets side a's interface down (a cut link: nothing passes either way) or up again.
    #[track_caller]
    pub fn set_a_up(&self, up: bool) {
        set_link(&self.a_ns, &self.a_if, up);
    }

    /// Sets side b's interface down or up again.
    #[track_caller]
    pub fn set_b_up(&self, up: bool) {
        set_link(&self.b_ns, &self.b_if, up);
    }

    /// Packets the emulator dropped on purpose (0 for a veth pair).
    pub fn dropped(&self) -> usize {
        self.emulator.as_ref().map_or(0, |e| e.dropped.load(Ordering::Relaxed))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(e) = self.emulator.take() {
            // Closing the TUN devices' descriptors removes the devices.
            e.stop();
        }
        if self.veth {
            // Deleting one end deletes both; fails quietly when the namespace is gone already.
            let _ = Command::new("ip")
                .args(["-n", &self.a_ns, "link", "del", &self.a_if])
                .output();
        }
    }
}

/// A LAN: a bridge in a namespace of its own, and a veth "cable" from it to each member
/// namespace. Deleted on drop (with the bridge's namespace go all cables).
pub struct Lan {
    ns: Netns,
    bridge: String,
    ports: Vec<(String, String)>,
}

impl Lan {
    /// A new, empty LAN.
    #[track_caller]
    pub fn new(tag: &str) -> Lan {
        let ns = Netns::new(tag);
        let bridge = "br0".to_string();
        run(&["ip", "-n", ns.name(), "link", "add", &bridge, "type", "bridge"]);
        set_link(ns.name(), &bridge, true);
        Lan {
            ns,
            bridge,
            ports: Vec::new(),
        }
    }

    /// Cables `member` to the bridge with address `cidr` (e.g. `10.1.0.2/24`) on its side;
    /// returns the member's interface name.
    #[track_caller]
    pub fn join(&mut self, member: &Netns, cidr: &str) -> String {
        let inner = interface_name('l');
        let outer = interface_name('p');
        run(&["ip", "link", "add", &inner, "type", "veth", "peer", "name", &outer]);
        run(&["ip", "link", "set", &inner, "netns", member.name()]);
        run(&["ip", "link", "set", &outer, "netns", self.ns.name()]);
        run(&[
            "ip",
            "-n",
            self.ns.name(),
            "link",
            "set",
            &outer,
            "master",
            &self.bridge,
        ]);
        set_link(self.ns.name(), &outer, true);
        run(&["ip", "-n", member.name(), "addr", "add", cidr, "dev", &inner]);
        set_link(member.name(), &inner, true);
        self.ports.push((member.name().to_string(), inner.clone()));
        inner
    }

    /// Unplugs (`up = false`) or plugs back the cable of member namespace `member`.
    #[track_caller]
    pub fn set_member_up(&self, member: &Netns, up: bool) {
        let (ns, dev) = self
            .ports
            .iter()
            .find(|(ns, _)| ns == member.name())
            .unwrap_or_else(|| panic!("{} is not on this LAN", member.name()));
        set_link(ns, dev, up);
    }

    /// The bridge's namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }
}

/// Two namespaces ("sender" [`SENDER_IP`], "receiver" [`RECEIVER_IP`], /24) joined by one link;
/// deleted on drop. What the data channel tests and benchmark of `cairn-transfer` use.
pub struct NetPair {
    /// The sender's namespace.
    pub sender_ns: String,
    /// The receiver's namespace.
    pub receiver_ns: String,
    /// The sender side's interface (for cutting the link).
    pub sender_if: String,
    // Dropped in this order: the link, then the namespaces.
    link: Link,
    _sender: Netns,
    _receiver: Netns,
}

impl NetPair {
    /// New namespaces with names unique to this process and call.
    #[track_caller]
    pub fn new(tag: &str, kind: LinkKind) -> NetPair {
        let sender = Netns::new(&format!("{tag}-s"));
        let receiver = Netns::new(&format!("{tag}-r"));
        let link = Link::new(
            &sender,
            &format!("{SENDER_IP}/24"),
            &receiver,
            &format!("{RECEIVER_IP}/24"),
            kind,
        );
        NetPair {
            sender_ns: sender.name().to_string(),
            receiver_ns: receiver.name().to_string(),
            sender_if: link.a_if().to_string(),
            link,
            _sender: sender,
            _receiver: receiver,
        }
    }

    /// Sets the sender side's interface down (a cut link) or up again.
    #[track_caller]
    pub fn set_sender_link(&self, up: bool) {
        self.link.set_a_up(up);
    }

    /// Packets the emulator dropped on purpose (0 for a veth pair).
    pub fn dropped(&self) -> usize {
        self.link.dropped()
    }
}

/// `_IOW('T', 202, int)`
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates TUN device `name` inside namespace `ns` (the device lives where it was created).
fn open_tun_in(ns: &str, name: &str) -> OwnedFd {
    let name = name.to_string();
    in_netns(ns, move || {
        // SAFETY: plain open(2) of a device node; the fd is owned right away.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        assert!(fd >= 0, "open /dev/net/tun: {}", std::io::Error::last_os_error());
        // SAFETY: fd was just opened and is not owned elsewhere.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq-sized struct we own.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) };
        assert_eq!(rc, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
        fd
    })
    .join()
    .expect("TUN thread")
}

/// Netem's default queue limit, in packets.
const QUEUE_LIMIT: usize = 1000;

struct Emulator {
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

type Queue = Arc<(Mutex<VecDeque<(Instant, Vec<u8>)>>, Condvar)>;

impl Emulator {
    fn start(a: OwnedFd, b: OwnedFd, delay: Duration, loss: f64) -> Emulator {
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (a, b) = (Arc::new(a), Arc::new(b));
        let mut threads = Vec::new();
        for (i, (from, to)) in [(a.clone(), b.clone()), (b, a)].into_iter().enumerate() {
            let queue: Queue = Arc::new((Mutex::new(VecDeque::new()), Condvar::new()));
            let (q, s, d) = (queue.clone(), stop.clone(), dropped.clone());
            let seed = 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1) ^ u64::from(std::process::id());
            threads.push(std::thread::spawn(move || {
                ingress(&from, &q, &s, &d, delay, loss, seed)
            }));
            let s = stop.clone();
            threads.push(std::thread::spawn(move || egress(&to, &queue, &s)));
        }
        Emulator { stop, dropped, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Reads packets from one TUN device, drops some, queues the rest with their release time.
fn ingress(
    fd: &OwnedFd,
    queue: &Queue,
    stop: &AtomicBool,
    dropped: &AtomicUsize,
    delay: Duration,
    loss: f64,
    seed: u64,
) {
    let mut rng = seed.max(1);
    let threshold = (loss.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        // SAFETY: reading into a buffer we own, of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if rng < threshold {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (lock, cv) = &**queue;
        let mut q = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() >= QUEUE_LIMIT {
            continue; // tail drop, like netem's limit
        }
        q.push_back((Instant::now() + delay, buf[..n as usize].to_vec()));
        cv.notify_one();
    }
}

/// Writes queued packets to the other TUN device once their delay has passed.
fn egress(fd: &OwnedFd, queue: &Queue, stop: &AtomicBool) {
    let (lock, cv) = &**queue;
    while !stop.load(Ordering::Relaxed) {
        let packet = {
            let mut q = lock.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let now = Instant::now();
                match q.front() {
                    Some((at, _)) if *at <= now => break q.pop_front(),
                    Some((at, _)) => {
                        let wait = *at - now;
                        q = cv.wait_timeout(q, wait).unwrap_or_else(PoisonError::into_inner).0;
                    }
                    None => {
                        q = cv
                            .wait_timeout(q, Duration::from_millis(100))
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                }
            }
        };
        if let Some((_, p)) = packet {
            // A down interface refuses writes: the packet is lost, as on a cut link.
            // SAFETY: writing a buffer we own, of its length.
            let _ = unsafe { libc::write(fd.as_raw_fd(), p.as_ptr().cast(), p.len()) };
        }
    }
}
