//! Data file headers: `DataFileHeader::decode`.
//!
//! Mode byte: bit 0 fix up the CRC. Whatever decodes must round-trip.
#![no_main]

use cairn_format::datafile::DataFileHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = cairn_fuzz::split(data) else { return };
    let mut bytes = rest.to_vec();
    if mode & 1 != 0 {
        cairn_fuzz::fix_datafile(&mut bytes);
    }
    if let Ok(h) = DataFileHeader::decode(&bytes) {
        let enc = h.encode();
        assert_eq!(DataFileHeader::decode(&enc).expect("re-decode"), h);
        // The identity fields sit where the input had them.
        assert_eq!(enc[..11], bytes[..11]);
        assert_eq!(enc[12..48], bytes[12..48]);
    }
});
