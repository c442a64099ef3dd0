//! cairn's on-disk formats, as a pure library: no file system, no network.
//!
//! A repository holds *data files* (full and incremental backup files made of
//! block records) and *metadata files* (repository config, one chain metadata
//! file per VM, one index per restore point), each in a checksummed
//! [`envelope`]. `docs/format.md` gives the byte layouts and the reasons for
//! them; this crate is the one place that reads and writes those bytes.
//!
//! ```
//! use cairn_format::{codec::{Compression, Compressor}, crypto::Keys, record::{RecordEncoder, RecordDecoder}};
//! let keys = Keys::plain([7; 32]);
//! let block = vec![42u8; 65536];
//! let mut enc = RecordEncoder::new(Compressor::new(Compression::Zstd(1)).unwrap());
//! let mut record = Vec::new();
//! enc.encode(&keys, &block, keys.hash(&block), &mut record).unwrap();
//! let mut out = Vec::new();
//! RecordDecoder::new().unwrap().decode(&keys, &mut record, None, &mut out).unwrap();
//! assert_eq!(out, block);
//! ```

pub mod codec;
pub mod crypto;
pub mod datafile;
pub mod envelope;
pub mod error;
pub mod index;
pub mod record;

pub use error::{FormatError, Result};

/// Version of the repository format described in `docs/format.md`.
pub const FORMAT_VERSION: u32 = 1;
