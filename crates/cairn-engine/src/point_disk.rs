//! A disk of a restore point as a random-access [`DiskSource`]: what an NBD
//! export serves for instant recovery, and what a file-level browser reads.
//!
//! Reads decode the point's blocks on demand. A booting VM reads a few KiB
//! at a time, so recently decoded blocks are kept in a small cache (a block
//! is decoded, checked against its hash and decrypted once, then served
//! from memory for the following small reads).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_disk::extent::{self, Extent};
use cairn_disk::{DiskError, DiskSource, SectorSizes};
use cairn_format::index::DiskMap;
use cairn_format::record::RecordDecoder;
use cairn_repo::{ChainReader, RepoError, Repository};

use crate::Result;

/// Memory for decoded blocks per disk: a booting VM reads small pieces all over
/// its disk, and each miss decodes a whole block.
const CACHE_BYTES: usize = 64 << 20;

/// One disk of one restore point, readable at any offset.
pub struct PointDisk {
    chain: ChainReader,
    map: DiskMap,
    name: String,
    sectors: SectorSizes,
    cache: Mutex<VecDeque<(u64, std::sync::Arc<Vec<u8>>)>>,
    cache_blocks: usize,
    decoded: AtomicU64,
}

impl PointDisk {
    /// Opens disk `disk` of the point `point` (id, id prefix or `latest`)
    /// of `vm`'s chain. The chain stays share-locked while this is open, so
    /// retention cannot remove what it reads.
    pub fn open(repo: &Repository, vm: &str, point: &str, disk: u32) -> Result<Self> {
        let chain = repo.chain(vm)?;
        let p = chain.point(point)?.clone();
        let index = chain.index(&p)?;
        let map = index.disk(disk).cloned().ok_or_else(|| RepoError::NoSuchDisk {
            vm: vm.to_string(),
            point: p.id.clone(),
            disk,
        })?;
        let sectors = p
            .disks
            .iter()
            .find(|d| d.disk == disk)
            .map(|d| SectorSizes {
                logical: d.logical_sector,
                physical: d.physical_sector,
            })
            .unwrap_or_default();
        let cache_blocks = (CACHE_BYTES / map.block_size.max(1) as usize).max(4);
        Ok(PointDisk {
            chain,
            map,
            name: format!("{vm} point {} disk {disk}", p.id),
            sectors,
            cache_blocks,
            cache: Mutex::new(VecDeque::new()),
            decoded: AtomicU64::new(0),
        })
    }

    /// Blocks decoded from the repository so far (cache misses).
    pub fn decoded_blocks(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    fn error(&self, reason: impl std::fmt::Display) -> DiskError {
        DiskError::Source {
            source_name: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    /// The decoded bytes of block `block` (present in the index).
    fn block(&self, block: u64) -> cairn_disk::Result<std::sync::Arc<Vec<u8>>> {
        if let Ok(cache) = self.cache.lock()
            && let Some((_, data)) = cache.iter().find(|(b, _)| *b == block)
        {
            return Ok(data.clone());
        }
        let r = self
            .map
            .get(block)
            .ok_or_else(|| self.error(format!("block {block} is not in the index")))?;
        let mut decoder = RecordDecoder::new().map_err(|e| self.error(e))?;
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        self.chain
            .read_block(&mut decoder, r, &mut scratch, &mut out)
            .map_err(|e| self.error(e))?;
        let expected = self.map.block_len(block) as usize;
        if out.len() != expected {
            return Err(self.error(format!(
                "block {block} decodes to {} bytes, expected {expected}",
                out.len()
            )));
        }
        self.decoded.fetch_add(1, Ordering::Relaxed);
        let data = std::sync::Arc::new(out);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= self.cache_blocks {
                cache.pop_front();
            }
            cache.push_back((block, data.clone()));
        }
        Ok(data)
    }
}

impl DiskSource for PointDisk {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn virtual_size(&self) -> u64 {
        self.map.virtual_size
    }

    fn allocation(&self) -> cairn_disk::Result<Vec<Extent>> {
        let bs = u64::from(self.map.block_size);
        let size = self.map.virtual_size;
        Ok(extent::normalize(
            self.map
                .blocks
                .iter()
                .map(|r| Extent {
                    offset: r.block * bs,
                    length: bs.min(size.saturating_sub(r.block * bs)),
                })
                .filter(|e| e.length > 0)
                .collect(),
        ))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> cairn_disk::Result<()> {
        let bs = u64::from(self.map.block_size);
        let size = self.map.virtual_size;
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let block = at / bs;
            let within = (at % bs) as usize;
            let n = (buf.len() - pos).min(bs as usize - within);
            let out = &mut buf[pos..pos + n];
            if at >= size || self.map.get(block).is_none() {
                out.fill(0);
            } else {
                let data = self.block(block)?;
                let avail = data.len().saturating_sub(within).min(n);
                out[..avail].copy_from_slice(&data[within..within + avail]);
                out[avail..].fill(0);
            }
            pos += n;
        }
        Ok(())
    }

    fn sector_sizes(&self) -> SectorSizes {
        self.sectors
    }
}
