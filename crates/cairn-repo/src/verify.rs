//! Health check: read every stored block back and check it.
//!
//! Each distinct record is checked once (header CRC, payload CRC, decryption,
//! decompression, keyed hash against the index), then every restore point and
//! disk that refers to a damaged record is named in the report.
//!
//! A point is *lost* (`lost: true`) exactly when a restore of one of its disks
//! would fail: its index is unreadable, or one of its records is missing
//! (missing or short data file) or fails its checks. Damage that no restore
//! reads — a data file's header — is reported as a problem of the chain and
//! loses no point: every record checks itself, so the records of a file with
//! a damaged header are judged one by one, as a restore would read them.
//! A read that failed for a reason other than damage (permissions, an I/O
//! error) makes the point `uncertain`: it may well be intact.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use cairn_format::datafile::DataFileHeader;
use cairn_format::index::{BlockRef, PointIndex};
use cairn_format::record::RecordDecoder;
use serde::Serialize;

use crate::chain::{ChainMeta, Location};
use crate::error::Result;
use crate::repository::{CHAIN_META, ChainReader, Repository};

/// The health of one restore point.
#[derive(Clone, Debug, Serialize)]
pub struct PointHealth {
    /// Point id.
    pub id: String,
    /// Point time.
    pub time: String,
    /// Whether every block of every disk checked out.
    pub ok: bool,
    /// Whether the point cannot be restored: its index or a record one of its
    /// disks needs is missing or damaged. A repair removes exactly these.
    pub lost: bool,
    /// Disks with at least one damaged block (empty when the index itself is damaged).
    pub damaged_disks: Vec<u32>,
    /// Damaged blocks per disk number.
    pub damaged_blocks: BTreeMap<u32, u64>,
    /// Human-readable causes (the first few).
    pub problems: Vec<String>,
    /// Some of the point could not be read for a reason other than damage
    /// (permissions, an I/O error): it may be intact; a repair leaves it.
    pub uncertain: bool,
}

/// The health of one VM's chain.
#[derive(Clone, Debug, Serialize)]
pub struct ChainHealth {
    /// VM name (unknown when the metadata is unreadable).
    pub vm: Option<String>,
    /// Chain folder.
    pub dir: PathBuf,
    /// Whether the chain metadata and every point are sound.
    pub ok: bool,
    /// Problems with the chain as a whole (metadata, data files).
    pub problems: Vec<String>,
    /// Per point.
    pub points: Vec<PointHealth>,
    /// Distinct records read.
    pub records_checked: u64,
    /// Bytes of records read.
    pub bytes_checked: u64,
}

/// Result of a health check.
#[derive(Clone, Debug, Serialize)]
pub struct HealthReport {
    /// Whether nothing is damaged.
    pub ok: bool,
    /// Per chain.
    pub chains: Vec<ChainHealth>,
}

/// Checks every chain (or the chain of `vm`). `progress` is called with bytes read.
pub fn verify(repo: &Repository, vm: Option<&str>, progress: &(dyn Fn(u64) + Sync)) -> Result<HealthReport> {
    let dirs = match vm {
        Some(vm) => {
            let dir = repo.chain_dir(vm);
            // Without metadata the VM has no restore points: a first backup
            // that was interrupted leaves only a folder with leftovers.
            if !dir.join(CHAIN_META).exists() {
                return Err(crate::RepoError::NoSuchVm { vm: vm.to_string() });
            }
            vec![dir]
        }
        None => repo.chain_dirs()?,
    };
    let chains: Vec<ChainHealth> = dirs
        .iter()
        .map(|d| match repo.chain_at(d) {
            Ok(reader) => check_chain(repo, &reader, progress),
            Err(e) => unreadable(d, &e),
        })
        .collect();
    Ok(HealthReport {
        ok: chains.iter().all(|c| c.ok),
        chains,
    })
}

/// The health of a chain whose metadata cannot be read.
pub(crate) fn unreadable(dir: &Path, e: &crate::RepoError) -> ChainHealth {
    ChainHealth {
        vm: None,
        dir: dir.to_path_buf(),
        ok: false,
        problems: vec![format!("chain unreadable, every restore point of it is lost: {e}")],
        points: vec![],
        records_checked: 0,
        bytes_checked: 0,
    }
}

/// Checks the chain `reader` has open (the caller holds its lock).
pub(crate) fn check_chain(repo: &Repository, reader: &ChainReader, progress: &(dyn Fn(u64) + Sync)) -> ChainHealth {
    let mut health = ChainHealth {
        vm: None,
        dir: reader.dir().to_path_buf(),
        ok: false,
        problems: vec![],
        points: vec![],
        records_checked: 0,
        bytes_checked: 0,
    };
    let meta = reader.meta().clone();
    health.vm = Some(meta.vm.clone());

    let bad_files = check_files(repo, reader, &meta, &mut health.problems);
    let mut indexes: Vec<(usize, Option<PointIndex>)> = Vec::new();
    let mut unique: HashMap<Location, BlockRef> = HashMap::new();
    for (i, p) in meta.points.iter().enumerate() {
        match reader.index(p) {
            Ok(idx) => {
                for r in idx.disks.iter().flat_map(|d| d.blocks.iter()) {
                    if let Some(loc) = meta.locate(r) {
                        unique.entry(loc).or_insert(*r);
                    }
                }
                indexes.push((i, Some(idx)));
            }
            Err(e) => {
                let mut ph = point_health(&meta, i, vec![format!("index unreadable: {e}")]);
                ph.lost = e.is_damage();
                ph.uncertain = !ph.lost;
                health.points.push(ph);
                indexes.push((i, None));
            }
        }
    }

    let mut work: Vec<(Location, BlockRef)> = unique
        .into_iter()
        .filter(|(l, _)| !bad_files.contains_key(&l.file))
        .collect();
    work.sort_by_key(|(l, _)| *l);
    let records = match check_records(reader, &work, progress) {
        Ok(b) => b,
        Err(e) => {
            health.problems.push(format!("cannot check records: {e}"));
            return health;
        }
    };
    health.records_checked = work.len() as u64;
    health.bytes_checked = work.iter().map(|(_, r)| u64::from(r.stored_len)).sum();

    for (i, idx) in indexes {
        let Some(idx) = idx else { continue };
        let mut ph = point_health(&meta, i, vec![]);
        for d in &idx.disks {
            let mut damaged = 0u64;
            for r in &d.blocks {
                let cause = match meta.locate(r) {
                    None => Some((format!("refers to unknown data file {}", r.file), true)),
                    Some(l) => match bad_files.get(&l.file) {
                        Some(cause) => Some(cause.clone()),
                        None => match records.get(&l) {
                            Some(Ok(len)) if *len == d.block_len(r.block) as usize => None,
                            Some(Ok(len)) => Some((
                                format!(
                                    "record decodes to {len} bytes, the disk's block has {}",
                                    d.block_len(r.block)
                                ),
                                true,
                            )),
                            Some(Err(e)) => Some(e.clone()),
                            None => Some(("record was not checked".to_string(), false)),
                        },
                    },
                };
                let cause = cause.map(|(text, damage)| {
                    ph.lost |= damage;
                    ph.uncertain |= !damage;
                    text
                });
                if let Some(cause) = cause {
                    damaged += 1;
                    if ph.problems.len() < 5 {
                        ph.problems.push(format!(
                            "disk {} block {} (offset {}): {cause}",
                            d.disk,
                            r.block,
                            r.block * u64::from(d.block_size)
                        ));
                    }
                }
            }
            if damaged > 0 {
                ph.damaged_disks.push(d.disk);
                ph.damaged_blocks.insert(d.disk, damaged);
            }
        }
        ph.ok = ph.damaged_disks.is_empty();
        health.points.push(ph);
    }
    health.points.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
    health.ok = health.problems.is_empty() && health.points.iter().all(|p| p.ok);
    health
}

fn point_health(meta: &ChainMeta, i: usize, problems: Vec<String>) -> PointHealth {
    let p = &meta.points[i];
    PointHealth {
        id: p.id.clone(),
        time: p.time.clone(),
        ok: problems.is_empty(),
        lost: false,
        damaged_disks: vec![],
        damaged_blocks: BTreeMap::new(),
        problems,
        uncertain: false,
    }
}

/// Checks data file headers and lengths. Returns the files that cannot be
/// read at all (missing, unreadable), each with the cause its records get
/// and whether that cause is damage.
fn check_files(
    repo: &Repository,
    reader: &ChainReader,
    meta: &ChainMeta,
    problems: &mut Vec<String>,
) -> BTreeMap<u32, (String, bool)> {
    let mut bad = BTreeMap::new();
    for f in &meta.files {
        let Some((path, file)) = reader.data_file(f.no) else {
            let e = reader.file_error(f.no).map_or_else(
                || (format!("data file {} is not open", f.name), false),
                |e| (e.to_string(), e.is_damage()),
            );
            problems.push(e.0.clone());
            bad.insert(f.no, e);
            continue;
        };
        // No restore reads the header, and every record checks itself: a
        // damaged header is reported, and the file's records are still
        // judged one by one.
        if let Err(e) = header_problem(repo, meta, f.no, file, path) {
            problems.push(format!(
                "data file {}: header damaged ({e}); its records are checked one by one \
                 (`cairn repo repair` rewrites the header)",
                path.display()
            ));
        }
        // A short file is damage too, but the records it still holds are
        // judged one by one (those past its end fail their read).
        if let Ok(len) = file.metadata().map(|m| m.len())
            && len < f.committed_len
        {
            problems.push(format!(
                "data file {}: truncated: has {len} bytes, {} committed",
                path.display(),
                f.committed_len
            ));
        }
    }
    bad
}

/// Why the header of data file `no` is not the one it should have, if so.
pub(crate) fn header_problem(
    repo: &Repository,
    meta: &ChainMeta,
    no: u32,
    file: &std::fs::File,
    path: &Path,
) -> std::result::Result<(), String> {
    let mut head = vec![0u8; 64];
    crate::fsutil::read_exact_at(file, path, &mut head, 0).map_err(|e| e.to_string())?;
    let h = DataFileHeader::decode(&head).map_err(|e| e.to_string())?;
    if h.file_no != no || h.repository_id != repo.config().id_bytes() || hex::encode(h.chain_id) != meta.chain_id {
        return Err("it belongs to another file, chain or repository".to_string());
    }
    Ok(())
}

/// Reads and decodes every record on all cores; returns, per record, its
/// decoded length or the cause of its damage.
/// Records' outcomes: the decoded length, or the cause and whether it is damage.
type RecordOutcomes = HashMap<Location, Result<usize, (String, bool)>>;

fn check_records(
    reader: &ChainReader,
    work: &[(Location, BlockRef)],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RecordOutcomes> {
    let results = Mutex::new(HashMap::with_capacity(work.len()));
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let decoders: Vec<RecordDecoder> = (0..threads)
        .map(|_| RecordDecoder::new())
        .collect::<Result<_, _>>()
        .map_err(|e| crate::RepoError::Format {
            path: reader.dir().to_path_buf(),
            source: e,
        })?;
    std::thread::scope(|s| {
        for mut decoder in decoders {
            let (results, next) = (&results, &next);
            s.spawn(move || {
                let (mut scratch, mut out) = (Vec::new(), Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((loc, r)) = work.get(i) else { break };
                    let outcome = reader
                        .read_block(&mut decoder, r, &mut scratch, &mut out)
                        .map(|()| out.len())
                        .map_err(|e| (e.to_string(), e.is_damage()));
                    if let Ok(mut map) = results.lock() {
                        map.insert(*loc, outcome);
                    }
                    progress(u64::from(r.stored_len));
                }
            });
        }
    });
    Ok(results.into_inner().unwrap_or_default())
}
