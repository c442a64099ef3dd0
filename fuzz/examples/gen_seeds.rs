//! Writes the small seed inputs under `fuzz/seeds/<target>/`:
//! `cargo run --example gen_seeds` (from `fuzz/`). Each seed starts with the
//! target's mode byte (see `README.md`).

use std::path::Path;

use cairn_format::codec::{Compression, Compressor};
use cairn_format::datafile::{DataFileHeader, FileKind};
use cairn_format::envelope::{self, Kind};
use cairn_format::index::{BlockRef, DiskMap, PointIndex};
use cairn_format::record::{RECORD_HEADER_LEN, RecordEncoder, RecordHeader};
use cairn_fuzz::{ENCRYPTED, PLAIN};
use cairn_repo::chain::{Alias, DiskMeta, FileEntry};
use cairn_repo::{ChainMeta, Method, PointKind, PointMeta, PointStats};

fn write(target: &str, name: &str, mode: u8, body: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = vec![mode];
    bytes.extend_from_slice(body);
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A record without its padding (the decoder accepts both).
fn record(keys: &cairn_format::crypto::Keys, c: Compression, raw: &[u8]) -> Vec<u8> {
    let mut enc = RecordEncoder::new(Compressor::new(c).unwrap());
    let mut rec = Vec::new();
    enc.encode(keys, raw, keys.hash(raw), &mut rec).unwrap();
    let used = RECORD_HEADER_LEN + RecordHeader::decode(&rec).unwrap().stored_len as usize;
    rec.truncate(used);
    rec
}

fn index() -> PointIndex {
    let blocks = (0..6u64)
        .map(|i| BlockRef { block: i * 3, file: (i % 2) as u32 + 1, offset: 4096 * (i + 1), stored_len: 700 + i as u32, hash: [i as u8; 32] })
        .collect();
    PointIndex {
        point_id: "ab12cd34".into(),
        disks: vec![
            DiskMap { disk: 0, virtual_size: 20 << 20, block_size: 1 << 20, blocks },
            DiskMap { disk: 1, virtual_size: (1 << 20) + 5, block_size: 256 << 10, blocks: vec![] },
        ],
    }
}

fn chain_meta() -> ChainMeta {
    let point = |id: &str, kind, created_file, files: Vec<u32>| PointMeta {
        id: id.into(),
        time: "2026-01-01T00:00:00Z".into(),
        kind,
        index: format!("{id}.idx"),
        created_file,
        files,
        disks: vec![DiskMeta { disk: 0, source: "disk0.raw".into(), virtual_size: 8 << 20, blocks: 3 }],
        stats: PointStats { read_bytes: 1, duration_secs: 0.5, busy: vec![("source".into(), 12.5)], bottleneck: "source".into(), ..PointStats::default() },
    };
    ChainMeta {
        format_version: 1,
        chain_id: "00112233445566778899aabbccddeeff".into(),
        vm: "web01".into(),
        block_size: 256 << 10,
        method: Method::ForeverForward,
        generation: 7,
        next_file_no: 4,
        files: vec![
            FileEntry { no: 1, name: "00000001.full".into(), kind: FileKind::Full, committed_len: 16384 },
            FileEntry { no: 3, name: "00000003.inc".into(), kind: FileKind::Incremental, committed_len: 8192 },
        ],
        aliases: vec![Alias { no: 2, into: 1, shift: 8192 }],
        points: vec![
            point("aa000002", PointKind::Full, 2, vec![1, 2]),
            point("bb000003", PointKind::Incremental, 3, vec![1, 2, 3]),
        ],
    }
}

fn main() {
    // record: mode bit 0 fix CRCs, bit 1 encrypting keys, bit 2 round trip (codec in bits 3–4).
    let pattern: Vec<u8> = b"cairn block ".iter().copied().cycle().take(3000).collect();
    write("record", "lz4-plain", 0x01, &record(&PLAIN, Compression::Lz4, &pattern));
    write("record", "zstd-plain", 0x01, &record(&PLAIN, Compression::Zstd(1), &pattern));
    write("record", "stored-plain", 0x01, &record(&PLAIN, Compression::None, &(0..200u8).collect::<Vec<_>>()));
    write("record", "zstd-encrypted", 0x03, &record(&ENCRYPTED, Compression::Zstd(1), &pattern));
    write("record", "round-trip-lz4", 0x04 | (1 << 3), &pattern[..500]);

    // envelope: bits 0–1 kind, bit 2 fix, bits 3–4 keys, bit 5 round trip, bit 6 compress.
    let json = br#"{"vm":"web01","points":[{"id":"aa000002"}],"generation":7}"#;
    write("envelope", "config-plain", 0x04, &envelope::seal(Kind::Config, json, false, None).unwrap());
    write("envelope", "chain-zstd", 0x04 | 1, &envelope::seal(Kind::Chain, json, true, None).unwrap());
    write("envelope", "index-zstd-encrypted", 0x04 | 2 | (2 << 3), &envelope::seal(Kind::Index, json, true, Some(&ENCRYPTED)).unwrap());
    write("envelope", "round-trip", 0x20 | 0x40 | 3 | (1 << 3), json);

    // index: bit 0 fix, bit 1 encrypting keys, bit 2 body mode (bit 3 compress).
    let idx = index();
    let sealed = idx.encode(&PLAIN).unwrap();
    write("index", "plain", 0x01, &sealed);
    write("index", "encrypted", 0x03, &idx.encode(&ENCRYPTED).unwrap());
    write("index", "body", 0x04 | 0x08, &envelope::open(Kind::Index, &sealed, Some(&PLAIN)).unwrap());

    // datafile_header: bit 0 fix.
    let h = DataFileHeader { kind: FileKind::Incremental, repository_id: [1; 16], chain_id: [2; 16], file_no: 7 };
    write("datafile_header", "incremental-64", 0x01, &h.encode()[..64]);
    let h = DataFileHeader { kind: FileKind::Full, ..h };
    write("datafile_header", "full-64", 0x00, &h.encode()[..64]);

    // chain_meta: bit 0 fix, bit 1 body mode (bit 2 compress).
    let meta = chain_meta();
    let path = Path::new("chain.meta");
    let sealed = meta.encode(&PLAIN, path).unwrap();
    write("chain_meta", "sealed", 0x01, &sealed);
    write("chain_meta", "body", 0x02, &envelope::open(Kind::Chain, &sealed, Some(&PLAIN)).unwrap());
    println!("seeds written");
}
