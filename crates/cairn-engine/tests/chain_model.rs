//! Model-based property tests of a VM's chain: random sequences of guest
//! writes, backups (with and without changed block tracking, forced fulls),
//! retention runs and backup-method switches are applied both to a real
//! repository and to a tiny in-memory model, and after every step the
//! repository must agree with the model:
//!
//! * the restore points listed are exactly the model's (ids, order, kinds);
//! * every listed point restores, disk by disk, byte-identical to the
//!   model's content at the time of that backup;
//! * `verify` reports the repository healthy;
//! * the chain folder holds exactly the files the metadata lists;
//! * forever-forward retention keeps `min(count, keep)` points; forward
//!   retention keeps at least `keep` points (when it had them) and always the
//!   newest `keep`;
//! * a backup stores no block already stored in the previous point and no
//!   block twice (`stats.new_blocks` lies between the global and the per-disk
//!   count of distinct new contents).
//!
//! Set `PROPTEST_CASES` for a longer run (default 24 cases).

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_disk::{DiskSource, Extent};
use cairn_engine::{BackupOptions, DiskInput, backup, restore};
use cairn_format::codec::Compression;
use cairn_format::crypto::KdfParams;
use cairn_repo::retention::retain;
use cairn_repo::verify::verify;
use cairn_repo::{BackupPlan, Encryption, FullKind, Method, PointKind, PointStats, RepoError, Repository, SessionKind};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// The smallest block size cairn accepts.
const BS: u64 = 256 << 10;
const VM: &str = "vm";

// ---------------------------------------------------------------------------
// An in-memory disk.

/// A snapshot of a disk's bytes; `sparse` reports only the 4 KiB granules
/// that hold non-zero bytes as allocated, otherwise the whole disk.
struct MemDisk {
    data: Vec<u8>,
    sparse: bool,
}

impl DiskSource for MemDisk {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn virtual_size(&self) -> u64 {
        self.data.len() as u64
    }

    fn allocation(&self) -> cairn_disk::Result<Vec<Extent>> {
        if !self.sparse {
            return Ok(vec![Extent {
                offset: 0,
                length: self.data.len() as u64,
            }]);
        }
        let mut out: Vec<Extent> = Vec::new();
        for (i, granule) in self.data.chunks(4096).enumerate() {
            if granule.iter().all(|&b| b == 0) {
                continue;
            }
            let offset = i as u64 * 4096;
            match out.last_mut() {
                Some(last) if last.end() == offset => last.length += granule.len() as u64,
                _ => out.push(Extent {
                    offset,
                    length: granule.len() as u64,
                }),
            }
        }
        Ok(out)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> cairn_disk::Result<()> {
        buf.fill(0);
        let len = self.data.len() as u64;
        if offset < len {
            let n = ((len - offset) as usize).min(buf.len());
            buf[..n].copy_from_slice(&self.data[offset as usize..offset as usize + n]);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Operations and their strategies.

/// New contents for one block.
#[derive(Clone, Debug)]
enum Fill {
    /// Pseudo-random bytes from a seed (small seeds repeat: duplicates).
    Random(u64),
    /// One byte repeated (very compressible; few values: duplicates).
    Byte(u8),
    /// All zeros (the block is dropped from the index).
    Zero,
    /// A copy of another block (selectors are reduced modulo the sizes).
    CopyOf { disk: usize, block: usize },
    /// Random bytes over part of the block only (CBT reports just that range).
    Partial { at: u64, len: u64, seed: u64 },
}

/// How the changed extents are given to a backup.
#[derive(Clone, Debug)]
enum Cbt {
    /// No CBT: the whole allocation is read.
    Off,
    /// Exactly the byte ranges written since the last backup.
    Exact,
    /// Those plus extra `(offset, length)` ranges (reduced to the disk).
    Superset(Vec<(u64, u64)>),
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        disk: usize,
        block: usize,
        fill: Fill,
    },
    Backup {
        cbt: Cbt,
        force_full: bool,
        sparse: bool,
    },
    Retain {
        keep: usize,
    },
    /// Later backups use the other method (the chain records it).
    SwitchMethod,
}

#[derive(Clone, Debug)]
struct Setup {
    method: Method,
    full_every: u32,
    full_kind: FullKind,
    compression: Compression,
    encrypted: bool,
    /// Per disk: whole blocks and a tail of bytes (a short last block).
    disks: Vec<(u64, u64)>,
    /// Initial content selectors, one per block (cycled).
    initial: Vec<u8>,
}

fn seed() -> impl Strategy<Value = u64> {
    prop_oneof![1 => 0u64..6, 2 => any::<u64>()]
}

fn fill() -> impl Strategy<Value = Fill> {
    prop_oneof![
        3 => seed().prop_map(Fill::Random),
        2 => (1u8..4).prop_map(Fill::Byte),
        2 => Just(Fill::Zero),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(disk, block)| Fill::CopyOf { disk, block }),
        2 => (0..BS, 1..BS / 2, seed()).prop_map(|(at, len, seed)| Fill::Partial { at, len, seed }),
    ]
}

fn cbt() -> impl Strategy<Value = Cbt> {
    prop_oneof![
        2 => Just(Cbt::Off),
        2 => Just(Cbt::Exact),
        1 => prop::collection::vec((any::<u64>(), 1..2 * BS), 1..4).prop_map(Cbt::Superset),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<usize>(), any::<usize>(), fill()).prop_map(|(disk, block, fill)| Op::Write { disk, block, fill }),
        5 => (cbt(), prop::bool::weighted(0.15), any::<bool>())
            .prop_map(|(cbt, force_full, sparse)| Op::Backup { cbt, force_full, sparse }),
        3 => (1usize..4).prop_map(|keep| Op::Retain { keep }),
        1 => Just(Op::SwitchMethod),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![Just(Method::ForeverForward), Just(Method::Forward)],
        1u32..=3,
        prop_oneof![Just(FullKind::Synthetic), Just(FullKind::Active)],
        prop_oneof![
            Just(Compression::None),
            Just(Compression::Lz4),
            Just(Compression::Zstd(1))
        ],
        prop::bool::weighted(0.25),
        prop::collection::vec((8u64..=24, prop_oneof![3 => Just(0u64), 1 => 1..BS]), 1..=2),
        prop::collection::vec(any::<u8>(), 1..32),
    )
        .prop_map(
            |(method, full_every, full_kind, compression, encrypted, disks, initial)| Setup {
                method,
                full_every,
                full_kind,
                compression,
                encrypted,
                disks,
                initial,
            },
        )
}

// ---------------------------------------------------------------------------
// The model.

#[derive(Clone, Debug)]
struct PointModel {
    id: String,
    kind: PointKind,
    disks: Vec<Vec<u8>>,
}

struct Model {
    /// The method the next backup asks for.
    method: Method,
    /// The method the chain records (set by the last backup; retention uses it).
    chain_method: Method,
    disks: Vec<Vec<u8>>,
    /// Byte ranges written per disk since the last backup.
    dirty: Vec<Vec<Extent>>,
    points: Vec<PointModel>,
}

fn random_fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn block_range(size: u64, block: u64) -> std::ops::Range<usize> {
    let start = block * BS;
    start as usize..(start + BS).min(size) as usize
}

fn block_count(size: u64) -> u64 {
    size.div_ceil(BS)
}

impl Model {
    fn new(setup: &Setup) -> Self {
        let mut disks = Vec::new();
        for (d, &(blocks, tail)) in setup.disks.iter().enumerate() {
            let size = blocks * BS + tail;
            let mut data = vec![0u8; size as usize];
            for b in 0..block_count(size) {
                let sel = setup.initial[(d * 7 + b as usize) % setup.initial.len()];
                let r = block_range(size, b);
                match sel % 4 {
                    0 => {}
                    1 => random_fill(&mut data[r], 1000 + (d as u64) * 100 + b),
                    2 => data[r].fill(sel | 1),
                    _ => random_fill(&mut data[r], u64::from(sel % 3)),
                }
            }
            disks.push(data);
        }
        let dirty = vec![Vec::new(); disks.len()];
        Model {
            method: setup.method,
            chain_method: setup.method,
            disks,
            dirty,
            points: Vec::new(),
        }
    }

    fn write(&mut self, disk: usize, block: usize, fill: &Fill) {
        let d = disk % self.disks.len();
        let size = self.disks[d].len() as u64;
        let b = block as u64 % block_count(size);
        let r = block_range(size, b);
        let (start, end) = (r.start as u64, r.end as u64);
        match *fill {
            Fill::Random(seed) => random_fill(&mut self.disks[d][r], seed),
            Fill::Byte(v) => self.disks[d][r].fill(v),
            Fill::Zero => self.disks[d][r].fill(0),
            Fill::CopyOf { disk, block } => {
                let sd = disk % self.disks.len();
                let ssize = self.disks[sd].len() as u64;
                let src = self.disks[sd][block_range(ssize, block as u64 % block_count(ssize))].to_vec();
                // A short last block copies a prefix; a short source leaves the rest.
                let n = src.len().min(r.len());
                self.disks[d][r.start..r.start + n].copy_from_slice(&src[..n]);
            }
            Fill::Partial { at, len, seed } => {
                let from = (start + at % (end - start)).min(end - 1);
                let to = (from + len).min(end);
                random_fill(&mut self.disks[d][from as usize..to as usize], seed);
                self.dirty[d].push(Extent {
                    offset: from,
                    length: to - from,
                });
                return;
            }
        }
        self.dirty[d].push(Extent {
            offset: start,
            length: end - start,
        });
    }

    /// The kind of point the next backup must make.
    fn next_kind(&self, setup: &Setup, force_full: bool) -> SessionKind {
        let segment = self
            .points
            .iter()
            .rev()
            .take_while(|p| p.kind == PointKind::Incremental)
            .count() as u32
            + 1;
        if self.points.is_empty() || force_full {
            SessionKind::ActiveFull
        } else if self.method == Method::Forward && segment >= setup.full_every {
            match setup.full_kind {
                FullKind::Active => SessionKind::ActiveFull,
                FullKind::Synthetic => SessionKind::SyntheticFull,
            }
        } else {
            SessionKind::Incremental
        }
    }

    /// Applies "keep the newest `keep`" as the documented rules say.
    fn retain(&mut self, keep: usize) {
        match self.chain_method {
            Method::ForeverForward => {
                let drop = self.points.len().saturating_sub(keep);
                self.points.drain(..drop);
                // The oldest point left is the full (merged or already one).
                if let Some(p) = self.points.first_mut() {
                    p.kind = PointKind::Full;
                }
            }
            Method::Forward => {
                // A segment (a full and its increments) goes once every one of
                // its points is older than the newest `keep`.
                while let Some(next_full) = self.points.iter().skip(1).position(|p| p.kind == PointKind::Full) {
                    let next_full = next_full + 1;
                    if self.points.len() - next_full < keep {
                        break;
                    }
                    self.points.drain(..next_full);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Running a case.

fn cheap_kdf() -> KdfParams {
    KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        salt: "00112233445566778899aabbccddeeff".into(),
    }
}

/// Blocks a backup reads from disk `d`: the touched blocks of the changed
/// extents when CBT applies, else the allocated blocks.
fn blocks_read(data: &[u8], changed: Option<&[Extent]>, sparse: bool) -> Vec<u64> {
    let size = data.len() as u64;
    let mut set = std::collections::BTreeSet::new();
    match changed {
        Some(exts) => {
            for e in exts.iter().filter(|e| e.length > 0) {
                set.extend(e.offset / BS..=(e.end() - 1) / BS);
            }
        }
        None => {
            for b in 0..block_count(size) {
                if !sparse || data[block_range(size, b)].iter().any(|&x| x != 0) {
                    set.insert(b);
                }
            }
        }
    }
    set.into_iter().collect()
}

static OUT_NO: AtomicU64 = AtomicU64::new(0);

fn check_repository(repo: &Repository, model: &Model, scratch: &Path) -> Result<(), TestCaseError> {
    let chain = repo
        .chain(VM)
        .map_err(|e| TestCaseError::fail(format!("open chain: {e}")))?;
    let meta = chain.meta().clone();
    drop(chain);
    let ids: Vec<&str> = meta.points.iter().map(|p| p.id.as_str()).collect();
    let want: Vec<&str> = model.points.iter().map(|p| p.id.as_str()).collect();
    prop_assert_eq!(&ids, &want, "restore points differ from the model");
    let kinds: Vec<PointKind> = meta.points.iter().map(|p| p.kind).collect();
    let want_kinds: Vec<PointKind> = model.points.iter().map(|p| p.kind).collect();
    prop_assert_eq!(kinds, want_kinds, "point kinds differ from the model");

    for p in &model.points {
        for (d, want) in p.disks.iter().enumerate() {
            let out = scratch.join(format!("restore-{}.raw", OUT_NO.fetch_add(1, Ordering::Relaxed)));
            restore(repo, VM, &p.id, d as u32, &out, &Default::default(), &|_| {})
                .map_err(|e| TestCaseError::fail(format!("restore point {} disk {d}: {e}", p.id)))?;
            let got = std::fs::read(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            std::fs::remove_file(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got.len(), want.len(), "point {} disk {} size", &p.id, d);
            if got != *want {
                let bad: Vec<u64> = (0..block_count(want.len() as u64))
                    .filter(|&b| got[block_range(want.len() as u64, b)] != want[block_range(want.len() as u64, b)])
                    .collect();
                return Err(TestCaseError::fail(format!(
                    "point {} disk {d}: blocks {bad:?} differ",
                    p.id
                )));
            }
        }
    }

    let report = verify(repo, Some(VM), &|_| {}).map_err(|e| TestCaseError::fail(format!("verify: {e}")))?;
    if !report.ok {
        return Err(TestCaseError::fail(format!("verify reports damage: {report:#?}")));
    }

    // Nothing but the listed files (no leftovers, nothing missing), the lock
    // and the space reserve every backup keeps.
    let mut expected: HashSet<String> = ["chain.meta", "lock", cairn_repo::reserve::RESERVE_FILE]
        .map(String::from)
        .into();
    expected.extend(meta.files.iter().map(|f| f.name.clone()));
    expected.extend(meta.points.iter().map(|p| p.index.clone()));
    let present: HashSet<String> = std::fs::read_dir(repo.chain_dir(VM))
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    prop_assert_eq!(present, expected, "chain folder contents");
    Ok(())
}

/// Runs `ops` on a new repository and checks it against the model after every backup and
/// retention.
fn run_case(setup: &Setup, ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let repo_dir = dir.path().join("repo");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let repo = if setup.encrypted {
        Repository::init(&repo_dir, Encryption::Aes256Gcm, Some(b"password"), Some(cheap_kdf()))
    } else {
        Repository::init(&repo_dir, Encryption::None, None, None)
    }
    .map_err(|e| TestCaseError::fail(format!("init: {e}")))?;
    let opts = BackupOptions {
        compression: setup.compression,
        threads: 2,
    };
    let mut model = Model::new(setup);

    for (step, op) in ops.iter().enumerate() {
        let ctx = |what: &str| format!("step {step} ({op:?}): {what}");
        let check = match op {
            Op::Write { disk, block, fill } => {
                model.write(*disk, *block, fill);
                false
            }
            Op::SwitchMethod => {
                model.method = match model.method {
                    Method::ForeverForward => Method::Forward,
                    Method::Forward => Method::ForeverForward,
                };
                false
            }
            Op::Backup {
                cbt,
                force_full,
                sparse,
            } => {
                backup_step(setup, &repo, &opts, &mut model, cbt, *force_full, *sparse, &ctx)?;
                true
            }
            Op::Retain { keep } => retain_step(&repo, &mut model, *keep, &ctx)?,
        };
        if check {
            check_repository(&repo, &model, &scratch).map_err(|e| TestCaseError::fail(ctx(&e.to_string())))?;
        }
    }
    Ok(())
}

/// Backs up the model's disks, checks the session kind and dedup, and records the point in
/// the model.
#[allow(clippy::too_many_arguments)]
fn backup_step(
    setup: &Setup,
    repo: &Repository,
    opts: &BackupOptions,
    model: &mut Model,
    cbt: &Cbt,
    force_full: bool,
    sparse: bool,
    ctx: &dyn Fn(&str) -> String,
) -> Result<(), TestCaseError> {
    let want_kind = model.next_kind(setup, force_full);
    let plan = BackupPlan {
        vm: VM.into(),
        block_size: BS as u32,
        method: model.method,
        full_every: Some(setup.full_every),
        full_kind: setup.full_kind,
        force_full,
        vm_config: None,
    };
    let (inputs, read_sets) = disk_inputs(model, cbt, sparse, want_kind);
    let result = backup(repo, &plan, inputs, opts, &|_| {})
        .map_err(|e| TestCaseError::fail(ctx(&format!("backup failed: {e}"))))?;
    prop_assert_eq!(result.kind, want_kind, "{}", ctx("session kind"));
    check_dedup(model, want_kind, &read_sets, &result.point.stats, ctx)?;

    model.points.push(PointModel {
        id: result.point.id.clone(),
        kind: if want_kind == SessionKind::Incremental {
            PointKind::Incremental
        } else {
            PointKind::Full
        },
        disks: model.disks.clone(),
    });
    model.chain_method = model.method;
    for d in &mut model.dirty {
        d.clear();
    }
    Ok(())
}

/// The model's disks as backup inputs with the changed extents `cbt` gives, and the blocks
/// the backup reads of each.
fn disk_inputs(model: &Model, cbt: &Cbt, sparse: bool, want_kind: SessionKind) -> (Vec<DiskInput>, Vec<Vec<u64>>) {
    let mut inputs = Vec::new();
    let mut read_sets = Vec::new();
    for (d, data) in model.disks.iter().enumerate() {
        let size = data.len() as u64;
        let changed: Option<Vec<Extent>> = match cbt {
            Cbt::Off => None,
            Cbt::Exact => Some(model.dirty[d].clone()),
            Cbt::Superset(extra) => {
                let mut v = model.dirty[d].clone();
                for &(o, l) in extra {
                    let offset = o % size;
                    v.push(Extent {
                        offset,
                        length: l.min(size - offset),
                    });
                }
                Some(v)
            }
        };
        // CBT is used only when there is a previous point to build on.
        let uses_cbt = changed.is_some() && want_kind != SessionKind::ActiveFull;
        read_sets.push(blocks_read(data, changed.as_deref().filter(|_| uses_cbt), sparse));
        inputs.push(DiskInput {
            source: Box::new(MemDisk {
                data: data.clone(),
                sparse,
            }),
            changed,
            changed_since: None,
        });
    }
    (inputs, read_sets)
}

/// Dedup: nothing stored that the previous point has, nothing twice.
fn check_dedup(
    model: &Model,
    want_kind: SessionKind,
    read_sets: &[Vec<u64>],
    stats: &PointStats,
    ctx: &dyn Fn(&str) -> String,
) -> Result<(), TestCaseError> {
    let prev: HashSet<&[u8]> = match (want_kind, model.points.last()) {
        (SessionKind::ActiveFull, _) | (_, None) => HashSet::new(),
        (_, Some(p)) => p
            .disks
            .iter()
            .flat_map(|d| {
                let size = d.len() as u64;
                (0..block_count(size)).map(move |b| &d[block_range(size, b)])
            })
            .filter(|c| c.iter().any(|&x| x != 0))
            .collect(),
    };
    let mut global: HashSet<&[u8]> = HashSet::new();
    let mut per_disk = 0u64;
    for (data, blocks) in model.disks.iter().zip(read_sets) {
        let size = data.len() as u64;
        let mut mine: HashSet<&[u8]> = HashSet::new();
        for &b in blocks {
            let c = &data[block_range(size, b)];
            if c.iter().any(|&x| x != 0) && !prev.contains(c) {
                mine.insert(c);
            }
        }
        per_disk += mine.len() as u64;
        global.extend(mine);
    }
    prop_assert!(
        global.len() as u64 <= stats.new_blocks && stats.new_blocks <= per_disk,
        "{}: stored {} new blocks, expected between {} and {}",
        ctx("dedup"),
        stats.new_blocks,
        global.len(),
        per_disk
    );
    Ok(())
}

/// Applies retention keeping `keep` points and checks what was kept against the model.
/// Returns whether there was a chain (and so the repository is to be checked).
fn retain_step(
    repo: &Repository,
    model: &mut Model,
    keep: usize,
    ctx: &dyn Fn(&str) -> String,
) -> Result<bool, TestCaseError> {
    let before = model.points.len();
    let newest: Vec<String> = model.points.iter().rev().take(keep).map(|p| p.id.clone()).collect();
    let res = retain(repo, VM, keep);
    if before == 0 {
        prop_assert!(
            matches!(res, Err(RepoError::NoSuchVm { .. })),
            "{}",
            ctx("retain on no chain")
        );
        return Ok(false);
    }
    let report = res.map_err(|e| TestCaseError::fail(ctx(&format!("retain failed: {e}"))))?;
    model.retain(keep);
    let kept = report.kept;
    match model.chain_method {
        Method::ForeverForward => prop_assert_eq!(kept, before.min(keep), "{}", ctx("kept")),
        Method::Forward => {
            prop_assert!(kept >= before.min(keep), "{}: kept {kept} of {before}", ctx("kept"));
        }
    }
    prop_assert_eq!(kept, model.points.len(), "{}", ctx("kept vs model"));
    prop_assert_eq!(report.removed.len(), before - kept, "{}", ctx("removed"));
    let ids: HashSet<&str> = model.points.iter().map(|p| p.id.as_str()).collect();
    for id in &newest {
        prop_assert!(
            ids.contains(id.as_str()),
            "{}: newest point {id} removed",
            ctx("retain")
        );
    }
    Ok(true)
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    // Integration tests have no lib.rs for proptest to store regressions next
    // to; the minimal failing input is printed instead.
    ProptestConfig {
        cases,
        max_shrink_iters: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn chain_matches_model(setup in setup(), ops in prop::collection::vec(op(), 4..32)) {
        run_case(&setup, &ops)?;
    }
}

/// A fixed scenario that exercises every kind of step at least once, so a
/// regression shows up even when the random cases happen to miss it.
#[test]
fn fixed_scenario_both_methods() {
    for method in [Method::ForeverForward, Method::Forward] {
        for full_kind in [FullKind::Synthetic, FullKind::Active] {
            let setup = Setup {
                method,
                full_every: 2,
                full_kind,
                compression: Compression::Lz4,
                encrypted: false,
                disks: vec![(8, 0), (9, 5000)],
                initial: vec![1, 2, 3, 0, 5, 6, 7],
            };
            let w = |disk, block, fill| Op::Write { disk, block, fill };
            let b = |cbt, force_full| Op::Backup {
                cbt,
                force_full,
                sparse: true,
            };
            let ops = vec![
                b(Cbt::Off, false),
                w(0, 1, Fill::Random(3)),
                w(
                    1,
                    9,
                    Fill::Partial {
                        at: 10,
                        len: 100,
                        seed: 9,
                    },
                ),
                b(Cbt::Exact, false),
                w(0, 2, Fill::CopyOf { disk: 1, block: 3 }),
                w(0, 3, Fill::Zero),
                b(Cbt::Superset(vec![(5 * BS + 7, BS)]), false),
                Op::Retain { keep: 2 },
                w(1, 0, Fill::Byte(2)),
                b(Cbt::Exact, false),
                b(Cbt::Off, true),
                w(0, 7, Fill::Random(1)),
                b(Cbt::Exact, false),
                Op::Retain { keep: 1 },
                Op::SwitchMethod,
                w(0, 5, Fill::Random(77)),
                b(Cbt::Exact, false),
                Op::Retain { keep: 1 },
            ];
            if let Err(e) = run_case(&setup, &ops) {
                panic!("{method:?}/{full_kind:?}: {e}");
            }
        }
    }
}
