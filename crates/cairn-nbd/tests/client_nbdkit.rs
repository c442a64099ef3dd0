//! cairn's NBD client against `nbdkit`, which can switch protocol features
//! off and inject errors: simple replies only (`--no-sr`), a small maximum
//! block size (reads and writes split and pipelined), server errors named by
//! errno, and servers cairn refuses (oldstyle).

mod common;

use cairn_nbd::proto::{BASE_ALLOCATION, EIO, STATE_HOLE};
use cairn_nbd::{ClientOptions, Error, NbdClient};
use common::*;

fn opts(contexts: &[&str]) -> ClientOptions {
    ClientOptions {
        export: String::new(),
        meta_contexts: contexts.iter().map(|c| c.to_string()).collect(),
        timeout: Some(std::time::Duration::from_secs(30)),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn simple_replies_only() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("kit.sock");
    let _kit = Peer::nbdkit_unix(&sock, &["--no-sr", "memory", "4M"], Some(""));
    let mut c = NbdClient::connect(&_kit.ep, &opts(&[BASE_ALLOCATION])).unwrap();
    assert!(!c.structured_replies());
    assert!(c.meta_contexts().is_empty(), "no contexts without structured replies");
    let data = pattern(300_000, 3);
    c.write(12345, &data).unwrap();
    c.flush().unwrap();
    let mut buf = vec![0xffu8; 400_000];
    c.read(0, &mut buf).unwrap();
    assert!(buf[..12345].iter().all(|&b| b == 0));
    assert_eq!(buf[12345..12345 + data.len()], data[..]);
    assert!(buf[12345 + data.len()..].iter().all(|&b| b == 0));
    let err = c.block_status(BASE_ALLOCATION, 0, 4096).unwrap_err();
    assert!(matches!(err, Error::NoContext { .. }), "{err}");
}

#[test]
fn small_maximum_block_size_splits_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("kit.sock");
    let _kit = Peer::nbdkit_unix(
        &sock,
        &[
            "--filter=blocksize-policy",
            "memory",
            "8M",
            "blocksize-minimum=1",
            "blocksize-preferred=4096",
            "blocksize-maximum=65536",
            "blocksize-error-policy=error",
        ],
        Some(""),
    );
    let mut c = NbdClient::connect(&_kit.ep, &opts(&[BASE_ALLOCATION])).unwrap();
    assert_eq!(c.max_block_size(), 65536);
    assert_eq!(c.meta_contexts(), [BASE_ALLOCATION.to_string()]);
    // 1.5 MiB + a bit: 25 pieces each way, more than the pipeline holds at once.
    let data = pattern((3 << 19) + 777, 9);
    c.write(1 << 20, &data).unwrap();
    let mut buf = vec![0u8; data.len() + 2000];
    c.read((1 << 20) - 1000, &mut buf).unwrap();
    assert!(buf[..1000].iter().all(|&b| b == 0));
    assert!(buf[1000..1000 + data.len()] == data[..]);
    assert!(buf[1000 + data.len()..].iter().all(|&b| b == 0));
    // nbdkit's memory plugin reports holes where nothing was written.
    let map = c.block_status(BASE_ALLOCATION, 0, 8 << 20).unwrap();
    assert_eq!(map.iter().map(|e| e.length).sum::<u64>(), 8 << 20);
    let data_at = |o: u64| {
        map.iter()
            .any(|e| e.offset <= o && o < e.end() && e.flags & STATE_HOLE == 0)
    };
    assert!(data_at(1 << 20) && data_at((1 << 20) + data.len() as u64 - 1));
    assert!(!data_at(0) && !data_at((8 << 20) - 1));
}

#[test]
fn server_errors_are_named_and_leave_the_connection_usable() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("kit.sock");
    let _kit = Peer::nbdkit_unix(
        &sock,
        &[
            "--filter=error",
            "memory",
            "1M",
            "error-pread=EIO",
            "error-pread-rate=100%",
        ],
        Some(""),
    );
    let mut c = NbdClient::connect(&_kit.ep, &opts(&[])).unwrap();
    let mut buf = vec![0u8; 8192];
    let err = c.read(4096, &mut buf).unwrap_err();
    match &err {
        Error::Command {
            code, command, offset, ..
        } => {
            assert_eq!((*code, command.as_str(), *offset), (EIO, "NBD_CMD_READ", 4096));
        }
        other => panic!("expected a command error, got {other}"),
    }
    assert!(err.to_string().contains("EIO"), "{err}");
    c.write(0, &[1, 2, 3]).unwrap();
    c.flush().unwrap();
}

#[test]
fn oldstyle_servers_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("kit.sock");
    let _kit = Peer::nbdkit_unix(&sock, &["-o", "memory", "1M"], None);
    let err = NbdClient::connect(&_kit.ep, &opts(&[])).unwrap_err();
    assert!(
        matches!(err, Error::Protocol { .. }) && err.to_string().contains("oldstyle"),
        "{err}"
    );
}
