//! Data channel frames: `cairn_transfer::wire::decode_frame`, fed whole and in pieces.
//!
//! Mode byte: bits 0–1 choose the block length limit (64 B, 4 KiB, 1 MiB, the 16 MiB hard
//! cap); bit 2 feeds the data in pieces whose sizes come from the data itself, as reads from a
//! socket would deliver it. Properties: decoding never panics or allocates past the caps; a
//! frame that decodes re-encodes to exactly the bytes it consumed (ERROR frames with invalid
//! UTF-8 excepted: their message is decoded lossily); `Incomplete` never asks for more than a
//! frame can be; and feeding in pieces gives the same frames as feeding everything at once.
#![no_main]

use bytes::BytesMut;
use cairn_transfer::wire::{BLOCK_HEADER_LEN, Decoded, Frame, Limits, MAX_BLOCK_LEN, MAX_ERROR_MESSAGE, decode_frame};
use libfuzzer_sys::fuzz_target;

const LIMITS: [u32; 4] = [64, 4096, 1 << 20, MAX_BLOCK_LEN];

/// Frames decoded from `chunks` fed one after the other, and whether decoding stopped on an error.
fn decode_all<'a>(chunks: impl Iterator<Item = &'a [u8]>, limits: &Limits) -> (Vec<Frame>, bool) {
    let largest = BLOCK_HEADER_LEN + limits.max_block_len as usize;
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match decode_frame(&mut buf, limits) {
                Ok(Decoded::Frame(frame)) => {
                    let consumed = &before[..before.len() - buf.len()];
                    let mut again = BytesMut::new();
                    frame.encode(&mut again);
                    let lossy = matches!(&frame, Frame::Error(..)) && std::str::from_utf8(&consumed[5..]).is_err();
                    if !lossy {
                        assert_eq!(&again[..], consumed, "{frame:?} does not re-encode to its bytes");
                    }
                    frames.push(frame);
                }
                Ok(Decoded::Incomplete { needed }) => {
                    assert_eq!(buf.len(), before.len(), "an incomplete decode consumed bytes");
                    assert!(needed > buf.len(), "asked for {needed} with {} buffered", buf.len());
                    assert!(needed <= largest.max(5 + MAX_ERROR_MESSAGE), "asked for {needed} bytes");
                    break;
                }
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = cairn_fuzz::split(data) else {
        return;
    };
    let limits = Limits {
        max_block_len: LIMITS[usize::from(mode & 3)],
    };
    let (whole, whole_err) = decode_all(std::iter::once(rest), &limits);
    if mode & 4 != 0 {
        // Piece sizes 1..=64 from a simple generator seeded by the input length and mode.
        let mut state = (rest.len() as u32).wrapping_mul(2_654_435_761) ^ u32::from(mode);
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < rest.len() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let n = (1 + state % 64) as usize;
            let end = (at + n).min(rest.len());
            pieces.push(&rest[at..end]);
            at = end;
        }
        let (pieced, pieced_err) = decode_all(pieces.into_iter(), &limits);
        assert_eq!(pieced, whole, "pieces decode differently");
        assert_eq!(pieced_err, whole_err);
    }
});
