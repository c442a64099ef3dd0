//! The NBD wire protocol (fixed newstyle negotiation, structured replies,
//! metadata contexts) as constants and pure encode/decode functions.
//!
//! Nothing here does I/O: the client and server read a fixed-size header
//! from their stream, decode it here (which checks the magic and caps every
//! length field), read the payload whose length the header gave, and decode
//! that here too. Every decoder of bytes from the peer returns a
//! [`ProtoError`] on bad input: none panics, and none allocates more than a
//! length it has already checked against a cap ([`MAX_OPTION_DATA`],
//! [`MAX_STRING`], [`MAX_CHUNK_META`]), so the decoders are fuzzed and
//! property-tested directly.
//!
//! Byte layouts (all integers big-endian), as the NBD protocol document
//! (`doc/proto.md` of the NetworkBlockDevice project) gives them:
//!
//! - greeting: `NBDMAGIC u64 || IHAVEOPT u64 || handshake flags u16`;
//!   client flags: `u32`.
//! - option: `IHAVEOPT u64 || option u32 || length u32 || data`.
//! - option reply: `REPLY_MAGIC u64 || option u32 || reply type u32 || length u32 || data`.
//! - `NBD_OPT_EXPORT_NAME` reply: `size u64 || transmission flags u16 || 124 zero bytes`
//!   (the zeros left out when both sides set `NO_ZEROES`).
//! - request: `REQUEST_MAGIC u32 || flags u16 || type u16 || cookie u64 || offset u64 || length u32`.
//! - simple reply: `SIMPLE_REPLY_MAGIC u32 || error u32 || cookie u64`.
//! - structured chunk: `STRUCTURED_REPLY_MAGIC u32 || flags u16 || type u16 || cookie u64 || length u32 || payload`.

// ---------------------------------------------------------------------------
// Magic numbers

/// `"NBDMAGIC"`: the first eight bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `"IHAVEOPT"`: newstyle negotiation; also starts every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The second magic of the (unsupported) oldstyle negotiation.
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Starts every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Starts every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Starts a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Starts a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// ---------------------------------------------------------------------------
// Handshake

/// Server handshake flag: fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server handshake flag: the 124 zero bytes after `NBD_OPT_EXPORT_NAME` may be left out.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: leave out the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Length of the server greeting.
pub const GREETING_LEN: usize = 18;
/// Length of an option header (`IHAVEOPT`, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Length of the reply to `NBD_OPT_EXPORT_NAME` without the zero padding.
pub const EXPORT_NAME_REPLY_LEN: usize = 10;
/// The zero padding after the `NBD_OPT_EXPORT_NAME` reply unless `NO_ZEROES` was negotiated.
pub const EXPORT_NAME_ZEROES: usize = 124;

// ---------------------------------------------------------------------------
// Options

/// Choose an export and end negotiation (no error reply possible).
pub const OPT_EXPORT_NAME: u32 = 1;
/// End negotiation without using an export.
pub const OPT_ABORT: u32 = 2;
/// List the exports.
pub const OPT_LIST: u32 = 3;
/// Upgrade to TLS (not supported by cairn).
pub const OPT_STARTTLS: u32 = 5;
/// Ask about an export without choosing it.
pub const OPT_INFO: u32 = 6;
/// Choose an export, with information replies and errors.
pub const OPT_GO: u32 = 7;
/// Use structured replies in transmission.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// List metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Select metadata contexts for `NBD_CMD_BLOCK_STATUS`.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply: accepted / end of a list.
pub const REP_ACK: u32 = 1;
/// Option reply: one export of `NBD_OPT_LIST`.
pub const REP_SERVER: u32 = 2;
/// Option reply: information about an export (`NBD_OPT_INFO`/`NBD_OPT_GO`).
pub const REP_INFO: u32 = 3;
/// Option reply: one metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Bit set in every error reply type.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// Error reply: unknown option.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// Error reply: forbidden by policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// Error reply: malformed option.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// Error reply: unsupported on this platform.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
/// Error reply: TLS required.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
/// Error reply: no such export.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// Error reply: the server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
/// Error reply: the client must honour block size constraints.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
/// Error reply: the payload is too large.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

/// Information type: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Information type: canonical export name.
pub const INFO_NAME: u16 = 1;
/// Information type: description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Information type: minimum, preferred and maximum block size.
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---------------------------------------------------------------------------
// Transmission

/// Transmission flag: always set.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` is supported.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: the FUA request flag is supported.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: rotational medium.
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
/// Transmission flag: `NBD_CMD_TRIM` is supported.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` is supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: the DF (don't fragment) read flag is supported.
pub const TFLAG_SEND_DF: u16 = 1 << 7;
/// Transmission flag: several connections see each other's flushed writes.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Transmission flag: `NBD_CMD_CACHE` is supported.
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
/// Transmission flag: the FAST_ZERO flag is supported.
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write (the data follows the request).
pub const CMD_WRITE: u16 = 1;
/// Command: disconnect.
pub const CMD_DISC: u16 = 2;
/// Command: flush to stable storage.
pub const CMD_FLUSH: u16 = 3;
/// Command: discard (advisory).
pub const CMD_TRIM: u16 = 4;
/// Command: prefetch.
pub const CMD_CACHE: u16 = 5;
/// Command: write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Command: query metadata contexts.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Request flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Request flag: write zeroes without punching holes.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Request flag: reply to a read in one chunk.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Request flag: one block status descriptor only.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Request flag: fail write zeroes that would be slow.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flag: the last chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Chunk type: no payload (only as the final chunk).
pub const REPLY_TYPE_NONE: u16 = 0;
/// Chunk type: `offset u64 || data`.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Chunk type: `offset u64 || hole length u32` (reads as zeros).
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Chunk type: `context id u32 || (length u32 || flags u32)*`.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Bit set in every error chunk type.
pub const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;
/// Chunk type: `error u32 || message length u16 || message`.
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_ERROR_BIT | 1;
/// Chunk type: `error u32 || message length u16 || message || offset u64`.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_ERROR_BIT | 2;

/// `base:allocation` flag: the extent is not allocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` flag: the extent reads as zeros.
pub const STATE_ZERO: u32 = 1 << 1;
/// `qemu:dirty-bitmap:NAME` flag: the extent is dirty.
pub const STATE_DIRTY: u32 = 1 << 0;
/// The metadata context every server should know.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Error number: operation not permitted (write to a read-only export).
pub const EPERM: u32 = 1;
/// Error number: I/O error.
pub const EIO: u32 = 5;
/// Error number: out of memory.
pub const ENOMEM: u32 = 12;
/// Error number: invalid argument (bad range, bad flags).
pub const EINVAL: u32 = 22;
/// Error number: no space (write past the end).
pub const ENOSPC: u32 = 28;
/// Error number: value too large.
pub const EOVERFLOW: u32 = 75;
/// Error number: not supported.
pub const ENOTSUP: u32 = 95;
/// Error number: the server is shutting down.
pub const ESHUTDOWN: u32 = 108;

/// Length of a request header.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;

// ---------------------------------------------------------------------------
// Limits

/// The largest option data or option reply payload accepted (64 KiB).
pub const MAX_OPTION_DATA: u32 = 64 << 10;
/// The longest string (export name, description, context name, message), as the protocol allows.
pub const MAX_STRING: usize = 4096;
/// The most metadata-context queries in one option.
pub const MAX_QUERIES: usize = 256;
/// The largest read or write payload in one request (32 MiB); also the block size cairn's server advertises.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// The largest payload of a structured chunk other than `OFFSET_DATA` (block status lists, errors).
pub const MAX_CHUNK_META: u32 = 4 << 20;

/// The name of an NBD error number (`"EPERM"`), or `"error N"` for unknown ones.
pub fn errno_name(code: u32) -> String {
    match code {
        0 => "success".into(),
        EPERM => "EPERM (operation not permitted)".into(),
        EIO => "EIO (input/output error)".into(),
        ENOMEM => "ENOMEM (out of memory)".into(),
        EINVAL => "EINVAL (invalid argument)".into(),
        ENOSPC => "ENOSPC (no space left)".into(),
        EOVERFLOW => "EOVERFLOW (value too large)".into(),
        ENOTSUP => "ENOTSUP (not supported)".into(),
        ESHUTDOWN => "ESHUTDOWN (server shutting down)".into(),
        n => format!("error {n}"),
    }
}

/// The name of an option (`"NBD_OPT_GO"`), for messages.
pub fn option_name(option: u32) -> String {
    match option {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME".into(),
        OPT_ABORT => "NBD_OPT_ABORT".into(),
        OPT_LIST => "NBD_OPT_LIST".into(),
        OPT_STARTTLS => "NBD_OPT_STARTTLS".into(),
        OPT_INFO => "NBD_OPT_INFO".into(),
        OPT_GO => "NBD_OPT_GO".into(),
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY".into(),
        OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT".into(),
        OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT".into(),
        n => format!("option {n}"),
    }
}

/// The name of an option error reply (`"NBD_REP_ERR_UNKNOWN"`), for messages.
pub fn reply_error_name(reply: u32) -> String {
    match reply {
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP (unsupported)".into(),
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY (forbidden by policy)".into(),
        REP_ERR_INVALID => "NBD_REP_ERR_INVALID (invalid)".into(),
        REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM (unsupported platform)".into(),
        REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD (TLS required)".into(),
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN (no such export)".into(),
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN (server shutting down)".into(),
        REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD (block size required)".into(),
        REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG (too big)".into(),
        n => format!("reply type {n:#x}"),
    }
}

/// The name of a command (`"NBD_CMD_READ"`), for messages.
pub fn command_name(kind: u16) -> String {
    match kind {
        CMD_READ => "NBD_CMD_READ".into(),
        CMD_WRITE => "NBD_CMD_WRITE".into(),
        CMD_DISC => "NBD_CMD_DISC".into(),
        CMD_FLUSH => "NBD_CMD_FLUSH".into(),
        CMD_TRIM => "NBD_CMD_TRIM".into(),
        CMD_CACHE => "NBD_CMD_CACHE".into(),
        CMD_WRITE_ZEROES => "NBD_CMD_WRITE_ZEROES".into(),
        CMD_BLOCK_STATUS => "NBD_CMD_BLOCK_STATUS".into(),
        n => format!("command {n}"),
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Bytes from the peer that do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// Fewer bytes than the structure needs.
    #[error("{what}: {have} bytes, need {need}")]
    Short {
        /// The structure being decoded.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// A magic number is wrong.
    #[error("{what}: bad magic {got:#x}")]
    Magic {
        /// The structure being decoded.
        what: &'static str,
        /// The value found.
        got: u64,
    },
    /// A length field exceeds its limit.
    #[error("{what}: length {len} exceeds the limit of {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// The length found.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The bytes are malformed in another way.
    #[error("{what}: {reason}")]
    Invalid {
        /// The structure or field.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Result alias for decoders.
pub type ProtoResult<T> = std::result::Result<T, ProtoError>;

fn invalid(what: &'static str, reason: impl Into<String>) -> ProtoError {
    ProtoError::Invalid {
        what,
        reason: reason.into(),
    }
}

/// A bounds-checked big-endian reader over a byte slice.
struct Cur<'a> {
    what: &'static str,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cur<'a> {
    fn new(what: &'static str, b: &'a [u8]) -> Self {
        Cur { what, b, pos: 0 }
    }

    fn take(&mut self, n: usize) -> ProtoResult<&'a [u8]> {
        let rest = self.b.len() - self.pos;
        if n > rest {
            return Err(ProtoError::Short {
                what: self.what,
                need: self.pos + n,
                have: self.b.len(),
            });
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> ProtoResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u16(&mut self) -> ProtoResult<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> ProtoResult<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> ProtoResult<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.pos..];
        self.pos = self.b.len();
        s
    }

    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    /// A string of `len` bytes (checked against [`MAX_STRING`], UTF-8, no NUL).
    fn string(&mut self, len: usize, field: &'static str) -> ProtoResult<String> {
        if len > MAX_STRING {
            return Err(ProtoError::TooLong {
                what: field,
                len: len as u64,
                max: MAX_STRING as u64,
            });
        }
        let bytes = self.take(len)?;
        to_string(bytes, field)
    }

    fn end(&self) -> ProtoResult<()> {
        if self.pos != self.b.len() {
            return Err(invalid(
                self.what,
                format!("{} unexpected trailing bytes", self.b.len() - self.pos),
            ));
        }
        Ok(())
    }
}

/// Checks a protocol string: at most [`MAX_STRING`] bytes, UTF-8, no NUL.
fn to_string(bytes: &[u8], field: &'static str) -> ProtoResult<String> {
    if bytes.len() > MAX_STRING {
        return Err(ProtoError::TooLong {
            what: field,
            len: bytes.len() as u64,
            max: MAX_STRING as u64,
        });
    }
    let s = std::str::from_utf8(bytes).map_err(|e| invalid(field, format!("not UTF-8: {e}")))?;
    if s.contains('\0') {
        return Err(invalid(field, "contains a NUL character"));
    }
    Ok(s.to_string())
}

/// A message for humans (error replies): invalid UTF-8 replaced, NULs
/// dropped, cut to at most [`MAX_STRING`] bytes. Never fails.
fn human_message(bytes: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(bytes).replace('\0', "");
    let mut end = s.len().min(MAX_STRING);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}
/// Appends a string with a u32 length prefix.
fn put_str32(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

// ---------------------------------------------------------------------------
// Greeting and client flags

/// The server's first message: `NBDMAGIC IHAVEOPT flags`.
pub fn encode_greeting(flags: u16) -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&flags.to_be_bytes());
    b
}

/// Decodes the server greeting into its handshake flags; refuses oldstyle
/// servers and servers without fixed newstyle.
pub fn decode_greeting(b: &[u8]) -> ProtoResult<u16> {
    let mut c = Cur::new("server greeting", b);
    let magic = c.u64()?;
    if magic != NBDMAGIC {
        return Err(ProtoError::Magic {
            what: "server greeting",
            got: magic,
        });
    }
    let second = c.u64()?;
    if second == OLDSTYLE_MAGIC {
        return Err(invalid("server greeting", "oldstyle negotiation is not supported"));
    }
    if second != IHAVEOPT {
        return Err(ProtoError::Magic {
            what: "server greeting (IHAVEOPT)",
            got: second,
        });
    }
    let flags = c.u16()?;
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(invalid(
            "server greeting",
            "the server does not speak fixed newstyle negotiation",
        ));
    }
    Ok(flags)
}

mod options;
pub use options::*;
mod transmission;
pub use transmission::*;

#[cfg(test)]
mod tests;
