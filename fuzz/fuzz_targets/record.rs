//! Block records: `RecordHeader::decode` and `RecordDecoder::decode`.
//!
//! Mode byte: bit 0 fix up both CRCs; bit 1 encrypting keys; bit 2 round-trip
//! mode (the rest is a block: encode it with the codec of bits 3–4, decode it,
//! compare).
#![no_main]

use std::cell::RefCell;

use cairn_format::codec::{Compression, Compressor};
use cairn_format::record::{RecordDecoder, RecordEncoder, RecordHeader};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static DECODER: RefCell<RecordDecoder> = RefCell::new(RecordDecoder::new().expect("decoder"));
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = cairn_fuzz::split(data) else { return };
    let keys = cairn_fuzz::keys(mode & 2 != 0);
    let mut out = Vec::new();

    if mode & 4 != 0 {
        let c = match (mode >> 3) & 3 {
            0 => Compression::None,
            1 => Compression::Lz4,
            2 => Compression::Zstd(1),
            _ => Compression::Zstd(7),
        };
        let mut enc = RecordEncoder::new(Compressor::new(c).expect("compressor"));
        let mut rec = Vec::new();
        let hash = keys.hash(rest);
        enc.encode(keys, rest, hash, &mut rec).expect("encode");
        assert_eq!(rec.len() % 4096, 0);
        let h = DECODER.with(|d| d.borrow_mut().decode(keys, &mut rec, Some(&hash), &mut out)).expect("round trip");
        assert_eq!(out, rest);
        assert_eq!(h.raw_len as usize, rest.len());
        return;
    }

    let mut rec = rest.to_vec();
    if mode & 1 != 0 {
        cairn_fuzz::fix_record(&mut rec);
    }
    let header = RecordHeader::decode(&rec);
    if let Ok(h) = DECODER.with(|d| d.borrow_mut().decode(keys, &mut rec, None, &mut out)) {
        assert_eq!(Some(&h), header.as_ref().ok());
        assert_eq!(out.len(), h.raw_len as usize);
        assert_eq!(keys.hash(&out), h.hash);
    }
});
