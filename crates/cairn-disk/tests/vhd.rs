//! VHD: images made by qemu-img (every `-o` option it has) read like qemu
//! reads them; differencing chains written with `VhdWriter::create_child`
//! read like libvhdi's vhdimount reads them; the writer's output passes
//! `qemu-img compare` and vhdimount; damaged files give errors that name the
//! file and the field.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_disk::extent::{Extent, normalize};
use cairn_disk::image::{Fill, OpenOptions, probe};
use cairn_disk::io::ImageFile;
use cairn_disk::layer::{Layer, Piece};
use cairn_disk::vhd::format::{DynHeader, Footer, bitmap_len};
use cairn_disk::vhd::{Vhd, VhdWriter, footer_at_end};
use cairn_disk::{DiskError, DiskSource, DiskWriter, Format, Image, WriteOptions, writer};
use common::vhdi::VhdiMount;
use common::{path_str, qemu_img, require, run};

// ---------------------------------------------------------------- helpers

/// The major version of the installed qemu-img.
fn qemu_major() -> u32 {
    let v = qemu_img(&["--version"]);
    v.split_whitespace()
        .nth(2)
        .and_then(|x| x.split('.').next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no version in {v:?}"))
}

/// How qemu-img is to open `img` as VHD: `-f vpc FILE`, or, for a creator that QEMU
/// before 10.0 sized by its CHS geometry although it is not Virtual PC or QEMU, when
/// that geometry and the current size disagree, with `force_size_calc=current_size` —
/// the rule QEMU 10.0, Hyper-V and cairn follow (see `Footer::virtual_size`). Files
/// cairn writes make the two agree, so every QEMU opens them plainly.
fn vpc_args(img: &Path) -> Vec<String> {
    let bytes = std::fs::read(img).unwrap();
    let footer = &bytes[bytes.len() - 512..];
    let creator = &footer[28..32];
    let current = u64::from_be_bytes(footer[48..56].try_into().unwrap());
    let chs = u64::from(u16::from_be_bytes([footer[56], footer[57]])) * u64::from(footer[58]) * u64::from(footer[59]);
    let old_rule_uses_chs = ![&b"win "[..], b"qem2", b"d2v ", b"CTXS", b"tap\0"].contains(&creator);
    let qemu_rule_uses_chs = [&b"vpc "[..], b"qemu"].contains(&creator);
    if qemu_major() < 10 && old_rule_uses_chs && !qemu_rule_uses_chs && chs * 512 != current {
        vec![
            "--image-opts".into(),
            format!(
                "driver=vpc,force_size_calc=current_size,file.driver=file,file.filename={}",
                path_str(img)
            ),
        ]
    } else {
        vec!["-f".into(), "vpc".into(), path_str(img).into()]
    }
}

/// `qemu-img convert -f vpc -O raw` (naming the format: qemu probes a fixed VHD as raw).
fn vpc_to_raw(img: &Path, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{}.qemu.raw", img.file_name().unwrap().to_string_lossy()));
    let _ = std::fs::remove_file(&out);
    let mut args: Vec<String> = vec!["convert".into(), "-U".into()];
    args.extend(vpc_args(img));
    args.extend(["-O".into(), "raw".into(), path_str(&out).into()]);
    qemu_img(&args.iter().map(String::as_str).collect::<Vec<_>>());
    out
}

/// `qemu-img compare` of a VHD (as [`vpc_args`] opens it) with a raw file.
fn compare_raw(img: &Path, raw: &Path, dir: &Path) -> String {
    let converted = vpc_to_raw(img, dir);
    let out = qemu_img(&["compare", "-f", "raw", "-F", "raw", path_str(&converted), path_str(raw)]);
    let _ = std::fs::remove_file(converted);
    out
}

/// Virtual size by `qemu-img info -f vpc` (the text form: in the JSON form the
/// child node's size comes first).
fn qemu_vpc_size(img: &Path) -> u64 {
    let mut args: Vec<String> = vec!["info".into(), "-U".into()];
    args.extend(vpc_args(img));
    let info = qemu_img(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let line = info
        .lines()
        .find(|l| l.starts_with("virtual size:"))
        .expect("virtual size line");
    let n = line.rsplit('(').next().and_then(|r| r.split(' ').next());
    n.and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line:?}"))
}

/// cairn reads `img` byte for byte as qemu does, with qemu's virtual size.
fn assert_same_as_qemu_vpc(img: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let raw = vpc_to_raw(img, dir.path());
    common::assert_reads_like(img, &raw);
    assert_eq!(
        Image::open(img).unwrap().virtual_size(),
        qemu_vpc_size(img),
        "{}: size vs qemu-img info",
        img.display()
    );
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    cairn_testkit::rng::xorshift_bytes_from(seed, len, 24)
}

fn footer_at(b: &[u8], at: usize) -> Footer {
    Footer::parse(&b[at..at + 512]).unwrap()
}

/// Rewrites both footers of a dynamic VHD (or the one of a fixed VHD) after `f` changes them.
fn patch_footers(path: &Path, f: impl Fn(&mut Footer)) {
    let mut b = std::fs::read(path).unwrap();
    let end = b.len() - 512;
    let mut footer = footer_at(&b, end);
    f(&mut footer);
    let enc = footer.encode();
    b[end..].copy_from_slice(&enc);
    if &b[0..8] == b"conectix" {
        b[..512].copy_from_slice(&enc);
    }
    std::fs::write(path, b).unwrap();
}

/// Rewrites the dynamic disk header after `f` changes it.
fn patch_header(path: &Path, f: impl Fn(&mut DynHeader)) {
    let mut b = std::fs::read(path).unwrap();
    let at = footer_at(&b, b.len() - 512).data_offset as usize;
    let mut h = DynHeader::parse(&b[at..at + 1024]).unwrap();
    f(&mut h);
    b[at..at + 1024].copy_from_slice(&h.encode());
    std::fs::write(path, b).unwrap();
}

fn write_bytes_at(path: &Path, at: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, at).unwrap();
}

/// Flips the lowest bit of the byte at `at`: always changes a byte-sum checksum
/// (overwriting bytes with fixed values leaves it unchanged when the sums match).
fn flip_bit_at(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 1], at).unwrap();
}

/// The error opening `path` (with its parents) as a VHD, as text; panics if
/// it opens. The error must name `path` (or, for parent problems, the child
/// in the chain whose parent is wrong: see `open_err_naming`).
fn open_err(path: &Path) -> String {
    open_err_naming(path, path)
}

fn open_err_naming(path: &Path, names: &Path) -> String {
    let opts = OpenOptions {
        format: Some(Format::Vhd),
        no_parents: false,
    };
    match Image::open_with(path, &opts) {
        Ok(_) => panic!("{} opened but should not", path.display()),
        Err(e) => {
            let s = e.to_string();
            assert!(
                s.contains(path_str(names)),
                "error does not name {}: {s}",
                names.display()
            );
            s
        }
    }
}

/// Compares the disk vhdimount shows for `img` with the file `expected`.
fn assert_vhdimount_reads(img: &Path, expected: &Path) {
    let m = VhdiMount::new(img);
    let got = std::fs::read(m.top()).unwrap();
    let want = std::fs::read(expected).unwrap();
    assert_eq!(got.len(), want.len(), "{}: vhdimount size", img.display());
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!("{}: vhdimount byte {i} differs from the expected bytes", img.display());
    }
}

/// A small dynamic VHD made by qemu-img (4 MiB data written at a few places) in `dir`.
fn small_dynamic(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    qemu_img(&["create", "-q", "-f", "vpc", "-o", "force_size=on", path_str(&p), "16M"]);
    common::write_chunks(
        &p,
        "vpc",
        &[
            (0, bytes(1, 65536)),
            (5 << 20, bytes(2, 1 << 20)),
            (14 << 20, bytes(3, 4096)),
        ],
    );
    p
}

// ------------------------------------------------- qemu-made images

#[test]
fn qemu_images_with_every_option_read_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = [("ext4", common::ext4_fixture()), ("ntfs", common::ntfs_fixture())];
    for (name, src) in &fixtures {
        for subformat in ["dynamic", "fixed"] {
            for force in ["on", "off"] {
                let img = dir.path().join(format!("{name}-{subformat}-{force}.vhd"));
                let opts = format!("subformat={subformat},force_size={force}");
                qemu_img(&[
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    "vpc",
                    "-o",
                    &opts,
                    path_str(src),
                    path_str(&img),
                ]);
                assert_eq!(probe(&ImageFile::open(&img).unwrap()).unwrap(), Format::Vhd);
                assert_same_as_qemu_vpc(&img);
                let src_len = std::fs::metadata(src).unwrap().len();
                let size = Image::open(&img).unwrap().virtual_size();
                if force == "on" {
                    assert_eq!(size, src_len, "{}", img.display());
                } else {
                    // Rounded up to whole CHS cylinders, never down.
                    assert!(size >= src_len, "{}", img.display());
                }
                let layer = Vhd::open(ImageFile::open(&img).unwrap()).unwrap();
                let details: std::collections::HashMap<_, _> = layer.details().into_iter().collect();
                assert_eq!(details["subformat"], subformat);
                let creator = if force == "on" { "qem2" } else { "qemu" };
                assert!(details["creator"].starts_with(creator), "{details:?}");
            }
        }
    }
}

#[test]
fn created_sizes_chs_exact_or_not_match_qemu() {
    let dir = tempfile::tempdir().unwrap();
    // 100061184 = 958 × 12 × 17 sectors (CHS-exact); the others are not.
    for size in ["100061184", "100000000", "5000000", "1G"] {
        for opts in [
            "subformat=dynamic",
            "subformat=fixed",
            "force_size=on",
            "subformat=fixed,force_size=on",
        ] {
            if size == "1G" && opts.contains("fixed") {
                continue; // a 1 GiB fixed file would only slow the test down
            }
            let img = dir
                .path()
                .join(format!("c-{size}-{}.vhd", opts.replace([',', '='], "_")));
            qemu_img(&["create", "-q", "-f", "vpc", "-o", opts, path_str(&img), size]);
            common::write_chunks(&img, "vpc", &[(2 << 20, bytes(9, 1 << 20)), (4_000_000, bytes(8, 512))]);
            assert_same_as_qemu_vpc(&img);
        }
    }
}

#[test]
fn size_rule_follows_the_creator_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    qemu_img(&["create", "-q", "-f", "vpc", path_str(&base), "100000000"]);
    // Geometry says 100061184 bytes; make the current size disagree.
    type Geometry = Option<(u16, u8, u8)>;
    let cases: [(&[u8; 4], Geometry); 7] = [
        (b"vpc ", None),
        (b"qemu", None),
        (b"win ", None),
        (b"qem2", None),
        (b"crn ", None),
        (b"d2v ", None),
        (b"qemu", Some((65535, 16, 255))),
    ];
    for (i, (creator, geometry)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("rule{i}.vhd"));
        std::fs::copy(&base, &p).unwrap();
        patch_footers(&p, |f| {
            f.creator_app = **creator;
            f.current_size = 99_999_744;
            if let Some((c, h, s)) = geometry {
                (f.cylinders, f.heads, f.sectors_per_track) = (*c, *h, *s);
            }
        });
        let ours = Vhd::open(ImageFile::open(&p).unwrap()).unwrap().virtual_size();
        assert_eq!(ours, qemu_vpc_size(&p), "creator {:?} geometry {geometry:?}", creator);
        let chs = geometry.is_none() && (creator == &b"vpc " || creator == &b"qemu");
        assert_eq!(ours, if chs { 100_061_184 } else { 99_999_744 });
    }
}

#[test]
fn maps_are_long_runs_and_dynamic_bitmaps_are_msb_first() {
    let dir = tempfile::tempdir().unwrap();
    let p = small_dynamic(dir.path(), "d.vhd");
    let layer = Vhd::open(ImageFile::open(&p).unwrap()).unwrap();
    // Block 0 holds data: one 2 MiB run; blocks 3 and 4 are not stored: one run.
    let m = layer.map(0, 16 << 20).unwrap();
    assert!(matches!(m.piece, Piece::Data { .. }) && m.length == 2 << 20, "{m:?}");
    let m = layer.map(6 << 20, 10 << 20).unwrap();
    assert_eq!((m.piece, m.length), (Piece::Parent, 8 << 20));
    let m = layer.map(1000, 600).unwrap();
    assert_eq!(m.length, 600);

    // Clear the bitmap bits of sectors 0..4 of block 0 (bits 7..4 of byte 0): those read zeros.
    let b = std::fs::read(&p).unwrap();
    let hdr_at = footer_at(&b, 0).data_offset as usize;
    let h = DynHeader::parse(&b[hdr_at..hdr_at + 1024]).unwrap();
    let bat0 = u32::from_be_bytes(
        b[h.table_offset as usize..h.table_offset as usize + 4]
            .try_into()
            .unwrap(),
    );
    write_bytes_at(&p, bat0 as u64 * 512, &[0x0F]);
    let layer = Vhd::open(ImageFile::open(&p).unwrap()).unwrap();
    assert_eq!(
        layer.map(0, 1 << 20).unwrap(),
        cairn_disk::layer::Mapping {
            piece: Piece::Zero,
            length: 2048
        }
    );
    let m = layer.map(2048, 1 << 20).unwrap();
    assert!(matches!(m.piece, Piece::Data { .. }) && m.length == (1 << 20), "{m:?}");
    let img = Image::open(&p).unwrap();
    let mut got = vec![0u8; 8192];
    img.read_at(&mut got, 0).unwrap();
    let want = bytes(1, 65536);
    assert!(got[..2048].iter().all(|&x| x == 0));
    assert_eq!(got[2048..], want[2048..8192]);
    let map = img.map().unwrap();
    assert_eq!((map[0].fill, map[0].length), (Fill::Zero, 2048));
    // libvhdi agrees that clear bits of a dynamic disk read as zeros.
    let mut expected = std::fs::read(vpc_to_raw(&p, dir.path())).unwrap();
    expected[..2048].fill(0);
    let exp = dir.path().join("expected.raw");
    std::fs::write(&exp, &expected).unwrap();
    common::assert_reads_like(&p, &exp);
    assert_vhdimount_reads(&p, &exp);
}

// ------------------------------------------------------------- writer

fn write_shuffled(w: Box<dyn DiskWriter>, src: &Path, size: u64) {
    let chunk = 1u64 << 20;
    let mut order: Vec<u64> = (0..size.div_ceil(chunk)).collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let src = std::fs::File::open(src).unwrap();
    let (a, b) = order.split_at(order.len() / 2);
    std::thread::scope(|s| {
        for part in [a, b] {
            let (w, src) = (&w, &src);
            s.spawn(move || {
                let mut buf = vec![0u8; chunk as usize];
                for &c in part {
                    let off = c * chunk;
                    let n = chunk.min(size - off) as usize;
                    src.read_exact_at(&mut buf[..n], off).unwrap();
                    w.write_at(&buf[..n], off).unwrap();
                }
            });
        }
    });
    w.finish().unwrap();
}

#[test]
fn writer_output_passes_qemu_and_libvhdi_from_two_threads() {
    require("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let fixture = common::ext4_fixture();
    let full = std::fs::metadata(&fixture).unwrap().len();
    // The whole fixture, and a prefix that is neither whole 2 MiB blocks nor whole sectors.
    for size in [full, full - (3 << 20) + 4000] {
        let src = dir.path().join(format!("src-{size}.raw"));
        std::fs::copy(&fixture, &src).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&src)
            .unwrap()
            .set_len(size)
            .unwrap();
        let out = dir.path().join(format!("out-{size}.vhd"));
        write_shuffled(
            writer::create(Format::Vhd, &out, size, &WriteOptions::default()).unwrap(),
            &src,
            size,
        );
        // Whole sectors, then up to a size the CHS geometry describes exactly,
        // so that QEMU 7.2 (geometry), QEMU 10 and Hyper-V (current size) agree.
        let rounded = writer::image_size(Format::Vhd, size, &WriteOptions::default());
        assert!(rounded >= size.div_ceil(512) * 512 && rounded - size < 16 * 255 * 512 + 512);
        let footer = Vhd::open(ImageFile::open(&out).unwrap()).unwrap().footer().clone();
        assert_eq!(footer.current_size, rounded);
        assert_eq!(
            u64::from(footer.cylinders) * u64::from(footer.heads) * u64::from(footer.sectors_per_track) * 512,
            rounded,
            "geometry × 512 is the current size"
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&src)
            .unwrap()
            .set_len(rounded)
            .unwrap();

        // qemu sees exactly the size and the same bytes, with no option
        // telling it which size field to believe. `qemu-img check` has no
        // checker for vpc (QEMU 10.0 exits 63, "This image format does not support
        // checks"); should a later QEMU have one, it must pass.
        let check = Command::new("qemu-img")
            .args(["check", "-f", "vpc"])
            .arg(&out)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&check.stderr);
        assert!(
            check.status.success() || (check.status.code() == Some(63) && said.contains("does not support checks")),
            "qemu-img check: {said}"
        );
        assert_eq!(vpc_args(&out)[..2], ["-f", "vpc"]);
        assert_eq!(qemu_vpc_size(&out), rounded, "qemu-img {}", qemu_major());
        let cmp = compare_raw(&out, &src, dir.path());
        assert!(cmp.contains("identical"), "{cmp}");
        let info = Command::new("vhdiinfo").arg(&out).output().unwrap();
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(info.contains(&format!("({rounded} bytes)")), "{info}");

        // libvhdi and cairn read the source bytes (zero padded to the size).
        assert_vhdimount_reads(&out, &src);
        common::assert_reads_like(&out, &src);

        // All-zero chunks were skipped: the file is smaller than the disk.
        let file_len = std::fs::metadata(&out).unwrap().len();
        let data: u64 = Image::open(&out)
            .unwrap()
            .allocation()
            .unwrap()
            .iter()
            .map(|e| e.length)
            .sum();
        assert!(file_len < size && data < size, "{file_len} / {data} of {size}");
        let layer = Vhd::open(ImageFile::open(&out).unwrap()).unwrap();
        assert!(
            layer
                .details()
                .iter()
                .any(|(k, v)| k == "creator" && v.starts_with("crn "))
        );
    }
    // VHD sectors are 512 bytes.
    let err = writer::create(
        Format::Vhd,
        &dir.path().join("4k.vhd"),
        1 << 20,
        &WriteOptions {
            logical_sector: 4096,
            ..WriteOptions::default()
        },
    )
    .err()
    .expect("4 KiB sectors refused");
    assert!(err.to_string().contains("sector size"), "{err}");
}

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
