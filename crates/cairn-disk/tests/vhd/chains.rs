use super::*;

// -------------------------------------------------- differencing chains

#[test]
fn differencing_chain_three_deep_reads_like_libvhdi() {
    require("vhdimount");
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    let fixture = common::ext4_fixture();
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vpc",
        "-o",
        "force_size=on",
        path_str(&fixture),
        path_str(&base),
    ]);
    let expected = vpc_to_raw(&base, dir.path());
    let size = std::fs::metadata(&expected).unwrap().len();

    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mid = sub.join("mid.vhd");
    let top = dir.path().join("top.vhd");
    // Sector-granular writes. libvhdi (20210425) misreads a bitmap byte in which
    // a clear bit follows a set bit (it takes every later bit of the byte as
    // set), so these runs all end on 8-sector boundaries; the bits cairn reads
    // in such bytes are checked in `child_bitmaps_are_msb_first_per_sector`.
    let mid_writes: Vec<(u64, Vec<u8>)> = vec![
        ((1 << 20) + 3 * 512, bytes(11, 5 * 512)),      // sectors 3..8 of a block
        ((4 << 20) - (64 << 10), bytes(12, 192 << 10)), // across a block boundary
        (10 << 20, bytes(13, 2 << 20)),                 // a whole block
        ((20 << 20) + 4096, vec![0u8; 65536]),          // zeros hide the parent's bytes
        (size - 4096, bytes(14, 4096)),                 // the last sectors
    ];
    let top_writes: Vec<(u64, Vec<u8>)> = vec![
        ((1 << 20) + 2048, bytes(21, 6144)), // over part of the mid's sectors
        ((11 << 20) + 512, bytes(22, 3584)),
        ((50 << 20) + 7 * 512, bytes(23, 512)),
    ];
    for (path, parent, writes) in [(&mid, &base, &mid_writes), (&top, &mid, &top_writes)] {
        let w = VhdWriter::create_child(path, parent).unwrap();
        for (off, data) in writes.iter() {
            w.write_at(data, *off).unwrap();
            write_bytes_at(&expected, *off, data);
        }
        w.finish().unwrap();
    }
    let img = Image::open(&top).unwrap();
    assert_eq!(img.layers().len(), 3);
    assert_eq!(img.virtual_size(), size);
    common::assert_reads_like(&top, &expected);
    // libvhdi looks for a parent by its name in the child's folder only (no
    // locators): give it the chain in one folder.
    let flat = dir.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    for f in [&base, &mid, &top] {
        std::fs::copy(f, flat.join(f.file_name().unwrap())).unwrap();
    }
    assert_vhdimount_reads(&flat.join("top.vhd"), &expected);

    // Changed extents are exactly what each child wrote.
    let extents = |w: &[(u64, Vec<u8>)]| {
        normalize(
            w.iter()
                .map(|(o, d)| Extent {
                    offset: *o,
                    length: d.len() as u64,
                })
                .collect(),
        )
    };
    assert_eq!(img.changed_extents().unwrap(), Some(extents(&top_writes)));
    let mid_img = Image::open(&mid).unwrap();
    assert_eq!(mid_img.changed_extents().unwrap(), Some(extents(&mid_writes)));
    assert_eq!(Image::open(&base).unwrap().changed_extents().unwrap(), None);

    // The child names its parent the way libvhdi and Hyper-V look for it.
    let info = run(Command::new("vhdiinfo").arg(&top));
    assert!(info.contains("Differential"), "{info}");
    let mid_layer = Vhd::open(ImageFile::open(&mid).unwrap()).unwrap();
    let parent = mid_layer.parent().unwrap();
    assert_eq!(parent.name, "base.vhd");
    assert_eq!(parent.candidates[0], sub.join("../base.vhd"));
    let base_layer = Vhd::open(ImageFile::open(&base).unwrap()).unwrap();
    assert_eq!(parent.linkage, vec![base_layer.linkage_id().unwrap()]);
    let details: std::collections::HashMap<_, _> = mid_layer.details().into_iter().collect();
    assert_eq!(details["subformat"], "differencing");
}

#[test]
fn parent_problems_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = small_dynamic(dir.path(), "base.vhd");
    let a = dir.path().join("a.vhd");
    let b = dir.path().join("b.vhd");
    for (child, parent) in [(&a, &base), (&b, &a)] {
        let w = VhdWriter::create_child(child, parent).unwrap();
        w.write_at(&bytes(5, 4096), 8192).unwrap();
        w.finish().unwrap();
    }
    assert!(Image::open(&b).is_ok());

    // Parent unique id mismatch: base replaced by another image of the same name.
    let saved = dir.path().join("base.saved");
    std::fs::rename(&base, &saved).unwrap();
    small_dynamic(dir.path(), "base.vhd");
    let e = open_err_naming(&b, &a);
    assert!(e.contains("base.vhd") && e.contains("expects"), "{e}");

    // Missing parent.
    std::fs::remove_file(&base).unwrap();
    let e = open_err_naming(&b, &a);
    assert!(e.contains("not found") && e.contains("base.vhd"), "{e}");
    std::fs::rename(&saved, &base).unwrap();
    assert!(Image::open(&b).is_ok());

    // A loop: a names b (by unique id and name; locators dropped), b names a.
    let b_id = Vhd::open(ImageFile::open(&b).unwrap()).unwrap().footer().unique_id;
    patch_header(&a, |h| {
        h.parent_id = b_id;
        h.parent_name = "b.vhd".into();
        h.locators = Default::default();
    });
    let e = open_err(&b);
    assert!(e.contains("loop"), "{e}");
}

#[test]
fn child_bitmaps_are_msb_first_per_sector() {
    let dir = tempfile::tempdir().unwrap();
    let base = small_dynamic(dir.path(), "base.vhd");
    let child = dir.path().join("child.vhd");
    let w = VhdWriter::create_child(&child, &base).unwrap();
    // Sector 0 and sectors 9..11 of block 0: bitmap bytes 0x80 0x70.
    w.write_at(&bytes(31, 512), 0).unwrap();
    w.write_at(&bytes(32, 3 * 512), 9 * 512).unwrap();
    w.finish().unwrap();
    let layer = Vhd::open(ImageFile::open(&child).unwrap()).unwrap();
    let runs: Vec<(bool, u64)> = {
        let mut v = Vec::new();
        let mut off = 0;
        while off < 8192 {
            let m = layer.map(off, 8192 - off).unwrap();
            v.push((matches!(m.piece, Piece::Data { .. }), m.length));
            off += m.length;
        }
        v
    };
    assert_eq!(runs, vec![(true, 512), (false, 4096), (true, 1536), (false, 2048)]);
    let img = Image::open(&child).unwrap();
    let mut got = vec![0u8; 8192];
    img.read_at(&mut got, 0).unwrap();
    let mut want = bytes(1, 65536)[..8192].to_vec();
    want[..512].copy_from_slice(&bytes(31, 512));
    want[9 * 512..12 * 512].copy_from_slice(&bytes(32, 3 * 512));
    assert_eq!(got, want);
    assert_eq!(
        img.changed_extents().unwrap(),
        Some(vec![
            Extent { offset: 0, length: 512 },
            Extent {
                offset: 4608,
                length: 1536
            }
        ])
    );
    // Unaligned writes to a child are refused (it stores whole sectors).
    let w = VhdWriter::create_child(&dir.path().join("c2.vhd"), &base).unwrap();
    assert!(w.write_at(&[1u8; 100], 512).is_err());
}
