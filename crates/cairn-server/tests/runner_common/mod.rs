//! Shared setup of the job manager and scheduler tests: a configuration database (SQLite or
//! PostgreSQL), real repositories and real disk images in a temporary folder.

#![allow(dead_code)]

use cairn_api::spec::{BlockSize, Compression, Consistency, Method, Retention};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cairn_configdb::{
    ConfigDb, DiscoveredDisk, DiscoveredVm, Disk, Host, HostKind, Job, JobSpec, LogLine, NewHost, NewProxy,
    NewRepository, Session, SessionState, Task, Vm,
};
use cairn_format::crypto::KdfParams;
use cairn_repo::{Encryption, Repository};
use cairn_resources::{RepositoryId, ResourceScheduler, SchedulerOptions};
use cairn_server::clock::Clock;
use cairn_server::repositories::repository_limits;
use cairn_server::runner::{JobManager, RunnerContext};
use cairn_server::secrets::Secrets;
use cairn_testkit::postgres::fresh_database;
use jiff::tz::TimeZone;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's folder.
    Sqlite,
    /// A fresh database on the server of `CAIRN_TEST_POSTGRES_URL`.
    Postgres,
}

/// Everything a test needs; dropping it removes the folder.
pub struct Env {
    pub db: ConfigDb,
    pub dir: tempfile::TempDir,
    pub secrets: Secrets,
    pub resources: Arc<ResourceScheduler>,
    pub proxy_id: i64,
    pub host: Host,
    pub tz: TimeZone,
}

/// Cheap key derivation, so opening encrypted test repositories is fast.
pub fn cheap_kdf() -> KdfParams {
    KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        salt: "00112233445566778899aabbccddeeff".into(),
    }
}

async fn open_db(backend: Backend, dir: &Path, test: &str) -> ConfigDb {
    match backend {
        Backend::Sqlite => ConfigDb::open_sqlite(&dir.join("config.db"))
            .await
            .expect("open SQLite"),
        Backend::Postgres => {
            let url = fresh_database(&format!("cairn_runner_{test}"), "these tests").await;
            ConfigDb::open(&url).await.expect("open PostgreSQL")
        }
    }
}

impl Env {
    /// A database with one proxy (4 slots) and one image-folder host `hv1` in `DIR/images`.
    pub async fn new(backend: Backend, test: &str) -> Env {
        let dir = tempfile::tempdir().expect("temporary folder");
        let db = open_db(backend, dir.path(), test).await;
        let proxy = db
            .create_proxy(&NewProxy {
                agent_id: None,
                name: "backup-server".into(),
                address: None,
                max_tasks: 4,
            })
            .await
            .expect("proxy");
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let host = db
            .create_host(&NewHost {
                name: "hv1".into(),
                kind: HostKind::ImageFolder,
                location: images.display().to_string(),
            })
            .await
            .expect("host");
        let secrets = Secrets::open(&dir.path().join("data")).expect("secrets");
        let resources = Arc::new(ResourceScheduler::new(SchedulerOptions::default()));
        resources.set_proxy(proxy.id.to_string(), 4).unwrap();
        Env {
            db,
            dir,
            secrets,
            resources,
            proxy_id: proxy.id,
            host,
            tz: TimeZone::UTC,
        }
    }

    /// A job manager on this environment.
    pub fn manager(&self, clock: Option<Arc<dyn Clock>>) -> Arc<JobManager> {
        let ctx = RunnerContext {
            movers: Arc::new(cairn_server::movers::Movers::without_identity(
                std::time::Duration::from_secs(10),
                5,
            )),
            throttles: cairn_server::throttle::NetworkThrottles::new(self.tz.clone()),
            db: self.db.clone(),
            resources: self.resources.clone(),
            secrets: self.secrets.clone(),
            time_zone: self.tz.clone(),
            proxy_id: self.proxy_id,
        };
        match clock {
            Some(clock) => JobManager::with_clock(ctx, clock),
            None => JobManager::new(ctx),
        }
    }

    /// The images folder of host `hv1`.
    pub fn images(&self) -> PathBuf {
        PathBuf::from(&self.host.location)
    }

    /// An encrypted repository `name` (password in the secrets folder) registered with the
    /// resource scheduler with `max_tasks` slots and a write limit.
    pub async fn repository(
        &self,
        name: &str,
        max_tasks: usize,
        write_limit: Option<u64>,
    ) -> cairn_configdb::Repository {
        let path = self.dir.path().join("repos").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let password = format!("pw-{name}");
        Repository::init(
            &path,
            Encryption::Aes256Gcm,
            Some(password.as_bytes()),
            Some(cheap_kdf()),
        )
        .expect("init repository");
        let row = self
            .db
            .create_repository(&NewRepository {
                agent_id: None,
                name: name.into(),
                path: path.display().to_string(),
                is_default: false,
                max_tasks: max_tasks as i64,
                read_limit_bytes: write_limit.map(|l| l as i64),
                write_limit_bytes: write_limit.map(|l| l as i64),
            })
            .await
            .expect("repository row");
        self.secrets
            .set_repository_password(row.id, password.as_bytes())
            .expect("store password");
        self.resources
            .set_repository(row.id.to_string(), repository_limits(&row))
            .unwrap();
        row
    }

    /// Opens a repository row's folder.
    pub fn open_repo(&self, row: &cairn_configdb::Repository) -> Repository {
        let password = self.secrets.repository_password(row.id).unwrap();
        Repository::open(Path::new(&row.settings.path), password.as_deref()).expect("open repository")
    }

    /// The id of `row` in the resource scheduler.
    pub fn repo_id(&self, row: &cairn_configdb::Repository) -> RepositoryId {
        RepositoryId::new(row.id.to_string())
    }

    /// Registers VMs on host `hv1` (replacing its inventory): `(vm name, [disk paths])`.
    pub async fn inventory(&self, vms: &[(&str, Vec<PathBuf>)]) -> Vec<(Vm, Vec<Disk>)> {
        let discovered: Vec<DiscoveredVm> = vms
            .iter()
            .map(|(name, disks)| DiscoveredVm {
                external_id: name.to_string(),
                name: name.to_string(),
                disks: disks
                    .iter()
                    .enumerate()
                    .map(|(i, path)| DiscoveredDisk {
                        key: format!("disk{i}"),
                        name: path.file_name().unwrap().to_string_lossy().into_owned(),
                        path: path.display().to_string(),
                        format: "auto".into(),
                        capacity_bytes: std::fs::metadata(path).map_or(0, |m| m.len() as i64),
                    })
                    .collect(),
            })
            .collect();
        let stored = self
            .db
            .sync_host_inventory(self.host.id, &discovered, jiff::Timestamp::now())
            .await
            .expect("sync inventory");
        let mut out = Vec::new();
        for vm in stored {
            let disks = self.db.list_disks(vm.id).await.unwrap();
            out.push((vm, disks));
        }
        out.sort_by_key(|(vm, _)| vm.name.clone());
        out
    }

    /// A job of `vm_ids` on `repository_id` with defaults for the rest (manual, no retries).
    pub async fn job(&self, name: &str, vm_ids: Vec<i64>, repository_id: i64, edit: impl FnOnce(&mut JobSpec)) -> Job {
        let mut spec = JobSpec {
            name: name.into(),
            vm_ids,
            excluded_disk_ids: vec![],
            repository_id,
            block_size: BlockSize::DEFAULT,
            compression: Compression::Zstd(3),
            encryption: None,
            method: Method::ForeverForward,
            retention_points: Retention::try_from(14).expect("retention"),
            schedule: None,
            backup_window: None,
            retries: 0,
            retry_wait_seconds: 0,
            enabled: true,
            consistency: Consistency::Online,
            require_app_consistency: false,
            pre_freeze_script: None,
            post_thaw_script: None,
        };
        edit(&mut spec);
        self.db.create_job(&spec).await.expect("create job")
    }

    /// Waits (up to two minutes) until session `id` has ended; returns it.
    pub async fn wait_session(&self, id: i64) -> Session {
        self.wait_for(&format!("session {id} to end"), || async {
            let s = self.db.get_session(id).await.unwrap();
            s.state.is_final().then_some(s)
        })
        .await
    }

    /// Polls `check` every 20 ms until it gives a value (panics after two minutes).
    pub async fn wait_for<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The tasks of a session.
    pub async fn tasks(&self, session: i64) -> Vec<Task> {
        self.db.list_tasks(session).await.unwrap()
    }

    /// The whole log of a task.
    pub async fn log(&self, task: i64) -> Vec<LogLine> {
        self.db.task_log(task, None, 10_000).await.unwrap()
    }

    /// The log of a task as one text.
    pub async fn log_text(&self, task: i64) -> String {
        self.log(task)
            .await
            .iter()
            .map(|l| format!("[{}] {}", l.level, l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every session of a job, oldest first.
    pub async fn sessions_of(&self, job: i64) -> Vec<Session> {
        let mut page = self
            .db
            .list_sessions(&cairn_configdb::SessionQuery {
                job_id: Some(job),
                after: None,
                limit: 500,
            })
            .await
            .unwrap()
            .sessions;
        page.reverse();
        page
    }
}

/// Pseudo-random bytes (xorshift), so no two blocks are alike and nothing compresses.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a raw image: `len` bytes, random data in the first `data` bytes, zeros after.
pub fn raw_image(path: &Path, seed: u64, len: usize, data: usize) {
    let mut bytes = pattern(seed, data);
    bytes.resize(len, 0);
    std::fs::write(path, bytes).unwrap();
}

/// Runs a command, panicking with its output on failure.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A qcow2 image of `size` (e.g. "8M") with qemu-io writes applied (`"write -P 0xab 0 1M"`).
pub fn qcow2_image(path: &Path, size: &str, writes: &[&str]) {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size));
    qemu_io(path, writes);
}

/// A qcow2 overlay of `base` with qemu-io writes applied.
pub fn qcow2_overlay(path: &Path, base: &Path, writes: &[&str]) {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(path));
    qemu_io(path, writes);
}

/// Applies qemu-io commands to an image.
pub fn qemu_io(path: &Path, writes: &[&str]) {
    if writes.is_empty() {
        return;
    }
    let mut cmd = Command::new("qemu-io");
    for w in writes {
        cmd.arg("-c").arg(w);
    }
    run(cmd.arg(path));
}

/// The guest-visible bytes of an image (via `qemu-img convert -O raw`).
pub fn image_bytes(path: &Path, scratch: &Path) -> Vec<u8> {
    static N: AtomicU32 = AtomicU32::new(0);
    let out = scratch.join(format!("converted-{}.raw", N.fetch_add(1, Ordering::Relaxed)));
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(path)
        .arg(&out));
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

/// Restores disk `disk` of the newest point of `vm` and returns its bytes.
pub fn restored(repo: &Repository, vm: &str, disk: u32, scratch: &Path) -> Vec<u8> {
    static N: AtomicU32 = AtomicU32::new(0);
    let out = scratch.join(format!("restored-{}.raw", N.fetch_add(1, Ordering::Relaxed)));
    cairn_engine::restore(repo, vm, "latest", disk, &out, &Default::default(), &|_| {}).expect("restore");
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

/// Whether `[a_start, a_end]` and `[b_start, b_end]` overlap.
pub fn overlaps(a: &Task, b: &Task) -> bool {
    let (Some(a0), Some(a1), Some(b0), Some(b1)) = (a.started_at, a.ended_at, b.started_at, b.ended_at) else {
        panic!("tasks {} and {} must have started and ended", a.id, b.id);
    };
    a0 < b1 && b0 < a1
}

/// Asserts that the tasks ran one at a time.
pub fn assert_no_overlap(tasks: &[Task]) {
    for (i, a) in tasks.iter().enumerate() {
        for b in &tasks[i + 1..] {
            assert!(
                !overlaps(a, b),
                "tasks {} ({:?}–{:?}) and {} ({:?}–{:?}) ran at the same time",
                a.id,
                a.started_at,
                a.ended_at,
                b.id,
                b.started_at,
                b.ended_at
            );
        }
    }
}

/// Asserts a session ended in `state`, printing its tasks' logs otherwise.
pub async fn assert_state(env: &Env, session: &Session, state: SessionState) {
    if session.state != state {
        let mut text = format!(
            "session {} ended {:?}, expected {state:?}; statistics {}\n",
            session.id, session.state, session.statistics
        );
        for t in env.tasks(session.id).await {
            text.push_str(&format!(
                "task {} {}/{} {:?}:\n{}\n",
                t.id,
                t.vm_name,
                t.disk_name,
                t.state,
                env.log_text(t.id).await
            ));
        }
        panic!("{text}");
    }
}
