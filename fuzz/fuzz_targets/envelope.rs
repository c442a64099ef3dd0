//! Metadata envelopes: `envelope::open` for every kind.
//!
//! Mode byte: bits 0–1 kind (0 config, 1 chain, 2 index, 3 all three);
//! bit 2 fix up `body_len` and the BLAKE3 trailer; bits 3–4 keys (0 none,
//! 1 plain, 2 encrypting, 3 plain); bit 5 round-trip mode (the rest is a body:
//! seal it, compressed when bit 6, open it, compare).
#![no_main]

use cairn_format::envelope::{self, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = cairn_fuzz::split(data) else { return };
    let kinds: &[Kind] = match mode & 3 {
        0 => &[Kind::Config],
        1 => &[Kind::Chain],
        2 => &[Kind::Index],
        _ => &[Kind::Config, Kind::Chain, Kind::Index],
    };
    let keys = match (mode >> 3) & 3 {
        0 => None,
        2 => Some(cairn_fuzz::keys(true)),
        _ => Some(cairn_fuzz::keys(false)),
    };

    if mode & 0x20 != 0 {
        for &kind in kinds {
            let sealed = envelope::seal(kind, rest, mode & 0x40 != 0, keys).expect("seal");
            assert_eq!(envelope::open(kind, &sealed, keys).expect("round trip"), rest);
        }
        return;
    }

    let mut bytes = rest.to_vec();
    if mode & 4 != 0 {
        cairn_fuzz::fix_envelope(&mut bytes);
    }
    for &kind in kinds {
        if let Ok(body) = envelope::open(kind, &bytes, keys) {
            assert!(body.len() as u64 <= envelope::MAX_BODY_LEN);
        }
    }
});
