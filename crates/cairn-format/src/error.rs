//! Errors raised while encoding or decoding cairn's on-disk formats.

/// What went wrong while reading or writing a cairn structure.
///
/// Every variant names the structure (`what`) so callers can add the file
/// path and report a precise cause to the user.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes end before the structure does.
    #[error("{what}: truncated (need {needed} bytes, have {have})")]
    Truncated { what: &'static str, needed: u64, have: u64 },
    /// A magic number did not match: this is not the expected structure.
    #[error("{what}: bad magic (not a cairn {what})")]
    BadMagic { what: &'static str },
    /// The structure was written by a newer, unknown format version.
    #[error("{what}: unsupported format version {version}")]
    UnsupportedVersion { what: &'static str, version: u32 },
    /// A checksum over the structure did not match its contents.
    #[error("{what}: checksum mismatch (stored {stored}, computed {computed})")]
    Checksum {
        what: &'static str,
        stored: String,
        computed: String,
    },
    /// A field holds a value that is out of range or inconsistent.
    #[error("{what}: invalid field {field}: {reason}")]
    InvalidField {
        what: &'static str,
        field: &'static str,
        reason: String,
    },
    /// Authenticated decryption failed: wrong key or tampered data.
    #[error("{what}: decryption failed (wrong password or damaged data)")]
    Decrypt { what: &'static str },
    /// An encrypted structure was found but no key was supplied.
    #[error("{what}: data is encrypted but no key was given")]
    KeyRequired { what: &'static str },
    /// The repository password is wrong.
    #[error("wrong password")]
    WrongPassword,
    /// Compression or decompression failed.
    #[error("{what}: {codec} error: {reason}")]
    Codec {
        what: &'static str,
        codec: &'static str,
        reason: String,
    },
    /// Serialising or deserialising a metadata body failed.
    #[error("{what}: cannot decode body: {reason}")]
    Body { what: &'static str, reason: String },
    /// A cryptographic primitive failed unexpectedly (random source, key setup).
    #[error("crypto: {0}")]
    Crypto(&'static str),
}

/// Result alias for this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

/// Returns a [`FormatError::Truncated`] unless `bytes` holds at least `needed` bytes.
pub(crate) fn need(what: &'static str, bytes: &[u8], needed: usize) -> Result<()> {
    if bytes.len() < needed {
        return Err(FormatError::Truncated {
            what,
            needed: needed as u64,
            have: bytes.len() as u64,
        });
    }
    Ok(())
}

/// Checks the CRC-32C that the 64-byte headers of data files and block
/// records keep in bytes 60..64 over bytes 0..60 (length checked by the caller).
pub(crate) fn check_header_crc(what: &'static str, b: &[u8]) -> Result<()> {
    let stored = le::u32(b, 60);
    let computed = crc32c::crc32c(&b[..60]);
    if stored != computed {
        return Err(FormatError::Checksum {
            what,
            stored: format!("{stored:08x}"),
            computed: format!("{computed:08x}"),
        });
    }
    Ok(())
}

/// Little-endian field readers that assume the length was checked with [`need`].
pub(crate) mod le {
    pub fn u16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    pub fn u32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    pub fn u64(b: &[u8], at: usize) -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    }
    pub fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
        let mut x = [0u8; N];
        x.copy_from_slice(&b[at..at + N]);
        x
    }
}
