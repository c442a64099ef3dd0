//! Shared pieces of the data mover tests: a CA made with rcgen, a repository with a cheap KDF, disk
//! images written by the test, and a small "backup server" that starts both data movers in this
//! process, records their events and relays the target's read plans to the source.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_format::crypto::KdfParams;
use cairn_mover::protocol::{
    Control, DiskDescription, Instruction, SourceSummary, SourceTask, TargetTask, TaskEvent, TransferEndpoint,
};
use cairn_mover::target::Committed;
use cairn_mover::{MoverError, TaskLink};
use cairn_repo::{Encryption, Method, PointMeta, Repository};
use cairn_transfer::{PeerPolicy, Receiver, ReceiverConfig, TlsIdentity, TransferId, receiver_tls_config};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Block size of every backup in these tests.
pub const BS: u64 = 1 << 20;
/// The repository's password.
pub const PASSWORD: &str = "pw";
/// The DNS name in the repository agent's certificate.
pub const AGENT_NAME: &str = "agent-2.cairn";
/// Generous limit for anything a test waits for (a hang fails the test instead).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A CA that issues data mover certificates.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert");
        Self { ca }
    }

    /// A certificate for `name` signed by this CA.
    pub fn identity(&self, name: &str) -> TlsIdentity {
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("sign leaf");
        TlsIdentity {
            ca: self.ca.der().clone(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

pub use cairn_testkit::rng::Rng;

/// `size` bytes: random data in the 1 MiB blocks listed in `random`, zeros elsewhere.
pub fn disk_content(size: u64, random: &[u64], seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; size as usize];
    let mut rng = Rng::new(seed);
    for &block in random {
        let start = (block * BS) as usize;
        let end = (start + BS as usize).min(data.len());
        rng.fill(&mut data[start..end]);
    }
    data
}

/// Overwrites block `block` of `data` with fresh random bytes.
pub fn scramble_block(data: &mut [u8], block: u64, seed: u64) {
    let start = (block * BS) as usize;
    let end = (start + BS as usize).min(data.len());
    Rng::new(seed).fill(&mut data[start..end]);
}

/// Writes `data` as a raw image file (every byte written, zeros too: every block is allocated).
pub fn write_raw(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Runs a command and panics with its output when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cheap Argon2 setting so creating and opening a repository takes no time.
pub fn cheap_kdf() -> KdfParams {
    KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        salt: "00112233445566778899aabbccddeeff".into(),
    }
}

/// Where a test's pieces live: a folder, an encrypted repository in it, the CA, the two data
/// movers' identities and the repository agent's data channel receiver.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub pki: Pki,
    /// The repository agent (target) identity.
    pub agent: Arc<TlsIdentity>,
    /// The proxy (source) identity.
    pub proxy: Arc<TlsIdentity>,
    pub receiver: Arc<Receiver>,
    next_task: AtomicU64,
}

impl Site {
    pub async fn new() -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = dir.path().join("repo");
        Repository::init(
            &repo,
            Encryption::Aes256Gcm,
            Some(PASSWORD.as_bytes()),
            Some(cheap_kdf()),
        )
        .expect("init repository");
        let pki = Pki::new("cairn test CA");
        let agent = Arc::new(pki.identity(AGENT_NAME));
        let proxy = Arc::new(pki.identity("proxy-1.cairn"));
        let tls = receiver_tls_config(&agent, PeerPolicy::default()).expect("receiver TLS");
        let receiver = Receiver::bind("127.0.0.1:0".parse().expect("address"), ReceiverConfig::new(tls))
            .await
            .expect("bind receiver");
        Site {
            dir,
            repo,
            pki,
            agent,
            proxy,
            receiver: Arc::new(receiver),
            next_task: AtomicU64::new(1),
        }
    }

    /// A path in the test folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn task_number(&self) -> u64 {
        self.next_task.fetch_add(1, Ordering::SeqCst)
    }

    /// The repository, opened afresh.
    pub fn open_repo(&self) -> Repository {
        Repository::open(&self.repo, Some(PASSWORD.as_bytes())).expect("open repository")
    }

    /// The restore points of `vm`, oldest first (none when the VM has no chain yet).
    pub fn points(&self, vm: &str) -> Vec<PointMeta> {
        let repo = self.open_repo();
        let has_chain = repo
            .list()
            .expect("list chains")
            .into_iter()
            .any(|c| c.map(|c| c.vm == vm).unwrap_or(false));
        if !has_chain {
            return Vec::new();
        }
        repo.chain(vm).expect("open chain").meta().points.clone()
    }

    /// Restores disk `disk` of `point` of `vm` to a raw file and returns its bytes.
    pub fn restore(&self, vm: &str, point: &str, disk: u32) -> Vec<u8> {
        let repo = self.open_repo();
        let to = self.path(&format!("restored-{vm}-{point}-{disk}-{}.raw", self.task_number()));
        cairn_engine::restore(
            &repo,
            vm,
            point,
            disk,
            &to,
            &cairn_engine::RestoreTarget::default(),
            &|_| {},
        )
        .unwrap_or_else(|e| panic!("restore {vm} {point} disk {disk}: {e}"));
        let data = std::fs::read(&to).expect("read restored image");
        std::fs::remove_file(&to).expect("remove restored image");
        data
    }
}

/// A data mover's link to the test server: records every event, answers with a settable
/// [`Control`], and (for a target) relays read plans to the source as the server would.
pub struct Link {
    pub events: Mutex<Vec<TaskEvent>>,
    pub control: Mutex<Control>,
    relay: Option<(u64, mpsc::UnboundedSender<Instruction>)>,
}

impl Link {
    pub fn new(relay: Option<(u64, mpsc::UnboundedSender<Instruction>)>) -> Arc<Link> {
        Arc::new(Link {
            events: Mutex::new(Vec::new()),
            control: Mutex::new(Control::default()),
            relay,
        })
    }

    pub fn events(&self) -> Vec<TaskEvent> {
        self.events.lock().expect("events").clone()
    }

    /// The first recorded event `pick` maps to something, waiting for it (fails after the deadline).
    pub async fn wait_for<T>(&self, what: &str, pick: impl Fn(&TaskEvent) -> Option<T>) -> T {
        let give_up = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(found) = self.events.lock().expect("events").iter().find_map(&pick) {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "no {what} event within {DEADLINE:?}; events: {:#?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The read plans the target announced, as `(disk, runs)`.
    pub fn read_plans(&self) -> Vec<(u32, Vec<[u64; 2]>)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                TaskEvent::ReadPlan { disk, runs } => Some((disk, runs)),
                _ => None,
            })
            .collect()
    }
}

impl TaskLink for Link {
    fn emit(&self, event: TaskEvent) {
        if let (Some((task, to_source)), TaskEvent::ReadPlan { disk, runs }) = (&self.relay, &event) {
            // The source may have ended already (a failed test shows it elsewhere).
            let _ = to_source.send(Instruction::ReadPlan {
                task: *task,
                disk: *disk,
                runs: runs.clone(),
            });
        }
        self.events.lock().expect("events").push(event);
    }

    fn control(&self) -> Control {
        self.control.lock().expect("control").clone()
    }
}

/// How a backup is set up.
pub struct BackupSpec {
    pub vm: String,
    pub disks: Vec<PathBuf>,
    pub write_rate: Option<u64>,
    /// The source's network rate limit at the start.
    pub network_rate: Option<u64>,
    pub retention: u32,
    /// The fingerprint the target accepts (`None` = the proxy's own).
    pub source_fingerprint: Option<String>,
    pub streams: u16,
    /// Block size of the backup (the VM's chain keeps the one of its first backup).
    pub block_size: u32,
}

impl BackupSpec {
    pub fn new(vm: &str, disks: &[&Path]) -> BackupSpec {
        BackupSpec {
            vm: vm.to_string(),
            disks: disks.iter().map(|p| p.to_path_buf()).collect(),
            write_rate: None,
            network_rate: None,
            retention: 10,
            source_fingerprint: None,
            streams: 3,
            block_size: BS as u32,
        }
    }
}

/// A backup in flight: both data movers running, linked by the test server.
pub struct Running {
    pub source: JoinHandle<Result<SourceSummary, MoverError>>,
    pub target: JoinHandle<Result<Committed, MoverError>>,
    pub source_link: Arc<Link>,
    pub target_link: Arc<Link>,
    pub to_source: mpsc::UnboundedSender<Instruction>,
    pub to_target: mpsc::UnboundedSender<Instruction>,
    pub source_task: u64,
    pub described: Vec<DiskDescription>,
}

/// What both ends of a backup returned, and what they reported.
pub struct Outcome {
    pub source: Result<SourceSummary, MoverError>,
    pub target: Result<Committed, MoverError>,
    pub source_events: Vec<TaskEvent>,
    pub target_events: Vec<TaskEvent>,
}

impl Outcome {
    /// The target's `Committed` event as `(point, kind, notes)`; panics with both ends' results
    /// when the backup did not commit.
    pub fn committed(&self) -> (String, String, Vec<String>) {
        let found = self.target_events.iter().find_map(|e| match e {
            TaskEvent::Committed { point, kind, notes, .. } => Some((point.clone(), kind.clone(), notes.clone())),
            _ => None,
        });
        match (found, &self.target, &self.source) {
            (Some(c), Ok(_), Ok(_)) => c,
            (c, t, s) => panic!(
                "the backup did not commit cleanly: event {c:?}, target {t:?}, source {s:?}; events: {:#?}",
                self.target_events
            ),
        }
    }

    pub fn summary(&self) -> &SourceSummary {
        self.source.as_ref().expect("source summary")
    }

    /// Blocks the target planned to read, per disk.
    pub fn planned_blocks(&self, disk: u32) -> Vec<u64> {
        let runs: Vec<[u64; 2]> = self
            .target_events
            .iter()
            .filter_map(|e| match e {
                TaskEvent::ReadPlan { disk: d, runs } if *d == disk => Some(runs.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        cairn_mover::protocol::runs_to_blocks(&runs, u64::MAX).expect("plan blocks")
    }
}

/// Awaits a data mover's task, failing the test instead of hanging.
pub async fn join<T>(what: &str, handle: JoinHandle<T>) -> T {
    match tokio::time::timeout(DEADLINE, handle).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("the {what} task panicked: {e}"),
        Err(_) => panic!("the {what} did not end within {DEADLINE:?}"),
    }
}

/// Bounds any future by the deadline.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {DEADLINE:?}"))
}

/// Starts a backup as the server would: the source first; once it described the disks, the
/// target (with those descriptions), its read plans relayed to the source.
pub async fn start_backup(site: &Site, spec: BackupSpec) -> Running {
    let transfer = TransferId::random().to_string();
    let mut source = source_task(site, &spec.vm, &spec.disks, &transfer, spec.streams);
    source.block_size = spec.block_size;
    source.network_rate = spec.network_rate;
    let source_task = source.task;
    let (source_handle, source_link, to_source) = spawn_source(site, source);
    let described = source_link
        .wait_for("Described", |e| match e {
            TaskEvent::Described { disks } => Some(disks.clone()),
            _ => None,
        })
        .await;

    let mut target = target_task(site, &spec.vm, &transfer, described.clone());
    target.write_rate = spec.write_rate;
    target.block_size = spec.block_size;
    target.retention = spec.retention;
    if let Some(fingerprint) = spec.source_fingerprint {
        target.source_fingerprint = fingerprint;
    }
    let (target_handle, target_link, to_target) = spawn_target(site, target, Some((source_task, to_source.clone())));
    Running {
        source: source_handle,
        target: target_handle,
        source_link,
        target_link,
        to_source,
        to_target,
        source_task,
        described,
    }
}

/// A source task reading `disks` for `vm`, sending to the site's receiver.
pub fn source_task(site: &Site, vm: &str, disks: &[PathBuf], transfer: &str, streams: u16) -> SourceTask {
    SourceTask {
        task: site.task_number(),
        vm: vm.to_string(),
        disks: disks.iter().map(|p| p.display().to_string()).collect(),
        block_size: BS as u32,
        target: TransferEndpoint {
            address: site.receiver.local_addr().to_string(),
            server_name: AGENT_NAME.to_string(),
            fingerprint: site.agent.fingerprint().to_string(),
            transfer: transfer.to_string(),
            streams,
        },
        network_rate: None,
    }
}

/// Starts a source task with the proxy's identity.
pub fn spawn_source(
    site: &Site,
    task: SourceTask,
) -> (
    JoinHandle<Result<SourceSummary, MoverError>>,
    Arc<Link>,
    mpsc::UnboundedSender<Instruction>,
) {
    let (to_source, source_rx) = mpsc::unbounded_channel();
    let link = Link::new(None);
    let handle = {
        let (identity, link) = (site.proxy.clone(), link.clone());
        tokio::spawn(async move { cairn_mover::source::run_source(task, &identity, source_rx, link).await })
    };
    (handle, link, to_source)
}

/// A target task for `vm` in the site's repository, from the proxy only, unthrottled.
pub fn target_task(site: &Site, vm: &str, transfer: &str, disks: Vec<DiskDescription>) -> TargetTask {
    TargetTask {
        task: site.task_number(),
        transfer: transfer.to_string(),
        source_fingerprint: site.proxy.fingerprint().to_string(),
        repository: site.repo.display().to_string(),
        password: PASSWORD.to_string(),
        vm: vm.to_string(),
        block_size: BS as u32,
        method: Method::ForeverForward,
        full_every: None,
        compression: "zstd:3".to_string(),
        retention: 10,
        vm_config: None,
        disks,
        write_rate: None,
    }
}

/// Starts a target task on the site's receiver; its read plans go to `relay` (a source task's
/// instructions) when given.
pub fn spawn_target(
    site: &Site,
    task: TargetTask,
    relay: Option<(u64, mpsc::UnboundedSender<Instruction>)>,
) -> (
    JoinHandle<Result<Committed, MoverError>>,
    Arc<Link>,
    mpsc::UnboundedSender<Instruction>,
) {
    let (to_target, target_rx) = mpsc::unbounded_channel();
    let link = Link::new(relay);
    let handle = {
        let (receiver, link) = (site.receiver.clone(), link.clone());
        tokio::spawn(async move { cairn_mover::target::run_target(task, &receiver, target_rx, link).await })
    };
    (handle, link, to_target)
}

impl Running {
    /// Waits for both ends (the target first, as its commit is what matters).
    pub async fn finish(self) -> Outcome {
        let target = join("target", self.target).await;
        if let Err(e) = &target {
            // As the server does: a failed target ends the source too.
            let _ = self.to_source.send(Instruction::Cancel {
                task: self.source_task,
                reason: format!("the repository's data mover failed: {e}"),
            });
        }
        let source = join("source", self.source).await;
        // The instruction channels stay open until both ended (closing one cancels its task).
        drop((self.to_source, self.to_target));
        Outcome {
            source,
            target,
            source_events: self.source_link.events(),
            target_events: self.target_link.events(),
        }
    }
}

/// Runs a whole backup.
pub async fn backup(site: &Site, spec: BackupSpec) -> Outcome {
    start_backup(site, spec).await.finish().await
}
