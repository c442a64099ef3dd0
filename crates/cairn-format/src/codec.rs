//! Block compression: none, LZ4 or zstd with a level.

use std::fmt;
use std::str::FromStr;

use crate::error::{FormatError, Result};

/// How a block's bytes are compressed before they are (optionally) encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Compression {
    /// Stored as is.
    None,
    /// LZ4 block format: fastest, weakest.
    Lz4,
    /// zstd at the given level (1–19).
    Zstd(i32),
}

impl Compression {
    /// The default, chosen by benchmark (see `docs/benchmarks.md`).
    pub const DEFAULT: Compression = Compression::Zstd(3);

    /// The codec id stored in a block record header.
    pub fn codec_id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd(_) => 2,
        }
    }
}

fn codec_err(codec: &'static str, e: impl fmt::Display) -> FormatError {
    FormatError::Codec {
        what: "block",
        codec,
        reason: e.to_string(),
    }
}

/// A reusable compressor for one thread (zstd contexts are costly to create).
pub struct Compressor {
    kind: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Compressor {
    /// Creates a compressor for `kind`.
    pub fn new(kind: Compression) -> Result<Self> {
        let zstd = match kind {
            Compression::Zstd(level) => Some(zstd::bulk::Compressor::new(level).map_err(|e| codec_err("zstd", e))?),
            _ => None,
        };
        Ok(Compressor { kind, zstd })
    }

    /// Compresses `raw` into `out` (cleared first). Returns `false` when the
    /// result would not be smaller, in which case the caller stores `raw` as is.
    pub fn compress(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        match (self.kind, self.zstd.as_mut()) {
            (Compression::Lz4, _) => {
                out.resize(lz4_flex::block::get_maximum_output_size(raw.len()), 0);
                let n = lz4_flex::block::compress_into(raw, out).map_err(|e| codec_err("lz4", e))?;
                out.truncate(n);
            }
            (Compression::Zstd(_), Some(z)) => {
                out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
                z.compress_to_buffer(raw, out).map_err(|e| codec_err("zstd", e))?;
            }
            _ => return Ok(false),
        }
        Ok(out.len() < raw.len())
    }

    /// The codec id to store for data this compressor produced.
    pub fn codec_id(&self) -> u8 {
        self.kind.codec_id()
    }
}

/// A reusable decompressor for one thread.
pub struct Decompressor {
    zstd: zstd::bulk::Decompressor<'static>,
}

impl Decompressor {
    /// Creates a decompressor for every codec.
    pub fn new() -> Result<Self> {
        let zstd = zstd::bulk::Decompressor::new().map_err(|e| codec_err("zstd", e))?;
        Ok(Decompressor { zstd })
    }

    /// Decompresses `stored` written with codec `codec_id` into exactly `raw_len`
    /// bytes; never allocates more than `raw_len`.
    pub fn decompress(&mut self, codec_id: u8, stored: &[u8], raw_len: usize, out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        match codec_id {
            0 => out.extend_from_slice(stored),
            1 => {
                out.resize(raw_len, 0);
                let n = lz4_flex::block::decompress_into(stored, out).map_err(|e| codec_err("lz4", e))?;
                out.truncate(n);
            }
            2 => {
                out.reserve(raw_len);
                self.zstd
                    .decompress_to_buffer(stored, out)
                    .map_err(|e| codec_err("zstd", e))?;
            }
            other => {
                return Err(FormatError::InvalidField {
                    what: "block",
                    field: "codec",
                    reason: format!("unknown codec id {other}"),
                });
            }
        }
        if out.len() != raw_len {
            return Err(FormatError::InvalidField {
                what: "block",
                field: "raw_len",
                reason: format!("decompressed to {} bytes, header says {raw_len}", out.len()),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Lz4 => f.write_str("lz4"),
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd(3)),
            _ => s
                .strip_prefix("zstd:")
                .and_then(|l| l.parse::<i32>().ok())
                .filter(|l| (1..=19).contains(l))
                .map(Compression::Zstd)
                .ok_or_else(|| format!("unknown compression {s:?} (none, lz4, zstd, zstd:1 … zstd:19)")),
        }
    }
}

impl From<Compression> for String {
    fn from(c: Compression) -> String {
        c.to_string()
    }
}

impl Default for Compression {
    fn default() -> Compression {
        Compression::DEFAULT
    }
}

impl TryFrom<String> for Compression {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_codec() {
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut d = Decompressor::new().unwrap();
        for c in [
            Compression::None,
            Compression::Lz4,
            Compression::Zstd(1),
            Compression::Zstd(9),
        ] {
            let mut out = Vec::new();
            let smaller = Compressor::new(c).unwrap().compress(&raw, &mut out).unwrap();
            let (id, stored) = if smaller {
                (c.codec_id(), &out[..])
            } else {
                (0, &raw[..])
            };
            let mut back = Vec::new();
            d.decompress(id, stored, raw.len(), &mut back).unwrap();
            assert_eq!(back, raw, "{c}");
        }
    }

    #[test]
    fn parse_and_display() {
        assert_eq!("zstd:7".parse::<Compression>().unwrap(), Compression::Zstd(7));
        assert_eq!("lz4".parse::<Compression>().unwrap().to_string(), "lz4");
        assert!("zstd:40".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().is_err());
    }

    #[test]
    fn lying_raw_len_is_an_error() {
        let raw = vec![7u8; 4096];
        let mut out = Vec::new();
        let mut d = Decompressor::new().unwrap();
        let mut back = Vec::new();
        Compressor::new(Compression::Zstd(1))
            .unwrap()
            .compress(&raw, &mut out)
            .unwrap();
        assert!(d.decompress(2, &out, 100, &mut back).is_err());
        Compressor::new(Compression::Lz4)
            .unwrap()
            .compress(&raw, &mut out)
            .unwrap();
        assert!(d.decompress(1, &out, 100, &mut back).is_err());
    }
}
