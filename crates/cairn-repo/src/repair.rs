//! Repair: remove the restore points that can no longer be restored, so the
//! rest of the chain works like an undamaged one again.
//!
//! A repair runs a full health check of the chain under its exclusive lock
//! ([`crate::verify`]) and removes exactly the points it finds *lost* — an
//! index or a record one of their disks needs is missing or damaged. A point
//! that could not be read for another reason (permissions, an I/O error) is
//! kept. Then, in one commit of `chain.meta`:
//!
//! - the lost points are dropped; where a segment loses its full, its first
//!   remaining point becomes the full (it depends on nothing before it);
//! - data files no remaining point refers to are dropped (a missing file
//!   among them), and so are aliases nothing uses;
//! - a data file shorter than committed whose remaining records all read
//!   back keeps them: its committed length becomes its length (rounded up to
//!   the record alignment, the file extended with zeros to it first).
//!
//! After the commit the usual cleanup deletes what is no longer listed, and
//! damaged data file headers of kept files are written again (no restore
//! reads them; they are rewritten from what the metadata knows). On a full
//! disk the chain's space reserve makes room for the commit.
//!
//! The next backup builds on the newest remaining point (a full when none
//! remains). If the newest point was removed, changed extents a caller
//! tracked since it are not trusted ([`crate::BackupSession::previous_is_newest`]).

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_format::datafile::{DATA_HEADER_LEN, DataFileHeader};
use cairn_format::record::RECORD_ALIGN;
use serde::Serialize;

use crate::chain::{ChainMeta, PointKind};
use crate::error::{RepoError, Result, io};
use crate::fsutil;
use crate::repository::{CHAIN_META, ChainReader, LOCK_FILE, Repository};
use crate::reserve;
use crate::retention::referenced;
use crate::session::{cleanup, write_meta_or_release};
use crate::verify::{self, ChainHealth};

/// A restore point a repair removes.
#[derive(Clone, Debug, Serialize)]
pub struct RemovedPoint {
    /// Point id.
    pub id: String,
    /// Point time.
    pub time: String,
    /// Why it cannot be restored (the first causes the health check found).
    pub reasons: Vec<String>,
}

/// What a repair did (or, in a dry run, would do) to one chain.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChainRepair {
    /// VM name (unknown when the metadata is unreadable).
    pub vm: Option<String>,
    /// Chain folder.
    pub dir: PathBuf,
    /// Points removed because they cannot be restored.
    pub removed: Vec<RemovedPoint>,
    /// Ids of points kept although they could not be fully checked (an
    /// error that is not damage, e.g. permission denied): fix it and check again.
    pub unchecked: Vec<String>,
    /// Ids of points that became the full of their segment.
    pub became_full: Vec<String>,
    /// Points left.
    pub kept: usize,
    /// Data files no longer listed (missing, or needed only by removed points).
    pub files_dropped: Vec<String>,
    /// Data files whose damaged header was written again.
    pub headers_rewritten: Vec<String>,
    /// Data files shorter than committed whose committed length was lowered.
    pub lengths_fixed: Vec<String>,
    /// What could not be repaired.
    pub problems: Vec<String>,
    /// Whether the chain was changed (never in a dry run).
    pub changed: bool,
}

/// What a repair did to every chain it looked at.
#[derive(Clone, Debug, Serialize)]
pub struct RepairReport {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Per chain.
    pub chains: Vec<ChainRepair>,
}

/// Repairs every chain (or the chain of `vm`); with `dry_run`, only reports
/// what a repair would do. `progress` is called with bytes of records read.
pub fn repair(
    repo: &Repository,
    vm: Option<&str>,
    dry_run: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RepairReport> {
    let dirs = match vm {
        Some(vm) => {
            let dir = repo.chain_dir(vm);
            if !dir.join(CHAIN_META).exists() {
                return Err(RepoError::NoSuchVm { vm: vm.to_string() });
            }
            vec![dir]
        }
        None => repo.chain_dirs()?,
    };
    let mut chains = Vec::new();
    for dir in dirs {
        chains.push(repair_chain(repo, &dir, dry_run, progress)?);
    }
    Ok(RepairReport { dry_run, chains })
}

fn repair_chain(repo: &Repository, dir: &Path, dry_run: bool, progress: &(dyn Fn(u64) + Sync)) -> Result<ChainRepair> {
    let mut out = ChainRepair {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    let _lock = fsutil::lock(&dir.join(LOCK_FILE), true)?;
    let meta = match repo.read_meta(dir) {
        Ok(m) => m,
        Err(e) => {
            out.problems.push(format!(
                "the chain's metadata cannot be read, so nothing in it can be repaired: {e}"
            ));
            return Ok(out);
        }
    };
    out.vm = Some(meta.vm.clone());
    let reader = ChainReader::open_unlocked(repo, dir, meta.clone())?;
    let health = verify::check_chain(repo, &reader, progress);
    if health.vm.is_none() {
        out.problems.extend(health.problems.iter().cloned());
        return Ok(out);
    }
    let plan = plan(repo, &reader, &meta, &health, &mut out)?;
    drop(reader);
    out.kept = plan.meta.points.len();
    if dry_run || (plan.meta == meta && plan.headers.is_empty()) {
        return Ok(out);
    }
    apply(repo, dir, &meta, &plan)?;
    out.changed = true;
    Ok(out)
}

/// The new metadata of a chain and the work around its commit.
struct Plan {
    meta: ChainMeta,
    /// Files to extend (with zeros) to their new committed length before the commit.
    extend: Vec<(PathBuf, u64)>,
    /// Kept files whose header is written again after the commit.
    headers: Vec<(PathBuf, DataFileHeader)>,
}

/// Works out what the repair of one chain changes, from its health check.
fn plan(
    repo: &Repository,
    reader: &ChainReader,
    old: &ChainMeta,
    health: &ChainHealth,
    out: &mut ChainRepair,
) -> Result<Plan> {
    let lost: BTreeSet<&str> = health.points.iter().filter(|p| p.lost).map(|p| p.id.as_str()).collect();
    for p in &health.points {
        if p.lost {
            out.removed.push(RemovedPoint {
                id: p.id.clone(),
                time: p.time.clone(),
                reasons: p.problems.clone(),
            });
        } else if p.uncertain {
            out.unchecked.push(p.id.clone());
        }
    }
    let mut meta = old.clone();
    // A segment whose full is lost starts again at its first remaining point.
    let mut full_lost = false;
    meta.points.retain_mut(|p| {
        let gone = lost.contains(p.id.as_str());
        match p.kind {
            PointKind::Full => full_lost = gone,
            PointKind::Incremental if !gone && full_lost => {
                p.kind = PointKind::Full;
                out.became_full.push(p.id.clone());
                full_lost = false;
            }
            PointKind::Incremental => {}
        }
        !gone
    });
    let (mut live_files, live_aliases) = referenced(&meta);
    // A missing file goes even when a kept point names it as the file its
    // backup created: no block of a kept point is in it, or it would be lost.
    live_files.retain(|&no| !reader.file_error(no).is_some_and(|e| e.is_damage()));
    for f in &old.files {
        if !live_files.contains(&f.no) {
            out.files_dropped.push(f.name.clone());
        }
    }
    meta.files.retain(|f| live_files.contains(&f.no));
    meta.aliases.retain(|a| live_aliases.contains(&a.no));
    let leads_somewhere: BTreeSet<u32> = meta
        .aliases
        .iter()
        .filter(|a| meta.resolve_no(a.no).is_some())
        .map(|a| a.no)
        .collect();
    meta.aliases.retain(|a| leads_somewhere.contains(&a.no));

    let mut extend = Vec::new();
    let mut headers = Vec::new();
    for f in &mut meta.files {
        let path = reader.dir().join(&f.name);
        let Some((_, file)) = reader.data_file(f.no) else {
            // Kept only for points that could not be checked; leave it.
            continue;
        };
        let len = file.metadata().map_err(io(&path, "stat data file"))?.len();
        if len < f.committed_len {
            // Every remaining point's records in it read back (else the
            // point would be lost), so they all lie before its end.
            let committed = len.max(DATA_HEADER_LEN).div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
            out.lengths_fixed.push(format!(
                "{}: committed length {} → {committed} (the file has {len} bytes)",
                f.name, f.committed_len
            ));
            f.committed_len = committed;
            if len < committed {
                extend.push((path.clone(), committed));
            }
        }
        if verify::header_problem(repo, old, f.no, file, &path).is_err() {
            out.headers_rewritten.push(f.name.clone());
            headers.push((
                path,
                DataFileHeader {
                    kind: f.kind,
                    repository_id: repo.config().id_bytes(),
                    chain_id: hex::decode(&old.chain_id)
                        .ok()
                        .and_then(|v| v.try_into().ok())
                        .unwrap_or([0; 16]),
                    file_no: f.no,
                },
            ));
        }
    }
    if meta != *old {
        meta.generation += 1;
    }
    Ok(Plan { meta, extend, headers })
}

/// Carries out a plan: extend short files, commit, clean up, rewrite headers.
fn apply(repo: &Repository, dir: &Path, old: &ChainMeta, plan: &Plan) -> Result<()> {
    for (path, len) in &plan.extend {
        // Zeros past the end, inside the old committed length: harmless to
        // the old metadata, and what the new one promises.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path, "open"))?;
        f.set_len(*len).map_err(io(path, "extend"))?;
        f.sync_all().map_err(io(path, "fsync"))?;
    }
    let mut released = false;
    if plan.meta != *old {
        released = write_meta_or_release(dir, &plan.meta, repo.keys())?;
        cleanup(dir, Some(&plan.meta))?;
    }
    for (path, header) in &plan.headers {
        // Bytes 0..4096 hold nothing but the header; records start after it.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path, "open"))?;
        f.write_all_at(&header.encode(), 0).map_err(io(path, "write header"))?;
        f.sync_all().map_err(io(path, "fsync"))?;
    }
    if released {
        let len = std::fs::metadata(dir.join(CHAIN_META)).map_or(0, |m| m.len());
        if let Err(e) = reserve::ensure(dir, reserve::wanted(len)) {
            tracing::warn!(error = %e, "cannot allocate the space reserve again yet; the next backup does");
        }
    }
    Ok(())
}
