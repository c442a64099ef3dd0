use super::*;

// --------------------------------------------------------- bad input

#[test]
fn damaged_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = small_dynamic(dir.path(), "good.vhd");
    let good_bytes = std::fs::read(&good).unwrap();
    let len = good_bytes.len();
    let case = |name: &str, edit: &dyn Fn(&mut Vec<u8>)| -> String {
        let p = dir.path().join(name);
        let mut b = good_bytes.clone();
        edit(&mut b);
        std::fs::write(&p, b).unwrap();
        let e = open_err(&p);
        let layer = Vhd::open(ImageFile::open(&p).unwrap()).err().expect("layer open fails");
        assert!(matches!(layer, DiskError::Format { .. }), "{layer}");
        e
    };
    let hdr = footer_at(&good_bytes, 0).data_offset as usize;
    let h = DynHeader::parse(&good_bytes[hdr..hdr + 1024]).unwrap();
    let table = h.table_offset as usize;
    let set_header = |b: &mut Vec<u8>, f: &dyn Fn(&mut DynHeader)| {
        let mut h = DynHeader::parse(&b[hdr..hdr + 1024]).unwrap();
        f(&mut h);
        b[hdr..hdr + 1024].copy_from_slice(&h.encode());
    };

    // Truncated files.
    for cut in [100, 511, 1000, 2000, len / 2, len - 1] {
        let e = case(&format!("cut{cut}.vhd"), &|b| b.truncate(cut));
        assert!(
            e.contains("footer") || e.contains("BAT entry") || e.contains("truncated"),
            "{cut}: {e}"
        );
    }
    let e = case("short.vhd", &|b| b.truncate(300));
    assert!(e.contains("footer") && e.contains("shorter"), "{e}");
    let e = case("cut-block.vhd", &|b| b.truncate(len - 4096));
    assert!(e.contains("BAT entry 7") && e.contains("past"), "{e}");

    // Bad dynamic header checksum.
    let e = case("hdr-sum.vhd", &|b| b[hdr + 100] ^= 0x40);
    assert!(e.contains("dynamic disk header") && e.contains("checksum"), "{e}");

    // BAT entries pointing past the end, into the header, into the BAT, at another block.
    let e = case("bat-past.vhd", &|b| {
        b[table..table + 4].copy_from_slice(&0x00FF_0000u32.to_be_bytes())
    });
    assert!(e.contains("BAT entry 0") && e.contains("past"), "{e}");
    let e = case("bat-hdr.vhd", &|b| {
        b[table..table + 4].copy_from_slice(&2u32.to_be_bytes())
    });
    assert!(e.contains("BAT entry 0") && e.contains("dynamic disk header"), "{e}");
    let e = case("bat-bat.vhd", &|b| {
        b[table..table + 4].copy_from_slice(&((table / 512) as u32).to_be_bytes())
    });
    assert!(e.contains("BAT entry 0") && e.contains("overlaps"), "{e}");
    let e = case("bat-dup.vhd", &|b| {
        let first = b[table..table + 4].to_vec();
        b[table + 8..table + 12].copy_from_slice(&first);
    });
    assert!(
        e.contains("BAT entry") && e.contains("overlaps the block of BAT entry"),
        "{e}"
    );

    // Absurd table and block sizes.
    let e = case("entries-huge.vhd", &|b| {
        set_header(b, &|h| h.max_table_entries = u32::MAX)
    });
    assert!(e.contains("max table entries"), "{e}");
    let e = case("entries-few.vhd", &|b| set_header(b, &|h| h.max_table_entries = 3));
    assert!(e.contains("max table entries"), "{e}");
    for bs in [0u32, 3000, 256, 1 << 31] {
        let e = case(&format!("bs{bs}.vhd"), &|b| set_header(b, &|h| h.block_size = bs));
        assert!(e.contains("block size"), "{bs}: {e}");
    }
    // Header offset outside the file; a bad disk type.
    let e = case("hdr-off.vhd", &|b| {
        let mut f = footer_at(b, len - 512);
        f.data_offset = 1 << 40;
        let enc = f.encode();
        b[len - 512..].copy_from_slice(&enc);
    });
    assert!(e.contains("footer data offset"), "{e}");
    let e = case("type.vhd", &|b| {
        let mut f = footer_at(b, len - 512);
        f.disk_type = 7;
        let enc = f.encode();
        b[len - 512..].copy_from_slice(&enc);
    });
    assert!(e.contains("disk type"), "{e}");

    // Both footers damaged.
    let e = case("both.vhd", &|b| {
        b[len - 500] ^= 1;
        b[12] ^= 1;
    });
    assert!(e.contains("footer") && e.contains("checksum"), "{e}");
}

#[test]
fn damaged_end_footer_falls_back_to_the_copy_for_dynamic_only() {
    let dir = tempfile::tempdir().unwrap();
    let good = small_dynamic(dir.path(), "good.vhd");
    let raw = vpc_to_raw(&good, dir.path());
    let damaged = dir.path().join("damaged.vhd");
    std::fs::copy(&good, &damaged).unwrap();
    let len = std::fs::metadata(&damaged).unwrap().len();
    flip_bit_at(&damaged, len - 512 + 70); // inside the unique id: checksum fails
    common::assert_reads_like(&damaged, &raw);
    let layer = Vhd::open(ImageFile::open(&damaged).unwrap()).unwrap();
    let note = layer.details().into_iter().find(|(k, _)| k == "footer").unwrap().1;
    assert!(note.contains("copy at offset 0") && note.contains("checksum"), "{note}");

    // A fixed disk keeps no copy: damage is an error (and the probe no longer calls it VHD).
    let fixed = dir.path().join("fixed.vhd");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=fixed",
        path_str(&fixed),
        "4M",
    ]);
    assert_eq!(probe(&ImageFile::open(&fixed).unwrap()).unwrap(), Format::Vhd);
    let len = std::fs::metadata(&fixed).unwrap().len();
    flip_bit_at(&fixed, len - 512 + 70);
    let e = open_err(&fixed);
    assert!(e.contains("footer") && e.contains("checksum"), "{e}");
    assert_eq!(probe(&ImageFile::open(&fixed).unwrap()).unwrap(), Format::Raw);
    // A truncated fixed disk whose footer was rewritten is caught by the size check.
    let fixed2 = dir.path().join("fixed2.vhd");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=fixed",
        path_str(&fixed2),
        "4M",
    ]);
    let b = std::fs::read(&fixed2).unwrap();
    let footer = b[b.len() - 512..].to_vec();
    let mut cut = b[..1 << 20].to_vec();
    cut.extend_from_slice(&footer);
    std::fs::write(&fixed2, cut).unwrap();
    let e = open_err(&fixed2);
    assert!(e.contains("footer disk geometry") && e.contains("truncated"), "{e}");
}

#[test]
fn raw_disks_ending_in_the_cookie_are_not_vhd() {
    let short = ImageFile::from_bytes("short".as_ref(), b"conectix".to_vec());
    assert!(!footer_at_end(&short).unwrap());
    let mut b = vec![0u8; 8192];
    b[8192 - 512..8192 - 504].copy_from_slice(b"conectix");
    let f = ImageFile::from_bytes("fake".as_ref(), b);
    assert!(!footer_at_end(&f).unwrap());
    assert_eq!(probe(&f).unwrap(), Format::Raw);
    assert_eq!(bitmap_len(2 << 20), 512);
}
