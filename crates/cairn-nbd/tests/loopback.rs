//! cairn's NBD client against cairn's NBD server: reads, writes, holes,
//! block status, errors, export removal, shutdown, and the raw protocol
//! behaviour the server promises (error numbers, ending on malformed input).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use cairn_disk::DiskSource;
use cairn_disk::raw::RawFile;
use cairn_nbd::proto::*;
use cairn_nbd::{
    ClientOptions, CowExport, Endpoint, Error, ExportBackend, NbdClient, NbdDisk, NbdServer, SourceExport,
};
use common::*;

fn opts(export: &str) -> ClientOptions {
    ClientOptions {
        export: export.into(),
        meta_contexts: vec![BASE_ALLOCATION.into()],
        timeout: Some(std::time::Duration::from_secs(30)),
    }
}

/// A 6 MiB sparse raw file with data at known places; returns its bytes.
fn sparse_raw(path: &Path) -> Vec<u8> {
    let mut expected = vec![0u8; 6 << 20];
    let f = std::fs::File::create(path).unwrap();
    f.set_len(expected.len() as u64).unwrap();
    use std::os::unix::fs::FileExt;
    for (o, l, p) in [
        (0u64, 4096usize, 7u8),
        (1 << 20, 300_000, 9),
        ((5 << 20) + 12345, 4000, 13),
    ] {
        let data: Vec<u8> = (0..l).map(|i| p.wrapping_add(i as u8)).collect();
        f.write_all_at(&data, o).unwrap();
        expected[o as usize..o as usize + l].copy_from_slice(&data);
    }
    expected
}

#[test]
fn reads_holes_and_block_status_of_a_source_export() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let expected = sparse_raw(&raw);
    let source: Arc<dyn DiskSource> = Arc::new(RawFile::open(&raw).unwrap());
    let alloc = source.allocation().unwrap();
    let server = NbdServer::new();
    server.add_export(
        "disk",
        "a sparse raw file",
        Arc::new(SourceExport::new(source).unwrap()),
    );
    let handle = server.serve_unix(&dir.path().join("nbd.sock")).unwrap();

    let mut c = NbdClient::connect(&handle.endpoint(), &opts("disk")).unwrap();
    assert_eq!(c.size(), expected.len() as u64);
    assert_eq!(c.meta_contexts(), [BASE_ALLOCATION.to_string()]);
    assert!(c.read_only());
    assert!(c.structured_replies());
    let mut buf = vec![0xffu8; expected.len()];
    c.read(0, &mut buf).unwrap();
    assert!(buf == expected, "whole-disk read differs");
    for (o, l) in [
        (1u64, 1usize),
        (4095, 2),
        ((1 << 20) - 7, 300_010),
        ((5 << 20) + 12000, 5000),
    ] {
        let mut b = vec![0xeeu8; l];
        c.read(o, &mut b).unwrap();
        assert_eq!(b, expected[o as usize..o as usize + l], "read of {l} at {o}");
    }
    let map = c.block_status(BASE_ALLOCATION, 0, c.size()).unwrap();
    let data: Vec<(u64, u64)> = map
        .iter()
        .filter(|e| e.flags == 0)
        .map(|e| (e.offset, e.length))
        .collect();
    let want: Vec<(u64, u64)> = alloc.iter().map(|e| (e.offset, e.length)).collect();
    assert_eq!(data, want);
    assert!(map.iter().all(|e| e.flags == 0 || e.flags == STATE_HOLE | STATE_ZERO));
    assert_eq!(map.iter().map(|e| e.length).sum::<u64>(), c.size());
    c.disconnect().unwrap();
}

#[test]
fn writes_go_to_a_cow_export_and_read_only_exports_refuse_them() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("base.raw");
    let mut model = sparse_raw(&raw);
    let before = std::fs::read(&raw).unwrap();
    let base: Arc<dyn DiskSource> = Arc::new(RawFile::open(&raw).unwrap());
    let cow = Arc::new(CowExport::create(Arc::clone(&base), &dir.path().join("scratch"), 65536).unwrap());
    let server = NbdServer::new();
    server.add_export("cow", "", cow.clone());
    server.add_export("ro", "", Arc::new(SourceExport::new(base).unwrap()));
    let handle = server.serve_tcp("127.0.0.1:0").unwrap();
    assert!(handle.local_addr().starts_with("127.0.0.1:"));

    let mut c = NbdClient::connect(&handle.endpoint(), &opts("cow")).unwrap();
    assert!(!c.read_only());
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    c.write(100, &data).unwrap();
    model[100..100 + data.len()].copy_from_slice(&data);
    c.flush().unwrap();
    let mut buf = vec![0u8; model.len()];
    c.read(0, &mut buf).unwrap();
    assert!(buf == model);
    // 100..200_100 touches clusters 0..=3.
    assert_eq!(cow.written_bytes(), 4 * 65536);
    assert_eq!(std::fs::read(&raw).unwrap(), before, "the base changed");

    let mut ro = NbdClient::connect(&handle.endpoint(), &opts("ro")).unwrap();
    let err = ro.write(0, &[1, 2, 3]).unwrap_err();
    match &err {
        Error::Command { code, .. } => assert_eq!(*code, EPERM, "{err}"),
        other => panic!("expected EPERM, got {other}"),
    }
    assert!(
        err.to_string().contains("EPERM") && err.to_string().contains("\"ro\""),
        "{err}"
    );
    // The connection stays usable after a command error.
    let mut b = [0u8; 4096];
    ro.read(0, &mut b).unwrap();
    assert_eq!(b[..], before[..4096]);
}

#[test]
fn client_errors_name_the_export_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let server = NbdServer::new();
    server.add_export("mem", "", Arc::new(MemExport::new(vec![5u8; 8192])));
    let handle = server.serve_unix(&dir.path().join("s")).unwrap();
    let mut c = NbdClient::connect(&handle.endpoint(), &opts("mem")).unwrap();
    let mut b = [0u8; 100];
    let err = c.read(8150, &mut b).unwrap_err();
    assert!(matches!(err, Error::OutOfRange { size: 8192, .. }), "{err}");
    assert!(err.to_string().contains("\"mem\""), "{err}");
    let err = c.block_status("qemu:dirty-bitmap:x", 0, 10).unwrap_err();
    assert!(matches!(err, Error::NoContext { .. }), "{err}");

    let err = NbdClient::connect(&handle.endpoint(), &opts("nope")).unwrap_err();
    match &err {
        Error::Refused { reason, .. } => assert!(reason.contains("NBD_REP_ERR_UNKNOWN"), "{err}"),
        other => panic!("expected a refusal, got {other}"),
    }
    assert!(err.to_string().contains("\"nope\""), "{err}");

    let err = NbdClient::connect(&Endpoint::Unix(dir.path().join("missing")), &opts("mem")).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("connect"),
        "{err}"
    );
}

#[test]
fn block_status_loops_over_capped_replies() {
    let dir = tempfile::tempdir().unwrap();
    let server = NbdServer::new();
    // 256 Ki alternating extents of 512 bytes: more than one reply holds.
    let size = 128u64 << 20;
    server.add_export("striped", "", Arc::new(Striped { size, step: 512 }));
    let handle = server.serve_unix(&dir.path().join("s")).unwrap();
    let mut c = NbdClient::connect(&handle.endpoint(), &opts("striped")).unwrap();
    let map = c.block_status(BASE_ALLOCATION, 0, size).unwrap();
    assert_eq!(map.len(), (size / 512) as usize);
    assert!(
        map.iter()
            .enumerate()
            .all(|(i, e)| e.offset == i as u64 * 512 && e.length == 512 && e.flags == if i % 2 == 0 { 0 } else { 3 })
    );
    // Reads assemble many data and hole chunks.
    let mut buf = vec![0xffu8; 3 << 20];
    c.read(1000, &mut buf).unwrap();
    let mut want = vec![0u8; buf.len()];
    ExportBackend::read_at(&Striped { size, step: 512 }, &mut want, 1000).unwrap();
    assert!(buf == want);
}

#[test]
fn nbd_disk_reads_in_parallel_and_reports_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let expected = Arc::new(sparse_raw(&raw));
    let source: Arc<dyn DiskSource> = Arc::new(RawFile::open(&raw).unwrap());
    let alloc = source.allocation().unwrap();
    let server = NbdServer::new();
    server.add_export("d", "", Arc::new(SourceExport::new(source).unwrap()));
    let handle = server.serve_unix(&dir.path().join("s")).unwrap();
    let disk = Arc::new(
        NbdDisk::open(
            handle.endpoint(),
            opts("d"),
            4,
            "nbd disk d".into(),
            Some("id-1".into()),
        )
        .unwrap(),
    );
    assert_eq!(disk.virtual_size(), expected.len() as u64);
    assert_eq!(disk.allocation().unwrap(), alloc);
    assert_eq!(disk.identity().as_deref(), Some("id-1"));
    assert_eq!(disk.describe(), "nbd disk d");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let disk = Arc::clone(&disk);
            let expected = Arc::clone(&expected);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536 + t];
                for i in 0..40u64 {
                    let off = (i * 150_001 + t as u64 * 977) % (expected.len() as u64 - buf.len() as u64);
                    disk.read_at(&mut buf, off).unwrap();
                    assert!(
                        buf[..] == expected[off as usize..off as usize + buf.len()],
                        "read at {off}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let per_thread: u64 = (0..8u64).map(|t| 40 * (65536 + t)).sum();
    assert_eq!(disk.bytes_read(), per_thread);
    // Past the end reads as zeros.
    let mut tail = vec![1u8; 100];
    disk.read_at(&mut tail, expected.len() as u64 - 50).unwrap();
    assert_eq!(&tail[..50], &expected[expected.len() - 50..]);
    assert!(tail[50..].iter().all(|&b| b == 0));
    // No such context.
    assert!(disk.dirty_extents("qemu:dirty-bitmap:b").is_err());
}

#[test]
fn removing_an_export_ends_its_connections_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = NbdServer::new();
    server.add_export("a", "", Arc::new(MemExport::new(vec![1u8; 4096])));
    server.add_export("b", "", Arc::new(MemExport::new(vec![2u8; 4096])));
    let handle = server.serve_unix(&dir.path().join("s")).unwrap();
    let mut a = NbdClient::connect(&handle.endpoint(), &opts("a")).unwrap();
    let mut b = NbdClient::connect(&handle.endpoint(), &opts("b")).unwrap();
    assert!(server.remove_export("a"));
    assert!(!server.remove_export("a"));
    let mut buf = [0u8; 16];
    assert!(a.read(0, &mut buf).is_err());
    b.read(0, &mut buf).unwrap();
    assert_eq!(buf, [2u8; 16]);
    let err = NbdClient::connect(&handle.endpoint(), &opts("a")).unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert_eq!(server.export_names(), vec!["b".to_string()]);
}

#[test]
fn shutdown_ends_connections_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let server = NbdServer::new();
    server.add_export("a", "", Arc::new(MemExport::new(vec![1u8; 4096])));
    let handle = server.serve_unix(&sock).unwrap();
    let mut a = NbdClient::connect(&handle.endpoint(), &opts("a")).unwrap();
    handle.shutdown();
    assert!(!sock.exists());
    let mut buf = [0u8; 16];
    assert!(a.read(0, &mut buf).is_err());
    assert!(NbdClient::connect(&Endpoint::Unix(sock.clone()), &opts("a")).is_err());

    // Dropping the handle does the same; a stale socket file is replaced.
    let handle = server.serve_tcp("127.0.0.1:0").unwrap();
    let ep = handle.endpoint();
    let mut t = NbdClient::connect(&ep, &opts("a")).unwrap();
    drop(handle);
    assert!(t.read(0, &mut buf).is_err());
    assert!(NbdClient::connect(&ep, &opts("a")).is_err());

    std::fs::write(dir.path().join("not-a-socket"), b"x").unwrap();
    assert!(server.serve_unix(&dir.path().join("not-a-socket")).is_err());
    let h1 = server.serve_unix(&sock).unwrap();
    assert!(
        server.serve_unix(&sock).is_err(),
        "a live socket must not be taken over"
    );
    drop(h1);
}

/// A raw connection that negotiated export `name` with structured replies
/// (and `base:allocation` when `meta`).
fn raw_session(sock: &Path, name: &str, meta: bool) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    let mut g = [0u8; GREETING_LEN];
    s.read_exact(&mut g).unwrap();
    assert_eq!(decode_greeting(&g).unwrap(), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
        .unwrap();
    let mut out = Vec::new();
    ClientOption::StructuredReply.encode(&mut out);
    if meta {
        ClientOption::SetMetaContext(MetaContextRequest {
            export: name.into(),
            queries: vec!["base:".into()],
        })
        .encode(&mut out);
    }
    ClientOption::Go(InfoRequest {
        export: name.into(),
        info: vec![],
    })
    .encode(&mut out);
    s.write_all(&out).unwrap();
    // Read option replies until the ACK of GO.
    loop {
        let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        let h = OptionReplyHeader::decode(&h).unwrap();
        let mut d = vec![0u8; h.length as usize];
        s.read_exact(&mut d).unwrap();
        let r = OptionReply::decode(h.reply, &d).unwrap();
        assert!(!matches!(r, OptionReply::Error { .. }), "{r:?}");
        if h.option == OPT_GO && r == OptionReply::Ack {
            return s;
        }
    }
}

/// Reads one structured chunk: header and payload.
fn chunk(s: &mut UnixStream) -> (ChunkHeader, Vec<u8>) {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    let ReplyHeader::Chunk(h) = ReplyHeader::decode(&h).unwrap() else {
        panic!("expected a structured chunk")
    };
    let mut d = vec![0u8; h.length as usize];
    s.read_exact(&mut d).unwrap();
    (h, d)
}

fn error_of(s: &mut UnixStream, cookie: u64) -> u32 {
    let (h, d) = chunk(s);
    assert_eq!(h.cookie, cookie);
    assert!(h.done());
    match Chunk::decode(h.kind, &d).unwrap() {
        Chunk::Error { error, .. } => error,
        other => panic!("expected an error chunk, got {other:?}"),
    }
}

#[test]
fn server_answers_bad_requests_with_the_right_errors_and_ends_on_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let server = NbdServer::new();
    server.add_export("w", "", Arc::new(MemExport::new(vec![0u8; 1 << 20])));
    server.add_export(
        "r",
        "",
        Arc::new(Striped {
            size: 1 << 20,
            step: 4096,
        }),
    );
    let _handle = server.serve_unix(&sock).unwrap();

    let mut s = raw_session(&sock, "w", false);
    let req = |kind, cookie, offset, length| Request {
        flags: 0,
        kind,
        cookie,
        offset,
        length,
    };
    s.write_all(&req(CMD_READ, 1, (1 << 20) - 10, 20).encode()).unwrap();
    assert_eq!(error_of(&mut s, 1), EINVAL);
    s.write_all(&req(CMD_WRITE, 2, (1 << 20) - 2, 4).encode()).unwrap();
    s.write_all(&[1, 2, 3, 4]).unwrap();
    assert_eq!(error_of(&mut s, 2), ENOSPC);
    s.write_all(&req(CMD_READ, 3, 0, MAX_PAYLOAD + 1).encode()).unwrap();
    assert_eq!(error_of(&mut s, 3), EINVAL);
    // Block status without a negotiated context.
    s.write_all(&req(CMD_BLOCK_STATUS, 4, 0, 4096).encode()).unwrap();
    assert_eq!(error_of(&mut s, 4), EINVAL);
    s.write_all(&req(99, 5, 0, 0).encode()).unwrap();
    assert_eq!(error_of(&mut s, 5), EINVAL);
    // A good write still works afterwards: simple reply.
    s.write_all(&req(CMD_WRITE, 6, 10, 3).encode()).unwrap();
    s.write_all(&[7, 8, 9]).unwrap();
    let mut r = [0u8; SIMPLE_REPLY_LEN];
    s.read_exact(&mut r).unwrap();
    assert_eq!(
        ReplyHeader::decode(&r).unwrap(),
        ReplyHeader::Simple(SimpleReply { error: 0, cookie: 6 })
    );
    // Garbage ends the connection.
    s.write_all(&[0xde; REQUEST_LEN]).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // Read-only export: EPERM; REQ_ONE block status gives one descriptor.
    let mut s = raw_session(&sock, "r", true);
    s.write_all(&req(CMD_WRITE_ZEROES, 7, 0, 4096).encode()).unwrap();
    assert_eq!(error_of(&mut s, 7), EPERM);
    s.write_all(&req(CMD_TRIM, 8, 0, 4096).encode()).unwrap();
    assert_eq!(error_of(&mut s, 8), EPERM);
    let mut one = req(CMD_BLOCK_STATUS, 9, 100, 20000);
    one.flags = CMD_FLAG_REQ_ONE;
    s.write_all(&one.encode()).unwrap();
    let (h, d) = chunk(&mut s);
    assert!(h.done() && h.kind == REPLY_TYPE_BLOCK_STATUS);
    let Chunk::BlockStatus { descriptors, .. } = Chunk::decode(h.kind, &d).unwrap() else {
        panic!("block status")
    };
    assert_eq!(descriptors, vec![Descriptor { length: 3996, flags: 0 }]);
    // A read with DF comes back as one data chunk even over holes.
    let mut df = req(CMD_READ, 10, 0, 3 * 4096);
    df.flags = CMD_FLAG_DF;
    s.write_all(&df.encode()).unwrap();
    let (h, d) = chunk(&mut s);
    assert!(h.done() && h.kind == REPLY_TYPE_OFFSET_DATA && d.len() == 8 + 3 * 4096);
    // Without DF: data, hole, data.
    s.write_all(&req(CMD_READ, 11, 0, 3 * 4096).encode()).unwrap();
    let kinds: Vec<u16> = (0..3).map(|_| chunk(&mut s).0.kind).collect();
    assert_eq!(
        kinds,
        vec![REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, REPLY_TYPE_OFFSET_DATA]
    );
    s.write_all(&req(CMD_DISC, 12, 0, 0).encode()).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}
