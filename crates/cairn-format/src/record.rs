//! Block records: one stored block inside a data file.
//!
//! `RecordHeader(64) ‖ payload(stored_len) ‖ zero padding to a 4 KiB boundary`.
//! Records start at 4 KiB-aligned offsets so that dropping one can punch a
//! whole filesystem block and so that a record can be cloned (reflink) by range.

use crate::codec::{Compressor, Decompressor};
use crate::crypto::Keys;
use crate::error::{FormatError, Result, check_header_crc, le, need};

/// Size of a record header in bytes.
pub const RECORD_HEADER_LEN: usize = 64;
/// Records start at multiples of this.
pub const RECORD_ALIGN: u64 = 4096;
/// The largest block the format accepts (the largest block size is 4 MiB).
pub const MAX_BLOCK_LEN: u32 = 16 << 20;
const MAGIC: &[u8; 4] = b"CBLK";
const VERSION: u8 = 1;
const FLAG_ENCRYPTED: u8 = 1;

/// The parsed 64-byte header in front of every stored block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Compression codec id (0 none, 1 LZ4, 2 zstd).
    pub codec: u8,
    /// Whether the payload is `nonce ‖ ciphertext ‖ tag`.
    pub encrypted: bool,
    /// Length of the block once decoded.
    pub raw_len: u32,
    /// Length of the payload that follows the header.
    pub stored_len: u32,
    /// Keyed BLAKE3 hash of the decoded block.
    pub hash: [u8; 32],
    /// CRC-32C of the payload.
    pub payload_crc: u32,
}

impl RecordHeader {
    /// Bytes the record occupies in its file, padding included.
    pub fn record_len(&self) -> u64 {
        padded_len(self.stored_len)
    }

    fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(MAGIC);
        h[4] = VERSION;
        h[5] = self.codec;
        h[6] = if self.encrypted { FLAG_ENCRYPTED } else { 0 };
        h[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        h[16..48].copy_from_slice(&self.hash);
        h[48..52].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses and checks a header (magic, version, header checksum, lengths).
    pub fn decode(b: &[u8]) -> Result<Self> {
        const WHAT: &str = "block record header";
        need(WHAT, b, RECORD_HEADER_LEN)?;
        if &b[0..4] != MAGIC {
            return Err(FormatError::BadMagic { what: WHAT });
        }
        check_header_crc(WHAT, b)?;
        if b[4] != VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: WHAT,
                version: b[4].into(),
            });
        }
        let h = RecordHeader {
            codec: b[5],
            encrypted: b[6] & FLAG_ENCRYPTED != 0,
            raw_len: le::u32(b, 8),
            stored_len: le::u32(b, 12),
            hash: le::array(b, 16),
            payload_crc: le::u32(b, 48),
        };
        if h.raw_len > MAX_BLOCK_LEN || h.stored_len > MAX_BLOCK_LEN + 1024 {
            return Err(FormatError::InvalidField {
                what: WHAT,
                field: "length",
                reason: format!(
                    "raw {} / stored {} exceed the format's maximum",
                    h.raw_len, h.stored_len
                ),
            });
        }
        Ok(h)
    }
}

/// Bytes a record with `stored_len` payload bytes occupies, padding included.
pub fn padded_len(stored_len: u32) -> u64 {
    (RECORD_HEADER_LEN as u64 + u64::from(stored_len)).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Reusable state for encoding blocks on one thread.
pub struct RecordEncoder {
    compressor: Compressor,
    scratch: Vec<u8>,
}

impl RecordEncoder {
    /// Creates an encoder with its own compression context.
    pub fn new(compressor: Compressor) -> Self {
        RecordEncoder {
            compressor,
            scratch: Vec::new(),
        }
    }

    /// Encodes `raw` (whose keyed hash is `hash`) as a complete padded record in `out`.
    pub fn encode(&mut self, keys: &Keys, raw: &[u8], hash: [u8; 32], out: &mut Vec<u8>) -> Result<()> {
        if raw.len() > MAX_BLOCK_LEN as usize {
            return Err(FormatError::InvalidField {
                what: "block",
                field: "length",
                reason: format!("{} bytes exceed the format's maximum", raw.len()),
            });
        }
        let smaller = self.compressor.compress(raw, &mut self.scratch)?;
        let (codec, body): (u8, &[u8]) = if smaller {
            (self.compressor.codec_id(), &self.scratch)
        } else {
            (0, raw)
        };
        let encrypted = keys.is_encrypted();
        let stored_len = body.len() + if encrypted { crate::crypto::SEAL_OVERHEAD } else { 0 };
        let mut header = RecordHeader {
            codec,
            encrypted,
            raw_len: raw.len() as u32,
            stored_len: stored_len as u32,
            hash,
            payload_crc: 0,
        };
        out.clear();
        out.reserve(padded_len(header.stored_len) as usize);
        out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        if encrypted {
            out.extend_from_slice(&[0u8; 12]); // nonce, filled in by seal_framed
            out.extend_from_slice(body);
            keys.seal_framed(&aad(&header), out, RECORD_HEADER_LEN)?;
        } else {
            out.extend_from_slice(body);
        }
        header.payload_crc = crc32c::crc32c(&out[RECORD_HEADER_LEN..]);
        out[..RECORD_HEADER_LEN].copy_from_slice(&header.encode());
        out.resize(padded_len(header.stored_len) as usize, 0);
        Ok(())
    }
}

/// The authenticated data bound to an encrypted payload: the header fields
/// that do not depend on the ciphertext (codec, flags, lengths, hash).
fn aad(h: &RecordHeader) -> [u8; 44] {
    let mut a = [0u8; 44];
    a[0] = VERSION;
    a[1] = h.codec;
    a[2] = u8::from(h.encrypted);
    a[4..8].copy_from_slice(&h.raw_len.to_le_bytes());
    a[8..12].copy_from_slice(&h.stored_len.to_le_bytes());
    a[12..44].copy_from_slice(&h.hash);
    a
}

/// Reusable state for decoding blocks on one thread.
pub struct RecordDecoder {
    decompressor: Decompressor,
}

impl RecordDecoder {
    /// Creates a decoder.
    pub fn new() -> Result<Self> {
        Ok(RecordDecoder {
            decompressor: Decompressor::new()?,
        })
    }

    /// Decodes a record (`header ‖ payload`, padding optional) into `out` and
    /// checks every checksum: header CRC, payload CRC, the keyed hash of the
    /// result, and — when given — that this hash is the `expected` one.
    pub fn decode(
        &mut self,
        keys: &Keys,
        record: &mut [u8],
        expected: Option<&[u8; 32]>,
        out: &mut Vec<u8>,
    ) -> Result<RecordHeader> {
        let h = RecordHeader::decode(record)?;
        let end = RECORD_HEADER_LEN + h.stored_len as usize;
        need("block record", record, end)?;
        let payload = &mut record[RECORD_HEADER_LEN..end];
        let crc = crc32c::crc32c(payload);
        if crc != h.payload_crc {
            return Err(FormatError::Checksum {
                what: "block payload",
                stored: format!("{:08x}", h.payload_crc),
                computed: format!("{crc:08x}"),
            });
        }
        let body: &[u8] = match (h.encrypted, keys.is_encrypted()) {
            (true, _) => keys.open("block payload", &aad(&h), payload)?,
            (false, false) => payload,
            (false, true) => {
                return Err(FormatError::InvalidField {
                    what: "block record",
                    field: "flags",
                    reason: "unencrypted block in an encrypted repository".into(),
                });
            }
        };
        self.decompressor.decompress(h.codec, body, h.raw_len as usize, out)?;
        let hash = keys.hash(out);
        if hash != h.hash || expected.is_some_and(|e| *e != hash) {
            return Err(FormatError::Checksum {
                what: "block content",
                stored: hex::encode(expected.unwrap_or(&h.hash)),
                computed: hex::encode(hash),
            });
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;
    use crate::crypto::generate_master;

    fn round_trip(keys: &Keys, c: Compression, raw: &[u8]) -> Vec<u8> {
        let mut enc = RecordEncoder::new(Compressor::new(c).unwrap());
        let mut rec = Vec::new();
        let hash = keys.hash(raw);
        enc.encode(keys, raw, hash, &mut rec).unwrap();
        assert_eq!(rec.len() as u64 % RECORD_ALIGN, 0);
        let mut dec = RecordDecoder::new().unwrap();
        let mut out = Vec::new();
        dec.decode(keys, &mut rec.clone(), Some(&hash), &mut out).unwrap();
        assert_eq!(out, raw);
        rec
    }

    #[test]
    fn plain_and_encrypted_round_trip() {
        let raw: Vec<u8> = b"the quick brown fox ".iter().copied().cycle().take(65536).collect();
        let plain = Keys::plain([3; 32]);
        let enc = Keys::from_master(&generate_master().unwrap()).unwrap();
        for c in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
            round_trip(&plain, c, &raw);
            let rec = round_trip(&enc, c, &raw);
            assert!(!rec.windows(9).any(|w| w == b"quick bro"), "plaintext leaked with {c}");
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let keys = Keys::plain([9; 32]);
        let raw: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
        let rec = round_trip(&keys, Compression::Lz4, &raw);
        let used = RECORD_HEADER_LEN + RecordHeader::decode(&rec).unwrap().stored_len as usize;
        let mut dec = RecordDecoder::new().unwrap();
        for bit in (0..used * 8).step_by(7) {
            let mut bad = rec.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut out = Vec::new();
            assert!(
                dec.decode(&keys, &mut bad, None, &mut out).is_err(),
                "bit {bit} not detected"
            );
        }
    }
}
