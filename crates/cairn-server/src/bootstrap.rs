//! The data folder on start: configuration database, TLS material, first administrator,
//! default proxy and default repository.
//!
//! A fresh install is usable at once ("simple deployment"): the first start creates
//!
//! - the data folder (mode 0700; every start makes whatever is in it private: folders 0700,
//!   files 0600) with the configuration database (`cairn.db`, SQLite) unless a PostgreSQL URL
//!   is given;
//! - the server's CA and serving certificate ([`crate::tls`]);
//! - the administrator `admin`, with the password from `CAIRN_ADMIN_PASSWORD` or a generated one
//!   that is printed once on stdout and never again (nor logged);
//! - the default proxy (the server itself, named after the host) when there is no proxy;
//! - the default repository `default` when there is no repository: at `--default-repository`, or
//!   on the local volume with the most free space (the data folder's volume when it ties, as
//!   `DATA/repository`; another volume as `MOUNTPOINT/cairn-repository`), encrypted with
//!   AES-256-GCM under a generated password kept in `DATA/secrets`.
//!
//! Every step checks what exists first, so later starts reuse everything, and a start that
//! crashed half-way is completed by the next one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cairn_configdb::{ConfigDb, NewProxy, NewRepository, Proxy, Repository, Role};
use jiff::tz::TimeZone;

use crate::config::ServerConfig;
use crate::secrets::{self, Secrets};
use crate::tls::{self, TlsMaterial};

/// Name of the SQLite configuration database in the data folder.
pub const SQLITE_FILE: &str = "cairn.db";
/// Name of the first administrator.
pub const FIRST_ADMIN: &str = "admin";
/// Name of the repository created on first start.
pub const DEFAULT_REPOSITORY: &str = "default";
/// Environment variable with the first administrator's password.
pub const ADMIN_PASSWORD_ENV: &str = "CAIRN_ADMIN_PASSWORD";

/// What [`prepare`] found or made.
pub struct Prepared {
    /// The configuration database.
    pub db: ConfigDb,
    /// Repository passwords.
    pub secrets: Secrets,
    /// CA and serving certificate.
    pub tls: TlsMaterial,
    /// The proxy that is this server itself.
    pub local_proxy: Proxy,
    /// Time zone of schedules that name none.
    pub time_zone: TimeZone,
    /// What to tell the user once.
    pub notice: Notice,
}

/// What this start created, to tell the user once.
#[derive(Debug, Clone, Default)]
pub struct Notice {
    /// The first administrator was created (name).
    pub admin_created: Option<String>,
    /// Its password, when it was generated (print once, never log).
    pub generated_admin_password: Option<String>,
    /// The default repository was created.
    pub repository_created: Option<Repository>,
    /// The CA was created (first start).
    pub ca_created: bool,
    /// The folder of repository passwords.
    pub secrets_dir: PathBuf,
    /// The CA certificate clients trust.
    pub ca_path: PathBuf,
    /// The restore folders, when this start set them.
    pub restore_folders: Option<Vec<PathBuf>>,
    /// The default proxy (this server), when this start created it: its name.
    pub proxy_created: Option<String>,
}

impl Notice {
    /// The lines printed on stdout when the server is ready at `url` (without the final
    /// `cairn server listening on …` line). Empty when nothing was created.
    pub fn banner(&self, url: &str) -> String {
        let mut out = String::new();
        if let Some(admin) = &self.admin_created {
            out.push_str("cairn server: first start\n");
            out.push_str(&format!("  URL:             {url}\n"));
            out.push_str(&format!("  administrator:   {admin}\n"));
            match &self.generated_admin_password {
                Some(password) => out.push_str(&format!(
                    "  password:        {password}\n  (shown only this once: note it now)\n"
                )),
                None => out.push_str(&format!(
                    "  password:        as given at start ({ADMIN_PASSWORD_ENV})\n"
                )),
            }
            out.push_str(&format!(
                "  CA certificate:  {} (clients trust this file)\n",
                self.ca_path.display()
            ));
        } else if self.ca_created {
            out.push_str(&format!(
                "cairn server: created a new CA; clients must trust {}\n",
                self.ca_path.display()
            ));
        }
        if let Some(proxy) = &self.proxy_created {
            out.push_str(&format!(
                "  default proxy:   {proxy} (this server itself, named after the machine's host name)\n"
            ));
        }
        if let Some(folders) = &self.restore_folders {
            let list: Vec<String> = folders.iter().map(|f| f.display().to_string()).collect();
            out.push_str(&format!(
                "  restore folders: {} (restores are written only beneath these; `cairn settings --restore-folder` \
                 changes them)\n",
                list.join(", ")
            ));
        }
        if let Some(repo) = &self.repository_created {
            out.push_str(&format!(
                "  default repository: {} (encrypted with AES-256-GCM)\n",
                repo.settings.path
            ));
            out.push_str(&format!(
                "Repository passwords are kept in {}. Keep a copy of that folder somewhere safe: without it the \
                 encrypted backups cannot be restored on another machine.\n",
                self.secrets_dir.display()
            ));
        }
        out
    }
}

/// Prepares the data folder for `config`. `admin_password` is the first administrator's
/// password when one must be created (`None` generates one).
pub async fn prepare(config: &ServerConfig, admin_password: Option<&str>) -> anyhow::Result<Prepared> {
    let data_dir = create_data_dir(&config.data_dir)?;
    let time_zone = match &config.time_zone {
        Some(name) => TimeZone::get(name).with_context(|| format!("unknown time zone {name:?}"))?,
        None => TimeZone::system(),
    };
    let db = match &config.database_url {
        Some(url) => ConfigDb::open(url)
            .await
            .with_context(|| format!("opening the configuration database {}", redact_url(url)))?,
        None => {
            let path = data_dir.join(SQLITE_FILE);
            ConfigDb::open_sqlite(&path)
                .await
                .with_context(|| format!("opening the configuration database {}", path.display()))?
        }
    };
    let names = tls::required_names(config.listen, tls::host_name().as_deref(), &config.extra_names);
    let dir = data_dir.clone();
    let tls = tokio::task::spawn_blocking(move || tls::prepare(&dir, &names))
        .await?
        .context("preparing the server's TLS certificate")?;
    let secrets =
        Secrets::open(&data_dir).with_context(|| format!("opening {}", data_dir.join("secrets").display()))?;

    let mut notice = Notice {
        ca_created: tls.created_ca,
        secrets_dir: data_dir.join("secrets"),
        ca_path: tls.ca_path.clone(),
        ..Notice::default()
    };
    if db.list_users().await?.is_empty() {
        let (password, generated) = match admin_password {
            Some(p) if !p.is_empty() => (p.to_owned(), false),
            _ => (secrets::generate_password(), true),
        };
        let hash = {
            let password = password.clone();
            tokio::task::spawn_blocking(move || crate::auth::hash_password(&password)).await??
        };
        db.create_user(FIRST_ADMIN, &hash, Role::Administrator)
            .await
            .context("creating the first administrator")?;
        notice.admin_created = Some(FIRST_ADMIN.to_owned());
        notice.generated_admin_password = generated.then_some(password);
    }
    let (local_proxy, proxy_created) = ensure_local_proxy(&db).await?;
    notice.proxy_created = proxy_created.then(|| local_proxy.settings.name.clone());
    notice.repository_created = ensure_default_repository(config, &data_dir, &db, &secrets).await?;
    notice.restore_folders = ensure_restore_folders(config, &data_dir, &db).await?;
    Ok(Prepared {
        db,
        secrets,
        tls,
        local_proxy,
        time_zone,
        notice,
    })
}

/// Creates the data folder (mode 0700) if needed; returns its absolute path.
fn create_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the data folder {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    } else if !dir.is_dir() {
        bail!("the data folder {} is not a folder", dir.display());
    } else {
        let changed = make_private(dir).with_context(|| format!("making {} private", dir.display()))?;
        if changed > 0 {
            tracing::warn!(
                "{changed} entries of the data folder {} could be read or written by other users: they are now \
                 private (folders 0700, files 0600)",
                dir.display()
            );
        }
    }
    std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))
}

/// Takes every permission of the group and of others from `dir` and everything beneath it (an
/// older install, a file copied in): folders become at most 0700, files at most 0600. Symbolic
/// links are neither followed nor changed. Returns how many entries changed.
pub fn make_private(dir: &Path) -> std::io::Result<u64> {
    let mut changed = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let private = if meta.is_dir() { mode & 0o700 } else { mode & 0o600 };
        if mode != private {
            fs::set_permissions(&path, fs::Permissions::from_mode(private))?;
            changed += 1;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(changed)
}

/// `postgres://user:secret@host/db` without the password, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The proxy that is this server (address `None`), created when missing (then named after the
/// machine's host name); true when it was created now.
async fn ensure_local_proxy(db: &ConfigDb) -> anyhow::Result<(Proxy, bool)> {
    let proxies = db.list_proxies().await?;
    if let Some(local) = proxies.iter().find(|p| p.settings.address.is_none()) {
        return Ok((local.clone(), false));
    }
    let base = tls::host_name().unwrap_or_else(|| "server".to_owned());
    let mut name = base.clone();
    let mut n = 2;
    while proxies.iter().any(|p| p.settings.name == name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    let max_tasks = i64::try_from(cairn_resources::default_max_tasks()).unwrap_or(1);
    db.create_proxy(&NewProxy {
        agent_id: None,
        name,
        address: None,
        max_tasks,
    })
    .await
    .map(|p| (p, true))
    .context("creating the default proxy")
}

/// Creates the default repository when the server has no repository at all.
async fn ensure_default_repository(
    config: &ServerConfig,
    data_dir: &Path,
    db: &ConfigDb,
    secrets: &Secrets,
) -> anyhow::Result<Option<Repository>> {
    if !db.list_repositories().await?.is_empty() {
        return Ok(None);
    }
    let path = match &config.default_repository {
        Some(path) => std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?,
        None => {
            let dir = data_dir.to_path_buf();
            tokio::task::spawn_blocking(move || default_repository_location(&dir)).await??
        }
    };
    // The password is written aside before the repository is made, so a start that crashes
    // between the two finds it and adopts the repository instead of failing on a folder that
    // "already exists".
    let pending = secrets
        .repository_password_path(0)
        .with_file_name("default-repository.pending");
    let (repo_path, pending_path) = (path.clone(), pending.clone());
    let password = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let password = match fs::read_to_string(&pending_path) {
            Ok(p) if !p.trim().is_empty() => p.trim().to_owned(),
            _ => {
                let p = secrets::generate_password();
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&pending_path)
                    .with_context(|| format!("writing {}", pending_path.display()))?;
                f.write_all(p.as_bytes())?;
                f.sync_all()?;
                p
            }
        };
        cairn_repo::folder::create_or_adopt(&repo_path, cairn_repo::Encryption::Aes256Gcm, Some(password.as_bytes()))
            .map_err(|e| match e {
            cairn_repo::RepoError::WrongPassword { .. }
            | cairn_repo::RepoError::PasswordRequired { .. }
            | cairn_repo::RepoError::AlreadyExists { .. } => anyhow::anyhow!(
                "{} already holds a cairn repository that this server did not make, or other files; move them \
                     away or choose another place with --default-repository ({e})",
                repo_path.display()
            ),
            other => {
                anyhow::Error::new(other).context(format!("creating the default repository in {}", repo_path.display()))
            }
        })?;
        Ok(password)
    })
    .await??;
    let path_text = path
        .to_str()
        .with_context(|| format!("the repository path {} is not UTF-8", path.display()))?
        .to_owned();
    let repo = db
        .create_repository(&NewRepository {
            agent_id: None,
            name: DEFAULT_REPOSITORY.to_owned(),
            path: path_text,
            is_default: true,
            max_tasks: i64::try_from(cairn_resources::default_max_tasks()).unwrap_or(1),
            read_limit_bytes: None,
            write_limit_bytes: None,
        })
        .await
        .context("recording the default repository")?;
    secrets
        .set_repository_password(repo.id, password.as_bytes())
        .with_context(|| format!("storing the password of repository {}", repo.id))?;
    let _ = fs::remove_file(&pending);
    tracing::info!("created the default repository in {}", path.display());
    Ok(Some(repo))
}

/// Sets the restore folders when the database has none: `--restore-folder` (which must exist),
/// else `DATA-restore` beside the data folder (created, mode 0700). Returns them when set now.
async fn ensure_restore_folders(
    config: &ServerConfig,
    data_dir: &Path,
    db: &ConfigDb,
) -> anyhow::Result<Option<Vec<PathBuf>>> {
    if db.get_setting(cairn_configdb::SETTING_RESTORE_FOLDERS).await?.is_some() {
        return Ok(None);
    }
    let folders: Vec<String> = if config.restore_folders.is_empty() {
        let folder = crate::restore_folders::default_restore_folder(data_dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&folder)
            .with_context(|| format!("creating the restore folder {}", folder.display()))?;
        vec![folder.display().to_string()]
    } else {
        let mut out = Vec::new();
        for f in &config.restore_folders {
            out.push(
                std::path::absolute(f)
                    .with_context(|| format!("resolving {}", f.display()))?
                    .display()
                    .to_string(),
            );
        }
        out
    };
    let folders = crate::restore_folders::validate(&folders, data_dir)
        .map_err(|e| anyhow::anyhow!("{}", e.message.trim_start_matches("restore_folders: ")))?;
    crate::restore_folders::store(db, &folders)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(Some(folders))
}

/// A mounted filesystem that could hold a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Bytes available to unprivileged users.
    pub free_bytes: u64,
}

/// Where the default repository goes: `DATA/repository` unless another volume has strictly more
/// free space than the data folder's (`data_free`), then `MOUNTPOINT/cairn-repository` on the
/// one with the most (the first listed among equals).
pub fn choose_repository_location(data_dir: &Path, data_free: u64, others: &[Volume]) -> PathBuf {
    let mut best: Option<&Volume> = None;
    for v in others {
        if v.free_bytes > data_free && best.is_none_or(|b| v.free_bytes > b.free_bytes) {
            best = Some(v);
        }
    }
    match best {
        Some(v) => v.mount_point.join("cairn-repository"),
        None => data_dir.join("repository"),
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount point.
    pub mount_point: PathBuf,
    /// Filesystem type.
    pub fs_type: String,
    /// Mount source (device).
    pub source: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Parses `/proc/self/mountinfo` (malformed lines are skipped).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let mount_point = unescape_mount(fields.get(4)?);
            let options = fields.get(5)?;
            let fs_type = fields.get(sep + 1)?.to_string();
            let source = unescape_mount(fields.get(sep + 2)?);
            Some(MountEntry {
                mount_point: PathBuf::from(mount_point),
                fs_type,
                source,
                read_only: options.split(',').any(|o| o == "ro"),
            })
        })
        .collect()
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo fields.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(d) = octal
        {
            let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a mount can hold a repository: a writable local block-device filesystem outside the
/// system's virtual and boot areas.
pub fn is_candidate(entry: &MountEntry) -> bool {
    const VIRTUAL: &[&str] = &[
        "tmpfs", "ramfs", "proc", "sysfs", "devtmpfs", "devpts", "overlay", "squashfs", "iso9660", "cgroup", "cgroup2",
        "autofs", "fuse", "nfs", "nfs4", "cifs", "smb3",
    ];
    const SYSTEM: &[&str] = &["/proc", "/sys", "/dev", "/run", "/boot", "/snap"];
    entry.source.starts_with("/dev/")
        && !entry.read_only
        && !VIRTUAL.contains(&entry.fs_type.as_str())
        && !entry.fs_type.starts_with("fuse.")
        && !SYSTEM.iter().any(|s| entry.mount_point.starts_with(s))
}

fn free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether a folder can be created in `dir` (tried, then removed).
fn can_create_folder_in(dir: &Path) -> bool {
    let probe = dir.join(format!(".cairn-probe-{}", std::process::id()));
    match fs::create_dir(&probe) {
        Ok(()) => {
            let _ = fs::remove_dir(&probe);
            true
        }
        Err(_) => false,
    }
}

/// Looks at the mounted volumes and picks the default repository's place.
fn default_repository_location(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let data_dev = fs::metadata(data_dir)
        .with_context(|| format!("reading {}", data_dir.display()))?
        .dev();
    let data_free = free_bytes(data_dir).unwrap_or(0);
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut seen = vec![data_dev];
    let mut others = Vec::new();
    for entry in parse_mountinfo(&mountinfo).into_iter().filter(is_candidate) {
        let Ok(meta) = fs::metadata(&entry.mount_point) else {
            continue;
        };
        if seen.contains(&meta.dev()) {
            continue;
        }
        seen.push(meta.dev());
        let target = entry.mount_point.join("cairn-repository");
        if target.exists() || !can_create_folder_in(&entry.mount_point) {
            continue;
        }
        if let Some(free) = free_bytes(&entry.mount_point) {
            others.push(Volume {
                mount_point: entry.mount_point,
                free_bytes: free,
            });
        }
    }
    Ok(choose_repository_location(data_dir, data_free, &others))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_private_takes_group_and_other_permissions_from_everything_beneath() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(data.join("secrets/deep")).unwrap();
        fs::write(data.join("ca.pem"), b"x").unwrap();
        fs::write(data.join("secrets/deep/k"), b"x").unwrap();
        fs::write(dir.path().join("outside"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), data.join("link")).unwrap();
        for (p, m) in [
            (data.clone(), 0o755),
            (data.join("secrets"), 0o775),
            (data.join("secrets/deep"), 0o711),
            (data.join("ca.pem"), 0o644),
            (data.join("secrets/deep/k"), 0o666),
            (dir.path().join("outside"), 0o644),
        ] {
            fs::set_permissions(&p, fs::Permissions::from_mode(m)).unwrap();
        }
        assert_eq!(make_private(&data).unwrap(), 5);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("secrets/deep")), 0o700);
        assert_eq!(mode(&data.join("ca.pem")), 0o600);
        assert_eq!(mode(&data.join("secrets/deep/k")), 0o600);
        assert_eq!(mode(&dir.path().join("outside")), 0o644, "links are not followed");
        assert_eq!(make_private(&data).unwrap(), 0, "nothing left to change");
    }

    fn vol(p: &str, free: u64) -> Volume {
        Volume {
            mount_point: PathBuf::from(p),
            free_bytes: free,
        }
    }

    #[test]
    fn the_data_folder_wins_ties_and_when_alone() {
        let data = Path::new("/var/lib/cairn");
        assert_eq!(choose_repository_location(data, 100, &[]), data.join("repository"));
        assert_eq!(
            choose_repository_location(data, 100, &[vol("/srv", 100), vol("/mnt/a", 50)]),
            data.join("repository")
        );
    }

    #[test]
    fn the_volume_with_most_free_space_wins() {
        let data = Path::new("/var/lib/cairn");
        let got = choose_repository_location(data, 100, &[vol("/srv", 150), vol("/mnt/big", 900), vol("/mnt/b", 900)]);
        assert_eq!(got, PathBuf::from("/mnt/big/cairn-repository"));
        let got = choose_repository_location(data, 0, &[vol("/srv", 1)]);
        assert_eq!(got, PathBuf::from("/srv/cairn-repository"));
    }

    #[test]
    fn mountinfo_parsing_and_candidates() {
        let text = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
28 27 0:25 / /mnt/tools ro,nosuid - tmpfs tools ro,size=4k
30 27 8:17 / /mnt/back\\040up rw,relatime shared:1 - xfs /dev/sdb1 rw
31 27 8:18 / /mnt/cdrom ro,relatime - ext4 /dev/sdc1 ro
32 27 8:1 / /boot rw,relatime - ext4 /dev/sda1 rw
33 27 0:50 / /var/lib/docker/overlay rw - overlay overlay rw
garbage line
";
        let entries = parse_mountinfo(text);
        assert_eq!(entries.len(), 7);
        assert_eq!(entries[3].mount_point, PathBuf::from("/mnt/back up"));
        assert_eq!(entries[3].fs_type, "xfs");
        assert_eq!(entries[3].source, "/dev/sdb1");
        assert!(entries[4].read_only);
        let picked: Vec<_> = entries
            .iter()
            .filter(|e| is_candidate(e))
            .map(|e| e.mount_point.clone())
            .collect();
        assert_eq!(picked, [PathBuf::from("/"), PathBuf::from("/mnt/back up")]);
    }

    #[test]
    fn the_banner_shows_a_generated_password_only() {
        let mut notice = Notice {
            admin_created: Some("admin".into()),
            generated_admin_password: Some("S3cretS3cretS3cretS3cretS3cret12".into()),
            ca_path: PathBuf::from("/d/ca.pem"),
            secrets_dir: PathBuf::from("/d/secrets"),
            ..Notice::default()
        };
        let text = notice.banner("https://127.0.0.1:8520");
        for part in [
            "https://127.0.0.1:8520",
            "admin",
            "S3cretS3cretS3cretS3cretS3cret12",
            "/d/ca.pem",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
        notice.proxy_created = Some("backup01".into());
        let text = notice.banner("https://h:1");
        assert!(
            text.contains("default proxy:   backup01 (this server itself, named after the machine's host name)"),
            "{text}"
        );
        notice.generated_admin_password = None;
        let text = notice.banner("https://h:1");
        assert!(text.contains(ADMIN_PASSWORD_ENV) && !text.contains("S3cret"), "{text}");
        assert_eq!(
            Notice::default().banner("https://h:1"),
            "",
            "nothing new, nothing printed"
        );
    }

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(redact_url("postgres://u:secret@h:5/db"), "postgres://u:***@h:5/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
