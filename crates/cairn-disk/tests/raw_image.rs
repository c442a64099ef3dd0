//! Raw images opened through `Image`: probing, allocation map from holes,
//! byte-identical reads, and the real-content fixtures the format tests share.

mod common;

use cairn_disk::image::{Fill, probe};
use cairn_disk::io::ImageFile;
use cairn_disk::{DiskSource, Format, Image};

#[test]
fn raw_fixtures_read_back_identically_and_holes_are_unallocated() {
    for fixture in [common::ext4_fixture(), common::ntfs_fixture()] {
        let file = ImageFile::open(&fixture).unwrap();
        assert_eq!(probe(&file).unwrap(), Format::Raw, "{}", fixture.display());
        common::assert_reads_like(&fixture, &fixture);
        let img = Image::open(&fixture).unwrap();
        assert!(!img.is_differencing());
        assert_eq!(img.changed_extents().unwrap(), None);
        let map = img.map().unwrap();
        // The map covers the disk without gaps, and the fixtures are sparse.
        let mut next = 0;
        for e in &map {
            assert_eq!(e.offset, next);
            next += e.length;
        }
        assert_eq!(next, img.virtual_size());
        let data: u64 = map.iter().filter(|e| e.fill == Fill::Data).map(|e| e.length).sum();
        assert!(
            data < img.virtual_size() * 3 / 4,
            "{}: {data} bytes of data",
            fixture.display()
        );
        assert!(map.iter().any(|e| e.fill == Fill::Unallocated));
    }
}

#[test]
fn probe_tells_formats_by_content_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("qcow2", Format::Qcow2),
        ("vhdx", Format::Vhdx),
        ("vpc", Format::Vhd),
        ("raw", Format::Raw),
    ];
    for (fmt, want) in cases {
        // Misleading names: the extension never decides.
        let p = dir.path().join(format!("disk-{fmt}.img.raw"));
        common::qemu_img(&["create", "-q", "-f", fmt, common::path_str(&p), "8M"]);
        assert_eq!(probe(&ImageFile::open(&p).unwrap()).unwrap(), want, "{fmt}");
    }
    // Tiny and empty files are raw, not errors.
    for len in [0usize, 3, 511] {
        let f = ImageFile::from_bytes("tiny".as_ref(), vec![0xab; len]);
        assert_eq!(probe(&f).unwrap(), Format::Raw);
    }
}
