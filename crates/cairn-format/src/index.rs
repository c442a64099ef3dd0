//! Restore point indexes: for every disk of a point, where each block is stored.
//!
//! An index lists every non-zero block of the point, so restoring a point reads
//! its index and then exactly its blocks — never a replay of the chain. Blocks
//! missing from the list read as zeros (unallocated or all-zero in the source).

use serde::{Deserialize, Serialize};

use crate::crypto::Keys;
use crate::envelope::{self, Kind};
use crate::error::{FormatError, Result};
use crate::record::{MAX_BLOCK_LEN, RECORD_ALIGN};

/// The block sizes cairn accepts (the "storage optimisation" choices).
pub const BLOCK_SIZES: [u32; 4] = [256 << 10, 512 << 10, 1 << 20, 4 << 20];

/// Where one block of a disk is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    /// Block number on the virtual disk (byte offset / block size).
    pub block: u64,
    /// Data file number within the chain.
    pub file: u32,
    /// Byte offset of the record in that file (4 KiB aligned).
    pub offset: u64,
    /// Payload length of the record (its header says the same).
    pub stored_len: u32,
    /// Keyed BLAKE3 hash of the block's contents.
    pub hash: [u8; 32],
}

/// The block map of one disk at one restore point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMap {
    /// Disk number within the VM (0-based, as given at backup time).
    pub disk: u32,
    /// Virtual size of the disk in bytes.
    pub virtual_size: u64,
    /// Block size in bytes (one of [`BLOCK_SIZES`]).
    pub block_size: u32,
    /// Stored blocks, sorted by block number, no duplicates.
    pub blocks: Vec<BlockRef>,
}

impl DiskMap {
    /// Number of blocks the virtual disk spans.
    pub fn block_count(&self) -> u64 {
        self.virtual_size.div_ceil(u64::from(self.block_size))
    }

    /// Length in bytes of block `block` (the last one may be short).
    pub fn block_len(&self, block: u64) -> u32 {
        let start = block * u64::from(self.block_size);
        (self.virtual_size - start).min(u64::from(self.block_size)) as u32
    }

    /// Finds the stored block `block`, if any (binary search).
    pub fn get(&self, block: u64) -> Option<&BlockRef> {
        self.blocks
            .binary_search_by_key(&block, |r| r.block)
            .ok()
            .map(|i| &self.blocks[i])
    }

    /// Checks the invariants a reader relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| {
            Err(FormatError::InvalidField {
                what: "restore point index",
                field,
                reason,
            })
        };
        if !BLOCK_SIZES.contains(&self.block_size) {
            return bad(
                "block_size",
                format!("{} is not a supported block size", self.block_size),
            );
        }
        if self.virtual_size > 1 << 60 {
            return bad("virtual_size", format!("{} is absurd", self.virtual_size));
        }
        let count = self.block_count();
        let mut prev: Option<u64> = None;
        for r in &self.blocks {
            if prev.is_some_and(|p| r.block <= p) {
                return bad("blocks", format!("block {} out of order", r.block));
            }
            if r.block >= count {
                return bad("blocks", format!("block {} beyond the disk's {count} blocks", r.block));
            }
            if r.offset % RECORD_ALIGN != 0 || r.offset < crate::datafile::DATA_HEADER_LEN {
                return bad(
                    "blocks",
                    format!("block {} has misaligned offset {}", r.block, r.offset),
                );
            }
            if r.stored_len > MAX_BLOCK_LEN + 1024 {
                return bad(
                    "blocks",
                    format!("block {} has stored length {}", r.block, r.stored_len),
                );
            }
            prev = Some(r.block);
        }
        Ok(())
    }
}

/// Everything needed to restore one restore point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointIndex {
    /// The restore point this index belongs to.
    pub point_id: String,
    /// One map per disk.
    pub disks: Vec<DiskMap>,
}

impl PointIndex {
    /// Encodes the index into a sealed envelope.
    pub fn encode(&self, keys: &Keys) -> Result<Vec<u8>> {
        let body = postcard::to_allocvec(self).map_err(|e| FormatError::Body {
            what: "restore point index",
            reason: e.to_string(),
        })?;
        envelope::seal(Kind::Index, &body, true, Some(keys))
    }

    /// Opens, decodes and validates an index.
    pub fn decode(bytes: &[u8], keys: &Keys) -> Result<Self> {
        let body = envelope::open(Kind::Index, bytes, Some(keys))?;
        let index: PointIndex = postcard::from_bytes(&body).map_err(|e| FormatError::Body {
            what: "restore point index",
            reason: e.to_string(),
        })?;
        for d in &index.disks {
            d.validate()?;
        }
        Ok(index)
    }

    /// The map of disk `disk`, if the point has it.
    pub fn disk(&self, disk: u32) -> Option<&DiskMap> {
        self.disks.iter().find(|d| d.disk == disk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PointIndex {
        let blocks = (0..100)
            .map(|i| BlockRef {
                block: i * 3,
                file: (i % 2) as u32,
                offset: 4096 * (i + 1),
                stored_len: 1000,
                hash: [i as u8; 32],
            })
            .collect();
        PointIndex {
            point_id: "ab12cd34".into(),
            disks: vec![DiskMap {
                disk: 0,
                virtual_size: 400 << 20,
                block_size: 1 << 20,
                blocks,
            }],
        }
    }

    #[test]
    fn round_trip_and_lookup() {
        let keys = Keys::plain([1; 32]);
        let idx = sample();
        let back = PointIndex::decode(&idx.encode(&keys).unwrap(), &keys).unwrap();
        assert_eq!(back, idx);
        let d = back.disk(0).unwrap();
        assert_eq!(d.get(6).unwrap().file, 0);
        assert!(d.get(7).is_none());
        assert_eq!(d.block_count(), 400);
    }

    #[test]
    fn rejects_unsorted_and_out_of_range() {
        let keys = Keys::plain([1; 32]);
        let mut idx = sample();
        idx.disks[0].blocks.swap(3, 4);
        assert!(PointIndex::decode(&idx.encode(&keys).unwrap(), &keys).is_err());
        let mut idx = sample();
        idx.disks[0].virtual_size = 10 << 20;
        assert!(PointIndex::decode(&idx.encode(&keys).unwrap(), &keys).is_err());
    }
}
