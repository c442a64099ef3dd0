//! Chain metadata: the one file per VM that lists restore points and files.
//!
//! `chain.meta` is the commit point of every operation on a chain: data and
//! index files are written and made durable first, then a new `chain.meta`
//! replaces the old one atomically. Whatever the metadata does not list is a
//! leftover of an interrupted operation.

use std::path::Path;

use cairn_format::crypto::Keys;
use cairn_format::datafile::{DATA_HEADER_LEN, FileKind};
use cairn_format::envelope::{self, Kind};
use cairn_format::index::BlockRef;
use cairn_format::record::RECORD_ALIGN;
use serde::{Deserialize, Serialize};

use crate::error::{RepoError, Result, fmt};

/// How a VM's chain grows and shrinks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// One full, then increments forever; retention merges the oldest
    /// increment into the full.
    #[default]
    ForeverForward,
    /// Full + increments, a new full every `full_every` points; retention
    /// removes a full with its increments once all of them are past it.
    Forward,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "forever-forward" => Ok(Method::ForeverForward),
            "forward" => Ok(Method::Forward),
            _ => Err(format!("unknown backup method {s:?} (forever-forward, forward)")),
        }
    }
}

/// How a periodic full of the forward method is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullKind {
    /// Built in the repository from existing blocks (reflinked when possible);
    /// the source is read like for an incremental.
    #[default]
    Synthetic,
    /// Every block is read from the source again.
    Active,
}

impl std::str::FromStr for FullKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "synthetic" => Ok(FullKind::Synthetic),
            "active" => Ok(FullKind::Active),
            _ => Err(format!("unknown full kind {s:?} (synthetic, active)")),
        }
    }
}

/// Whether a restore point is a full or an incremental.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointKind {
    /// The first point of a chain segment: depends on no earlier point.
    Full,
    /// Depends on earlier points of its segment.
    Incremental,
}

/// A data file of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File number, never reused within the chain.
    pub no: u32,
    /// File name inside the chain folder.
    pub name: String,
    /// Whether it started as a full or an incremental file.
    pub kind: FileKind,
    /// Bytes that belong to committed points; anything past is a leftover.
    pub committed_len: u64,
}

/// A data file merged into another: its records now live in `into` at
/// `offset + shift`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    /// The merged (deleted) file number.
    pub no: u32,
    /// The file that holds its records now.
    pub into: u32,
    /// Added to the old offset to get the offset in `into`.
    pub shift: u64,
}

/// Statistics of the backup that made a point.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PointStats {
    /// Bytes read from the source.
    pub read_bytes: u64,
    /// Blocks read from the source.
    pub read_blocks: u64,
    /// Blocks that were all zeros (not stored).
    pub zero_blocks: u64,
    /// Blocks unchanged since the previous point (not stored).
    pub unchanged_blocks: u64,
    /// Blocks found already stored elsewhere in the chain (not stored again).
    pub dedup_blocks: u64,
    /// Blocks stored by this backup.
    pub new_blocks: u64,
    /// Uncompressed bytes of the stored blocks.
    pub new_bytes: u64,
    /// Bytes the stored blocks take in the data file (headers and padding included).
    pub stored_bytes: u64,
    /// Wall time in seconds.
    pub duration_secs: f64,
    /// Busy percentage per stage (source, proxy, network, target).
    pub busy: Vec<(String, f64)>,
    /// The stage that limited the speed.
    pub bottleneck: String,
}

/// One disk of a restore point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMeta {
    /// Disk number within the VM.
    pub disk: u32,
    /// Where the disk was read from.
    pub source: String,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Non-zero blocks the point holds for this disk.
    pub blocks: u64,
    /// Logical sector size of the source (a restore to VHDX keeps it).
    #[serde(default = "default_sector")]
    pub logical_sector: u32,
    /// Physical sector size of the source.
    #[serde(default = "default_sector")]
    pub physical_sector: u32,
    /// Identity of the file the disk was read from (see
    /// `cairn_disk::DiskSource::identity`): a later backup of a differencing
    /// child of that file may read only what the child changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
}

fn default_sector() -> u32 {
    512
}

/// One restore point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointMeta {
    /// Short random id (hex).
    pub id: String,
    /// When the backup was taken (RFC 3339).
    pub time: String,
    /// Full or incremental.
    pub kind: PointKind,
    /// Name of the index file.
    pub index: String,
    /// The data file this point's backup created.
    pub created_file: u32,
    /// Data file numbers this point's index refers to (before aliasing).
    pub files: Vec<u32>,
    /// Disks of the point.
    pub disks: Vec<DiskMeta>,
    /// Statistics of the backup that made it.
    pub stats: PointStats,
    /// The VM's configuration at the backup instant, when the source
    /// reported one (live VMs): what a restore needs to start the VM again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<serde_json::Value>,
}

/// The contents of `chain.meta`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainMeta {
    /// Format version of the repository.
    pub format_version: u32,
    /// Chain id (hex; also the folder name).
    pub chain_id: String,
    /// The VM this chain backs up.
    pub vm: String,
    /// Block size of every point in the chain.
    pub block_size: u32,
    /// Backup method.
    pub method: Method,
    /// Incremented by every commit.
    pub generation: u64,
    /// Next data file number to use.
    pub next_file_no: u32,
    /// Data files, by number.
    pub files: Vec<FileEntry>,
    /// Merged files still referred to by some index.
    pub aliases: Vec<Alias>,
    /// Restore points, oldest first.
    pub points: Vec<PointMeta>,
}

/// Where a block record physically is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// Physical data file number.
    pub file: u32,
    /// Offset of the record in it.
    pub offset: u64,
}

impl ChainMeta {
    /// Encodes into `chain.meta` bytes (compressed; encrypted with encrypting keys).
    pub fn encode(&self, keys: &Keys, path: &Path) -> Result<Vec<u8>> {
        let body = serde_json::to_vec(self).map_err(|e| RepoError::Invalid(e.to_string()))?;
        envelope::seal(Kind::Chain, &body, true, Some(keys)).map_err(fmt(path))
    }

    /// Decodes and checks `chain.meta` bytes.
    pub fn decode(bytes: &[u8], keys: &Keys, path: &Path) -> Result<Self> {
        let body = envelope::open(Kind::Chain, bytes, Some(keys)).map_err(fmt(path))?;
        let meta: ChainMeta = serde_json::from_slice(&body).map_err(|e| RepoError::Damaged {
            path: path.to_path_buf(),
            reason: format!("chain metadata body: {e}"),
        })?;
        meta.validate().map_err(|reason| RepoError::Damaged {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(meta)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if !cairn_format::index::BLOCK_SIZES.contains(&self.block_size) {
            return Err(format!("unsupported block size {}", self.block_size));
        }
        for a in &self.aliases {
            if self.resolve_no(a.no).is_none() {
                return Err(format!("alias of file {} leads nowhere", a.no));
            }
        }
        if self.next_file_no == u32::MAX {
            return Err("next_file_no is exhausted".into());
        }
        for f in &self.files {
            if f.no >= self.next_file_no || !is_plain_name(&f.name) {
                return Err(format!("bad file entry {} {:?}", f.no, f.name));
            }
            let len = f.committed_len;
            if len < DATA_HEADER_LEN || len % RECORD_ALIGN != 0 {
                return Err(format!("data file {} has an impossible committed length {len}", f.no));
            }
        }
        for p in &self.points {
            if !is_plain_name(&p.index) {
                return Err(format!("bad index name {:?}", p.index));
            }
        }
        Ok(())
    }

    /// The file entry with number `no`.
    pub fn file(&self, no: u32) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.no == no)
    }

    /// Follows aliases from file number `no` to a physical file and the shift
    /// to add to offsets. `None` if it leads nowhere (or loops).
    pub fn resolve_no(&self, no: u32) -> Option<(u32, u64)> {
        let (mut no, mut shift) = (no, 0u64);
        for _ in 0..=self.aliases.len() {
            if self.file(no).is_some() {
                return Some((no, shift));
            }
            let a = self.aliases.iter().find(|a| a.no == no)?;
            no = a.into;
            shift = shift.checked_add(a.shift)?;
        }
        None
    }

    /// Where the record of `r` physically is.
    pub fn locate(&self, r: &BlockRef) -> Option<Location> {
        let (file, shift) = self.resolve_no(r.file)?;
        Some(Location {
            file,
            offset: r.offset.checked_add(shift)?,
        })
    }

    /// Finds a point by id, unique id prefix, or `latest`.
    pub fn find_point(&self, sel: &str) -> Option<&PointMeta> {
        if sel == "latest" {
            return self.points.last();
        }
        if let Some(p) = self.points.iter().find(|p| p.id == sel) {
            return Some(p);
        }
        let mut matches = self.points.iter().filter(|p| p.id.starts_with(sel));
        match (matches.next(), matches.next()) {
            (Some(p), None) if !sel.is_empty() => Some(p),
            _ => None,
        }
    }
}

/// Whether `name` is a bare file name (no separators, not `.`/`..`).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ChainMeta {
        ChainMeta {
            format_version: 1,
            chain_id: "00".repeat(16),
            vm: "vm".into(),
            block_size: 1 << 20,
            method: Method::ForeverForward,
            generation: 1,
            next_file_no: 3,
            files: vec![FileEntry {
                no: 1,
                name: "00000001.full".into(),
                kind: FileKind::Full,
                committed_len: 8192,
            }],
            aliases: vec![Alias {
                no: 2,
                into: 1,
                shift: 4096,
            }],
            points: vec![],
        }
    }

    #[test]
    fn validate_rejects_hostile_fields() {
        assert!(meta().validate().is_ok());
        let mut m = meta();
        m.files[0].committed_len = 100;
        assert!(m.validate().is_err(), "committed length below the header");
        let mut m = meta();
        m.next_file_no = u32::MAX;
        assert!(m.validate().is_err(), "file numbers exhausted");
        let mut m = meta();
        m.files[0].name = "../../etc/passwd".into();
        assert!(m.validate().is_err(), "a path, not a file name");
        let mut m = meta();
        m.aliases = vec![
            Alias {
                no: 2,
                into: 5,
                shift: 0,
            },
            Alias {
                no: 5,
                into: 2,
                shift: 0,
            },
        ];
        assert!(m.validate().is_err(), "an alias loop");
    }

    #[test]
    fn locate_follows_aliases() {
        let m = meta();
        let r = BlockRef {
            block: 0,
            file: 2,
            offset: 4096,
            stored_len: 10,
            hash: [0; 32],
        };
        assert_eq!(m.locate(&r), Some(Location { file: 1, offset: 8192 }));
        assert_eq!(m.find_point("latest"), None);
    }
}
