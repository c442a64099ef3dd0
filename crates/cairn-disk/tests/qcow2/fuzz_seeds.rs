use super::*;

/// Opens bytes as one qcow2 layer and walks its whole map, reading a little
/// of every run (what the fuzz target does); returns the first error.
fn walk_bytes(bytes: Vec<u8>) -> cairn_disk::Result<Vec<cairn_disk::layer::Mapping>> {
    let layer = Qcow2::open(ImageFile::from_bytes(Path::new("fuzz.qcow2"), bytes))?;
    let size = layer.virtual_size();
    let mut maps = Vec::new();
    let mut off = 0;
    let mut buf = vec![0u8; 4096];
    let mut cluster = Vec::new();
    while off < size {
        let m = layer.map(off, size - off)?;
        assert!(m.length >= 1 && m.length <= size - off, "{m:?} at {off}");
        match m.piece {
            Piece::Data { host } => {
                let n = m.length.min(4096) as usize;
                layer.read_data(&mut buf[..n], host)?;
            }
            Piece::Compressed { host, len, .. } => layer.read_compressed(host, len, &mut cluster)?,
            _ => {}
        }
        maps.push(m);
        off += m.length;
    }
    Ok(maps)
}

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/qcow2")
}

#[test]
fn fuzz_seeds_open_and_map() {
    let mut n = 0;
    for e in std::fs::read_dir(seeds_dir()).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        assert!(bytes.len() <= 64 << 10, "{}: seeds stay small", p.display());
        let maps = walk_bytes(bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            maps.iter()
                .any(|m| matches!(m.piece, Piece::Data { .. } | Piece::Compressed { .. })),
            "{}: no data",
            p.display()
        );
        n += 1;
    }
    assert!(n >= 5, "{n} seeds");
    // The hand-made extended L2 seed: subclusters 0 and 2 allocated, 5 zero,
    // the second cluster all zero, the rest unallocated.
    let maps = walk_bytes(std::fs::read(seeds_dir().join("extended-l2")).unwrap()).unwrap();
    let kinds: Vec<(Piece, u64)> = maps.iter().map(|m| (m.piece, m.length)).collect();
    assert_eq!(
        kinds,
        vec![
            (Piece::Data { host: 49152 }, 512),
            (Piece::Parent, 512),
            (Piece::Data { host: 49152 + 1024 }, 512),
            (Piece::Parent, 1024),
            (Piece::Zero, 512),
            (Piece::Parent, 16384 - 3072),
            (Piece::Zero, 16384),
            (Piece::Parent, 32768),
        ]
    );
}
