use super::*;

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
