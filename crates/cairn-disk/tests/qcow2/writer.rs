use super::*;

/// Writes `src` (raw) through cairn's qcow2 writer from two threads in
/// shuffled 1 MiB blocks.
pub(crate) fn write_through_cairn(src: &Path, dst: &Path, block_size: Option<u32>) {
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
