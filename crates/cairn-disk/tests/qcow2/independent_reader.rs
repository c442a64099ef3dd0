use super::*;
use crate::writer::write_through_cairn;

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
