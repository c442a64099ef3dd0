//! qcow2 reader and writer against real images made by qemu-img / qemu-io.
//!
//! Every image is compared byte for byte with what `qemu-img convert -O raw`
//! makes of it; chains are checked against `qemu-img map`; the writer's
//! output must pass `qemu-img check` and `qemu-img compare`.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_disk::extent::{Extent, normalize};
use cairn_disk::io::ImageFile;
use cairn_disk::layer::{Layer, Piece};
use cairn_disk::qcow2::Qcow2;
use cairn_disk::{DiskError, DiskSource, Format, Image, WriteOptions};
use common::{assert_reads_like, path_str, qemu_img, require, run};

/// A small deterministic pseudo-random generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// `qemu-img convert -O qcow2 -o OPTS src dst` (with `-c` when `compress`).
fn convert(src: &Path, dst: &Path, opts: &str, compress: bool) {
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    if compress {
        args.push("-c");
    }
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([path_str(src), path_str(dst)]);
    qemu_img(&args);
}

/// Runs qemu-io commands on `img` (format `fmt`).
fn qemu_io(img: &Path, fmt: &str, cmds: &[String]) {
    require("qemu-io");
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(img);
    run(&mut c);
}

/// Converts `img` to raw with qemu-img and checks cairn reads the same
/// bytes and size (`common::assert_reads_like`).
fn assert_same_as_qemu(img: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let raw = common::to_raw(img, dir.path());
    assert_reads_like(img, &raw);
}

/// The virtual size `qemu-img info` reports for the top image.
fn qemu_size(img: &Path) -> u64 {
    let out = qemu_img(&["info", "--output=json", "-U", path_str(img)]);
    let line = out
        .lines()
        .find(|l| l.starts_with("    \"virtual-size\": "))
        .expect("top-level virtual-size");
    line.trim()
        .trim_start_matches("\"virtual-size\": ")
        .trim_end_matches(',')
        .parse()
        .unwrap()
}

/// Opens one qcow2 file (no parents).
fn open_layer(p: &Path) -> cairn_disk::Result<Qcow2> {
    Qcow2::open(ImageFile::open(p)?)
}

fn detail(layer: &Qcow2, key: &str) -> String {
    layer
        .details()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no detail {key:?}"))
}

/// The ranges `qemu-img map` says the top file itself defines (depth 0, present).
fn qemu_top_extents(img: &Path) -> Vec<Extent> {
    let out = qemu_img(&["map", "--output=json", "-U", path_str(img)]);
    let num = |line: &str, key: &str| -> u64 {
        let k = format!("\"{key}\": ");
        let at = line.find(&k).unwrap_or_else(|| panic!("{key} in {line}")) + k.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("number after {key} in {line}"))
    };
    let mut v = Vec::new();
    for line in out.lines() {
        if line.contains("\"depth\": 0,") && line.contains("\"present\": true") {
            v.push(Extent {
                offset: num(line, "start"),
                length: num(line, "length"),
            });
        }
    }
    normalize(v)
}

fn clip(extents: &[Extent], end: u64) -> Vec<Extent> {
    normalize(
        extents
            .iter()
            .filter(|e| e.offset < end)
            .map(|e| Extent {
                offset: e.offset,
                length: e.end().min(end) - e.offset,
            })
            .collect(),
    )
}

fn covered(extents: &[Extent], off: u64, len: u64) -> bool {
    extents.iter().any(|e| e.offset <= off && off + len <= e.end())
}

fn err_text(r: cairn_disk::Result<impl std::fmt::Debug>) -> (String, DiskError) {
    let e = r.expect_err("expected an error");
    (e.to_string(), e)
}

#[test]
fn layout_options_read_like_qemu() {
    let ext4 = common::ext4_fixture();
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, u32, u64)] = &[
        // (options, expected version, expected cluster size)
        ("compat=0.10", 2, 65536),
        ("compat=1.1", 3, 65536),
        ("cluster_size=512", 3, 512),
        ("cluster_size=4096", 3, 4096),
        ("cluster_size=2M", 3, 2 << 20),
        ("extended_l2=on,cluster_size=16K", 3, 16384),
        ("extended_l2=on,cluster_size=64K", 3, 65536),
        ("extended_l2=on,cluster_size=2M", 3, 2 << 20),
        ("preallocation=metadata", 3, 65536),
        ("preallocation=falloc", 3, 65536),
        ("preallocation=full", 3, 65536),
        ("lazy_refcounts=on", 3, 65536),
        ("refcount_bits=1", 3, 65536),
        ("refcount_bits=64", 3, 65536),
        ("compat=0.10,cluster_size=4096", 2, 4096),
    ];
    for (i, &(opts, version, cs)) in cases.iter().enumerate() {
        let img = dir.path().join(format!("l{i}.qcow2"));
        convert(&ext4, &img, opts, false);
        let layer = open_layer(&img).unwrap_or_else(|e| panic!("{opts}: {e}"));
        assert_eq!(layer.version(), version, "{opts}");
        assert_eq!(layer.cluster_size(), cs, "{opts}");
        assert_eq!(
            detail(&layer, "extended L2"),
            if opts.contains("extended_l2") { "yes" } else { "no" },
            "{opts}"
        );
        if opts.contains("lazy") {
            assert!(detail(&layer, "compatible features").contains("lazy"));
        }
        if opts.contains("refcount_bits=64") {
            assert_eq!(detail(&layer, "refcount bits"), "64");
        }
        assert_same_as_qemu(&img);
        std::fs::remove_file(&img).unwrap();
    }
    // The NTFS fixture, v2 and v3.
    let ntfs = common::ntfs_fixture();
    for opts in ["compat=0.10", "cluster_size=4096,extended_l2=off"] {
        let img = dir.path().join("ntfs.qcow2");
        convert(&ntfs, &img, opts, false);
        assert_same_as_qemu(&img);
        std::fs::remove_file(&img).unwrap();
    }
}

#[test]
fn contiguous_clusters_map_as_one_run() {
    let dir = tempfile::tempdir().unwrap();
    // One 16 MiB write into a fresh image: qemu allocates the clusters in order.
    let img = dir.path().join("seq.qcow2");
    qemu_img(&["create", "-f", "qcow2", path_str(&img), "64M"]);
    qemu_io(&img, "qcow2", &["write -P 0x61 1048576 16M".into()]);
    let layer = open_layer(&img).unwrap();
    assert_eq!(layer.map(0, 64 << 20).unwrap().piece, Piece::Parent);
    let m = layer.map(1 << 20, 63 << 20).unwrap();
    assert!(matches!(m.piece, Piece::Data { .. }), "{m:?}");
    assert_eq!(m.length, 16 << 20, "contiguous clusters should map as one run: {m:?}");
    // Across L2 tables: cairn's writer puts 4 KiB clusters (2 MiB per L2
    // table) in order and its tables after the data.
    let out = dir.path().join("w.qcow2");
    let w = cairn_disk::writer::create(
        Format::Qcow2,
        &out,
        16 << 20,
        &WriteOptions {
            block_size: Some(4096),
            ..WriteOptions::default()
        },
    )
    .unwrap();
    let mut rng = Rng(3);
    for i in 0..8u64 {
        w.write_at(&rng.bytes(1 << 20), i << 20).unwrap();
    }
    w.finish().unwrap();
    let layer = open_layer(&out).unwrap();
    let m = layer.map(0, 16 << 20).unwrap();
    assert_eq!(
        m,
        cairn_disk::layer::Mapping {
            piece: Piece::Data { host: 4096 },
            length: 8 << 20
        }
    );
    let m = layer.map(8 << 20, 8 << 20).unwrap();
    assert_eq!(m.piece, Piece::Parent);
    assert_eq!(m.length, 8 << 20);
}

#[test]
fn compressed_zlib_and_zstd_read_like_qemu() {
    let ext4 = common::ext4_fixture();
    let ntfs = common::ntfs_fixture();
    let dir = tempfile::tempdir().unwrap();
    for (opts, kind) in [
        ("compression_type=zlib", "zlib"),
        ("compression_type=zstd", "zstd"),
        ("compat=0.10", "zlib"),
        ("compression_type=zstd,cluster_size=4096", "zstd"),
        ("compression_type=zlib,cluster_size=2M", "zlib"),
        ("compression_type=zstd,extended_l2=on", "zstd"),
    ] {
        let img = dir.path().join("c.qcow2");
        convert(&ext4, &img, opts, true);
        let layer = open_layer(&img).unwrap();
        assert_eq!(detail(&layer, "compression type"), kind, "{opts}");
        let mut compressed = 0;
        let mut off = 0;
        while off < layer.virtual_size() {
            let m = layer.map(off, layer.virtual_size() - off).unwrap();
            if matches!(m.piece, Piece::Compressed { .. }) {
                compressed += 1;
            }
            off += m.length;
        }
        assert!(compressed > 10, "{opts}: only {compressed} compressed clusters");
        assert_same_as_qemu(&img);
        std::fs::remove_file(&img).unwrap();
    }
    let img = dir.path().join("ntfs-z.qcow2");
    convert(&ntfs, &img, "compression_type=zstd", true);
    assert_same_as_qemu(&img);
}

#[test]
fn zero_clusters_discards_and_subclusters_read_like_qemu() {
    let ext4 = common::ext4_fixture();
    let dir = tempfile::tempdir().unwrap();
    let cmds: Vec<String> = [
        "write -z 0 65536",
        "write -z 1048576 4194304",
        "write -z 10489856 4096", // inside a cluster
        "discard 20971520 2097152",
        "discard 31457280 65536",
        "write -z -u 41943040 1048576",
        "write -P 0xab 52428800 12288",
        "write -P 0xcd 52441088 512",
        "write -z 60000256 1536",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for opts in [
        "compat=1.1",
        "compat=0.10",
        "extended_l2=on,cluster_size=64K",
        "extended_l2=on,cluster_size=2M",
        "cluster_size=512",
    ] {
        let img = dir.path().join("z.qcow2");
        convert(&ext4, &img, opts, false);
        qemu_io(&img, "qcow2", &cmds);
        let layer = open_layer(&img).unwrap();
        if opts.contains("1.1") {
            let m = layer.map(1048576, 4194304).unwrap();
            assert_eq!(m.piece, Piece::Zero, "{opts}: write -z makes zero clusters");
            assert_eq!(m.length, 4194304, "{opts}");
        }
        if opts.contains("extended_l2=on,cluster_size=2M") {
            // 64 KiB subclusters: the 512-byte write dirtied one subcluster.
            let m = layer.map(52441088, 512).unwrap();
            assert!(matches!(m.piece, Piece::Data { .. }), "{m:?}");
        }
        assert_same_as_qemu(&img);
        std::fs::remove_file(&img).unwrap();
    }
}

#[test]
fn external_data_file_reads_like_qemu() {
    let ext4 = common::ext4_fixture();
    let dir = tempfile::tempdir().unwrap();
    for raw_mode in ["on", "off"] {
        let img = dir.path().join(format!("d-{raw_mode}.qcow2"));
        let data = dir.path().join(format!("d-{raw_mode}.data"));
        let opts = format!("data_file={},data_file_raw={raw_mode}", path_str(&data));
        convert(&ext4, &img, &opts, false);
        qemu_io(
            &img,
            "qcow2",
            &["write -z 4194304 1048576".into(), "write -P 0x11 8392704 70000".into()],
        );
        let layer = open_layer(&img).unwrap();
        let d = detail(&layer, "data file");
        assert!(d.contains(path_str(&data)), "{d}");
        assert_eq!(d.ends_with("(raw)"), raw_mode == "on", "{d}");
        assert_same_as_qemu(&img);
        // Without its data file the image cannot be read: a clear error.
        let moved = dir.path().join("moved.data");
        std::fs::rename(&data, &moved).unwrap();
        let (msg, _) = err_text(Image::open(&img));
        assert!(
            msg.contains("external data file") && msg.contains(path_str(&img)),
            "{msg}"
        );
        std::fs::rename(&moved, &data).unwrap();
    }
    // A relative data file name resolves next to the image (qemu opens it
    // relative to its working folder, so run it from the image's folder).
    let img = dir.path().join("rel.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", path_str(&dir.path().join("rel.data"))),
        path_str(&img),
        "16M",
    ]);
    qemu_io(&img, "qcow2", &["write -P 0x42 65536 131072".into()]);
    let moved = tempfile::tempdir().unwrap();
    let img2 = moved.path().join("rel.qcow2");
    std::fs::copy(&img, &img2).unwrap();
    std::fs::copy(dir.path().join("rel.data"), moved.path().join("rel.data")).unwrap();
    run(Command::new("qemu-img")
        .current_dir(moved.path())
        .args(["amend", "-o", "data_file=rel.data", "rel.qcow2"]));
    run(Command::new("qemu-img")
        .current_dir(moved.path())
        .args(["convert", "-O", "raw", "rel.qcow2", "rel.raw"]));
    assert_reads_like(&img2, &moved.path().join("rel.raw"));
    let layer = open_layer(&img2).unwrap();
    assert_eq!(detail(&layer, "data file"), path_str(&moved.path().join("rel.data")));
}

struct Chain {
    dir: tempfile::TempDir,
    files: Vec<PathBuf>,
}

/// base → overlay1 → overlay2 → overlay3, overlays 128 MiB over a 96 MiB
/// base of `base_fmt`, each overlay changed through qemu-io.
fn make_chain(base_fmt: &str) -> Chain {
    let ext4 = common::ext4_fixture();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join(format!("base.{base_fmt}"));
    if base_fmt == "raw" {
        std::fs::copy(&ext4, &base).unwrap();
    } else {
        convert(&ext4, &base, "", false);
    }
    let mut files = vec![base];
    let mut rng = Rng(0x1234_5678 ^ base_fmt.len() as u64);
    for level in 1..=3u64 {
        let img = dir.path().join(format!("overlay{level}.qcow2"));
        let parent = files.last().unwrap();
        let parent_fmt = if level == 1 { base_fmt } else { "qcow2" };
        // A relative backing name: resolved against the overlay's folder.
        let name = parent.file_name().unwrap().to_str().unwrap().to_string();
        let mut opts = String::new();
        if level == 2 {
            opts = "-o cluster_size=4096".into();
        }
        if level == 3 {
            opts = "-o extended_l2=on,cluster_size=128K".into();
        }
        let mut args = vec!["create", "-f", "qcow2", "-b", &name, "-F", parent_fmt];
        let split: Vec<&str> = opts.split_whitespace().collect();
        args.extend(split.iter().copied());
        args.extend([path_str(&img), "128M"]);
        qemu_img(&args);
        let mut chunks = Vec::new();
        for k in 0..6u64 {
            let off = (rng.next() % ((128 << 20) - (1 << 20))) & !511;
            let len = 512 * (1 + rng.next() % 600) as usize;
            chunks.push((off, rng.bytes(len)));
            let _ = k;
        }
        // Writes across the base's end and right at the start.
        chunks.push(((96 << 20) - 8192, rng.bytes(16384)));
        chunks.push((level * 4096, rng.bytes(4096)));
        common::write_chunks(&img, "qcow2", &chunks);
        let z = (rng.next() % (100 << 20)) & !65535;
        let d = (rng.next() % (100 << 20)) & !65535;
        qemu_io(
            &img,
            "qcow2",
            &[
                format!("write -z {z} 196608"),
                format!("discard {d} 131072"),
                format!("write -z {} 1024", 50 << 20),
            ],
        );
        files.push(img);
    }
    Chain { dir, files }
}

fn check_chain(chain: &Chain) {
    let raws: Vec<PathBuf> = chain
        .files
        .iter()
        .map(|f| common::to_raw(f, chain.dir.path()))
        .collect();
    for (i, img) in chain.files.iter().enumerate().skip(1) {
        assert_reads_like(img, &raws[i]);
        let image = Image::open(img).unwrap();
        assert_eq!(image.layers().len(), i + 1, "{}", img.display());
        let parent = image.top().parent().expect("a parent");
        let expect_fmt = if i == 1 && chain.files[0].extension().unwrap() == "raw" {
            Format::Raw
        } else {
            Format::Qcow2
        };
        assert_eq!(parent.format, Some(expect_fmt));
        assert_eq!(parent.candidates[0], chain.files[i - 1]);
        let changed = image.changed_extents().unwrap().expect("a differencing image");
        // Inside the parent, exactly what qemu says the top file defines.
        let parent_size = image.layers()[1].virtual_size();
        assert_eq!(
            clip(&changed, parent_size),
            clip(&qemu_top_extents(img), parent_size),
            "{}: changed extents vs qemu-img map depth 0",
            img.display()
        );
        // Backup CBT use: every byte that differs from the parent is inside.
        for (off, len) in common::changed_ranges(&raws[i - 1], &raws[i], 512) {
            for s in (off..off + len).step_by(512) {
                assert!(
                    covered(&changed, s, 512),
                    "{}: changed sector at {s} missing from changed_extents",
                    img.display()
                );
            }
        }
    }
}

#[test]
fn chain_over_raw_base_reads_like_qemu() {
    let chain = make_chain("raw");
    check_chain(&chain);
}

#[test]
fn chain_over_qcow2_base_reads_like_qemu() {
    let chain = make_chain("qcow2");
    check_chain(&chain);
}

#[test]
fn changed_extents_cover_real_file_changes() {
    let ext4 = common::ext4_fixture();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    convert(&ext4, &base, "", false);
    let mutated = dir.path().join("mutated.raw");
    std::fs::copy(&ext4, &mutated).unwrap();
    common::mutate_ext4(&mutated, 7);
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        path_str(&top),
    ]);
    // What a guest writing those files would have written.
    let f = std::fs::File::open(&mutated).unwrap();
    let mut chunks = Vec::new();
    for (off, len) in common::changed_ranges(&ext4, &mutated, 4096) {
        let mut b = vec![0u8; len as usize];
        f.read_exact_at(&mut b, off).unwrap();
        chunks.push((off, b));
    }
    assert!(!chunks.is_empty());
    common::write_chunks(&top, "qcow2", &chunks);
    assert_reads_like(&top, &mutated);
    let changed = Image::open(&top).unwrap().changed_extents().unwrap().unwrap();
    let diff = common::changed_ranges(&ext4, &mutated, 512);
    for (off, len) in diff {
        assert!(
            covered(&changed, off, len),
            "changed range {off}+{len} not in {changed:?}"
        );
    }
    let total: u64 = changed.iter().map(|e| e.length).sum();
    assert!(
        total < 16 << 20,
        "changed extents cover {total} bytes: far more than was written"
    );
}

#[test]
fn backing_loop_and_missing_backing_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    qemu_img(&["create", "-f", "qcow2", path_str(&b), "16M"]);
    qemu_img(&["create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", path_str(&a)]);
    qemu_img(&["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", path_str(&b)]);
    let (msg, e) = err_text(Image::open(&a));
    assert!(matches!(e, DiskError::Parent { .. }), "{e:?}");
    assert!(msg.contains("loop"), "{msg}");

    let c = dir.path().join("c.qcow2");
    qemu_img(&["create", "-f", "qcow2", path_str(&b.with_extension("base")), "16M"]);
    qemu_img(&["create", "-f", "qcow2", "-b", "b.base", "-F", "qcow2", path_str(&c)]);
    std::fs::remove_file(b.with_extension("base")).unwrap();
    let (msg, e) = err_text(Image::open(&c));
    assert!(matches!(e, DiskError::Parent { .. }), "{e:?}");
    assert!(msg.contains("not found") && msg.contains("b.base"), "{msg}");
}

fn patched(src: &Path, dir: &Path, name: &str, patch: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(src).unwrap();
    patch(&mut bytes);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Opens and reads the whole image; returns the first error.
fn open_and_read(p: &Path) -> cairn_disk::Result<()> {
    let image = Image::open(p)?;
    let mut buf = vec![0u8; 1 << 20];
    let size = image.virtual_size();
    image.allocation()?;
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        image.read_at(&mut buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

fn assert_format_error(p: &Path, field: &str) {
    let r = open_and_read(p);
    let (msg, e) = err_text(r);
    match &e {
        DiskError::Format { path, field: f, .. } => {
            assert_eq!(path, p, "{msg}");
            assert!(f.contains(field), "expected field {field:?} in {msg}");
        }
        other => panic!("expected a format error naming {field:?}, got {other:?}"),
    }
}

#[test]
fn malformed_images_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.qcow2");
    qemu_img(&["create", "-f", "qcow2", path_str(&good), "64M"]);
    qemu_io(
        &good,
        "qcow2",
        &["write -P 0x5a 0 1M".into(), "write -P 0x33 33554432 131072".into()],
    );
    let bytes = std::fs::read(&good).unwrap();
    let be64 = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
    let l1_off = be64(40) as usize;
    let l2_off = (be64(l1_off) & 0x00ff_ffff_ffff_fe00) as usize;
    let len = bytes.len();

    // Truncations: in the header, in the L1 table, in an L2 table, in data.
    for (cut, field) in [
        (50usize, "qcow2 header"),
        (90, "version 3 header"),
        (l1_off + 4, "l1_table_offset"),
        (l2_off + 100, "L1 table entry 0"),
        (len - 70000, "L2 table entry"),
    ] {
        let p = patched(&good, dir.path(), &format!("cut{cut}.qcow2"), |b| b.truncate(cut));
        assert_format_error(&p, field);
    }
    // L1 table offset beyond the file.
    let p = patched(&good, dir.path(), "l1far.qcow2", |b| {
        b[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes())
    });
    assert_format_error(&p, "l1_table_offset");
    // An L2 entry pointing past the end of the file.
    let p = patched(&good, dir.path(), "l2far.qcow2", |b| {
        let e = (1u64 << 40) | (1 << 63);
        b[l2_off..l2_off + 8].copy_from_slice(&e.to_be_bytes());
    });
    assert_format_error(&p, "L2 table entry 0 of L1 table entry 0");
    // An unaligned L2 entry.
    let p = patched(&good, dir.path(), "l2odd.qcow2", |b| {
        let e = (len as u64 - 65536 + 512) | (1 << 63);
        b[l2_off + 8..l2_off + 16].copy_from_slice(&e.to_be_bytes());
    });
    assert_format_error(&p, "L2 table entry 1");
    // An L2 entry pointing at the L1 table.
    let p = patched(&good, dir.path(), "l2l1.qcow2", |b| {
        let e = (l1_off as u64) | (1 << 63);
        b[l2_off + 8..l2_off + 16].copy_from_slice(&e.to_be_bytes());
    });
    assert_format_error(&p, "L2 table entry 1");
    // Absurd l1_size and virtual size.
    let p = patched(&good, dir.path(), "l1huge.qcow2", |b| {
        b[36..40].copy_from_slice(&0x7fff_ffffu32.to_be_bytes())
    });
    assert_format_error(&p, "l1_size");
    let p = patched(&good, dir.path(), "vhuge.qcow2", |b| {
        b[24..32].copy_from_slice(&(1u64 << 62).to_be_bytes())
    });
    assert_format_error(&p, "size");
    let p = patched(&good, dir.path(), "vbig.qcow2", |b| {
        b[24..32].copy_from_slice(&(1u64 << 40).to_be_bytes())
    });
    assert_format_error(&p, "l1_size");
    // Bad cluster_bits, magic.
    let p = patched(&good, dir.path(), "cb.qcow2", |b| {
        b[20..24].copy_from_slice(&40u32.to_be_bytes())
    });
    assert_format_error(&p, "cluster_bits");
    // An unknown incompatible feature bit.
    let p = patched(&good, dir.path(), "incompat.qcow2", |b| {
        b[72..80].copy_from_slice(&(1u64 << 9).to_be_bytes())
    });
    let (msg, e) = err_text(Image::open(&p));
    assert!(matches!(e, DiskError::Unsupported { .. }), "{e:?}");
    assert!(
        msg.contains("incompatible feature bit 9") && msg.contains("incompat.qcow2"),
        "{msg}"
    );
    // Dirty and corrupt images are read; corrupt is noted.
    let p = patched(&good, dir.path(), "corrupt.qcow2", |b| {
        b[72..80].copy_from_slice(&3u64.to_be_bytes())
    });
    open_and_read(&p).unwrap();
    let layer = open_layer(&p).unwrap();
    assert!(detail(&layer, "corrupt").starts_with("yes"));
    assert!(detail(&layer, "incompatible features").contains("dirty"));
}

#[test]
fn encrypted_images_are_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("enc.qcow2");
    // qemu-img times PBKDF2 to pick the LUKS iteration count; QEMU 7.2's timing sometimes reads
    // no CPU time at all and gives up ("Unable to get accurate CPU usage"): try again then.
    for attempt in 1.. {
        let out = std::process::Command::new("qemu-img")
            .args([
                "create",
                "--object",
                "secret,id=sec0,data=hunter2",
                "-f",
                "qcow2",
                "-o",
                "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100",
                path_str(&img),
                "16M",
            ])
            .output()
            .expect("running qemu-img");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            break;
        }
        assert!(
            attempt < 5 && stderr.contains("Unable to get accurate CPU usage"),
            "qemu-img create of an encrypted qcow2 failed: {stderr}"
        );
        let _ = std::fs::remove_file(&img);
    }
    let (msg, e) = err_text(Image::open(&img));
    assert!(matches!(e, DiskError::Unsupported { .. }), "{e:?}");
    assert!(msg.contains("encrypted qcow2") && msg.contains("enc.qcow2"), "{msg}");
}

/// Writes `src` (raw) through cairn's qcow2 writer from two threads in
/// shuffled 1 MiB blocks.
fn write_through_cairn(src: &Path, dst: &Path, block_size: Option<u32>) {
    let size = std::fs::metadata(src).unwrap().len();
    let opts = WriteOptions {
        block_size,
        ..WriteOptions::default()
    };
    let w = cairn_disk::writer::create(Format::Qcow2, dst, size, &opts).unwrap();
    let mut blocks: Vec<u64> = (0..size.div_ceil(1 << 20)).collect();
    let mut rng = Rng(99);
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let f = std::fs::File::open(src).unwrap();
    std::thread::scope(|s| {
        for part in blocks.chunks(blocks.len().div_ceil(2)) {
            let (w, f) = (&w, &f);
            s.spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                for &b in part {
                    let off = b << 20;
                    let n = (size - off).min(1 << 20) as usize;
                    f.read_exact_at(&mut buf[..n], off).unwrap();
                    w.write_at(&buf[..n], off).unwrap();
                }
            });
        }
    });
    w.finish().unwrap();
}

fn qemu_check_clean(img: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", path_str(img)])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-img check {}: {text}", img.display());
    assert!(text.contains("No errors were found"), "{text}");
    assert!(!text.contains("leaked"), "{text}");
}

#[test]
fn writer_output_passes_qemu_check_and_compare() {
    let ext4 = common::ext4_fixture();
    let dir = tempfile::tempdir().unwrap();
    for bs in [None, Some(4096), Some(2 << 20)] {
        let out = dir.path().join(format!("w{}.qcow2", bs.unwrap_or(0)));
        write_through_cairn(&ext4, &out, bs);
        qemu_check_clean(&out);
        qemu_img(&["compare", "-f", "raw", "-F", "qcow2", path_str(&ext4), path_str(&out)]);
        assert_reads_like(&out, &ext4);
        let layer = open_layer(&out).unwrap();
        assert_eq!(layer.cluster_size(), bs.unwrap_or(65536) as u64);
        // Sparse: the image is smaller than the disk (zero clusters not stored).
        let len = std::fs::metadata(&out).unwrap().len();
        assert!(len < std::fs::metadata(&ext4).unwrap().len(), "{len}");
        // Creating over an existing file fails.
        let again = cairn_disk::writer::create(Format::Qcow2, &out, 1 << 20, &WriteOptions::default());
        assert!(again.is_err());
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn writer_handles_sizes_off_the_cluster_grid() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("odd.raw");
    let size: u64 = (37 << 20) + 3 * 512;
    let mut rng = Rng(5);
    let mut data = vec![0u8; size as usize];
    // Some data blocks, some zero blocks, data at the very end.
    for (i, chunk) in data.chunks_mut(300_000).enumerate() {
        if i % 3 != 1 {
            let b = rng.bytes(chunk.len());
            chunk.copy_from_slice(&b);
        }
    }
    let tail = rng.bytes(1000);
    let n = data.len();
    data[n - 1000..].copy_from_slice(&tail);
    std::fs::write(&src, &data).unwrap();
    for bs in [None, Some(512), Some(1 << 20)] {
        let out = dir.path().join(format!("odd{}.qcow2", bs.unwrap_or(0)));
        write_through_cairn(&src, &out, bs);
        qemu_check_clean(&out);
        qemu_img(&["compare", "-f", "raw", "-F", "qcow2", path_str(&src), path_str(&out)]);
        assert_reads_like(&out, &src);
        assert_eq!(qemu_size(&out), size);
    }
    // An empty disk and a disk of only zeros.
    for size in [0u64, 8 << 20] {
        let out = dir.path().join(format!("empty{size}.qcow2"));
        let w = cairn_disk::writer::create(Format::Qcow2, &out, size, &WriteOptions::default()).unwrap();
        if size > 0 {
            w.write_at(&vec![0u8; 1 << 20], 0).unwrap();
        }
        w.finish().unwrap();
        qemu_check_clean(&out);
        let img = Image::open(&out).unwrap();
        assert_eq!(img.virtual_size(), size);
        assert!(img.allocation().unwrap().is_empty());
    }
    // Writes past the end are refused.
    let out = dir.path().join("small.qcow2");
    let w = cairn_disk::writer::create(Format::Qcow2, &out, 1 << 20, &WriteOptions::default()).unwrap();
    assert!(w.write_at(&[1u8; 65536], 1 << 20).is_err());
    // A size that is not whole sectors (a raw source of any length) is rounded
    // up to the next sector, which QEMU counts in: the last bytes are not cut
    // off, and the rest of that sector reads as zeros.
    let odd = 1_000_005u64;
    let src = dir.path().join("odd-sector.raw");
    let bytes = rng.bytes(odd as usize);
    std::fs::write(&src, &bytes).unwrap();
    let out = dir.path().join("odd-sector.qcow2");
    let rounded = cairn_disk::writer::image_size(Format::Qcow2, odd, &WriteOptions::default());
    assert_eq!(rounded, 1_000_448);
    let w = cairn_disk::writer::create(Format::Qcow2, &out, odd, &WriteOptions::default()).unwrap();
    w.write_at(&bytes, 0).unwrap();
    w.finish().unwrap();
    qemu_check_clean(&out);
    assert_eq!(qemu_size(&out), rounded);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(rounded)
        .unwrap();
    qemu_img(&["compare", "-f", "raw", "-F", "qcow2", path_str(&src), path_str(&out)]);
    assert_reads_like(&out, &src);
}

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

/// Reads all of `img` with the independent `imago` qcow2 reader (backing
/// files included) and checks cairn's reads give the same bytes.
fn assert_imago_agrees(img: &Path) {
    use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};
    let q = imago::qcow2::Qcow2::<imago::file::File>::builder_path(img)
        .open(PermissiveImplicitOpenGate::default())
        .unwrap_or_else(|e| panic!("imago cannot open {}: {e}", img.display()));
    let q = FormatAccess::new(q);
    let image = Image::open(img).unwrap();
    assert_eq!(q.size(), image.virtual_size(), "{}", img.display());
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0;
    while off < q.size() {
        let n = (q.size() - off).min(1 << 20) as usize;
        q.read(&mut a[..n], off).unwrap();
        image.read_at(&mut b[..n], off).unwrap();
        assert!(
            a[..n] == b[..n],
            "{}: imago and cairn differ in 1 MiB at {off}",
            img.display()
        );
        off += n as u64;
    }
}

#[test]
fn imago_reads_what_cairn_reads_and_writes() {
    let ext4 = common::ext4_fixture();
    let dir = tempfile::tempdir().unwrap();
    // cairn's writer output, at three cluster sizes.
    for bs in [None, Some(4096), Some(2 << 20)] {
        let out = dir.path().join(format!("w{}.qcow2", bs.unwrap_or(0)));
        write_through_cairn(&ext4, &out, bs);
        assert_imago_agrees(&out);
    }
    // qemu images: v2, zlib-compressed, and an overlay over a raw base.
    let v2 = dir.path().join("v2.qcow2");
    convert(&ext4, &v2, "compat=0.10,cluster_size=4096", false);
    assert_imago_agrees(&v2);
    let z = dir.path().join("z.qcow2");
    convert(&ext4, &z, "compression_type=zlib", true);
    assert_imago_agrees(&z);
    let base = dir.path().join("base.raw");
    std::fs::copy(&ext4, &base).unwrap();
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        path_str(&top),
        "128M",
    ]);
    let mut rng = Rng(77);
    common::write_chunks(
        &top,
        "qcow2",
        &[(3 << 20, rng.bytes(200_000)), ((96 << 20) - 4096, rng.bytes(8192))],
    );
    qemu_io(&top, "qcow2", &["write -z 8388608 1048576".into()]);
    assert_imago_agrees(&top);
}
