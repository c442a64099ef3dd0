//! A source that fails part-way (a dropped connection, a bad sector) must fail
//! the backup with its error, end every pipeline thread, and leave the
//! repository exactly as it was.

use std::sync::atomic::{AtomicU64, Ordering};

use cairn_disk::{DiskError, DiskSource, Extent};
use cairn_engine::{BackupOptions, DiskInput, backup, restore};
use cairn_repo::{BackupPlan, Encryption, FullKind, Method, Repository};

const BS: u64 = 256 << 10;

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

fn content(seed: u8, blocks: u64) -> Vec<u8> {
    let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..blocks * BS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

fn plan() -> BackupPlan {
    BackupPlan {
        vm: "vm".into(),
        block_size: BS as u32,
        method: Method::ForeverForward,
        full_every: None,
        full_kind: FullKind::Synthetic,
        force_full: false,
    }
}

#[test]
fn failing_source_fails_the_backup_and_keeps_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(&dir.path().join("r"), Encryption::None, None, None).unwrap();
    let good = content(1, 64);
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
        }],
        &opts,
        &|_| {},
    )
    .unwrap();

    for fail_at in [0, 1, 17, 63] {
        let bad = FlakyDisk {
            data: content(2, 64),
            reads: AtomicU64::new(0),
            fail_at,
        };
        let err = backup(
            &repo,
            &plan(),
            vec![DiskInput {
                source: Box::new(bad),
                changed: None,
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
    restore(&repo, "vm", "latest", 0, &out, &|_| {}).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), good);
}
