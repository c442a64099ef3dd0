//! Health check: read every stored block back and check it.
//!
//! Each distinct record is checked once (header CRC, payload CRC, decryption,
//! decompression, keyed hash against the index), then every restore point and
//! disk that refers to a damaged record is named in the report.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// Disks with at least one damaged block (empty when the index itself is damaged).
    pub damaged_disks: Vec<u32>,
    /// Damaged blocks per disk number.
    pub damaged_blocks: BTreeMap<u32, u64>,
    /// Human-readable causes (the first few).
    pub problems: Vec<String>,
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
    let chains: Vec<ChainHealth> = dirs.iter().map(|d| check_chain(repo, d, progress)).collect();
    Ok(HealthReport {
        ok: chains.iter().all(|c| c.ok),
        chains,
    })
}

fn check_chain(repo: &Repository, dir: &Path, progress: &(dyn Fn(u64) + Sync)) -> ChainHealth {
    let mut health = ChainHealth {
        vm: None,
        dir: dir.to_path_buf(),
        ok: false,
        problems: vec![],
        points: vec![],
        records_checked: 0,
        bytes_checked: 0,
    };
    let reader = match repo.chain_at(dir) {
        Ok(r) => r,
        Err(e) => {
            health
                .problems
                .push(format!("chain unreadable, every restore point of it is lost: {e}"));
            return health;
        }
    };
    let meta = reader.meta().clone();
    health.vm = Some(meta.vm.clone());

    let bad_files = check_files(repo, &reader, &meta, &mut health.problems);
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
                health
                    .points
                    .push(point_health(&meta, i, vec![format!("index unreadable: {e}")]));
                indexes.push((i, None));
            }
        }
    }

    let mut work: Vec<(Location, BlockRef)> = unique
        .into_iter()
        .filter(|(l, _)| !bad_files.contains(&l.file))
        .collect();
    work.sort_by_key(|(l, _)| *l);
    let records = match check_records(&reader, &work, progress) {
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
                    None => Some(format!("refers to unknown data file {}", r.file)),
                    Some(l) if bad_files.contains(&l.file) => Some(format!("data file {} is damaged", l.file)),
                    Some(l) => match records.get(&l) {
                        Some(Ok(len)) if *len == d.block_len(r.block) as usize => None,
                        Some(Ok(len)) => Some(format!(
                            "record decodes to {len} bytes, the disk's block has {}",
                            d.block_len(r.block)
                        )),
                        Some(Err(e)) => Some(e.clone()),
                        None => Some("record was not checked".to_string()),
                    },
                };
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
        damaged_disks: vec![],
        damaged_blocks: BTreeMap::new(),
        problems,
    }
}

/// Checks data file headers and lengths; returns the numbers of bad files.
fn check_files(repo: &Repository, reader: &ChainReader, meta: &ChainMeta, problems: &mut Vec<String>) -> BTreeSet<u32> {
    let mut bad = BTreeSet::new();
    for f in &meta.files {
        let Some((path, file)) = reader.data_file(f.no) else {
            bad.insert(f.no);
            continue;
        };
        let mut head = vec![0u8; 64];
        let result = crate::fsutil::read_exact_at(file, path, &mut head, 0)
            .map_err(|e| e.to_string())
            .and_then(|()| DataFileHeader::decode(&head).map_err(|e| e.to_string()))
            .and_then(|h| {
                if h.file_no != f.no
                    || h.repository_id != repo.config().id_bytes()
                    || hex::encode(h.chain_id) != meta.chain_id
                {
                    Err("header belongs to another file, chain or repository".to_string())
                } else {
                    Ok(())
                }
            });
        if let Err(e) = result {
            problems.push(format!("data file {}: {e}", path.display()));
            bad.insert(f.no);
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

/// Reads and decodes every record on all cores; returns, per record, its
/// decoded length or the cause of its damage.
fn check_records(
    reader: &ChainReader,
    work: &[(Location, BlockRef)],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<HashMap<Location, Result<usize, String>>> {
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
                        .map_err(|e| e.to_string());
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
