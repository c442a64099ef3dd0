//! Chain metadata: `cairn_repo::ChainMeta::decode` with plain keys, then the
//! lookups every reader makes on it (alias resolution, record location,
//! point selection) and a re-encode.
//!
//! Mode byte: bit 0 fix up the envelope; bit 1 body mode (the rest is the JSON
//! body: seal it — compressed when bit 2 — so that JSON decoding and
//! validation see it behind a valid envelope).
#![no_main]

use std::path::Path;

use cairn_format::envelope::{self, Kind};
use cairn_format::index::BlockRef;
use cairn_repo::ChainMeta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = cairn_fuzz::split(data) else { return };
    let keys = cairn_fuzz::keys(false);
    let path = Path::new("chain.meta");
    let bytes = if mode & 2 != 0 {
        envelope::seal(Kind::Chain, rest, mode & 4 != 0, Some(keys)).expect("seal")
    } else {
        let mut b = rest.to_vec();
        if mode & 1 != 0 {
            cairn_fuzz::fix_envelope(&mut b);
        }
        b
    };
    let Ok(meta) = ChainMeta::decode(&bytes, keys, path) else { return };

    // Every alias leads to a listed file (decode promises it).
    for a in &meta.aliases {
        let (no, _) = meta.resolve_no(a.no).expect("validated alias resolves");
        assert!(meta.file(no).is_some());
    }
    let numbers = meta
        .files
        .iter()
        .map(|f| f.no)
        .chain(meta.aliases.iter().flat_map(|a| [a.no, a.into]))
        .chain(meta.points.iter().flat_map(|p| p.files.iter().copied().chain([p.created_file])));
    for no in numbers {
        if let Some((phys, _)) = meta.resolve_no(no) {
            assert!(meta.file(phys).is_some());
        }
        for offset in [0, 4096, u64::MAX] {
            let r = BlockRef { block: 0, file: no, offset, stored_len: 0, hash: [0; 32] };
            if let Some(loc) = meta.locate(&r) {
                assert!(meta.file(loc.file).is_some());
            }
        }
    }
    for p in &meta.points {
        assert!(meta.find_point(&p.id).is_some());
        let _ = meta.find_point(&p.id[..p.id.len().min(3)]);
    }
    let _ = meta.find_point("latest");
    let _ = meta.find_point("");

    let again = ChainMeta::decode(&meta.encode(keys, path).expect("encode"), keys, path).expect("re-decode");
    assert_eq!(again.points.len(), meta.points.len());
    assert_eq!(again.files, meta.files);
    assert_eq!(again.aliases, meta.aliases);
});
