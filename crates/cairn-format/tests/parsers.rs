//! Robustness and round-trip properties of every parser in cairn-format.
//!
//! * Valid encodings round-trip: block records (random contents, every codec,
//!   plain and encrypted keys), envelopes (every kind, compressed or not,
//!   plain or encrypted), data file headers and restore point indexes.
//! * Random bytes and random mutations of valid encodings (bit flips,
//!   truncations, extensions, overwrites, hostile length fields) never panic
//!   and never make a parser allocate absurd amounts (a tracking global
//!   allocator records the largest single allocation of the current thread).
//! * Mutations are also replayed with the checksums fixed up afterwards, so the
//!   code behind the checksums (decompression, decryption, body decoding,
//!   validation) sees hostile input too.
//! * Damage the format promises to detect is detected: any change to an
//!   envelope, to the checksummed part of a data file header, or to the header
//!   and payload of a block record is an error; changes to record padding or
//!   past the data file header's 64 bytes are harmless.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use cairn_format::codec::{Compression, Compressor};
use cairn_format::crypto::Keys;
use cairn_format::datafile::{DATA_HEADER_LEN, DataFileHeader, FileKind};
use cairn_format::envelope::{self, Kind, MAX_BODY_LEN};
use cairn_format::index::{BLOCK_SIZES, BlockRef, DiskMap, PointIndex};
use cairn_format::record::{
    MAX_BLOCK_LEN, RECORD_ALIGN, RECORD_HEADER_LEN, RecordDecoder, RecordEncoder, RecordHeader,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Allocation tracking.

/// Counts the largest single allocation request of each thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// The most a record decode may allocate at once: the largest block the
/// format admits (a header may claim it) plus slack.
const RECORD_LIMIT: usize = MAX_BLOCK_LEN as usize + (1 << 20);
/// The most a metadata parser may allocate at once for the small inputs
/// these tests feed it (well below the 2 GiB an envelope body may reach).
const META_LIMIT: usize = 64 << 20;

/// Runs `f` and fails if it made a single allocation larger than `limit`.
fn bounded<T>(what: &str, limit: usize, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    LARGEST.with(|l| l.set(0));
    let out = f();
    let largest = LARGEST.with(|l| l.get());
    if largest > limit {
        return Err(TestCaseError::fail(format!(
            "{what}: allocated {largest} bytes at once (limit {limit})"
        )));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Keys, codecs, contents.

#[derive(Clone, Debug)]
enum KeyChoice {
    Plain([u8; 32]),
    Encrypted([u8; 32], [u8; 32]),
}

impl KeyChoice {
    fn keys(&self) -> Keys {
        match self {
            KeyChoice::Plain(h) => Keys::plain(*h),
            KeyChoice::Encrypted(a, b) => {
                let mut m = [0u8; 64];
                m[..32].copy_from_slice(a);
                m[32..].copy_from_slice(b);
                Keys::from_master(&m).unwrap()
            }
        }
    }
}

fn key_choice() -> impl Strategy<Value = KeyChoice> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(KeyChoice::Plain),
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| KeyChoice::Encrypted(a, b)),
    ]
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        (1i32..=3).prop_map(Compression::Zstd),
        Just(Compression::Zstd(19)),
    ]
}

fn xorshift_fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// Block contents: small random, long runs, repeated patterns, big random
/// (incompressible: stored with codec 0), and mixes of the two.
fn block() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..4096),
        (any::<u8>(), 0usize..(300 << 10)).prop_map(|(b, n)| vec![b; n]),
        (prop::collection::vec(any::<u8>(), 1..32), 1usize..(260 << 10)).prop_map(|(p, n)| p
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect()),
        (any::<u64>(), 1usize..(260 << 10)).prop_map(|(s, n)| {
            let mut v = vec![0u8; n];
            xorshift_fill(&mut v, s);
            v
        }),
        (any::<u64>(), 1usize..(64 << 10)).prop_map(|(s, n)| {
            let mut v = vec![0u8; n];
            xorshift_fill(&mut v[..n / 2], s);
            v
        }),
    ]
}

// ---------------------------------------------------------------------------
// Mutations.

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize),
    Truncate(usize),
    Extend(Vec<u8>),
    Overwrite(usize, Vec<u8>),
    /// Writes a hostile little-endian value at one of the known field offsets.
    Field(usize, u64, u8),
}

/// Offsets of length and id fields in the structures under test.
const FIELD_AT: [usize; 10] = [4, 5, 6, 8, 10, 12, 16, 20, 48, 60];

fn hostile_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(u64::from(MAX_BLOCK_LEN)),
        Just(u64::from(MAX_BLOCK_LEN) + 1024),
        Just(u64::from(MAX_BLOCK_LEN) + 1025),
        Just(MAX_BODY_LEN),
        Just(MAX_BODY_LEN + 1),
        0u64..70_000,
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => any::<usize>().prop_map(Mutation::FlipBit),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(a, b)| Mutation::Overwrite(a, b)),
        2 => (prop::sample::select(FIELD_AT.to_vec()), hostile_value(), prop::sample::select(vec![1u8, 2, 4, 8]))
            .prop_map(|(at, v, w)| Mutation::Field(at, v, w)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..5)
}

fn mutate(bytes: &mut Vec<u8>, ms: &[Mutation]) {
    for m in ms {
        match m {
            Mutation::FlipBit(i) if !bytes.is_empty() => {
                let bit = i % (bytes.len() * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            Mutation::Truncate(n) => {
                let n = n % (bytes.len() + 1);
                bytes.truncate(n);
            }
            Mutation::Extend(more) => bytes.extend_from_slice(more),
            Mutation::Overwrite(at, with) if !bytes.is_empty() => {
                let at = at % bytes.len();
                let n = with.len().min(bytes.len() - at);
                bytes[at..at + n].copy_from_slice(&with[..n]);
            }
            Mutation::Field(at, v, width) => {
                let w = usize::from(*width);
                if at + w <= bytes.len() {
                    bytes[*at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
                }
            }
            _ => {}
        }
    }
}

/// Recomputes an envelope's length field and trailing BLAKE3 (when long enough).
fn fix_envelope(b: &mut [u8]) {
    if b.len() >= 24 + 32 {
        let body = (b.len() - 56) as u64;
        b[16..24].copy_from_slice(&body.to_le_bytes());
    }
    if b.len() >= 32 {
        let n = b.len() - 32;
        let sum = blake3::hash(&b[..n]);
        b[n..].copy_from_slice(sum.as_bytes());
    }
}

/// Recomputes a record's payload CRC (over what is there) and header CRC.
fn fix_record(b: &mut [u8]) {
    if b.len() < RECORD_HEADER_LEN {
        return;
    }
    let stored = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    let end = (RECORD_HEADER_LEN + stored).min(b.len());
    let crc = crc32c::crc32c(&b[RECORD_HEADER_LEN..end]);
    b[48..52].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes a data file header's CRC.
fn fix_datafile(b: &mut [u8]) {
    if b.len() >= 64 {
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or(if a.len() != b.len() {
        Some(a.len().min(b.len()))
    } else {
        None
    })
}

fn encode_record(keys: &Keys, c: Compression, raw: &[u8]) -> Vec<u8> {
    let mut enc = RecordEncoder::new(Compressor::new(c).unwrap());
    let mut rec = Vec::new();
    enc.encode(keys, raw, keys.hash(raw), &mut rec).unwrap();
    rec
}

// ---------------------------------------------------------------------------
// Index strategy.

fn disk_map() -> impl Strategy<Value = DiskMap> {
    (
        any::<u32>(),
        prop::sample::select(BLOCK_SIZES.to_vec()),
        1u64..(1 << 40),
    )
        .prop_flat_map(|(disk, block_size, virtual_size)| {
            let count = virtual_size.div_ceil(u64::from(block_size));
            let refs = prop::collection::btree_map(
                0..count,
                (
                    any::<u32>(),
                    1u64..(1 << 40),
                    0..=MAX_BLOCK_LEN + 1024,
                    any::<[u8; 32]>(),
                ),
                0..40,
            );
            (Just(disk), Just(block_size), Just(virtual_size), refs)
        })
        .prop_map(|(disk, block_size, virtual_size, refs)| DiskMap {
            disk,
            virtual_size,
            block_size,
            blocks: refs
                .into_iter()
                .map(|(block, (file, page, stored_len, hash))| BlockRef {
                    block,
                    file,
                    offset: page * RECORD_ALIGN,
                    stored_len,
                    hash,
                })
                .collect(),
        })
}

fn point_index() -> impl Strategy<Value = PointIndex> {
    ("[0-9a-f]{8}", prop::collection::vec(disk_map(), 0..3))
        .prop_map(|(point_id, disks)| PointIndex { point_id, disks })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Config), Just(Kind::Chain), Just(Kind::Index)]
}

// ---------------------------------------------------------------------------
// Round trips.

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn record_round_trips(raw in block(), c in compression(), k in key_choice()) {
        let keys = k.keys();
        let rec = encode_record(&keys, c, &raw);
        prop_assert_eq!(rec.len() as u64 % RECORD_ALIGN, 0);
        let h = RecordHeader::decode(&rec).unwrap();
        prop_assert_eq!(h.raw_len as usize, raw.len());
        prop_assert_eq!(h.encrypted, keys.is_encrypted());
        prop_assert_eq!(h.record_len(), rec.len() as u64);
        prop_assert_eq!(h.hash, keys.hash(&raw));
        prop_assert!(h.codec == 0 || h.codec == c.codec_id());
        let mut out = Vec::new();
        let back = bounded("record decode", RECORD_LIMIT, || {
            RecordDecoder::new().unwrap().decode(&keys, &mut rec.clone(), Some(&keys.hash(&raw)), &mut out)
        })?;
        prop_assert_eq!(back.unwrap(), h.clone());
        prop_assert!(out == raw, "decoded block differs");
        // Without padding too; a wrong expected hash is an error.
        let used = RECORD_HEADER_LEN + h.stored_len as usize;
        prop_assert!(RecordDecoder::new().unwrap().decode(&keys, &mut rec[..used].to_vec(), None, &mut out).is_ok());
        prop_assert!(RecordDecoder::new().unwrap().decode(&keys, &mut rec.clone(), Some(&[0xAB; 32]), &mut out).is_err());
    }

    #[test]
    fn envelope_round_trips(body in prop::collection::vec(any::<u8>(), 0..8192), compress: bool, k in prop::option::of(key_choice()), kind in kind()) {
        let keys = k.map(|k| k.keys());
        let sealed = envelope::seal(kind, &body, compress, keys.as_ref()).unwrap();
        let back = bounded("envelope open", META_LIMIT, || envelope::open(kind, &sealed, keys.as_ref()))?;
        prop_assert_eq!(back.unwrap(), body);
        for other in [Kind::Config, Kind::Chain, Kind::Index] {
            if other != kind {
                prop_assert!(envelope::open(other, &sealed, keys.as_ref()).is_err());
            }
        }
        if keys.as_ref().is_some_and(|k| k.is_encrypted()) {
            prop_assert!(envelope::open(kind, &sealed, None).is_err());
            prop_assert!(envelope::open(kind, &sealed, Some(&Keys::plain([0; 32]))).is_err());
        }
    }

    #[test]
    fn datafile_header_round_trips(incremental: bool, repository_id: [u8; 16], chain_id: [u8; 16], file_no: u32) {
        let kind = if incremental { FileKind::Incremental } else { FileKind::Full };
        let h = DataFileHeader { kind, repository_id, chain_id, file_no };
        let b = h.encode();
        prop_assert_eq!(b.len() as u64, DATA_HEADER_LEN);
        prop_assert_eq!(DataFileHeader::decode(&b).unwrap(), h.clone());
        prop_assert_eq!(DataFileHeader::decode(&b[..64]).unwrap(), h);
    }

    #[test]
    fn index_round_trips(idx in point_index(), k in key_choice()) {
        let keys = k.keys();
        let enc = idx.encode(&keys).unwrap();
        let back = bounded("index decode", META_LIMIT, || PointIndex::decode(&enc, &keys))?;
        prop_assert_eq!(back.unwrap(), idx);
    }
}

// ---------------------------------------------------------------------------
// Random bytes.

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(
        mut bytes in prop::collection::vec(any::<u8>(), 0..2048),
        // Magic and version of each structure, so the checks behind them run.
        magic in prop::sample::select(vec![&b""[..], b"CBLK\x01", b"CAIRNDAT\x01\x00", b"CAIRNCFG\x01\x00", b"CAIRNCHN\x01\x00", b"CAIRNIDX\x01\x00"]),
        fix: bool,
        k in key_choice(),
    ) {
        let keys = k.keys();
        let n = magic.len().min(bytes.len());
        bytes[..n].copy_from_slice(&magic[..n]);
        let mut rec = bytes.clone();
        let mut env = bytes.clone();
        let mut dat = bytes.clone();
        if fix {
            fix_record(&mut rec);
            fix_envelope(&mut env);
            fix_datafile(&mut dat);
        }
        bounded("record header", META_LIMIT, || { let _ = RecordHeader::decode(&rec); })?;
        let mut out = Vec::new();
        bounded("record", RECORD_LIMIT, || { let _ = RecordDecoder::new().unwrap().decode(&keys, &mut rec, None, &mut out); })?;
        for kind in [Kind::Config, Kind::Chain, Kind::Index] {
            bounded("envelope", META_LIMIT, || { let _ = envelope::open(kind, &env, Some(&keys)); })?;
            bounded("envelope", META_LIMIT, || { let _ = envelope::open(kind, &env, None); })?;
        }
        bounded("datafile header", META_LIMIT, || { let _ = DataFileHeader::decode(&dat); })?;
        bounded("index", META_LIMIT, || { let _ = PointIndex::decode(&env, &keys); })?;
    }
}

// ---------------------------------------------------------------------------
// Mutations of valid encodings.

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_records(raw in block(), c in compression(), k in key_choice(), ms in mutations(), fix: bool) {
        let keys = k.keys();
        let rec = encode_record(&keys, c, &raw);
        let used = RECORD_HEADER_LEN + RecordHeader::decode(&rec).unwrap().stored_len as usize;
        let mut bad = rec.clone();
        mutate(&mut bad, &ms);
        if fix {
            fix_record(&mut bad);
        }
        bounded("record header", META_LIMIT, || { let _ = RecordHeader::decode(&bad); })?;
        let mut out = Vec::new();
        let res = bounded("record", RECORD_LIMIT, || RecordDecoder::new().unwrap().decode(&keys, &mut bad.clone(), None, &mut out))?;
        if fix {
            // Whatever decodes must still be a block whose keyed hash is in its header.
            if let Ok(h) = res {
                prop_assert_eq!(keys.hash(&out), h.hash);
                prop_assert_eq!(out.len(), h.raw_len as usize);
            }
        } else {
            match first_difference(&rec[..used.min(rec.len())], &bad[..used.min(bad.len())]) {
                // Header or payload damaged (or cut): must be detected.
                Some(_) => prop_assert!(res.is_err(), "damage not detected"),
                // Only padding changed: decodes as before.
                None => {
                    prop_assert!(res.is_ok(), "padding damage rejected: {:?}", res.err());
                    prop_assert!(out == raw);
                }
            }
        }
    }

    /// Records whose payload is garbage but whose checksums and lengths are
    /// right: the decompressors and the hash check must cope.
    #[test]
    fn garbage_payloads(payload in prop::collection::vec(any::<u8>(), 0..4096), codec in 0u8..4, raw_len in prop_oneof![0u32..70_000, Just(MAX_BLOCK_LEN)], encrypted: bool, k in key_choice()) {
        let keys = k.keys();
        let mut rec = vec![0u8; RECORD_HEADER_LEN];
        rec[..4].copy_from_slice(b"CBLK");
        rec[4] = 1;
        rec[5] = codec;
        rec[6] = u8::from(encrypted);
        rec[8..12].copy_from_slice(&raw_len.to_le_bytes());
        rec[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&payload);
        fix_record(&mut rec);
        let mut out = Vec::new();
        let res = bounded("record", RECORD_LIMIT, || RecordDecoder::new().unwrap().decode(&keys, &mut rec, None, &mut out))?;
        prop_assert!(res.is_err(), "garbage decoded to a block with a matching keyed hash");
    }

    #[test]
    fn mutated_envelopes(body in prop::collection::vec(any::<u8>(), 0..4096), compress: bool, k in prop::option::of(key_choice()), kind in kind(), ms in mutations(), fix: bool) {
        let keys = k.map(|k| k.keys());
        let sealed = envelope::seal(kind, &body, compress, keys.as_ref()).unwrap();
        let mut bad = sealed.clone();
        mutate(&mut bad, &ms);
        if fix {
            fix_envelope(&mut bad);
        }
        for open_kind in [Kind::Config, Kind::Chain, Kind::Index] {
            let res = bounded("envelope", META_LIMIT, || envelope::open(open_kind, &bad, keys.as_ref()))?;
            if open_kind == kind && !fix && bad != sealed {
                prop_assert!(res.is_err(), "damage not detected");
            }
            if open_kind == kind && bad == sealed {
                prop_assert_eq!(res.unwrap(), body.clone());
            }
        }
    }

    /// Compressed envelopes whose zstd payload is damaged behind a valid checksum.
    #[test]
    fn damaged_compressed_bodies(body in prop::collection::vec(0u8..4, 0..20_000), ms in mutations()) {
        let sealed = envelope::seal(Kind::Chain, &body, true, None).unwrap();
        let mut payload = sealed[24..sealed.len() - 32].to_vec();
        mutate(&mut payload, &ms);
        let mut bad = sealed[..24].to_vec();
        bad.extend_from_slice(&payload);
        bad.extend_from_slice(&[0; 32]);
        fix_envelope(&mut bad);
        bounded("envelope", META_LIMIT, || { let _ = envelope::open(Kind::Chain, &bad, None); })?;
    }

    #[test]
    fn mutated_datafile_headers(incremental: bool, repository_id: [u8; 16], chain_id: [u8; 16], file_no: u32, ms in mutations(), fix: bool) {
        let kind = if incremental { FileKind::Incremental } else { FileKind::Full };
        let h = DataFileHeader { kind, repository_id, chain_id, file_no };
        let good = h.encode();
        let mut bad = good.clone();
        mutate(&mut bad, &ms);
        if fix {
            fix_datafile(&mut bad);
        }
        let res = bounded("datafile header", META_LIMIT, || DataFileHeader::decode(&bad))?;
        if !fix {
            match first_difference(&good[..64], &bad[..bad.len().min(64)]) {
                Some(_) => prop_assert!(res.is_err(), "damage not detected"),
                None => prop_assert_eq!(res.unwrap(), h),
            }
        }
    }

    #[test]
    fn mutated_indexes(idx in point_index(), k in key_choice(), ms in mutations(), fix: bool) {
        let keys = k.keys();
        let good = idx.encode(&keys).unwrap();
        let mut bad = good.clone();
        mutate(&mut bad, &ms);
        if fix {
            fix_envelope(&mut bad);
        }
        let res = bounded("index", META_LIMIT, || PointIndex::decode(&bad, &keys))?;
        if !fix && bad != good {
            prop_assert!(res.is_err(), "damage not detected");
        }
    }

    /// Index bodies damaged before sealing: the postcard decoder and the
    /// validation behind a valid envelope (plain and encrypted).
    #[test]
    fn damaged_index_bodies(idx in point_index(), k in key_choice(), ms in mutations(), compress: bool) {
        let keys = k.keys();
        let plain = Keys::plain([0; 32]);
        let mut body = envelope::open(Kind::Index, &idx.encode(&plain).unwrap(), Some(&plain)).unwrap();
        mutate(&mut body, &ms);
        let sealed = envelope::seal(Kind::Index, &body, compress, Some(&keys)).unwrap();
        let res = bounded("index", META_LIMIT, || PointIndex::decode(&sealed, &keys))?;
        if let Ok(back) = res {
            // Whatever decodes satisfies the invariants readers rely on.
            for d in &back.disks {
                prop_assert!(d.validate().is_ok());
                prop_assert!(BLOCK_SIZES.contains(&d.block_size));
                prop_assert!(d.blocks.windows(2).all(|w| w[0].block < w[1].block));
                prop_assert!(d.blocks.iter().all(|r| r.block < d.block_count() && r.offset % RECORD_ALIGN == 0));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Fixed hostile inputs (and regressions found by fuzzing).

/// An envelope whose zstd body expands far beyond the input must stop at
/// the format's limit rather than exhaust memory; a small bomb decodes.
#[test]
fn envelope_body_expansion_is_bounded_by_its_content() {
    let body = vec![0u8; 8 << 20];
    let sealed = envelope::seal(Kind::Chain, &body, true, None).unwrap();
    assert!(sealed.len() < 4096, "8 MiB of zeros compress to {} bytes", sealed.len());
    assert_eq!(envelope::open(Kind::Chain, &sealed, None).unwrap().len(), body.len());
}

#[test]
fn hostile_length_fields_are_rejected_cheaply() {
    // Envelope claiming a body just past the limit, and one at u64::MAX.
    for len in [MAX_BODY_LEN + 1, u64::MAX, u64::from(u32::MAX)] {
        let mut b = envelope::seal(Kind::Index, b"x", false, None).unwrap();
        b[16..24].copy_from_slice(&len.to_le_bytes());
        let res = bounded("envelope", 1 << 20, || envelope::open(Kind::Index, &b, None)).unwrap();
        assert!(res.is_err());
    }
    // Record header claiming the largest block with a tiny payload.
    let keys = Keys::plain([1; 32]);
    let mut rec = encode_record(&keys, Compression::Lz4, &[5u8; 1000]);
    rec[8..12].copy_from_slice(&MAX_BLOCK_LEN.to_le_bytes());
    fix_record(&mut rec);
    let mut out = Vec::new();
    let res = bounded("record", RECORD_LIMIT, || {
        RecordDecoder::new().unwrap().decode(&keys, &mut rec, None, &mut out)
    })
    .unwrap();
    assert!(res.is_err());
    rec[8..12].copy_from_slice(&(MAX_BLOCK_LEN + 1).to_le_bytes());
    fix_record(&mut rec);
    assert!(RecordHeader::decode(&rec).is_err());
}
