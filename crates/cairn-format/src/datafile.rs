//! Data files: the full and incremental backup files that hold block records.
//!
//! `FileHeader(4096) ‖ Record ‖ Record ‖ …`, every record 4 KiB aligned. A data
//! file is append-only; the chain metadata records its committed length, and
//! bytes past it are leftovers of an interrupted operation.

use crate::error::{FormatError, Result, check_header_crc, le, need};

/// Size of the data file header; records start here.
pub const DATA_HEADER_LEN: u64 = 4096;
const MAGIC: &[u8; 8] = b"CAIRNDAT";
const VERSION: u16 = 1;

/// Whether a data file started as a full or an incremental backup file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Holds every block of its first restore point.
    Full,
    /// Holds the blocks that changed since the previous restore point.
    Incremental,
}

/// The identity written at the start of every data file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFileHeader {
    /// Full or incremental.
    pub kind: FileKind,
    /// The repository this file belongs to.
    pub repository_id: [u8; 16],
    /// The chain this file belongs to.
    pub chain_id: [u8; 16],
    /// The file's number within the chain (never reused).
    pub file_no: u32,
}

impl DataFileHeader {
    /// Encodes the header into a full 4 KiB block.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; DATA_HEADER_LEN as usize];
        b[0..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[10] = match self.kind {
            FileKind::Full => 1,
            FileKind::Incremental => 2,
        };
        b[12..16].copy_from_slice(&self.file_no.to_le_bytes());
        b[16..32].copy_from_slice(&self.repository_id);
        b[32..48].copy_from_slice(&self.chain_id);
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks a header.
    pub fn decode(b: &[u8]) -> Result<Self> {
        const WHAT: &str = "data file header";
        need(WHAT, b, 64)?;
        if &b[0..8] != MAGIC {
            return Err(FormatError::BadMagic { what: WHAT });
        }
        check_header_crc(WHAT, b)?;
        let version = le::u16(b, 8);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: WHAT,
                version: version.into(),
            });
        }
        let kind = match b[10] {
            1 => FileKind::Full,
            2 => FileKind::Incremental,
            k => {
                return Err(FormatError::InvalidField {
                    what: WHAT,
                    field: "kind",
                    reason: format!("unknown kind {k}"),
                });
            }
        };
        Ok(DataFileHeader {
            kind,
            file_no: le::u32(b, 12),
            repository_id: le::array(b, 16),
            chain_id: le::array(b, 32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let h = DataFileHeader {
            kind: FileKind::Incremental,
            repository_id: [1; 16],
            chain_id: [2; 16],
            file_no: 7,
        };
        let b = h.encode();
        assert_eq!(DataFileHeader::decode(&b).unwrap(), h);
        let mut bad = b.clone();
        bad[20] ^= 4;
        assert!(matches!(
            DataFileHeader::decode(&bad),
            Err(FormatError::Checksum { .. })
        ));
        assert!(DataFileHeader::decode(&b[..10]).is_err());
    }
}
