//! A restore point read at random offsets ([`PointDisk`]): every read equals
//! the source at the backup instant, also across block boundaries, in holes
//! and past the end; the VM configuration given to a backup is kept with its
//! point; a damaged record is an error naming the point, not wrong bytes.

use cairn_disk::{DiskSource, Extent};
use cairn_engine::{BackupOptions, DiskInput, PointDisk, backup};
use cairn_repo::{Encryption, Repository};

mod common;
use common::{BS, pattern, plan};

/// A disk in memory with holes: `allocated` extents hold data, the rest is zero.
struct MemDisk {
    data: Vec<u8>,
    allocated: Vec<Extent>,
}

impl DiskSource for MemDisk {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn virtual_size(&self) -> u64 {
        self.data.len() as u64
    }
    fn allocation(&self) -> cairn_disk::Result<Vec<Extent>> {
        Ok(self.allocated.clone())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> cairn_disk::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
}

/// 10.5 blocks; blocks 0–2 and 6–10 hold data, 3–5 are a hole.
fn disk() -> MemDisk {
    let size = (BS * 10 + BS / 2) as usize;
    let mut data = pattern(7, size);
    data[(3 * BS) as usize..(6 * BS) as usize].fill(0);
    MemDisk {
        data,
        allocated: vec![
            Extent {
                offset: 0,
                length: 3 * BS,
            },
            Extent {
                offset: 6 * BS,
                length: size as u64 - 6 * BS,
            },
        ],
    }
}

fn backed_up(dir: &std::path::Path) -> (Repository, Vec<u8>) {
    let repo = Repository::init(dir, Encryption::None, None, None).unwrap();
    let d = disk();
    let data = d.data.clone();
    let mut p = plan();
    p.vm_config = Some(serde_json::json!({"machine": "pc-i440fx-7.2", "memory": 536870912}));
    let input = DiskInput {
        source: Box::new(d),
        changed: None,
        changed_since: None,
    };
    backup(&repo, &p, vec![input], &BackupOptions::default(), &|_| {}).unwrap();
    (repo, data)
}

#[test]
fn reads_at_any_offset_equal_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, data) = backed_up(tmp.path());
    let disk = PointDisk::open(&repo, "vm", "latest", 0).unwrap();
    assert_eq!(disk.virtual_size(), data.len() as u64);
    // Offsets and lengths that start and end inside blocks, span several, cover the hole and the short tail.
    let mut x: u64 = 0x1234_5678;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = x % data.len() as u64;
        let len = ((x >> 20) % (3 * BS)).min(data.len() as u64 - off) as usize;
        let mut buf = vec![0xEE; len];
        disk.read_at(&mut buf, off).unwrap();
        assert!(buf == data[off as usize..off as usize + len], "read {len} at {off}");
    }
    // Past the end reads zeros.
    let mut buf = vec![0xEE; 4096];
    disk.read_at(&mut buf, data.len() as u64 - 100).unwrap();
    assert_eq!(&buf[..100], &data[data.len() - 100..]);
    assert!(buf[100..].iter().all(|&b| b == 0));
    // Small reads within one block decode it once (the cache).
    let disk = PointDisk::open(&repo, "vm", "latest", 0).unwrap();
    let before = disk.decoded_blocks();
    for i in 0..64 {
        let mut b = [0u8; 4096];
        disk.read_at(&mut b, BS + i * 4096).unwrap();
    }
    assert_eq!(disk.decoded_blocks() - before, 1);
}

#[test]
fn allocation_is_the_stored_blocks_and_config_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, data) = backed_up(tmp.path());
    let disk = PointDisk::open(&repo, "vm", "latest", 0).unwrap();
    // The hole (zero blocks) is not stored, so it is not allocated.
    assert_eq!(
        disk.allocation().unwrap(),
        vec![
            Extent {
                offset: 0,
                length: 3 * BS
            },
            Extent {
                offset: 6 * BS,
                length: data.len() as u64 - 6 * BS
            }
        ]
    );
    let chain = repo.chain("vm").unwrap();
    let point = chain.point("latest").unwrap();
    assert_eq!(point.vm_config.as_ref().unwrap()["memory"], 536870912);
    assert!(PointDisk::open(&repo, "vm", "latest", 1).is_err());
    assert!(PointDisk::open(&repo, "other", "latest", 0).is_err());
}

#[test]
fn a_damaged_record_is_an_error_naming_the_point() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = backed_up(tmp.path());
    let dir = repo.chain_dir("vm");
    let data_file = dir.join("00000001.full");
    assert!(data_file.exists(), "{} missing", data_file.display());
    // Flip a byte in the middle of the first record's payload.
    let mut bytes = std::fs::read(&data_file).unwrap();
    let at = bytes.len() / 4;
    bytes[at] ^= 0x40;
    std::fs::write(&data_file, &bytes).unwrap();
    let disk = PointDisk::open(&repo, "vm", "latest", 0).unwrap();
    let mut failed = None;
    for b in 0..11u64 {
        let mut buf = vec![0u8; 4096];
        if let Err(e) = disk.read_at(&mut buf, b * BS) {
            failed = Some(e.to_string());
            break;
        }
    }
    let msg = failed.expect("a damaged record must not read as data");
    assert!(msg.contains("vm point"), "{msg}");
}
