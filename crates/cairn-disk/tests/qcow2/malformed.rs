use super::*;

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
