//! Backups of unusual inputs: changed extents that reach past the disk's end,
//! the same new block on several disks of one VM, and a source that fails
//! part-way (a dropped connection, a bad sector), which must fail the backup
//! with its error, end every pipeline thread, and leave the repository as it was.

use std::sync::atomic::{AtomicU64, Ordering};

use cairn_disk::{DiskError, DiskSource, Extent};
use cairn_engine::{BackupOptions, DiskInput, backup, restore};
use cairn_repo::{Encryption, Repository};

mod common;
use common::{BS, MemDisk, pattern, plan};

/// An in-memory disk that fails its `fail_at`-th read.
struct FlakyDisk {
    data: Vec<u8>,
    reads: AtomicU64,
    fail_at: u64,
}

impl DiskSource for FlakyDisk {
    fn describe(&self) -> String {
        "flaky".into()
    }
    fn virtual_size(&self) -> u64 {
        self.data.len() as u64
    }
    fn allocation(&self) -> cairn_disk::Result<Vec<Extent>> {
        Ok(vec![Extent {
            offset: 0,
            length: self.data.len() as u64,
        }])
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> cairn_disk::Result<()> {
        if self.reads.fetch_add(1, Ordering::Relaxed) == self.fail_at {
            return Err(DiskError::Io {
                path: "flaky".into(),
                op: "read",
                source: std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection dropped"),
            });
        }
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
}

fn restored(repo: &Repository, dir: &std::path::Path, disk: u32) -> Vec<u8> {
    let out = dir.join(format!(
        "disk{disk}-{}.raw",
        std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos()
    ));
    restore(repo, "vm", "latest", disk, &out, &Default::default(), &|_| {}).unwrap();
    std::fs::read(out).unwrap()
}

#[test]
fn changed_extents_past_the_end_are_clipped() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(&dir.path().join("r"), Encryption::None, None, None).unwrap();
    let opts = BackupOptions {
        threads: 2,
        ..BackupOptions::default()
    };
    let mut data = pattern(1, 10 * BS as usize + 512);
    let input = |d: &Vec<u8>, changed| {
        vec![DiskInput {
            source: Box::new(MemDisk(d.clone())),
            changed,
            changed_since: None,
        }]
    };
    backup(&repo, &plan(), input(&data, None), &opts, &|_| {}).unwrap();

    // The last (short) block changes; the extents handed in run far past the end.
    let end = data.len();
    data[end - 100..].fill(0xAB);
    let changed = vec![
        Extent {
            offset: (end - 100) as u64,
            length: 1 << 40,
        },
        Extent {
            offset: 1 << 41,
            length: 10,
        },
    ];
    let r = backup(&repo, &plan(), input(&data, Some(changed)), &opts, &|_| {}).unwrap();
    assert_eq!(r.point.stats.read_blocks, 1, "only the changed last block is read");
    assert_eq!(restored(&repo, dir.path(), 0), data);
}

#[test]
fn a_new_block_on_two_disks_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(&dir.path().join("r"), Encryption::None, None, None).unwrap();
    let opts = BackupOptions {
        threads: 2,
        ..BackupOptions::default()
    };
    let shared = pattern(7, BS as usize);
    let mut d0 = pattern(2, 4 * BS as usize);
    let mut d1 = pattern(3, 4 * BS as usize);
    d0[BS as usize..2 * BS as usize].copy_from_slice(&shared);
    d1[3 * BS as usize..].copy_from_slice(&shared);
    let inputs = vec![
        DiskInput {
            source: Box::new(MemDisk(d0.clone())),
            changed: None,
            changed_since: None,
        },
        DiskInput {
            source: Box::new(MemDisk(d1.clone())),
            changed: None,
            changed_since: None,
        },
    ];
    let r = backup(&repo, &plan(), inputs, &opts, &|_| {}).unwrap();
    assert_eq!(r.point.stats.new_blocks, 7, "8 blocks, one of them twice");
    assert_eq!(r.point.stats.dedup_blocks, 1);
    assert_eq!(restored(&repo, dir.path(), 0), d0);
    assert_eq!(restored(&repo, dir.path(), 1), d1);
}

#[test]
fn failing_source_fails_the_backup_and_keeps_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(&dir.path().join("r"), Encryption::None, None, None).unwrap();
    let good = pattern(1, 64 * BS as usize);
    let ok = FlakyDisk {
        data: good.clone(),
        reads: AtomicU64::new(0),
        fail_at: u64::MAX,
    };
    let opts = BackupOptions {
        threads: 2,
        ..BackupOptions::default()
    };
    backup(
        &repo,
        &plan(),
        vec![DiskInput {
            source: Box::new(ok),
            changed: None,
            changed_since: None,
        }],
        &opts,
        &|_| {},
    )
    .unwrap();

    for fail_at in [0, 1, 17, 63] {
        let bad = FlakyDisk {
            data: pattern(2, 64 * BS as usize),
            reads: AtomicU64::new(0),
            fail_at,
        };
        let err = backup(
            &repo,
            &plan(),
            vec![DiskInput {
                source: Box::new(bad),
                changed: None,
                changed_since: None,
            }],
            &opts,
            &|_| {},
        )
        .expect_err("a failing read must fail the backup");
        assert!(err.to_string().contains("connection dropped"), "{err}");
    }

    let chain = repo.chain("vm").unwrap();
    assert_eq!(chain.meta().points.len(), 1, "a failed backup must not add a point");
    drop(chain);
    let leftovers: Vec<_> = std::fs::read_dir(repo.chain_dir("vm"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "failed sessions left {leftovers:?}");
    let out = dir.path().join("out.raw");
    restore(&repo, "vm", "latest", 0, &out, &Default::default(), &|_| {}).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), good);
}
