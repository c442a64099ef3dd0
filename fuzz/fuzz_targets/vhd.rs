//! vhd images: open one layer from arbitrary bytes, walk its allocation map
//! and read from every run (see `cairn_fuzz::exercise_layer`).
//!
//! Mode byte: bit 0 recomputes the checksums of the footer at the end, of its
//! copy at offset 0 and of the dynamic disk header the footer points at, so
//! mutations reach the BAT, bitmap and locator code behind them.
#![no_main]

use cairn_disk::vhd::format::checksum;
use libfuzzer_sys::fuzz_target;

/// Fixes the footer checksum (field at 64) of the 512 bytes at `at`, if they are a footer.
fn fix_footer(b: &mut [u8], at: usize) -> Option<u64> {
    let f = b.get_mut(at..at + 512)?;
    if &f[..8] != b"conectix" {
        return None;
    }
    let sum = checksum(f, 64);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    Some(u64::from_be_bytes(f[16..24].try_into().ok()?))
}

fn fix_checksums(b: &mut [u8]) {
    let len = b.len();
    let end = len.checked_sub(512).and_then(|at| fix_footer(b, at));
    let start = fix_footer(b, 0);
    for hdr in [end, start].into_iter().flatten() {
        let Ok(at) = usize::try_from(hdr) else { continue };
        if let Some(h) = b.get_mut(at..at.saturating_add(1024)).filter(|h| h.len() == 1024) {
            let sum = checksum(h, 36);
            h[36..40].copy_from_slice(&sum.to_be_bytes());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = cairn_fuzz::split(data) else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 != 0 {
        fix_checksums(&mut bytes);
    }
    cairn_fuzz::exercise_layer(cairn_disk::Format::Vhd, &bytes);
});
