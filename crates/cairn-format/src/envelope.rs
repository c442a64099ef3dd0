//! The envelope around every metadata file (config, chain metadata, point index).
//!
//! `magic(8) ‖ version u16 ‖ flags u16 ‖ reserved u32 ‖ body_len u64 ‖ body ‖ BLAKE3(32)`
//!
//! The trailing BLAKE3 covers everything before it, so any flipped bit is found
//! without a key. Flags: bit 0 = body is zstd-compressed, bit 1 = body is
//! `nonce ‖ ciphertext ‖ tag` under the repository data key, with the first 24
//! bytes of the envelope as associated data (a body cannot be moved to another
//! kind of file).

use crate::crypto::Keys;
use crate::error::{FormatError, Result, le, need};

const HEADER_LEN: usize = 24;
const TRAILER_LEN: usize = 32;
const VERSION: u16 = 1;
const FLAG_ZSTD: u16 = 1;
const FLAG_ENCRYPTED: u16 = 2;
/// Largest body accepted when reading (guards against absurd allocations).
pub const MAX_BODY_LEN: u64 = 1 << 31;

/// The kinds of metadata file, each with its own magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Repository configuration (`config`). Never encrypted.
    Config,
    /// Chain metadata (`chain.meta`).
    Chain,
    /// A restore point's block index (`*.idx`).
    Index,
}

impl Kind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            Kind::Config => b"CAIRNCFG",
            Kind::Chain => b"CAIRNCHN",
            Kind::Index => b"CAIRNIDX",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Config => "repository config",
            Kind::Chain => "chain metadata",
            Kind::Index => "restore point index",
        }
    }
}

/// Wraps `body` in an envelope: compressed when `compress`, encrypted when
/// `keys` is given and encrypting.
pub fn seal(kind: Kind, body: &[u8], compress: bool, keys: Option<&Keys>) -> Result<Vec<u8>> {
    let mut flags = 0u16;
    let mut payload = if compress {
        flags |= FLAG_ZSTD;
        zstd::bulk::compress(body, 3).map_err(|e| FormatError::Codec {
            what: kind.what(),
            codec: "zstd",
            reason: e.to_string(),
        })?
    } else {
        body.to_vec()
    };
    let encrypt = keys.filter(|k| k.is_encrypted());
    if encrypt.is_some() {
        flags |= FLAG_ENCRYPTED;
    }
    let sealed_len = payload.len()
        + if encrypt.is_some() {
            crate::crypto::SEAL_OVERHEAD
        } else {
            0
        };
    let mut out = Vec::with_capacity(HEADER_LEN + sealed_len + TRAILER_LEN);
    out.extend_from_slice(kind.magic());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(sealed_len as u64).to_le_bytes());
    if let Some(k) = encrypt {
        k.seal(&out[..HEADER_LEN], &mut payload)?;
    }
    out.extend_from_slice(&payload);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok(out)
}

/// Checks and opens an envelope of `kind`, returning the plain body.
pub fn open(kind: Kind, bytes: &[u8], keys: Option<&Keys>) -> Result<Vec<u8>> {
    let what = kind.what();
    need(what, bytes, HEADER_LEN)?;
    if &bytes[..8] != kind.magic() {
        return Err(FormatError::BadMagic { what });
    }
    let version = le::u16(bytes, 8);
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion {
            what,
            version: version.into(),
        });
    }
    let flags = le::u16(bytes, 10);
    let body_len = le::u64(bytes, 16);
    if body_len > MAX_BODY_LEN {
        return Err(FormatError::InvalidField {
            what,
            field: "body_len",
            reason: format!("{body_len} is absurd"),
        });
    }
    let total = HEADER_LEN + body_len as usize + TRAILER_LEN;
    need(what, bytes, total)?;
    if bytes.len() != total {
        return Err(FormatError::InvalidField {
            what,
            field: "body_len",
            reason: format!("file has {} bytes, header promises {total}", bytes.len()),
        });
    }
    let stored: [u8; 32] = le::array(bytes, total - TRAILER_LEN);
    let computed = blake3::hash(&bytes[..total - TRAILER_LEN]);
    if stored != *computed.as_bytes() {
        return Err(FormatError::Checksum {
            what,
            stored: hex::encode(stored),
            computed: computed.to_hex().to_string(),
        });
    }
    let mut payload = bytes[HEADER_LEN..total - TRAILER_LEN].to_vec();
    if flags & FLAG_ENCRYPTED != 0 {
        let keys = keys
            .filter(|k| k.is_encrypted())
            .ok_or(FormatError::KeyRequired { what })?;
        let n = keys.open(what, &bytes[..HEADER_LEN], &mut payload)?.len();
        payload.drain(..crate::crypto::SEAL_OVERHEAD - 16);
        payload.truncate(n);
    } else if keys.is_some_and(|k| k.is_encrypted()) {
        return Err(FormatError::InvalidField {
            what,
            field: "flags",
            reason: "unencrypted metadata in an encrypted repository".into(),
        });
    }
    if flags & FLAG_ZSTD != 0 {
        let mut out = Vec::new();
        zstd::stream::copy_decode(
            &payload[..],
            &mut LimitedWriter {
                out: &mut out,
                left: MAX_BODY_LEN,
            },
        )
        .map_err(|e| FormatError::Codec {
            what,
            codec: "zstd",
            reason: e.to_string(),
        })?;
        return Ok(out);
    }
    Ok(payload)
}

/// A writer that refuses to grow past a limit (a decompression bomb guard).
struct LimitedWriter<'a> {
    out: &'a mut Vec<u8>,
    left: u64,
}

impl std::io::Write for LimitedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(std::io::Error::other("decompressed body exceeds the limit"));
        }
        self.left -= buf.len() as u64;
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::generate_master;

    #[test]
    fn round_trips_and_detects_damage() {
        let enc = Keys::from_master(&generate_master().unwrap()).unwrap();
        let body = br#"{"vm":"web01","disks":[1,2,3]}"#.repeat(20);
        for (compress, keys) in [(false, None), (true, None), (true, Some(&enc)), (false, Some(&enc))] {
            let sealed = seal(Kind::Chain, &body, compress, keys).unwrap();
            assert_eq!(open(Kind::Chain, &sealed, keys).unwrap(), body);
            if keys.is_some() {
                assert!(!sealed.windows(5).any(|w| w == b"web01"));
                assert!(matches!(
                    open(Kind::Chain, &sealed, None),
                    Err(FormatError::KeyRequired { .. })
                ));
            }
            assert!(matches!(
                open(Kind::Index, &sealed, keys),
                Err(FormatError::BadMagic { .. })
            ));
            for i in [0, 9, 17, 30, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[i] ^= 0x10;
                assert!(open(Kind::Chain, &bad, keys).is_err(), "flip at {i}");
            }
            assert!(open(Kind::Chain, &sealed[..sealed.len() - 3], keys).is_err());
        }
    }
}
