use super::*;

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
