//! Writing a new restore point: the backup session.
//!
//! A session holds the chain's exclusive lock, writes one new data file aside
//! (`*.tmp`), and commits by renaming it, writing the point's index, and then
//! atomically replacing `chain.meta`. Until that last rename nothing a reader
//! can see has changed; after a crash, [`cleanup`] removes what was left.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_format::FORMAT_VERSION;
use cairn_format::crypto::Keys;
use cairn_format::datafile::{DATA_HEADER_LEN, DataFileHeader, FileKind};
use cairn_format::index::{BLOCK_SIZES, BlockRef, DiskMap, PointIndex};
use cairn_format::record::padded_len;

use crate::chain::{ChainMeta, DiskMeta, FileEntry, FullKind, Method, PointKind, PointMeta, PointStats};
use crate::error::{RepoError, Result, io};
use crate::fsutil::{self, TMP_SUFFIX};
use crate::repository::{CHAIN_META, ChainReader, LOCK_FILE, Repository};
use crate::reserve;

/// What the caller wants from a backup.
#[derive(Clone, Debug)]
pub struct BackupPlan {
    /// VM name.
    pub vm: String,
    /// Block size for a new chain (an existing chain must match).
    pub block_size: u32,
    /// Backup method (recorded in the chain; later backups may change it).
    pub method: Method,
    /// Forward method: start a new full after this many points.
    pub full_every: Option<u32>,
    /// How periodic fulls are made.
    pub full_kind: FullKind,
    /// Make an active full now, whatever the schedule says.
    pub force_full: bool,
    /// The VM's configuration at the backup instant (as its hypervisor
    /// reported it), kept with the restore point so a restore can recreate
    /// the VM.
    pub vm_config: Option<serde_json::Value>,
}

/// What kind of point the session writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// Every block read from the source; no reference to earlier points.
    ActiveFull,
    /// A full built from the previous point plus the changed blocks: unchanged
    /// blocks are cloned into the new full file.
    SyntheticFull,
    /// Only changed blocks stored; the rest refer to earlier files.
    Incremental,
}

/// An open backup session; dropping it without [`commit`](Self::commit) discards its files.
pub struct BackupSession {
    dir: PathBuf,
    meta: ChainMeta,
    kind: SessionKind,
    previous: Option<Arc<PointIndex>>,
    prev_reader: Option<ChainReader>,
    file_no: u32,
    data_path: PathBuf,
    data: File,
    data_len: u64,
    point_id: String,
    /// The new point's index once written (removed again if the commit fails).
    index_path: Option<PathBuf>,
    committed: bool,
    keys: Arc<Keys>,
    vm_config: Option<serde_json::Value>,
    _lock: fsutil::Lock,
}

impl BackupSession {
    /// Starts a backup of `plan.vm`: locks the chain, cleans leftovers of
    /// interrupted operations, and decides the kind of the new point.
    pub fn begin(repo: &Repository, plan: &BackupPlan) -> Result<Self> {
        if !BLOCK_SIZES.contains(&plan.block_size) {
            return Err(RepoError::Invalid(format!(
                "block size {} is not supported (256K, 512K, 1M, 4M)",
                plan.block_size
            )));
        }
        let dir = repo.chain_dir(&plan.vm);
        if !dir.exists() {
            fsutil::create_private_dir(&dir)?;
        }
        let lock = fsutil::lock(&dir.join(LOCK_FILE), true)?;
        let existing = if dir.join(CHAIN_META).exists() {
            Some(repo.read_meta(&dir)?)
        } else {
            None
        };
        cleanup(&dir, existing.as_ref())?;
        let mut meta = match existing {
            Some(m) => m,
            None => ChainMeta {
                format_version: FORMAT_VERSION,
                chain_id: repo.chain_id(&plan.vm),
                vm: plan.vm.clone(),
                block_size: plan.block_size,
                method: plan.method,
                generation: 0,
                next_file_no: 1,
                files: Vec::new(),
                aliases: Vec::new(),
                points: Vec::new(),
            },
        };
        if meta.block_size != plan.block_size && !meta.points.is_empty() {
            return Err(RepoError::BlockSizeMismatch {
                vm: plan.vm.clone(),
                chain: meta.block_size,
                asked: plan.block_size,
            });
        }
        meta.block_size = plan.block_size;
        meta.method = plan.method;

        let segment_len = meta
            .points
            .iter()
            .rev()
            .take_while(|p| p.kind == PointKind::Incremental)
            .count()
            + 1;
        let kind = if meta.points.is_empty() || plan.force_full {
            SessionKind::ActiveFull
        } else if plan.method == Method::Forward && plan.full_every.is_some_and(|n| segment_len as u32 >= n.max(1)) {
            match plan.full_kind {
                FullKind::Active => SessionKind::ActiveFull,
                FullKind::Synthetic => SessionKind::SyntheticFull,
            }
        } else {
            SessionKind::Incremental
        };

        let (previous, prev_reader) = match (kind, meta.points.last()) {
            (SessionKind::ActiveFull, _) | (_, None) => (None, None),
            (_, Some(last)) => {
                let reader = ChainReader::open_unlocked(repo, &dir, meta.clone())?;
                let index = reader.index(last)?;
                (Some(Arc::new(index)), Some(reader))
            }
        };

        let file_no = meta.next_file_no;
        let file_kind = if kind == SessionKind::Incremental {
            FileKind::Incremental
        } else {
            FileKind::Full
        };
        let name = data_file_name(file_no, file_kind);
        let data_path = fsutil::tmp_path(&dir.join(&name));
        let mut point_id = new_point_id()?;
        while meta.points.iter().any(|p| p.id == point_id) {
            point_id = new_point_id()?;
        }
        let header = DataFileHeader {
            kind: file_kind,
            repository_id: repo.config().id_bytes(),
            chain_id: hex_16(&meta.chain_id),
            file_no,
        };
        let data = fsutil::create_private(&data_path, true).map_err(io(&data_path, "create data file"))?;
        // From here on, dropping the session removes the new file (also when
        // the header cannot be written: a full disk leaves nothing behind).
        let session = BackupSession {
            vm_config: plan.vm_config.clone(),
            dir,
            meta,
            kind,
            previous,
            prev_reader,
            file_no,
            data_path,
            data,
            data_len: DATA_HEADER_LEN,
            point_id,
            index_path: None,
            committed: false,
            keys: repo.keys().clone(),
            _lock: lock,
        };
        session
            .data
            .write_all_at(&header.encode(), 0)
            .map_err(io(&session.data_path, "write"))?;
        Ok(session)
    }

    /// The kind of point being written.
    pub fn kind(&self) -> SessionKind {
        self.kind
    }

    /// The chain's block size.
    pub fn block_size(&self) -> u32 {
        self.meta.block_size
    }

    /// The id the new point will have.
    pub fn point_id(&self) -> &str {
        &self.point_id
    }

    /// The previous point's metadata, when this session builds on it (not for an active full).
    pub fn previous_point(&self) -> Option<&PointMeta> {
        self.previous.as_ref().and(self.meta.points.last())
    }

    /// Whether the previous point is the newest this chain ever had. It is
    /// not when `cairn repo repair` removed newer points: changed extents
    /// that a caller's own tracking reports (CBT) may then be relative to a
    /// removed point and must not be trusted. `true` for a new chain.
    pub fn previous_is_newest(&self) -> bool {
        self.meta
            .points
            .last()
            .is_none_or(|p| p.created_file.checked_add(1) == Some(self.meta.next_file_no))
    }

    /// The previous point's index: blocks whose hash matches it need not be
    /// stored again. `None` for an active full.
    pub fn previous(&self) -> Option<&Arc<PointIndex>> {
        self.previous.as_ref()
    }

    /// Appends an encoded record; returns the reference to it.
    pub fn append(&mut self, block: u64, record: &[u8], stored_len: u32, hash: [u8; 32]) -> Result<BlockRef> {
        let offset = self.data_len;
        self.data
            .write_all_at(record, offset)
            .map_err(io(&self.data_path, "write"))?;
        self.data_len += record.len() as u64;
        Ok(BlockRef {
            block,
            file: self.file_no,
            offset,
            stored_len,
            hash,
        })
    }

    /// Makes the new point use the stored block `r` (found in the previous
    /// point) for block number `block`. A synthetic full clones the record into
    /// its own file so it depends on nothing older.
    pub fn reuse(&mut self, block: u64, r: &BlockRef) -> Result<BlockRef> {
        if self.kind != SessionKind::SyntheticFull {
            return Ok(BlockRef { block, ..*r });
        }
        let reader = self
            .prev_reader
            .as_ref()
            .ok_or_else(|| RepoError::Invalid("synthetic full without a previous point".into()))?;
        let loc = reader.locate(r)?;
        let (src_path, src) = reader.data_file(loc.file).ok_or_else(|| RepoError::Damaged {
            path: self.dir.join(CHAIN_META),
            reason: format!("data file {} missing", loc.file),
        })?;
        let len = padded_len(r.stored_len);
        let offset = self.data_len;
        fsutil::copy_range(src, src_path, loc.offset, &self.data, &self.data_path, offset, len)?;
        self.data_len += len;
        Ok(BlockRef {
            block,
            file: self.file_no,
            offset,
            ..*r
        })
    }

    /// Bytes written to the new data file so far.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Makes the new point durable and visible. `disks` pairs each disk's
    /// block map with its description.
    pub fn commit(mut self, disks: Vec<(DiskMap, DiskMeta)>, stats: PointStats) -> Result<PointMeta> {
        self.data.sync_all().map_err(io(&self.data_path, "fsync"))?;
        let file_kind = if self.kind == SessionKind::Incremental {
            FileKind::Incremental
        } else {
            FileKind::Full
        };
        let name = data_file_name(self.file_no, file_kind);
        let final_path = self.dir.join(&name);
        std::fs::rename(&self.data_path, &final_path).map_err(io(&final_path, "rename"))?;
        self.data_path = final_path;

        let mut files = BTreeSet::new();
        for (map, _) in &disks {
            files.extend(map.blocks.iter().map(|b| b.file));
        }
        let index = PointIndex {
            point_id: self.point_id.clone(),
            disks: disks.iter().map(|(m, _)| m.clone()).collect(),
        };
        let index_name = format!("{}.idx", self.point_id);
        let index_path = self.dir.join(&index_name);
        let index_bytes = index.encode(&self.keys).map_err(crate::error::fmt(&index_path))?;
        // Named before it exists: a failure from here to the commit removes it.
        self.index_path = Some(index_path.clone());
        fsutil::write_atomic(&index_path, &index_bytes)?;

        let point = PointMeta {
            id: self.point_id.clone(),
            time: jiff::Timestamp::now().to_string(),
            kind: if self.kind == SessionKind::Incremental {
                PointKind::Incremental
            } else {
                PointKind::Full
            },
            index: index_name,
            created_file: self.file_no,
            files: files.into_iter().collect(),
            disks: disks.into_iter().map(|(_, d)| d).collect(),
            stats,
            vm_config: self.vm_config.take(),
        };
        let mut meta = self.meta.clone();
        meta.files.push(FileEntry {
            no: self.file_no,
            name,
            kind: file_kind,
            committed_len: self.data_len,
        });
        meta.next_file_no = self.file_no + 1;
        meta.generation += 1;
        meta.points.push(point.clone());
        let meta_path = self.dir.join(CHAIN_META);
        let meta_bytes = meta.encode(&self.keys, &meta_path)?;
        // Keep room for retention to commit on a full disk (see `reserve`);
        // a backup that cannot keep it fails here, before its commit.
        reserve::ensure(&self.dir, reserve::wanted(meta_bytes.len() as u64))?;
        let tmp = fsutil::write_aside(&meta_path, &meta_bytes)?;
        if let Err(e) = std::fs::rename(&tmp, &meta_path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&meta_path, "rename")(e));
        }
        // The rename is the commit: from here on the new files belong to the chain.
        self.committed = true;
        fsutil::sync_parent(&meta_path)?;
        Ok(point)
    }
}

impl Drop for BackupSession {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.data_path);
            if let Some(index) = &self.index_path {
                let _ = std::fs::remove_file(index);
            }
        }
    }
}

/// Atomically replaces a chain's metadata (the commit point of every change).
pub(crate) fn write_meta(dir: &Path, meta: &ChainMeta, keys: &Keys) -> Result<()> {
    let path = dir.join(CHAIN_META);
    fsutil::write_atomic(&path, &meta.encode(keys, &path)?)
}

/// Replaces a chain's metadata like [`write_meta`]; when the volume is full,
/// deletes the chain's space reserve and tries once more (retention and
/// repair commit this way, so they work on a full disk). Returns whether the
/// reserve was given up; the caller allocates it again once it freed space.
pub(crate) fn write_meta_or_release(dir: &Path, meta: &ChainMeta, keys: &Keys) -> Result<bool> {
    match write_meta(dir, meta, keys) {
        Err(e) if reserve::is_no_space(&e) && reserve::release(dir)? > 0 => {
            write_meta(dir, meta, keys)?;
            Ok(true)
        }
        other => other.map(|()| false),
    }
}

/// File name of data file `no`.
pub(crate) fn data_file_name(no: u32, kind: FileKind) -> String {
    match kind {
        FileKind::Full => format!("{no:08}.full"),
        FileKind::Incremental => format!("{no:08}.inc"),
    }
}

fn hex_16(s: &str) -> [u8; 16] {
    hex::decode(s).ok().and_then(|v| v.try_into().ok()).unwrap_or([0; 16])
}

fn new_point_id() -> Result<String> {
    let b: [u8; 4] = cairn_format::crypto::random_bytes().map_err(|e| RepoError::Format {
        path: PathBuf::new(),
        source: e,
    })?;
    Ok(hex::encode(b))
}

/// Removes what interrupted operations left in a chain folder: temporary
/// files, data and index files the metadata does not list, and bytes past a
/// data file's committed length. Must run under the chain's exclusive lock,
/// and only with metadata that was read successfully (or none at all).
pub(crate) fn cleanup(dir: &Path, meta: Option<&ChainMeta>) -> Result<()> {
    if let Some(m) = meta {
        check_listed(dir, m)?;
    }
    let mut keep: BTreeSet<&str> = [CHAIN_META, LOCK_FILE].into_iter().collect();
    if let Some(m) = meta {
        keep.extend(m.files.iter().map(|f| f.name.as_str()));
        keep.extend(m.points.iter().map(|p| p.index.as_str()));
    }
    let mut removed = false;
    for e in std::fs::read_dir(dir).map_err(io(dir, "read directory"))? {
        let e = e.map_err(io(dir, "read directory"))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours =
            name.ends_with(TMP_SUFFIX) || name.ends_with(".full") || name.ends_with(".inc") || name.ends_with(".idx");
        if ours && !keep.contains(name) {
            let path = e.path();
            tracing::info!(path = %path.display(), "removing leftover of an interrupted operation");
            std::fs::remove_file(&path).map_err(io(&path, "remove leftover"))?;
            removed = true;
        }
    }
    if let Some(m) = meta {
        for f in &m.files {
            let path = dir.join(&f.name);
            let len = std::fs::metadata(&path).map_err(io(&path, "stat data file"))?.len();
            if len > f.committed_len {
                tracing::info!(path = %path.display(), len, committed = f.committed_len, "truncating uncommitted bytes");
                let file = OpenOptions::new().write(true).open(&path).map_err(io(&path, "open"))?;
                file.set_len(f.committed_len).map_err(io(&path, "truncate"))?;
                file.sync_all().map_err(io(&path, "fsync"))?;
            }
        }
    }
    if removed {
        fsutil::sync_dir(dir)?;
    }
    Ok(())
}

/// Refuses to write to a chain whose listed files are missing or shorter
/// than committed: nothing is "repaired" behind the user's back. The error
/// names the file, the restore points that need it, and what to do.
fn check_listed(dir: &Path, meta: &ChainMeta) -> Result<()> {
    const ADVICE: &str = "`cairn verify` names the restore points that are lost, `cairn repo repair` removes them";
    for f in &meta.files {
        let path = dir.join(&f.name);
        let reason = match std::fs::metadata(&path) {
            Ok(m) if m.len() >= f.committed_len => continue,
            Ok(m) => format!("data file has {} bytes but {} are committed", m.len(), f.committed_len),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "data file is missing".to_string(),
            Err(e) => return Err(io(&path, "stat data file")(e)),
        };
        let needing: Vec<&str> = meta
            .points
            .iter()
            .filter(|p| p.files.iter().any(|&no| meta.resolve_no(no).map(|r| r.0) == Some(f.no)))
            .map(|p| p.id.as_str())
            .collect();
        return Err(RepoError::Damaged {
            path,
            reason: format!(
                "{reason}; restore points that need it: {}; {ADVICE}",
                if needing.is_empty() {
                    "none".to_string()
                } else {
                    needing.join(", ")
                }
            ),
        });
    }
    for p in &meta.points {
        let path = dir.join(&p.index);
        if !path.exists() {
            return Err(RepoError::Damaged {
                path,
                reason: format!("index of restore point {} is missing; {ADVICE}", p.id),
            });
        }
    }
    Ok(())
}
