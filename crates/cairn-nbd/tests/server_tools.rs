//! cairn's NBD server against real clients: `nbdinfo --map` and `--list`,
//! `nbdcopy`, `qemu-img compare`, and `qemu-io` writing into a copy-on-write
//! export whose base must not change.

mod common;

use std::process::Command;
use std::sync::Arc;

use cairn_disk::{DiskSource, Image};
use cairn_nbd::proto::{BASE_ALLOCATION, STATE_HOLE, STATE_ZERO};
use cairn_nbd::{ClientOptions, CowExport, Endpoint, NbdClient, NbdServer, ServerHandle, SourceExport};
use common::*;

/// Serves the test qcow2 (opened by cairn) as export `disk` on a Unix socket.
struct Served {
    _dir: tempfile::TempDir,
    img: std::path::PathBuf,
    expected: Vec<u8>,
    source: Arc<dyn DiskSource>,
    server: Arc<NbdServer>,
    handle: ServerHandle,
}

fn serve_qcow2() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.qcow2");
    let expected = make_qcow2(&img);
    let source: Arc<dyn DiskSource> = Arc::new(Image::open(&img).unwrap());
    let server = NbdServer::new();
    server.add_export(
        "disk",
        "the test disk",
        Arc::new(SourceExport::new(Arc::clone(&source)).unwrap()),
    );
    let handle = server.serve_unix(&dir.path().join("nbd.sock")).unwrap();
    Served {
        img,
        expected,
        source,
        server,
        handle,
        _dir: dir,
    }
}

#[test]
fn nbdinfo_map_shows_the_exports_allocation() {
    let sv = serve_qcow2();
    let uri = sv.handle.endpoint().uri("disk");
    let out = tool("nbdinfo", &["--map", &uri]);
    // Lines: OFFSET LENGTH TYPE DESCRIPTION.
    let mut data = Vec::new();
    let mut covered = 0u64;
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (o, l, t): (u64, u64, u32) = (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap());
        assert_eq!(o, covered, "nbdinfo map has a gap: {out}");
        covered += l;
        match t {
            0 => match data.last_mut() {
                Some((lo, ll)) if *lo + *ll == o => *ll += l,
                _ => data.push((o, l)),
            },
            t => assert_eq!(t, STATE_HOLE | STATE_ZERO, "{line}"),
        }
    }
    assert_eq!(covered, IMAGE_SIZE);
    let alloc: Vec<(u64, u64)> = sv
        .source
        .allocation()
        .unwrap()
        .iter()
        .map(|e| (e.offset, e.length))
        .collect();
    assert_eq!(data, alloc);
    assert!(!data.is_empty() && data.len() >= WRITES.len() - 1, "{out}");
}

#[test]
fn nbdcopy_copies_the_export_byte_for_byte_over_unix_and_tcp() {
    let sv = serve_qcow2();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    tool("nbdcopy", &[&sv.handle.endpoint().uri("disk"), s(&out)]);
    assert!(
        std::fs::read(&out).unwrap() == sv.expected,
        "nbdcopy over a Unix socket differs"
    );

    let tcp = sv.server.serve_tcp("127.0.0.1:0").unwrap();
    let out2 = dir.path().join("out2.raw");
    tool("nbdcopy", &[&tcp.endpoint().uri("disk"), s(&out2)]);
    assert!(std::fs::read(&out2).unwrap() == sv.expected, "nbdcopy over TCP differs");
}

#[test]
fn qemu_img_compare_finds_the_export_identical_to_the_source() {
    let sv = serve_qcow2();
    let uri = sv.handle.endpoint().uri("disk");
    let out = tool("qemu-img", &["compare", "-f", "raw", "-F", "qcow2", &uri, s(&sv.img)]);
    assert!(out.contains("identical"), "{out}");
    // And it notices a difference.
    let other = sv.img.with_file_name("other.qcow2");
    make_qcow2(&other);
    qemu_io(&other, "qcow2", &["write -q -P 0x99 7340032 512".into()]);
    let status = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "qcow2", &uri, s(&other)])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1), "qemu-img compare must report the difference");
}

#[test]
fn qemu_io_writes_into_a_cow_export_and_the_base_stays_unchanged() {
    let sv = serve_qcow2();
    let before = std::fs::read(&sv.img).unwrap();
    let scratch = sv.img.with_file_name("scratch.cow");
    let cow = Arc::new(CowExport::create(Arc::clone(&sv.source), &scratch, 65536).unwrap());
    sv.server.add_export("cow", "writable", cow.clone());
    let uri = sv.handle.endpoint().uri("cow");
    let mut model = sv.expected.clone();
    let writes: &[(u64, u64, Option<u8>)] = &[
        (12345, 70000, Some(0xab)),     // clusters 0-1, partial: read-modify-write
        (1 << 20, 131072, None),        // zeroes over a base hole: nothing to record
        (5_242_000, 1000, Some(0xcd)),  // straddles clusters 79-80
        (3_407_872, 65536, None),       // zeroes one whole base data cluster (52)
        (8 << 20, 2 << 20, Some(0xef)), // whole clusters 128-159
    ];
    let mut cmds = Vec::new();
    for &(o, l, p) in writes {
        match p {
            Some(p) => {
                cmds.push(format!("write -P {p} {o} {l}"));
                model[o as usize..(o + l) as usize].fill(p);
            }
            None => {
                cmds.push(format!("write -z {o} {l}"));
                model[o as usize..(o + l) as usize].fill(0);
            }
        }
    }
    // Requests in flight together: the server's workers answer them out of order.
    for i in 0..8u64 {
        let (o, p) = (6_291_456 + i * 100_000, 0x61 + i as u8);
        cmds.push(format!("aio_write -P {p} {o} 100000"));
        model[o as usize..o as usize + 100_000].fill(p);
    }
    cmds.push("aio_flush".into());
    for &(o, l, p) in writes {
        cmds.push(format!("read -P {} {o} {l}", p.unwrap_or(0)));
    }
    cmds.push("flush".into());
    require("qemu-io");
    let out = run(Command::new("qemu-io")
        .args(["-f", "raw"])
        .args(cmds.iter().flat_map(|c| ["-c", c]))
        .arg(&uri));
    assert!(!out.contains("fail"), "qemu-io reported a failure:\n{out}");
    assert_eq!(out.matches("read ").count(), writes.len(), "{out}");

    let opts = ClientOptions {
        export: "cow".into(),
        meta_contexts: vec![BASE_ALLOCATION.into()],
        timeout: Some(std::time::Duration::from_secs(30)),
    };
    let mut c = NbdClient::connect(&sv.handle.endpoint(), &opts).unwrap();
    let mut buf = vec![0u8; IMAGE_SIZE as usize];
    c.read(0, &mut buf).unwrap();
    assert!(buf == model, "the export does not read back what qemu-io wrote");
    // 6_291_456 .. 7_091_456 covers clusters 96..=108.
    assert_eq!(cow.written_bytes(), (2 + 2 + 1 + 32 + 13) * 65536);
    let map = c.block_status(BASE_ALLOCATION, 3_407_872, 65536).unwrap();
    assert_eq!(map.len(), 1);
    assert_eq!(map[0].flags, STATE_HOLE | STATE_ZERO);
    drop(c);
    assert!(std::fs::read(&sv.img).unwrap() == before, "the base image file changed");
    assert!(qemu_raw(&sv.img, "qcow2") == sv.expected);
}

#[test]
fn nbdinfo_lists_the_exports_and_their_details() {
    let sv = serve_qcow2();
    sv.server
        .add_export("second", "another export", Arc::new(MemExport::new(vec![0u8; 1 << 20])));
    let Endpoint::Unix(sock) = sv.handle.endpoint() else {
        unreachable!()
    };
    let list = tool(
        "nbdinfo",
        &["--list", "--json", &format!("nbd+unix:///?socket={}", s(&sock))],
    );
    for needle in [
        "\"export-name\": \"disk\"",
        "\"description\": \"the test disk\"",
        "\"export-name\": \"second\"",
        "\"description\": \"another export\"",
    ] {
        assert!(list.contains(needle), "{needle} missing from:\n{list}");
    }
    let info = tool("nbdinfo", &["--json", &sv.handle.endpoint().uri("disk")]);
    for needle in [
        &format!("\"export-size\": {IMAGE_SIZE}"),
        "\"is_read_only\": true",
        "\"can_flush\": true",
        "\"block_size_maximum\": 33554432",
        "\"base:allocation\"",
    ] {
        assert!(info.contains(needle), "{needle} missing from:\n{info}");
    }
    let info = tool("nbdinfo", &["--json", &sv.handle.endpoint().uri("second")]);
    assert!(
        info.contains("\"is_read_only\": false") && info.contains("\"can_zero\": true"),
        "{info}"
    );
}
