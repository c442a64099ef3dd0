//! Restore point indexes: `PointIndex::decode`.
//!
//! Mode byte: bit 0 fix up the envelope; bit 1 encrypting keys; bit 2 body
//! mode (the rest is the postcard body: seal it — compressed when bit 3 — so
//! that body decoding and validation see it behind a valid envelope).
//! Whatever decodes must satisfy the index invariants and re-encode to an
//! equal index.
#![no_main]

use cairn_format::envelope::{self, Kind};
use cairn_format::index::PointIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = cairn_fuzz::split(data) else { return };
    let keys = cairn_fuzz::keys(mode & 2 != 0);
    let bytes = if mode & 4 != 0 {
        envelope::seal(Kind::Index, rest, mode & 8 != 0, Some(keys)).expect("seal")
    } else {
        let mut b = rest.to_vec();
        if mode & 1 != 0 {
            cairn_fuzz::fix_envelope(&mut b);
        }
        b
    };
    let Ok(index) = PointIndex::decode(&bytes, keys) else { return };
    for d in &index.disks {
        assert!(d.validate().is_ok());
        assert!(d.blocks.windows(2).all(|w| w[0].block < w[1].block));
        for r in &d.blocks {
            assert!(r.block < d.block_count());
            assert!(d.block_len(r.block) > 0 && d.block_len(r.block) <= d.block_size);
            assert_eq!(d.get(r.block), Some(r));
        }
    }
    let again = PointIndex::decode(&index.encode(keys).expect("encode"), keys).expect("re-decode");
    assert_eq!(again, index);
});
