//! Retention: keep the newest N restore points and reclaim the space of the rest.
//!
//! *Forever forward*: the oldest point is removed and the next one becomes the
//! full by merging its incremental file into the full file. The merge appends
//! the incremental file's records to the full file (a block clone where the
//! file system has one) and records an alias, so no index is rewritten and the
//! merge costs O(the increment). Order: append + fsync → commit `chain.meta`
//! → delete merged files and old indexes → punch holes where records of
//! removed points were. A crash before the commit leaves bytes past the full
//! file's committed length (truncated by the next writer); after it, only
//! unreferenced files (deleted by the next writer) and unpunched space, which
//! every later retention run punches again.
//!
//! *Forward*: a full and its increments are removed together, once all of
//! them are older than the newest N points.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cairn_format::datafile::DATA_HEADER_LEN;
use cairn_format::record::padded_len;
use serde::Serialize;

use crate::chain::{Alias, ChainMeta, Method, PointKind};
use crate::error::{RepoError, Result, io};
use crate::fsutil;
use crate::repository::{CHAIN_META, ChainReader, LOCK_FILE, Repository};
use crate::session::{cleanup, write_meta};

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

    let mut meta = old.clone();
    let mut report = RetainReport { vm: vm.to_string(), ..Default::default() };
    match meta.method {
        Method::ForeverForward => merge_oldest(&dir, &mut meta, keep, &mut report)?,
        Method::Forward => drop_old_segments(&mut meta, keep, &mut report),
    }

    let (live_files, live_aliases) = referenced(&meta);
    meta.files.retain(|f| live_files.contains(&f.no));
    meta.aliases.retain(|a| live_aliases.contains(&a.no));
    if meta != old {
        meta.generation += 1;
        write_meta(&dir, &meta, repo.keys())?;
        // Committed: now remove what the new metadata no longer lists.
        cleanup(&dir, Some(&meta))?;
        report.files_deleted = old.files.iter().filter(|f| meta.file(f.no).is_none()).count();
    }
    punch_dead_space(repo, &dir, &meta)?;
    report.kept = meta.points.len();
    report.reclaimed_bytes = space_before.saturating_sub(used_space(&dir, &meta));
    Ok(report)
}

fn merge_oldest(dir: &Path, meta: &mut ChainMeta, keep: usize, report: &mut RetainReport) -> Result<()> {
    let mut appended: BTreeSet<u32> = BTreeSet::new();
    while meta.points.len() > keep {
        let p0 = meta.points.remove(0);
        report.removed.push(p0.id.clone());
        let Some(p1) = meta.points.first() else { break };
        if p1.kind != PointKind::Incremental {
            continue; // p0 was a full on its own; the next segment stands alone
        }
        let damaged = |reason: String| RepoError::Damaged { path: dir.join(CHAIN_META), reason };
        let (target, _) = meta.resolve_no(p0.created_file).ok_or_else(|| damaged(format!("file {} of point {} is missing", p0.created_file, p0.id)))?;
        let (src, _) = meta.resolve_no(p1.created_file).ok_or_else(|| damaged(format!("file {} of point {} is missing", p1.created_file, p1.id)))?;
        if src != target {
            let src_entry = meta.file(src).cloned().ok_or_else(|| damaged(format!("file {src} missing")))?;
            let target_entry = meta.file(target).cloned().ok_or_else(|| damaged(format!("file {target} missing")))?;
            let body = src_entry.committed_len - DATA_HEADER_LEN;
            let src_path = dir.join(&src_entry.name);
            let dst_path = dir.join(&target_entry.name);
            let src_file = std::fs::File::open(&src_path).map_err(io(&src_path, "open"))?;
            let dst_file = OpenOptions::new().read(true).write(true).open(&dst_path).map_err(io(&dst_path, "open"))?;
            fsutil::copy_range(&src_file, &src_path, DATA_HEADER_LEN, &dst_file, &dst_path, target_entry.committed_len, body)?;
            dst_file.sync_all().map_err(io(&dst_path, "fsync"))?;
            let shift = target_entry.committed_len - DATA_HEADER_LEN;
            // Every file already aliased to `src` moves along with it.
            for a in meta.aliases.iter_mut().filter(|a| a.into == src) {
                a.into = target;
                a.shift += shift;
            }
            meta.aliases.push(Alias { no: src, into: target, shift });
            meta.files.retain(|f| f.no != src);
            if let Some(t) = meta.files.iter_mut().find(|f| f.no == target) {
                t.committed_len += body;
            }
            appended.insert(target);
        }
        if let Some(p1) = meta.points.first_mut() {
            p1.kind = PointKind::Full;
            report.merged_into_full.push(p1.id.clone());
        }
    }
    Ok(())
}

fn drop_old_segments(meta: &mut ChainMeta, keep: usize, report: &mut RetainReport) {
    // The next segment starts at the first full after the oldest point.
    while let Some(next_full) = meta.points.iter().skip(1).position(|p| p.kind == PointKind::Full).map(|i| i + 1) {
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
fn referenced(meta: &ChainMeta) -> (BTreeSet<u32>, BTreeSet<u32>) {
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
fn punch_dead_space(repo: &Repository, dir: &Path, meta: &ChainMeta) -> Result<()> {
    let reader = ChainReader::open_unlocked(repo, dir, meta.clone())?;
    let mut live: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for p in &meta.points {
        let index = reader.index(p)?;
        for d in &index.disks {
            for r in &d.blocks {
                let loc = reader.locate(r)?;
                live.entry(loc.file).or_default().push((loc.offset, loc.offset + padded_len(r.stored_len)));
            }
        }
    }
    for f in &meta.files {
        let mut ranges = live.remove(&f.no).unwrap_or_default();
        ranges.sort_unstable();
        let Some((path, _)) = reader.data_file(f.no) else { continue };
        let file = OpenOptions::new().write(true).open(path).map_err(io(path, "open"))?;
        let mut pos = DATA_HEADER_LEN;
        for (start, end) in ranges.into_iter().chain(std::iter::once((f.committed_len, f.committed_len))) {
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
        names.extend(rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()));
    }
    names.iter().filter_map(|n| std::fs::metadata(dir.join(n)).ok()).map(|m| m.blocks() * 512).sum()
}
