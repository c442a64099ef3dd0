//! cairn's NBD client against `qemu-nbd`: reads match `qemu-img convert`,
//! allocation matches `qemu-img map`, a dirty bitmap gives exactly the
//! written extents, over Unix sockets and TCP; errors are clear.

mod common;

use std::sync::Arc;

use cairn_disk::{DiskSource, Extent};
use cairn_nbd::proto::{BASE_ALLOCATION, STATE_HOLE, STATE_ZERO};
use cairn_nbd::{ClientOptions, Endpoint, Error, NbdClient, NbdDisk};
use common::*;

fn opts(export: &str, contexts: &[&str]) -> ClientOptions {
    ClientOptions {
        export: export.into(),
        meta_contexts: contexts.iter().map(|c| c.to_string()).collect(),
        timeout: Some(std::time::Duration::from_secs(30)),
    }
}

#[test]
fn reads_and_allocation_match_qemu_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.qcow2");
    let expected = make_qcow2(&img);
    assert!(
        qemu_raw(&img, "qcow2") == expected,
        "qemu-img convert disagrees with the test's model"
    );
    let sock = dir.path().join("nbd.sock");
    let _nbd = Peer::qemu_nbd_unix(&sock, &["-r", "-f", "qcow2", "-x", "disk"], &img);
    let ep = Endpoint::Unix(sock.clone());

    let mut c = NbdClient::connect(&ep, &opts("disk", &[BASE_ALLOCATION])).unwrap();
    assert_eq!(c.size(), IMAGE_SIZE);
    assert_eq!(c.meta_contexts(), [BASE_ALLOCATION.to_string()]);
    assert!(c.read_only());
    assert_eq!(c.max_block_size(), 32 << 20, "qemu-nbd advertises 32 MiB");
    // One read of the whole disk: split at 32 MiB, holes and zero clusters assembled.
    let mut buf = vec![0xa5u8; IMAGE_SIZE as usize];
    c.read(0, &mut buf).unwrap();
    assert!(buf == expected, "whole-disk read differs from qemu-img convert");
    for (o, l) in [
        (1u64, 3usize),
        (199_999, 70_002),
        ((33 << 20) - 5000, 20000),
        (IMAGE_SIZE - 1, 1),
    ] {
        let mut b = vec![0x5au8; l];
        c.read(o, &mut b).unwrap();
        assert_eq!(b, expected[o as usize..o as usize + l], "read of {l} at {o}");
    }

    // base:allocation: data where qemu-img map says data, holes (and zero clusters) elsewhere.
    let map = c.block_status(BASE_ALLOCATION, 0, IMAGE_SIZE).unwrap();
    assert_eq!(map.first().map(|e| e.offset), Some(0));
    assert!(map.windows(2).all(|w| w[0].end() == w[1].offset));
    assert_eq!(map.last().map(|e| e.end()), Some(IMAGE_SIZE));
    let data: Vec<(u64, u64)> = map
        .iter()
        .filter(|e| e.flags & STATE_HOLE == 0)
        .map(|e| (e.offset, e.length))
        .collect();
    assert_eq!(data, qemu_data_map(&img, "qcow2"));
    // The zeroed range is a hole that reads as zeros.
    assert!(
        map.iter()
            .any(|e| e.offset <= ZEROED.0 && e.end() >= ZEROED.0 + ZEROED.1 && e.flags & STATE_ZERO != 0)
    );
    // A sub-range is covered exactly.
    let part = c.block_status(BASE_ALLOCATION, 100_000, 250_000).unwrap();
    assert_eq!(part.first().unwrap().offset, 100_000);
    assert_eq!(part.last().unwrap().end(), 350_000);
    c.disconnect().unwrap();

    // NbdDisk: allocation, parallel reads through several connections.
    let disk = Arc::new(NbdDisk::open(ep, opts("disk", &[BASE_ALLOCATION]), 4, "qemu-nbd disk".into(), None).unwrap());
    let want: Vec<Extent> = qemu_data_map(&img, "qcow2")
        .into_iter()
        .map(|(offset, length)| Extent { offset, length })
        .collect();
    assert_eq!(disk.allocation().unwrap(), want);
    let expected = Arc::new(expected);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (disk, expected) = (Arc::clone(&disk), Arc::clone(&expected));
            std::thread::spawn(move || {
                let mut b = vec![0u8; 1 << 20];
                for i in (t..IMAGE_SIZE >> 20).step_by(4) {
                    disk.read_at(&mut b, i << 20).unwrap();
                    assert!(
                        b[..] == expected[(i << 20) as usize..((i + 1) << 20) as usize],
                        "MiB {i}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(disk.bytes_read(), IMAGE_SIZE);
}

#[test]
fn reads_over_tcp_and_whole_disk_allocation_without_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.qcow2");
    let expected = make_qcow2(&img);
    let nbd = Peer::qemu_nbd_tcp(&["-r", "-f", "qcow2", "-x", "disk"], &img);
    let ep = nbd.ep.clone();
    let mut c = NbdClient::connect(&ep, &opts("disk", &[])).unwrap();
    let mut buf = vec![0u8; IMAGE_SIZE as usize];
    c.read(0, &mut buf).unwrap();
    assert!(buf == expected);
    // No base:allocation asked for: the whole disk counts as allocated.
    let disk = NbdDisk::open(ep, opts("disk", &[]), 2, "tcp disk".into(), None).unwrap();
    assert!(disk.meta_contexts().is_empty());
    assert_eq!(
        disk.allocation().unwrap(),
        vec![Extent {
            offset: 0,
            length: IMAGE_SIZE
        }]
    );
}

#[test]
fn dirty_bitmap_gives_exactly_the_written_extents() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("cbt.qcow2");
    make_qcow2(&img);
    tool(
        "qemu-img",
        &["bitmap", "--add", "--granularity", "65536", s(&img), "b0"],
    );
    tool("qemu-img", &["bitmap", "--enable", s(&img), "b0"]);
    // Writes after the bitmap was added: (offset, length).
    let writes: &[(u64, u64)] = &[
        (100_000, 5000),             // inside cluster 1
        (1 << 20, 200 << 10),        // 1 MiB .. 1.2 MiB: 4 clusters (the last partly)
        ((5 << 20) - 10, 20),        // straddles a cluster boundary
        ((39 << 20) + 65536, 65536), // exactly one cluster
    ];
    let cmds: Vec<String> = writes
        .iter()
        .map(|(o, l)| format!("write -q -P 0x77 {o} {l}"))
        .collect();
    qemu_io(&img, "qcow2", &cmds);

    let sock = dir.path().join("nbd.sock");
    let _nbd = Peer::qemu_nbd_unix(&sock, &["-r", "-f", "qcow2", "-x", "cbt", "-B", "b0"], &img);
    let ctx = "qemu:dirty-bitmap:b0";
    let ep = Endpoint::Unix(sock.clone());
    let disk = NbdDisk::open(ep.clone(), opts("cbt", &[BASE_ALLOCATION, ctx]), 2, "cbt".into(), None).unwrap();
    let mut accepted = disk.meta_contexts().to_vec();
    accepted.sort();
    assert_eq!(accepted, vec![BASE_ALLOCATION.to_string(), ctx.to_string()]);
    let g = 65536u64;
    let want = cairn_disk::extent::normalize(
        writes
            .iter()
            .map(|&(o, l)| {
                let start = o / g * g;
                Extent {
                    offset: start,
                    length: (o + l).div_ceil(g) * g - start,
                }
            })
            .collect(),
    );
    assert_eq!(disk.dirty_extents(ctx).unwrap(), want);
    // Both contexts were negotiated, so qemu answers for both: each is picked correctly.
    let alloc = disk.allocation().unwrap();
    let mut qemu: Vec<(u64, u64)> = alloc.iter().map(|e| (e.offset, e.length)).collect();
    qemu.sort();
    assert_eq!(qemu, qemu_data_map(&img, "qcow2"));
    let err = disk.dirty_extents("qemu:dirty-bitmap:other").unwrap_err();
    assert!(matches!(err, Error::NoContext { .. }), "{err}");
}

#[test]
fn reading_past_the_end_and_a_missing_export_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.qcow2");
    make_qcow2(&img);
    let sock = dir.path().join("nbd.sock");
    let _nbd = Peer::qemu_nbd_unix(&sock, &["-r", "-f", "qcow2", "-x", "disk"], &img);
    let ep = Endpoint::Unix(sock.clone());

    let mut c = NbdClient::connect(&ep, &opts("disk", &[BASE_ALLOCATION])).unwrap();
    let mut b = vec![0u8; 8192];
    let err = c.read(IMAGE_SIZE - 4096, &mut b).unwrap_err();
    assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"disk\"") && msg.contains(&IMAGE_SIZE.to_string()),
        "{msg}"
    );
    // The connection still works.
    c.read(0, &mut b).unwrap();

    let err = NbdClient::connect(&ep, &opts("no-such-export", &[BASE_ALLOCATION])).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Refused { .. }), "{msg}");
    assert!(
        msg.contains("no-such-export") && msg.contains("NBD_REP_ERR_UNKNOWN"),
        "{msg}"
    );
}
