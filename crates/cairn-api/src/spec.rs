//! A job's specification: what it backs up, where, how and when, with its settings parsed once.
//!
//! Each setting keeps one text form, the same in the API and in the database (`zstd:3`,
//! `forever-forward`, `online`…), so a stored job reads back as it was written.

use serde::{Deserialize, Serialize};

use crate::checks::Invalid;

/// The block sizes a job may use, in bytes: those of the repository format.
pub use cairn_format::index::BLOCK_SIZES;

/// A job's block size: one of [`BLOCK_SIZES`]; an integer on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct BlockSize(u32);

impl BlockSize {
    /// 1 MiB, the block size of a job that does not say.
    pub const DEFAULT: BlockSize = BlockSize(1 << 20);

    /// The size in bytes.
    pub fn bytes(self) -> u32 {
        self.0
    }
}

impl Default for BlockSize {
    fn default() -> BlockSize {
        BlockSize::DEFAULT
    }
}

impl TryFrom<i64> for BlockSize {
    type Error = Invalid;
    fn try_from(bytes: i64) -> Result<BlockSize, Invalid> {
        match u32::try_from(bytes) {
            Ok(b) if BLOCK_SIZES.contains(&b) => Ok(BlockSize(b)),
            _ => Err(Invalid(format!(
                "block_size {bytes}: use 262144, 524288, 1048576 or 4194304"
            ))),
        }
    }
}

impl From<BlockSize> for i64 {
    fn from(b: BlockSize) -> i64 {
        i64::from(b.0)
    }
}

/// How a job compresses blocks (the repository format's codecs); on the wire and in the database
/// `none`, `lz4` or `zstd:LEVEL`.
pub use cairn_format::codec::Compression;

/// A request's compression: absent or empty is [`Compression::DEFAULT`]; only the canonical
/// spellings (`zstd:3`, not `zstd:03`) and `zstd` are accepted.
pub fn compression_from_request(text: Option<&str>) -> Result<Compression, Invalid> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(Compression::DEFAULT);
    };
    let parsed = text
        .parse::<Compression>()
        .map_err(|e| Invalid(format!("compression {text:?}: {e}")))?;
    if text != "zstd" && parsed.to_string() != text {
        return Err(Invalid(format!("compression {text:?}: write it as {parsed}")));
    }
    Ok(parsed)
}

names! {
    /// How a VM's chain of restore points grows and shrinks.
    Method ("backup method") {
        /// One full, then increments forever (the default).
        ForeverForward => "forever-forward",
        /// Full and increments, with a new full now and then.
        Forward => "forward",
    }
}

// `names!` derives no `Default`.
#[allow(clippy::derivable_impls)]
impl Default for Method {
    fn default() -> Method {
        Method::ForeverForward
    }
}

impl Method {
    /// A request's method: absent is the default.
    pub fn from_request(text: Option<&str>) -> Result<Method, Invalid> {
        text.map_or(Ok(Method::default()), |t| {
            t.parse().map_err(|_| {
                Invalid(format!(
                    "method: unknown backup method {t:?} (forever-forward, forward)"
                ))
            })
        })
    }
}

names! {
    /// How a running VM's point-in-time view is made.
    Consistency ("consistency") {
        /// Freeze the guest through its agent, else crash-consistent with a warning (the
        /// default).
        Online => "online",
        /// Freeze the guest, else pause the VM.
        Offline => "offline",
        /// Neither freeze nor pause.
        Crash => "crash",
    }
}

// `names!` derives no `Default`.
#[allow(clippy::derivable_impls)]
impl Default for Consistency {
    fn default() -> Consistency {
        Consistency::Online
    }
}

impl Consistency {
    /// A request's consistency: absent or empty is the default.
    pub fn from_request(text: Option<&str>) -> Result<Consistency, Invalid> {
        text.filter(|t| !t.is_empty()).map_or(Ok(Consistency::default()), |t| {
            t.parse()
                .map_err(|_| Invalid(format!("consistency {t:?}: use online, offline or crash")))
        })
    }
}

/// How many restore points a job keeps (1–10000); an integer on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Retention(u32);

impl Retention {
    /// 14 points, the retention of a job that does not say.
    pub const DEFAULT: Retention = Retention(14);

    /// The number of points.
    pub fn points(self) -> u32 {
        self.0
    }
}

impl Default for Retention {
    fn default() -> Retention {
        Retention::DEFAULT
    }
}

impl TryFrom<i64> for Retention {
    type Error = Invalid;
    fn try_from(points: i64) -> Result<Retention, Invalid> {
        match u32::try_from(points) {
            Ok(n) if (1..=10_000).contains(&n) => Ok(Retention(n)),
            _ => Err(Invalid(format!(
                "retention_points {points}: keep between 1 and 10000 restore points"
            ))),
        }
    }
}

impl From<Retention> for i64 {
    fn from(r: Retention) -> i64 {
        i64::from(r.0)
    }
}

/// What a job backs up, where, how and when: everything a user edits.
///
/// Encryption, schedule and backup window are kept as the text the repository and scheduler
/// crates parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Unique name.
    pub name: String,
    /// VMs to back up, in processing order.
    pub vm_ids: Vec<i64>,
    /// Disks of those VMs to leave out.
    pub excluded_disk_ids: Vec<i64>,
    /// Target repository.
    pub repository_id: i64,
    /// Block size.
    pub block_size: BlockSize,
    /// Compression.
    pub compression: Compression,
    /// Encryption cipher name; `None` lets the repository decide. Secrets are not stored here.
    pub encryption: Option<String>,
    /// Backup method.
    pub method: Method,
    /// Restore points to keep.
    pub retention_points: Retention,
    /// Schedule text; `None` runs only on demand.
    pub schedule: Option<String>,
    /// Backup window text; `None` allows any time.
    pub backup_window: Option<String>,
    /// Retries of a failed VM (≥ 0).
    pub retries: i64,
    /// Seconds between retries (≥ 0).
    pub retry_wait_seconds: i64,
    /// Whether the scheduler starts it.
    pub enabled: bool,
    /// How a running VM's point-in-time view is made.
    #[serde(default)]
    pub consistency: Consistency,
    /// Fail a VM rather than fall back when the guest cannot be frozen.
    #[serde(default)]
    pub require_app_consistency: bool,
    /// Command run in the guest (through its agent) before the freeze.
    #[serde(default)]
    pub pre_freeze_script: Option<String>,
    /// Command run in the guest after the thaw.
    #[serde(default)]
    pub post_thaw_script: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_keep_their_text_forms() {
        for text in ["none", "lz4", "zstd:1", "zstd:19"] {
            assert_eq!(text.parse::<Compression>().map(|c| c.to_string()), Ok(text.to_owned()));
        }
        assert_eq!(compression_from_request(Some("zstd")), Ok(Compression::Zstd(3)));
        assert_eq!(compression_from_request(Some("")), Ok(Compression::DEFAULT));
        assert!(compression_from_request(Some("zstd:03")).is_err());
        assert!(compression_from_request(Some("zstd:20")).is_err());
        assert_eq!(
            serde_json::to_string(&Method::ForeverForward).ok().as_deref(),
            Some("\"forever-forward\"")
        );
        assert_eq!(
            serde_json::from_str::<Consistency>("\"crash\"").ok(),
            Some(Consistency::Crash)
        );
        assert!(serde_json::from_str::<Consistency>("\"sometimes\"").is_err());
        assert_eq!(
            serde_json::to_string(&BlockSize::DEFAULT).ok().as_deref(),
            Some("1048576")
        );
        assert!(BlockSize::try_from(4096).is_err());
        assert!(Retention::try_from(0).is_err());
        assert_eq!(Retention::try_from(10_000).map(Retention::points), Ok(10_000));
    }
}
