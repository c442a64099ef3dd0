//! Retention: keep the newest N restore points and reclaim the space of the rest.
//!
//! *Forever forward*, in two commits. First the oldest points are dropped
//! from `chain.meta` and the next one is marked full (its index already lists
//! every block it needs); then files no point needs are deleted and the records
//! only dropped points used are punched out — this needs no free space. Then
//! the data files the new oldest point refers to are appended to the full file
//! (a block clone where the file system has one) and aliased there, so no
//! index is rewritten and the merge costs O(the increment); a second commit
//! makes that visible, and the merged files are deleted. Without room for the
//! copy the merge is postponed to a later run. A crash before a commit leaves
//! bytes past the full file's committed length (truncated by the next
//! writer); after it, unreferenced files (deleted by the next writer) and
//! unpunched space, which every later retention run punches again.
//!
//! *Forward*: a full and its increments are removed together, once all of
//! them are older than the newest N points.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cairn_format::datafile::DATA_HEADER_LEN;
use cairn_format::index::PointIndex;
use cairn_format::record::padded_len;
use serde::Serialize;

use crate::chain::{Alias, ChainMeta, Method, PointKind};
use crate::error::{RepoError, Result, fmt, io};
use crate::fsutil;
use crate::repository::{CHAIN_META, LOCK_FILE, Repository};
use crate::reserve;
use crate::session::{cleanup, write_meta_or_release};

/// What a retention run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RetainReport {
    /// VM name.
    pub vm: String,
    /// Ids of the removed restore points.
    pub removed: Vec<String>,
    /// Ids of points that became the full by a merge.
    pub merged_into_full: Vec<String>,
    /// Points left in the chain.
    pub kept: usize,
    /// Data files deleted.
    pub files_deleted: usize,
    /// Bytes of disk space given back (deleted files and punched holes).
    pub reclaimed_bytes: u64,
    /// Why more points than asked were kept, if so.
    pub note: Option<String>,
    /// The chain's space reserve was used to commit on a full disk and could
    /// not be allocated again yet (the next backup does).
    pub reserve_released: bool,
}

/// Applies "keep the newest `keep` points" to a VM's chain.
pub fn retain(repo: &Repository, vm: &str, keep: usize) -> Result<RetainReport> {
    if keep == 0 {
        return Err(RepoError::Invalid("--keep must be at least 1".into()));
    }
    let dir = repo.chain_dir(vm);
    if !dir.join(CHAIN_META).exists() {
        return Err(RepoError::NoSuchVm { vm: vm.to_string() });
    }
    let _lock = fsutil::lock(&dir.join(LOCK_FILE), true)?;
    let old = repo.read_meta(&dir)?;
    cleanup(&dir, Some(&old))?;
    let space_before = used_space(&dir, &old);
    let mut report = RetainReport {
        vm: vm.to_string(),
        ..Default::default()
    };

    // First commit: drop the points (and, forward, whole segments). This needs
    // no free space and gives back the space only they used.
    let mut meta = old.clone();
    match meta.method {
        Method::ForeverForward => drop_oldest(&mut meta, keep, &mut report),
        Method::Forward => drop_old_segments(&mut meta, keep, &mut report),
    }
    // The remaining points' indexes never change here (merges only add
    // aliases), so they are read once for both reclaim passes.
    let indexes = meta
        .points
        .iter()
        .map(|p| {
            let path = dir.join(&p.index);
            PointIndex::decode(&fsutil::read(&path)?, repo.keys()).map_err(fmt(&path))
        })
        .collect::<Result<Vec<_>>>()?;
    commit_and_reclaim(repo, &dir, &old, &mut meta, &indexes, &mut report)?;

    // Second commit (forever forward): merge the files the oldest point needs
    // into the full file. Without room for the copy, the merge waits for a
    // later run; the chain is complete either way.
    if meta.method == Method::ForeverForward {
        let before = meta.clone();
        match merge_into_full(&dir, &mut meta) {
            Ok(true) => commit_and_reclaim(repo, &dir, &before, &mut meta, &indexes, &mut report)?,
            Ok(false) => {}
            Err(e) if reserve::is_no_space(&e) => {
                cleanup(&dir, Some(&before))?;
                meta = before;
                report.note = Some(format!(
                    "merge into the full file postponed until there is free space: {e}"
                ));
            }
            Err(e) => return Err(e),
        }
    }
    report.kept = meta.points.len();
    report.reclaimed_bytes = space_before.saturating_sub(used_space(&dir, &meta));
    Ok(report)
}

/// Drops files and aliases no point needs, commits `meta` if it differs from
/// `old`, removes what it no longer lists, and punches out dead records.
fn commit_and_reclaim(
    repo: &Repository,
    dir: &Path,
    old: &ChainMeta,
    meta: &mut ChainMeta,
    indexes: &[PointIndex],
    report: &mut RetainReport,
) -> Result<()> {
    let (live_files, live_aliases) = referenced(meta);
    meta.files.retain(|f| live_files.contains(&f.no));
    meta.aliases.retain(|a| live_aliases.contains(&a.no));
    if meta != old {
        meta.generation += 1;
        // On a full disk the space reserve makes room for this commit.
        report.reserve_released |= write_meta_or_release(dir, meta, repo.keys())?;
        // Committed: now remove what the new metadata no longer lists.
        cleanup(dir, Some(meta))?;
        report.files_deleted += old.files.iter().filter(|f| meta.file(f.no).is_none()).count();
    }
    punch_dead_space(dir, meta, indexes)?;
    if report.reserve_released {
        // Space was given back: take the reserve again before anything else
        // (a merge) can use that space. Without room for it the next backup
        // makes it; retention itself has committed already.
        let len = std::fs::metadata(dir.join(CHAIN_META)).map_or(0, |m| m.len());
        match reserve::ensure(dir, reserve::wanted(len)) {
            Ok(()) => report.reserve_released = false,
            Err(e) => tracing::warn!(error = %e, "cannot allocate the space reserve again yet"),
        }
    }
    Ok(())
}

/// Removes the oldest points beyond `keep`; the new oldest point becomes the
/// full (its index already lists every block it needs).
fn drop_oldest(meta: &mut ChainMeta, keep: usize, report: &mut RetainReport) {
    while meta.points.len() > keep {
        report.removed.push(meta.points.remove(0).id);
        if let Some(p) = meta.points.first_mut().filter(|p| p.kind == PointKind::Incremental) {
            p.kind = PointKind::Full;
            report.merged_into_full.push(p.id.clone());
        }
    }
}

/// Appends every data file the oldest point refers to, other than the full
/// file (the lowest-numbered one), to the full file, and aliases it there.
/// Returns whether anything was merged.
fn merge_into_full(dir: &Path, meta: &mut ChainMeta) -> Result<bool> {
    let Some(oldest) = meta.points.first() else {
        return Ok(false);
    };
    let physical: BTreeSet<u32> = oldest
        .files
        .iter()
        .chain(std::iter::once(&oldest.created_file))
        .filter_map(|&no| meta.resolve_no(no).map(|(f, _)| f))
        .collect();
    let mut files = physical.into_iter();
    let Some(target) = files.next() else { return Ok(false) };
    let sources: Vec<u32> = files.collect();
    if sources.is_empty() {
        return Ok(false);
    }
    let damaged = |no: u32| RepoError::Damaged {
        path: dir.join(CHAIN_META),
        reason: format!("data file {no} is missing"),
    };
    let target_entry = meta.file(target).cloned().ok_or_else(|| damaged(target))?;
    let dst_path = dir.join(&target_entry.name);
    let dst_file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dst_path)
        .map_err(io(&dst_path, "open"))?;
    let mut end = target_entry.committed_len;
    for src in sources {
        let src_entry = meta.file(src).cloned().ok_or_else(|| damaged(src))?;
        let body = src_entry.committed_len - DATA_HEADER_LEN;
        let src_path = dir.join(&src_entry.name);
        let src_file = std::fs::File::open(&src_path).map_err(io(&src_path, "open"))?;
        fsutil::copy_range(&src_file, &src_path, DATA_HEADER_LEN, &dst_file, &dst_path, end, body)?;
        let shift = end - DATA_HEADER_LEN;
        // Files already aliased to `src` move along with it.
        for a in meta.aliases.iter_mut().filter(|a| a.into == src) {
            a.into = target;
            a.shift += shift;
        }
        meta.aliases.push(Alias {
            no: src,
            into: target,
            shift,
        });
        meta.files.retain(|f| f.no != src);
        end += body;
    }
    dst_file.sync_all().map_err(io(&dst_path, "fsync"))?;
    if let Some(t) = meta.files.iter_mut().find(|f| f.no == target) {
        t.committed_len = end;
    }
    Ok(true)
}

fn drop_old_segments(meta: &mut ChainMeta, keep: usize, report: &mut RetainReport) {
    // The next segment starts at the first full after the oldest point.
    while let Some(next_full) = meta
        .points
        .iter()
        .skip(1)
        .position(|p| p.kind == PointKind::Full)
        .map(|i| i + 1)
    {
        if meta.points.len() - next_full < keep {
            break;
        }
        report.removed.extend(meta.points.drain(..next_full).map(|p| p.id));
    }
    if meta.points.len() > keep {
        report.note = Some(format!(
            "kept {} points: the oldest full is still needed by the increments among the newest {keep}",
            meta.points.len()
        ));
    }
}

/// The physical files and the aliases the remaining points need.
pub(crate) fn referenced(meta: &ChainMeta) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let mut files = BTreeSet::new();
    let mut aliases = BTreeSet::new();
    for p in &meta.points {
        for &no in p.files.iter().chain(std::iter::once(&p.created_file)) {
            let mut cur = no;
            for _ in 0..=meta.aliases.len() {
                if meta.file(cur).is_some() {
                    files.insert(cur);
                    break;
                }
                match meta.aliases.iter().find(|a| a.no == cur) {
                    Some(a) => {
                        aliases.insert(a.no);
                        cur = a.into;
                    }
                    None => break,
                }
            }
        }
    }
    (files, aliases)
}

/// Punches holes over every record no remaining point refers to.
fn punch_dead_space(dir: &Path, meta: &ChainMeta, indexes: &[PointIndex]) -> Result<()> {
    let mut live: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for r in indexes
        .iter()
        .flat_map(|i| i.disks.iter())
        .flat_map(|d| d.blocks.iter())
    {
        let loc = meta.locate(r).ok_or_else(|| RepoError::Damaged {
            path: dir.join(CHAIN_META),
            reason: format!("block {} refers to unknown data file {}", r.block, r.file),
        })?;
        live.entry(loc.file)
            .or_default()
            .push((loc.offset, loc.offset + padded_len(r.stored_len)));
    }
    for f in &meta.files {
        let mut ranges = live.remove(&f.no).unwrap_or_default();
        ranges.sort_unstable();
        let path = &dir.join(&f.name);
        let file = OpenOptions::new().write(true).open(path).map_err(io(path, "open"))?;
        let mut pos = DATA_HEADER_LEN;
        for (start, end) in ranges
            .into_iter()
            .chain(std::iter::once((f.committed_len, f.committed_len)))
        {
            if start > pos && !fsutil::punch_hole(&file, path, pos, start - pos)? {
                tracing::warn!(path = %path.display(), "file system cannot punch holes; space of removed points stays allocated");
                return Ok(());
            }
            pos = pos.max(end);
        }
    }
    Ok(())
}

/// Bytes of disk the chain's data files occupy (allocated blocks).
fn used_space(dir: &Path, meta: &ChainMeta) -> u64 {
    let mut names: BTreeSet<String> = meta.files.iter().map(|f| f.name.clone()).collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        names.extend(
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok()),
        );
    }
    names
        .iter()
        .filter_map(|n| std::fs::metadata(dir.join(n)).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}
