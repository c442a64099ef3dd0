//! Backup jobs, with optimistic concurrency through a version number.

use std::collections::HashMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::ConfigDb;
use crate::db::{from_us, on_pool, to_us};
use crate::error::{Error, Result, one_row, write_err};

pub use cairn_api::spec::JobSpec;
use cairn_api::spec::{BlockSize, Retention};

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Database id.
    pub id: i64,
    /// Version, incremented by every update; pass it back to [`ConfigDb::update_job`].
    pub version: i64,
    /// When the job was created.
    pub created_at: Timestamp,
    /// When the job was last changed.
    pub updated_at: Timestamp,
    /// Its settings.
    #[serde(flatten)]
    pub spec: JobSpec,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: i64,
    name: String,
    repository_id: i64,
    block_size: i64,
    compression: String,
    encryption: Option<String>,
    method: String,
    retention_points: i64,
    schedule: Option<String>,
    backup_window: Option<String>,
    retries: i64,
    retry_wait_seconds: i64,
    enabled: bool,
    consistency: String,
    require_app_consistency: bool,
    pre_freeze_script: Option<String>,
    post_thaw_script: Option<String>,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl JobRow {
    fn into_job(self, vm_ids: Vec<i64>, excluded_disk_ids: Vec<i64>) -> Result<Job> {
        Ok(Job {
            id: self.id,
            version: self.version,
            created_at: from_us(self.created_at)?,
            updated_at: from_us(self.updated_at)?,
            spec: JobSpec {
                name: self.name,
                vm_ids,
                excluded_disk_ids,
                repository_id: self.repository_id,
                block_size: BlockSize::try_from(self.block_size).map_err(stored)?,
                compression: self.compression.parse().map_err(stored)?,
                encryption: self.encryption,
                method: self.method.parse().map_err(stored)?,
                retention_points: Retention::try_from(self.retention_points).map_err(stored)?,
                schedule: self.schedule,
                backup_window: self.backup_window,
                retries: self.retries,
                retry_wait_seconds: self.retry_wait_seconds,
                enabled: self.enabled,
                consistency: self.consistency.parse().map_err(stored)?,
                require_app_consistency: self.require_app_consistency,
                pre_freeze_script: self.pre_freeze_script,
                post_thaw_script: self.post_thaw_script,
            },
        })
    }
}

/// A stored setting that does not read back.
fn stored(e: impl std::fmt::Display) -> Error {
    Error::Invalid {
        what: format!("stored job setting: {e}"),
    }
}

macro_rules! job_select {
    ($($rest:literal),+) => {
        concat!(
            "SELECT id, name, repository_id, block_size, compression, encryption, method, retention_points, ",
            "schedule, backup_window, retries, retry_wait_seconds, enabled, consistency, require_app_consistency, ",
            "pre_freeze_script, post_thaw_script, version, created_at, updated_at ",
            "FROM jobs ",
            $($rest),+
        )
    };
}

/// Binds a job's settings and the time `$now` to `$query`, in the column order of both
/// `create_job` and `update_job`: name, repository, block size, compression, encryption, method,
/// retention, schedule, window, retries, retry wait, enabled, the time, consistency, app
/// consistency, the two scripts.
macro_rules! bind_job_spec {
    ($query:expr, $spec:expr, $now:expr) => {
        $query
            .bind(&$spec.name)
            .bind($spec.repository_id)
            .bind(i64::from($spec.block_size))
            .bind($spec.compression.to_string())
            .bind(&$spec.encryption)
            .bind($spec.method.as_str())
            .bind(i64::from($spec.retention_points))
            .bind(&$spec.schedule)
            .bind(&$spec.backup_window)
            .bind($spec.retries)
            .bind($spec.retry_wait_seconds)
            .bind($spec.enabled)
            .bind($now)
            .bind($spec.consistency.as_str())
            .bind($spec.require_app_consistency)
            .bind(&$spec.pre_freeze_script)
            .bind(&$spec.post_thaw_script)
    };
}

/// Inserts the VM and excluded-disk lists of job `$id` from `$spec` in transaction `$tx`.
macro_rules! insert_job_members {
    ($tx:ident, $id:expr, $spec:expr) => {{
        for (position, vm_id) in $spec.vm_ids.iter().enumerate() {
            let position = i64::try_from(position).unwrap_or(i64::MAX);
            sqlx::query("INSERT INTO job_vms (job_id, vm_id, position) VALUES ($1, $2, $3)")
                .bind($id)
                .bind(vm_id)
                .bind(position)
                .execute(&mut *$tx)
                .await
                .map_err(write_err(format!("VM {vm_id} in job {:?}", $spec.name)))?;
        }
        for disk_id in &$spec.excluded_disk_ids {
            sqlx::query("INSERT INTO job_excluded_disks (job_id, disk_id) VALUES ($1, $2)")
                .bind($id)
                .bind(disk_id)
                .execute(&mut *$tx)
                .await
                .map_err(write_err(format!("excluded disk {disk_id} in job {:?}", $spec.name)))?;
        }
    }};
}

/// Groups `(job_id, member_id)` pairs by job, keeping their order.
fn group(pairs: Vec<(i64, i64)>) -> HashMap<i64, Vec<i64>> {
    let mut map: HashMap<i64, Vec<i64>> = HashMap::new();
    for (job, member) in pairs {
        map.entry(job).or_default().push(member);
    }
    map
}

impl ConfigDb {
    /// Creates a job at version 1; [`Error::Duplicate`] if the name is taken, [`Error::NotFound`] if
    /// its repository, a VM or a disk does not exist.
    pub async fn create_job(&self, spec: &JobSpec) -> Result<Job> {
        let now = to_us(Timestamp::now());
        let id = on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin.write).await?;
            let id: i64 = bind_job_spec!(sqlx::query_scalar(concat!(
                "INSERT INTO jobs (name, repository_id, block_size, compression, encryption, method, ",
                "retention_points, schedule, backup_window, retries, retry_wait_seconds, enabled, version, ",
                "created_at, updated_at, consistency, require_app_consistency, pre_freeze_script, post_thaw_script) ",
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $13, $14, $15, $16, $17) ",
                "RETURNING id"
            )), spec, now)
            .fetch_one(&mut *tx)
            .await
            .map_err(write_err(format!("job {:?}", spec.name)))?;
            insert_job_members!(tx, id, spec);
            tx.commit().await?;
            id
        });
        self.get_job(id).await
    }

    /// Replaces a job's settings if its stored version is still `expected_version`, and bumps the
    /// version. A stale version is [`Error::Conflict`]: someone saved first; reload and retry.
    pub async fn update_job(&self, id: i64, expected_version: i64, spec: &JobSpec) -> Result<Job> {
        let now = to_us(Timestamp::now());
        on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin.write).await?;
            let updated = bind_job_spec!(sqlx::query(concat!(
                "UPDATE jobs SET name = $3, repository_id = $4, block_size = $5, compression = $6, ",
                "encryption = $7, method = $8, retention_points = $9, schedule = $10, backup_window = $11, ",
                "retries = $12, retry_wait_seconds = $13, enabled = $14, version = version + 1, updated_at = $15, ",
                "consistency = $16, require_app_consistency = $17, pre_freeze_script = $18, post_thaw_script = $19 ",
                "WHERE id = $1 AND version = $2"
            ))
            .bind(id)
            .bind(expected_version), spec, now)
            .execute(&mut *tx)
            .await
            .map_err(write_err(format!("job {:?}", spec.name)))?;
            if updated.rows_affected() == 0 {
                let current: Option<i64> = sqlx::query_scalar("SELECT version FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                return Err(match current {
                    Some(current) => Error::Conflict {
                        what: format!(
                            "job {id} is at version {current}, not {expected_version}: someone else saved it; reload it"
                        ),
                    },
                    None => Error::NotFound {
                        what: format!("job {id}"),
                    },
                });
            }
            sqlx::query("DELETE FROM job_vms WHERE job_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM job_excluded_disks WHERE job_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            insert_job_members!(tx, id, spec);
            tx.commit().await?;
            Ok::<(), Error>(())
        })?;
        self.get_job(id).await
    }

    /// Enables or disables a job without a version check (a switch, not an edit); bumps the version.
    pub async fn set_job_enabled(&self, id: i64, enabled: bool) -> Result<()> {
        let now = to_us(Timestamp::now());
        on_pool!(self, |pool| {
            let done =
                sqlx::query("UPDATE jobs SET enabled = $2, version = version + 1, updated_at = $3 WHERE id = $1")
                    .bind(id)
                    .bind(enabled)
                    .bind(now)
                    .execute(pool)
                    .await?;
            one_row(done.rows_affected(), || format!("job {id}"))
        })
    }

    /// The job with `id`.
    pub async fn get_job(&self, id: i64) -> Result<Job> {
        on_pool!(self, |pool, begin| {
            let mut tx = pool.begin_with(begin.read).await?;
            let row: Option<JobRow> = sqlx::query_as(job_select!("WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let row = row.ok_or_else(|| Error::NotFound {
                what: format!("job {id}"),
            })?;
            let vms: Vec<i64> = sqlx::query_scalar("SELECT vm_id FROM job_vms WHERE job_id = $1 ORDER BY position")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            let disks: Vec<i64> =
                sqlx::query_scalar("SELECT disk_id FROM job_excluded_disks WHERE job_id = $1 ORDER BY disk_id")
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?;
            tx.commit().await?;
            row.into_job(vms, disks)
        })
    }

    /// The job named `name`, if any.
    pub async fn find_job_by_name(&self, name: &str) -> Result<Option<Job>> {
        let id: Option<i64> = on_pool!(self, |pool| {
            sqlx::query_scalar("SELECT id FROM jobs WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        match id {
            Some(id) => self.get_job(id).await.map(Some),
            None => Ok(None),
        }
    }

    /// Every job, ordered by name.
    pub async fn list_jobs(&self) -> Result<Vec<Job>> {
        on_pool!(self, |pool, begin| {
            // One snapshot for the three reads, so a job and its lists agree.
            let mut tx = pool.begin_with(begin.read).await?;
            let rows: Vec<JobRow> = sqlx::query_as(job_select!("ORDER BY name")).fetch_all(&mut *tx).await?;
            let vms: Vec<(i64, i64)> = sqlx::query_as("SELECT job_id, vm_id FROM job_vms ORDER BY job_id, position")
                .fetch_all(&mut *tx)
                .await?;
            let disks: Vec<(i64, i64)> =
                sqlx::query_as("SELECT job_id, disk_id FROM job_excluded_disks ORDER BY job_id, disk_id")
                    .fetch_all(&mut *tx)
                    .await?;
            tx.commit().await?;
            let (mut vms, mut disks) = (group(vms), group(disks));
            rows.into_iter()
                .map(|row| {
                    let id = row.id;
                    row.into_job(
                        vms.remove(&id).unwrap_or_default(),
                        disks.remove(&id).unwrap_or_default(),
                    )
                })
                .collect()
        })
    }

    /// The names of the jobs with these ids (unknown ids are left out), in one query.
    pub async fn job_names(&self, ids: &[i64]) -> Result<HashMap<i64, String>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let sql = format!("SELECT id, name FROM jobs WHERE id IN ({})", placeholders.join(", "));
        let rows: Vec<(i64, String)> = on_pool!(self, |pool| {
            // Only numbered placeholders are formatted into the text; the ids are bound.
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()));
            for id in ids {
                query = query.bind(*id);
            }
            query.fetch_all(pool).await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Deletes a job with its sessions, tasks and logs.
    pub async fn delete_job(&self, id: i64) -> Result<()> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM jobs WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
            one_row(done.rows_affected(), || format!("job {id}"))
        })
    }
}
