//! vhdx images: open one layer from arbitrary bytes, walk its allocation map
//! and read from every run (see `cairn_fuzz::exercise_layer`).
//!
//! The first byte is a mode:
//! - bit 0: the rest is a *sparse* image (VHDX files are at least a few MiB,
//!   mostly zeros, so seeds store only their non-zero runs): `u16` LE file
//!   length in 64 KiB units (at most 16 MiB), then records of `u32` LE file
//!   offset, `u16` LE length and that many bytes, laid over zeros;
//!   otherwise the rest is the file itself.
//! - bit 1: recompute the CRC-32C of both headers, both region tables and
//!   every log entry in the log the first header points to, so mutations get
//!   past the checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;

const MAX_LEN: usize = 16 << 20;

fn expand(data: &[u8]) -> Vec<u8> {
    if data.len() < 2 {
        return Vec::new();
    }
    let len = (usize::from(u16::from_le_bytes([data[0], data[1]])) << 16).min(MAX_LEN);
    let mut out = vec![0u8; len];
    let mut rest = &data[2..];
    while rest.len() >= 6 {
        let off = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let n = usize::from(u16::from_le_bytes([rest[4], rest[5]])).min(rest.len() - 6);
        let bytes = &rest[6..6 + n];
        if off < len {
            let k = n.min(len - off);
            out[off..off + k].copy_from_slice(&bytes[..k]);
        }
        rest = &rest[6 + n..];
    }
    out
}

fn fix(b: &mut [u8], start: usize, len: usize) {
    if start.checked_add(len).is_some_and(|end| end <= b.len()) && len >= 8 {
        b[start + 4..start + 8].fill(0);
        let c = crc32c::crc32c(&b[start..start + len]);
        b[start + 4..start + 8].copy_from_slice(&c.to_le_bytes());
    }
}

fn fix_checksums(b: &mut [u8]) {
    for h in [64 << 10, 128 << 10] {
        fix(b, h, 4096);
    }
    for r in [192 << 10, 256 << 10] {
        fix(b, r, 64 << 10);
    }
    let h = 64 << 10;
    if b.len() < h + 80 {
        return;
    }
    let log_len = u32::from_le_bytes(b[h + 68..h + 72].try_into().unwrap()) as usize;
    let log_off = u64::from_le_bytes(b[h + 72..h + 80].try_into().unwrap());
    let Ok(log_off) = usize::try_from(log_off) else { return };
    let end = log_off.saturating_add(log_len).min(b.len());
    let mut at = log_off;
    // `end` is at most the buffer length, so `at + 4096 <= end` cannot overflow
    // once `at < end`; `log_off` itself may be anything.
    while at < end && end - at >= 4096 {
        if &b[at..at + 4] == b"loge" {
            let n = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
            if n >= 4096 && n <= end - at {
                fix(b, at, n);
            }
        }
        at += 4096;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = cairn_fuzz::split(data) else {
        return;
    };
    let mut bytes = if mode & 1 != 0 { expand(rest) } else { rest.to_vec() };
    if mode & 2 != 0 {
        fix_checksums(&mut bytes);
    }
    cairn_fuzz::exercise_layer_owned(cairn_disk::Format::Vhdx, bytes);
});
