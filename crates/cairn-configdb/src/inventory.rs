//! Hosts with the VMs and disks discovered on them; repositories; proxies.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use cairn_api::HostKind;

use crate::ConfigDb;
use crate::db::{from_us, on_pool, to_us};
use crate::error::{Error, Result, one_row, write_err};
use crate::rows::found;

/// An inventory source to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHost {
    /// Unique name.
    pub name: String,
    /// Kind of source.
    pub kind: HostKind,
    /// Path (image folder) or address (hypervisor).
    pub location: String,
}

/// An inventory source: where VMs are discovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Database id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Kind of source.
    pub kind: HostKind,
    /// Path (image folder) or address (hypervisor).
    pub location: String,
    /// When the host was added.
    pub created_at: Timestamp,
}

/// A VM as found by a discovery run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredVm {
    /// Stable identity on the host (UUID, file name…); unique per host.
    pub external_id: String,
    /// Display name.
    pub name: String,
    /// Its disks.
    pub disks: Vec<DiscoveredDisk>,
}

/// A disk as found by a discovery run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredDisk {
    /// Stable identity within the VM (device name, file name…).
    pub key: String,
    /// Display name.
    pub name: String,
    /// Path of the image file or device.
    pub path: String,
    /// Image format (`raw`, `qcow2`, `vhdx`, `vhd`).
    pub format: String,
    /// Virtual size in bytes.
    pub capacity_bytes: i64,
}

/// A VM in the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// Database id.
    pub id: i64,
    /// Host it lives on.
    pub host_id: i64,
    /// Stable identity on the host.
    pub external_id: String,
    /// Display name.
    pub name: String,
    /// Whether the last discovery run found it (missing VMs are kept so jobs keep their reference).
    pub present: bool,
    /// When a discovery run last found it.
    pub last_seen_at: Timestamp,
}

/// A disk of a VM in the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Disk {
    /// Database id.
    pub id: i64,
    /// VM it belongs to.
    pub vm_id: i64,
    /// Stable identity within the VM.
    #[sqlx(rename = "disk_key")]
    pub key: String,
    /// Display name.
    pub name: String,
    /// Path of the image file or device.
    pub path: String,
    /// Image format.
    pub format: String,
    /// Virtual size in bytes.
    pub capacity_bytes: i64,
    /// Whether the last discovery run found it.
    pub present: bool,
}

/// A repository to create: a folder that stores backup files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRepository {
    /// Unique name.
    pub name: String,
    /// Folder path.
    pub path: String,
    /// Whether jobs use it when they name none; at most one repository is the default.
    pub is_default: bool,
    /// Maximum concurrent tasks (≥ 1).
    pub max_tasks: i64,
    /// Read rate limit in bytes per second, shared by its running tasks; `None` is unlimited.
    pub read_limit_bytes: Option<i64>,
    /// Write rate limit in bytes per second, shared by its running tasks; `None` is unlimited.
    pub write_limit_bytes: Option<i64>,
    /// The repository agent that owns the folder (the path is on its host); `None` = the backup
    /// server's own disks.
    #[serde(default)]
    pub agent_id: Option<i64>,
}

/// A stored repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    /// Database id.
    pub id: i64,
    /// Its settings.
    #[serde(flatten)]
    pub settings: NewRepository,
    /// When it was created.
    pub created_at: Timestamp,
}

/// A proxy to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewProxy {
    /// Unique name.
    pub name: String,
    /// Address of its agent; `None` is the backup server itself.
    pub address: Option<String>,
    /// Maximum concurrent tasks (≥ 1).
    pub max_tasks: i64,
    /// The agent that is this proxy; `None` = the backup server itself.
    #[serde(default)]
    pub agent_id: Option<i64>,
}

/// A stored proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proxy {
    /// Database id.
    pub id: i64,
    /// Its settings.
    #[serde(flatten)]
    pub settings: NewProxy,
    /// When it was created.
    pub created_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct VmRow {
    id: i64,
    host_id: i64,
    external_id: String,
    name: String,
    present: bool,
    last_seen_at: i64,
}

impl TryFrom<VmRow> for Vm {
    type Error = Error;
    fn try_from(r: VmRow) -> Result<Self> {
        Ok(Vm {
            id: r.id,
            host_id: r.host_id,
            external_id: r.external_id,
            name: r.name,
            present: r.present,
            last_seen_at: from_us(r.last_seen_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct HostRow {
    id: i64,
    name: String,
    kind: String,
    location: String,
    created_at: i64,
}

impl TryFrom<HostRow> for Host {
    type Error = Error;
    fn try_from(r: HostRow) -> Result<Self> {
        Ok(Host {
            id: r.id,
            name: r.name,
            kind: r.kind.parse()?,
            location: r.location,
            created_at: from_us(r.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RepositoryRow {
    id: i64,
    name: String,
    path: String,
    is_default: bool,
    max_tasks: i64,
    read_limit_bytes: Option<i64>,
    write_limit_bytes: Option<i64>,
    created_at: i64,
    agent_id: Option<i64>,
}

impl TryFrom<RepositoryRow> for Repository {
    type Error = Error;
    fn try_from(r: RepositoryRow) -> Result<Self> {
        Ok(Repository {
            id: r.id,
            settings: NewRepository {
                name: r.name,
                path: r.path,
                is_default: r.is_default,
                max_tasks: r.max_tasks,
                read_limit_bytes: r.read_limit_bytes,
                write_limit_bytes: r.write_limit_bytes,
                agent_id: r.agent_id,
            },
            created_at: from_us(r.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ProxyRow {
    id: i64,
    name: String,
    address: Option<String>,
    max_tasks: i64,
    created_at: i64,
    agent_id: Option<i64>,
}

impl TryFrom<ProxyRow> for Proxy {
    type Error = Error;
    fn try_from(r: ProxyRow) -> Result<Self> {
        Ok(Proxy {
            id: r.id,
            settings: NewProxy {
                name: r.name,
                address: r.address,
                max_tasks: r.max_tasks,
                agent_id: r.agent_id,
            },
            created_at: from_us(r.created_at)?,
        })
    }
}

macro_rules! host_select {
    ($($rest:literal),+) => {
        concat!("SELECT id, name, kind, location, created_at FROM hosts ", $($rest),+)
    };
}
macro_rules! vm_select {
    ($($rest:literal),+) => {
        concat!("SELECT id, host_id, external_id, name, present, last_seen_at FROM vms ", $($rest),+)
    };
}
macro_rules! disk_select {
    ($($rest:literal),+) => {
        concat!("SELECT id, vm_id, disk_key, name, path, format, capacity_bytes, present FROM disks ", $($rest),+)
    };
}
macro_rules! repository_select {
    ($($rest:literal),+) => {
        concat!(
            "SELECT id, name, path, is_default, max_tasks, read_limit_bytes, write_limit_bytes, created_at, agent_id ",
            "FROM repositories ",
            $($rest),+
        )
    };
}
macro_rules! proxy_select {
    ($($rest:literal),+) => {
        concat!("SELECT id, name, address, max_tasks, created_at, agent_id FROM proxies ", $($rest),+)
    };
}

impl ConfigDb {
    /// Adds an inventory source; [`Error::Duplicate`] if the name is taken.
    pub async fn create_host(&self, host: &NewHost) -> Result<Host> {
        let now = to_us(Timestamp::now());
        on_pool!(self, |pool| {
            let row: HostRow = sqlx::query_as(concat!(
                "INSERT INTO hosts (name, kind, location, created_at) VALUES ($1, $2, $3, $4) ",
                "RETURNING id, name, kind, location, created_at"
            ))
            .bind(&host.name)
            .bind(host.kind.as_str())
            .bind(&host.location)
            .bind(now)
            .fetch_one(pool)
            .await
            .map_err(write_err(format!("host {:?}", host.name)))?;
            row.try_into()
        })
    }

    /// The host with `id`.
    pub async fn get_host(&self, id: i64) -> Result<Host> {
        self.get_by_id::<HostRow, _>(host_select!("WHERE id = $1"), id, "host")
            .await
    }

    /// Every host, ordered by name.
    pub async fn list_hosts(&self) -> Result<Vec<Host>> {
        self.get_all::<HostRow, _>(host_select!("ORDER BY name")).await
    }

    /// Removes a host with its VMs and disks (and their places in jobs).
    pub async fn delete_host(&self, id: i64) -> Result<()> {
        self.delete_by_id("DELETE FROM hosts WHERE id = $1", id, "host").await
    }

    /// Records a discovery run of host `host_id` at `now`: inserts new VMs and disks, updates known
    /// ones (matched by external id / disk key) and marks the ones not found as not present (they
    /// are kept so jobs do not silently lose them). Returns the host's VMs, present or not.
    pub async fn sync_host_inventory(&self, host_id: i64, vms: &[DiscoveredVm], now: Timestamp) -> Result<Vec<Vm>> {
        let now = to_us(now);
        on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin.write).await?;
            // Write first: on SQLite the transaction holds the write lock from its start anyway.
            sqlx::query("UPDATE vms SET present = $2 WHERE host_id = $1")
                .bind(host_id)
                .bind(false)
                .execute(&mut *tx)
                .await?;
            for vm in vms {
                let vm_id: i64 = sqlx::query_scalar(concat!(
                    "INSERT INTO vms (host_id, external_id, name, present, last_seen_at) VALUES ($1, $2, $3, $4, $5) ",
                    "ON CONFLICT (host_id, external_id) DO UPDATE SET name = $3, present = $4, last_seen_at = $5 ",
                    "RETURNING id"
                ))
                .bind(host_id)
                .bind(&vm.external_id)
                .bind(&vm.name)
                .bind(true)
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(write_err(format!("VM {:?} of host {host_id}", vm.external_id)))?;
                sqlx::query("UPDATE disks SET present = $2 WHERE vm_id = $1")
                    .bind(vm_id)
                    .bind(false)
                    .execute(&mut *tx)
                    .await?;
                for disk in &vm.disks {
                    sqlx::query(concat!(
                        "INSERT INTO disks (vm_id, disk_key, name, path, format, capacity_bytes, present) ",
                        "VALUES ($1, $2, $3, $4, $5, $6, $7) ",
                        "ON CONFLICT (vm_id, disk_key) DO UPDATE ",
                        "SET name = $3, path = $4, format = $5, capacity_bytes = $6, present = $7"
                    ))
                    .bind(vm_id)
                    .bind(&disk.key)
                    .bind(&disk.name)
                    .bind(&disk.path)
                    .bind(&disk.format)
                    .bind(disk.capacity_bytes)
                    .bind(true)
                    .execute(&mut *tx)
                    .await
                    .map_err(write_err(format!("disk {:?} of VM {:?}", disk.key, vm.external_id)))?;
                }
            }
            let rows: Vec<VmRow> = sqlx::query_as(vm_select!("WHERE host_id = $1 ORDER BY name, id"))
                .bind(host_id)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            rows.into_iter().map(Vm::try_from).collect()
        })
    }

    /// The VM with `id`.
    pub async fn get_vm(&self, id: i64) -> Result<Vm> {
        self.get_by_id::<VmRow, _>(vm_select!("WHERE id = $1"), id, "VM").await
    }

    /// The VMs of one host, or of every host, ordered by name.
    pub async fn list_vms(&self, host_id: Option<i64>) -> Result<Vec<Vm>> {
        on_pool!(self, |pool| {
            let rows: Vec<VmRow> = match host_id {
                Some(host) => {
                    sqlx::query_as(vm_select!("WHERE host_id = $1 ORDER BY name, id"))
                        .bind(host)
                        .fetch_all(pool)
                        .await?
                }
                None => sqlx::query_as(vm_select!("ORDER BY name, id")).fetch_all(pool).await?,
            };
            rows.into_iter().map(Vm::try_from).collect()
        })
    }

    /// Deletes a VM and its disks (it also leaves every job that had it).
    pub async fn delete_vm(&self, id: i64) -> Result<()> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM vms WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
            one_row(done.rows_affected(), || format!("VM {id}"))
        })
    }

    /// The disks of a VM, ordered by key.
    pub async fn list_disks(&self, vm_id: i64) -> Result<Vec<Disk>> {
        on_pool!(self, |pool| {
            Ok(sqlx::query_as(disk_select!("WHERE vm_id = $1 ORDER BY disk_key"))
                .bind(vm_id)
                .fetch_all(pool)
                .await?)
        })
    }

    /// The disk with `id`.
    pub async fn get_disk(&self, id: i64) -> Result<Disk> {
        on_pool!(self, |pool| {
            let row: Option<Disk> = sqlx::query_as(disk_select!("WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.ok_or_else(|| Error::NotFound {
                what: format!("disk {id}"),
            })
        })
    }

    /// Creates a repository; if it is the default, the previous default stops being one.
    pub async fn create_repository(&self, repo: &NewRepository) -> Result<Repository> {
        let now = to_us(Timestamp::now());
        on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin.write).await?;
            if repo.is_default {
                sqlx::query("UPDATE repositories SET is_default = $1 WHERE is_default = $2")
                    .bind(false)
                    .bind(true)
                    .execute(&mut *tx)
                    .await?;
            }
            let row: RepositoryRow = sqlx::query_as(concat!(
                "INSERT INTO repositories ",
                "(name, path, is_default, max_tasks, read_limit_bytes, write_limit_bytes, created_at, agent_id) ",
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ",
                "RETURNING id, name, path, is_default, max_tasks, read_limit_bytes, write_limit_bytes, created_at, agent_id"
            ))
            .bind(&repo.name)
            .bind(&repo.path)
            .bind(repo.is_default)
            .bind(repo.max_tasks)
            .bind(repo.read_limit_bytes)
            .bind(repo.write_limit_bytes)
            .bind(now)
            .bind(repo.agent_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(write_err(format!("repository {:?}", repo.name)))?;
            tx.commit().await?;
            row.try_into()
        })
    }

    /// Replaces a repository's settings; if it becomes the default, the previous default stops being one.
    pub async fn update_repository(&self, id: i64, repo: &NewRepository) -> Result<Repository> {
        on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin.write).await?;
            if repo.is_default {
                sqlx::query("UPDATE repositories SET is_default = $1 WHERE is_default = $2 AND id <> $3")
                    .bind(false)
                    .bind(true)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            let row: Option<RepositoryRow> = sqlx::query_as(concat!(
                "UPDATE repositories SET name = $2, path = $3, is_default = $4, max_tasks = $5, ",
                "read_limit_bytes = $6, write_limit_bytes = $7 WHERE id = $1 ",
                "RETURNING id, name, path, is_default, max_tasks, read_limit_bytes, write_limit_bytes, created_at, agent_id"
            ))
            .bind(id)
            .bind(&repo.name)
            .bind(&repo.path)
            .bind(repo.is_default)
            .bind(repo.max_tasks)
            .bind(repo.read_limit_bytes)
            .bind(repo.write_limit_bytes)
            .fetch_optional(&mut *tx)
            .await
            .map_err(write_err(format!("repository {:?}", repo.name)))?;
            let row = row.ok_or_else(|| Error::NotFound {
                what: format!("repository {id}"),
            })?;
            tx.commit().await?;
            row.try_into()
        })
    }

    /// The repository with `id`.
    pub async fn get_repository(&self, id: i64) -> Result<Repository> {
        self.get_by_id::<RepositoryRow, _>(repository_select!("WHERE id = $1"), id, "repository")
            .await
    }

    /// The default repository, if one is set.
    pub async fn default_repository(&self) -> Result<Option<Repository>> {
        on_pool!(self, |pool| {
            let row: Option<RepositoryRow> = sqlx::query_as(repository_select!("WHERE is_default = $1"))
                .bind(true)
                .fetch_optional(pool)
                .await?;
            row.map(Repository::try_from).transpose()
        })
    }

    /// Every repository, ordered by name.
    pub async fn list_repositories(&self) -> Result<Vec<Repository>> {
        self.get_all::<RepositoryRow, _>(repository_select!("ORDER BY name"))
            .await
    }

    /// Deletes a repository; [`Error::Conflict`] while a job uses it.
    pub async fn delete_repository(&self, id: i64) -> Result<()> {
        self.delete_by_id("DELETE FROM repositories WHERE id = $1", id, "repository")
            .await
    }

    /// Creates a proxy; [`Error::Duplicate`] if the name is taken.
    pub async fn create_proxy(&self, proxy: &NewProxy) -> Result<Proxy> {
        let now = to_us(Timestamp::now());
        on_pool!(self, |pool| {
            let row: ProxyRow = sqlx::query_as(concat!(
                "INSERT INTO proxies (name, address, max_tasks, created_at, agent_id) VALUES ($1, $2, $3, $4, $5) ",
                "RETURNING id, name, address, max_tasks, created_at, agent_id"
            ))
            .bind(&proxy.name)
            .bind(&proxy.address)
            .bind(proxy.max_tasks)
            .bind(now)
            .bind(proxy.agent_id)
            .fetch_one(pool)
            .await
            .map_err(write_err(format!("proxy {:?}", proxy.name)))?;
            row.try_into()
        })
    }

    /// Replaces a proxy's settings.
    pub async fn update_proxy(&self, id: i64, proxy: &NewProxy) -> Result<Proxy> {
        on_pool!(self, |pool| {
            let row: Option<ProxyRow> = sqlx::query_as(concat!(
                "UPDATE proxies SET name = $2, address = $3, max_tasks = $4 WHERE id = $1 ",
                "RETURNING id, name, address, max_tasks, created_at, agent_id"
            ))
            .bind(id)
            .bind(&proxy.name)
            .bind(&proxy.address)
            .bind(proxy.max_tasks)
            .fetch_optional(pool)
            .await
            .map_err(write_err(format!("proxy {:?}", proxy.name)))?;
            found(row, || format!("proxy {id}"))
        })
    }

    /// The proxy with `id`.
    pub async fn get_proxy(&self, id: i64) -> Result<Proxy> {
        self.get_by_id::<ProxyRow, _>(proxy_select!("WHERE id = $1"), id, "proxy")
            .await
    }

    /// Every proxy, ordered by name.
    pub async fn list_proxies(&self) -> Result<Vec<Proxy>> {
        self.get_all::<ProxyRow, _>(proxy_select!("ORDER BY name")).await
    }

    /// Deletes a proxy (tasks that ran on it keep their history without the reference).
    pub async fn delete_proxy(&self, id: i64) -> Result<()> {
        self.delete_by_id("DELETE FROM proxies WHERE id = $1", id, "proxy")
            .await
    }
}
