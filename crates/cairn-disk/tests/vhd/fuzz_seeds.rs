use super::*;

// ------------------------------------------------------------ fuzz seeds

/// The checked-in fuzz seeds (mode byte first) are valid images with the
/// structures the fuzzer should start from: partial bitmaps, locators of
/// every encoding, a damaged end footer.
#[test]
fn fuzz_seeds_open_and_map_as_described() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/vhd");
    let open = |name: &str| {
        let b = std::fs::read(seeds.join(name)).unwrap();
        Vhd::open(ImageFile::from_bytes(Path::new("/seeds/fuzz.img"), b[1..].to_vec()))
            .unwrap_or_else(|e| panic!("seed {name}: {e}"))
    };
    let runs = |l: &Vhd, from: u64, to: u64| {
        let mut v = Vec::new();
        let mut off = from;
        while off < to {
            let m = l.map(off, to - off).unwrap();
            v.push((m.piece == Piece::Zero, m.piece == Piece::Parent, m.length));
            off += m.length;
        }
        v
    };
    let d = open("dynamic-4k-blocks");
    assert_eq!(d.virtual_size(), 32768);
    // Block 5 (bitmap 0x0f): sectors 0..4 zero, 4..8 stored; block 6 (0x81): 0 stored, 1..7 zero, 7 stored.
    assert_eq!(runs(&d, 20480, 24576), vec![(true, false, 2048), (false, false, 2048)]);
    assert_eq!(
        runs(&d, 24576, 28672),
        vec![(false, false, 512), (true, false, 3072), (false, false, 512)]
    );
    assert_eq!(runs(&d, 4096, 12288), vec![(false, true, 8192)]);
    let damaged = open("dynamic-damaged-end-footer");
    assert!(
        damaged
            .details()
            .iter()
            .any(|(k, v)| k == "footer" && v.contains("copy"))
    );
    let c = open("differencing-locators");
    let p = c.parent().unwrap();
    assert_eq!(p.name, "base.vhd");
    assert_eq!(
        p.candidates,
        vec![PathBuf::from("/seeds/base.vhd"), PathBuf::from("/vms/base x.vhd")]
    );
    assert_eq!(runs(&c, 20480, 24576), vec![(false, true, 2048), (false, false, 2048)]);
    for name in ["fixed-16k", "qemu-dynamic-1m", "qemu-fixed-32k"] {
        let l = open(name);
        assert!(l.virtual_size() > 0);
        runs(&l, 0, l.virtual_size());
    }
    for e in std::fs::read_dir(&seeds).unwrap() {
        assert!(e.unwrap().metadata().unwrap().len() <= 64 << 10);
    }
}
