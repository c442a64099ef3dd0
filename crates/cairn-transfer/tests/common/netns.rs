//! Two network namespaces ("sender" 10.77.0.1, "receiver" 10.77.0.2) joined either by a veth
//! pair or by an emulated link with delay and loss, plus a way to run code inside one.
//!
//! Why an emulated link: this machine's kernel has no `sch_netem` (CONFIG_NET_SCH_NETEM is
//! off and there are no modules), so `tc qdisc add … netem` fails with "Specified qdisc kind
//! is unknown". The emulator does what netem does at the IP layer: a TUN device in each
//! namespace, and per direction a thread that drops packets at random with the given
//! probability and releases the others after the given delay, with netem's default queue
//! limit of 1000 packets. Also used by `examples/transfer_bench.rs`.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const SENDER_IP: &str = "10.77.0.1";
pub const RECEIVER_IP: &str = "10.77.0.2";

/// Runs a command, panicking with its output when it fails.
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

/// Panics (never skips) when iproute2 is missing.
pub fn require_iproute2() {
    for tool in ["ip", "tc"] {
        match Command::new(tool).arg("-V").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("`{tool} -V` failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => panic!("`{tool}` not found ({e}): these tests need iproute2 (apt-get install iproute2) and root"),
        }
    }
}

/// How the two namespaces are joined.
#[derive(Debug, Clone, Copy)]
pub enum LinkKind {
    /// A veth pair: the kernel's own link, no impairment.
    Veth,
    /// TUN devices and a user-space link with this one-way delay and loss probability, applied
    /// in each direction (like netem on both ends of a veth pair).
    Emulated { delay: Duration, loss: f64 },
}

/// The namespaces and their link; deleted on drop, even when a test fails.
pub struct NetPair {
    pub sender_ns: String,
    pub receiver_ns: String,
    /// The sender side's interface (for cutting the link).
    pub sender_if: String,
    created: Vec<String>,
    emulator: Option<Emulator>,
}

impl NetPair {
    /// New namespaces with names unique to this process and call.
    pub fn new(tag: &str, kind: LinkKind) -> NetPair {
        require_iproute2();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let mut pair = NetPair {
            sender_ns: format!("cairn-{tag}-{pid}-{n}-s"),
            receiver_ns: format!("cairn-{tag}-{pid}-{n}-r"),
            sender_if: format!("cts{pid}x{n}"),
            created: Vec::new(),
            emulator: None,
        };
        let receiver_if = format!("ctr{pid}x{n}");
        for ns in [pair.sender_ns.clone(), pair.receiver_ns.clone()] {
            run(&["ip", "netns", "add", &ns]);
            pair.created.push(ns);
        }
        let (sns, rns, sif) = (pair.sender_ns.clone(), pair.receiver_ns.clone(), pair.sender_if.clone());
        match kind {
            LinkKind::Veth => {
                run(&["ip", "link", "add", &sif, "type", "veth", "peer", "name", &receiver_if]);
                run(&["ip", "link", "set", &sif, "netns", &sns]);
                run(&["ip", "link", "set", &receiver_if, "netns", &rns]);
            }
            LinkKind::Emulated { delay, loss } => {
                let a = open_tun_in(&sns, &sif);
                let b = open_tun_in(&rns, &receiver_if);
                pair.emulator = Some(Emulator::start(a, b, delay, loss));
            }
        }
        for (ns, dev, ip) in [(&sns, &sif, SENDER_IP), (&rns, &receiver_if, RECEIVER_IP)] {
            run(&["ip", "-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Sets the sender side's interface down (a cut link) or up again.
    pub fn set_sender_link(&self, up: bool) {
        run(&[
            "ip",
            "-n",
            &self.sender_ns,
            "link",
            "set",
            &self.sender_if,
            if up { "up" } else { "down" },
        ]);
    }

    /// Packets the emulator dropped on purpose (0 for a veth pair).
    pub fn dropped(&self) -> usize {
        self.emulator.as_ref().map_or(0, |e| e.dropped.load(Ordering::Relaxed))
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        if let Some(e) = self.emulator.take() {
            e.stop();
        }
        for ns in &self.created {
            // Deleting a namespace deletes the interfaces in it (and a veth's peer with it).
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
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
    let path = format!("/var/run/netns/{ns}");
    let name = name.to_string();
    std::thread::spawn(move || {
        enter_netns(&path);
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
        let mut q = lock.lock().unwrap();
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
            let mut q = lock.lock().unwrap();
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let now = Instant::now();
                match q.front() {
                    Some((at, _)) if *at <= now => break q.pop_front(),
                    Some((at, _)) => {
                        let wait = *at - now;
                        q = cv.wait_timeout(q, wait).unwrap().0;
                    }
                    None => q = cv.wait_timeout(q, Duration::from_millis(100)).unwrap().0,
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
