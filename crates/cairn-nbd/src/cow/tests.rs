//! [`CowExport`] against an in-memory model under random writes, zeroes and reads.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use cairn_disk::raw::RawFile;
use proptest::prelude::*;

use super::*;

/// Disk size: not a multiple of any cluster size, so the last cluster is partial.
const SIZE: u64 = (1 << 20) + 3000;

/// A sparse raw base with data in a few places; returns the file and its bytes.
fn base(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("base.raw");
    let f = File::create(&path).unwrap();
    f.set_len(SIZE).unwrap();
    let mut bytes = vec![0u8; SIZE as usize];
    for (o, l) in [(0u64, 5000usize), (200_000, 70_000), (SIZE - 2000, 2000)] {
        let d: Vec<u8> = (0..l).map(|i| (i % 241) as u8 + 1).collect();
        f.write_all_at(&d, o).unwrap();
        bytes[o as usize..o as usize + l].copy_from_slice(&d);
    }
    (path, bytes)
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, usize, u8),
    Zero(u64, u64),
    Read(u64, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE).prop_flat_map(|o| (Just(o), 1..=(SIZE - o).min(150_000)));
    prop_oneof![
        range
            .clone()
            .prop_map(|(o, l)| Op::Write(o, l as usize, (o % 200) as u8 + 1)),
        range.clone().prop_map(|(o, l)| Op::Zero(o, l)),
        range.prop_map(|(o, l)| Op::Read(o, l as usize)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn cow_export_matches_a_model(ops in prop::collection::vec(op(), 1..25), shift in prop::sample::select(vec![9u32, 12, 16])) {
        let dir = tempfile::tempdir().unwrap();
        let (base_path, base_bytes) = base(dir.path());
        let base_file: Arc<dyn DiskSource> = Arc::new(RawFile::open(&base_path).unwrap());
        let alloc = base_file.allocation().unwrap();
        let cluster = 1u64 << shift;
        let cow = CowExport::create(base_file, &dir.path().join("scratch"), cluster as u32).unwrap();
        let mut model = base_bytes.clone();
        let mut overridden: BTreeSet<u64> = BTreeSet::new();
        let base_has_data = |c: u64| {
            let (s, e) = (c * cluster, ((c + 1) * cluster).min(SIZE));
            alloc.iter().any(|x| x.offset < e && x.end() > s)
        };
        for op in &ops {
            match *op {
                Op::Write(o, l, p) => {
                    let data: Vec<u8> = (0..l).map(|i| p.wrapping_add(i as u8)).collect();
                    cow.write_at(&data, o).unwrap();
                    model[o as usize..o as usize + l].copy_from_slice(&data);
                    overridden.extend(o / cluster..(o + l as u64).div_ceil(cluster));
                }
                Op::Zero(o, l) => {
                    cow.write_zeroes(o, l).unwrap();
                    model[o as usize..(o + l) as usize].fill(0);
                    overridden.extend((o / cluster..(o + l).div_ceil(cluster)).filter(|&c| base_has_data(c)));
                }
                Op::Read(o, l) => {
                    let mut buf = vec![0xeeu8; l];
                    cow.read_at(&mut buf, o).unwrap();
                    prop_assert!(buf[..] == model[o as usize..o as usize + l], "read of {} at {}", l, o);
                }
            }
        }
        let mut all = vec![0u8; SIZE as usize];
        cow.read_at(&mut all, 0).unwrap();
        prop_assert!(all == model);
        prop_assert_eq!(cow.written_bytes(), (overridden.len() as u64 * cluster).min(SIZE));
        // Block status covers the disk exactly, and zero extents read as zeros.
        let map = cow.block_status(0, SIZE).unwrap();
        prop_assert_eq!(map.first().map(|e| e.offset), Some(0));
        prop_assert_eq!(map.last().map(|e| e.end()), Some(SIZE));
        for w in map.windows(2) {
            prop_assert_eq!(w[0].end(), w[1].offset);
            prop_assert!(w[0].flags != w[1].flags, "neighbours must be merged");
        }
        for e in map.iter().filter(|e| e.flags & STATE_ZERO != 0) {
            prop_assert!(model[e.offset as usize..e.end() as usize].iter().all(|&b| b == 0), "{:?}", e);
        }
        // A sub-range is covered exactly too.
        let part = cow.block_status(12_345, 500_000).unwrap();
        prop_assert_eq!(part.first().map(|e| e.offset), Some(12_345));
        prop_assert_eq!(part.last().map(|e| e.end()), Some(512_345));
        cow.flush().unwrap();
        prop_assert!(std::fs::read(&base_path).unwrap() == base_bytes, "the base changed");
    }
}

#[test]
fn cluster_size_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = base(dir.path());
    let b: Arc<dyn DiskSource> = Arc::new(RawFile::open(&path).unwrap());
    for bad in [0u32, 256, 3000, 32 << 20] {
        let err = CowExport::create(Arc::clone(&b), &dir.path().join("s"), bad)
            .err()
            .unwrap();
        assert!(err.to_string().contains("cluster size"), "{err}");
    }
    let cow = CowExport::create(b, &dir.path().join("s"), 4096).unwrap();
    assert_eq!((cow.cluster_size(), cow.size(), cow.written_bytes()), (4096, SIZE, 0));
    assert!(cow.writable());
    assert_eq!(cow.scratch_path(), dir.path().join("s"));
}

#[test]
fn concurrent_partial_writes_to_the_same_clusters_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, base_bytes) = base(dir.path());
    let b: Arc<dyn DiskSource> = Arc::new(RawFile::open(&path).unwrap());
    let cow = Arc::new(CowExport::create(b, &dir.path().join("s"), 65536).unwrap());
    // Four threads write interleaved 512-byte pieces of the same clusters
    // (base clusters, so each first write is a read-modify-write): a lost
    // update would leave a piece with the base's bytes.
    let (start, pieces) = (131_072u64, 1024u64);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let cow = Arc::clone(&cow);
            s.spawn(move || {
                for i in (t..pieces).step_by(4) {
                    cow.write_at(&[t as u8 + 0xa0; 512], start + i * 512).unwrap();
                }
            });
        }
    });
    let mut buf = vec![0u8; (pieces * 512) as usize];
    cow.read_at(&mut buf, start).unwrap();
    for (i, piece) in buf.chunks(512).enumerate() {
        assert!(
            piece.iter().all(|&x| x == (i % 4) as u8 + 0xa0),
            "piece {i} lost its write"
        );
    }
    let mut head = vec![0u8; start as usize];
    cow.read_at(&mut head, 0).unwrap();
    assert!(head[..] == base_bytes[..start as usize]);
}
