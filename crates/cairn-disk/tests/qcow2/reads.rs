use super::*;

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
