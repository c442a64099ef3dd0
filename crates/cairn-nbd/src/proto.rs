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

use std::fmt;

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

// ---------------------------------------------------------------------------
// Options (client to server)

/// The header of an option the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option (`OPT_*`).
    pub option: u32,
    /// Length of the data that follows (at most [`MAX_OPTION_DATA`]).
    pub length: u32,
}

impl OptionHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Decodes a header; checks the magic and caps the length at [`MAX_OPTION_DATA`].
    pub fn decode(b: &[u8]) -> ProtoResult<Self> {
        let mut c = Cur::new("option header", b);
        let magic = c.u64()?;
        if magic != IHAVEOPT {
            return Err(ProtoError::Magic {
                what: "option header",
                got: magic,
            });
        }
        let option = c.u32()?;
        let length = c.u32()?;
        if length > MAX_OPTION_DATA {
            return Err(ProtoError::TooLong {
                what: "option data",
                len: length.into(),
                max: MAX_OPTION_DATA.into(),
            });
        }
        Ok(OptionHeader { option, length })
    }
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export ("" = the default export).
    pub export: String,
    /// Information types asked for (`INFO_*`).
    pub info: Vec<u16>,
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// The export the contexts are for.
    pub export: String,
    /// Context names or queries (`"base:allocation"`, `"qemu:dirty-bitmap:"`).
    pub queries: Vec<String>,
}

/// An option the client sends, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME`.
    ExportName(String),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest),
    /// `NBD_OPT_GO`.
    Go(InfoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaContextRequest),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaContextRequest),
    /// Any other option, with its data.
    Unknown {
        /// The option number.
        option: u32,
        /// Its data.
        data: Vec<u8>,
    },
}

impl ClientOption {
    /// The option number.
    pub fn code(&self) -> u32 {
        match self {
            ClientOption::ExportName(_) => OPT_EXPORT_NAME,
            ClientOption::Abort => OPT_ABORT,
            ClientOption::List => OPT_LIST,
            ClientOption::StartTls => OPT_STARTTLS,
            ClientOption::Info(_) => OPT_INFO,
            ClientOption::Go(_) => OPT_GO,
            ClientOption::StructuredReply => OPT_STRUCTURED_REPLY,
            ClientOption::ListMetaContext(_) => OPT_LIST_META_CONTEXT,
            ClientOption::SetMetaContext(_) => OPT_SET_META_CONTEXT,
            ClientOption::Unknown { option, .. } => *option,
        }
    }

    /// Appends the option (header and data) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; OPTION_HEADER_LEN]);
        match self {
            ClientOption::ExportName(name) => out.extend_from_slice(name.as_bytes()),
            ClientOption::Abort | ClientOption::List | ClientOption::StartTls | ClientOption::StructuredReply => {}
            ClientOption::Info(r) | ClientOption::Go(r) => {
                put_str32(out, &r.export);
                put_u16(out, r.info.len() as u16);
                for i in &r.info {
                    put_u16(out, *i);
                }
            }
            ClientOption::ListMetaContext(r) | ClientOption::SetMetaContext(r) => {
                put_str32(out, &r.export);
                put_u32(out, r.queries.len() as u32);
                for q in &r.queries {
                    put_str32(out, q);
                }
            }
            ClientOption::Unknown { data, .. } => out.extend_from_slice(data),
        }
        let header = OptionHeader {
            option: self.code(),
            length: (out.len() - start - OPTION_HEADER_LEN) as u32,
        };
        out[start..start + OPTION_HEADER_LEN].copy_from_slice(&header.encode());
    }

    /// Decodes the data of `option` (the header was decoded by [`OptionHeader::decode`]).
    pub fn decode(option: u32, data: &[u8]) -> ProtoResult<Self> {
        if data.len() > MAX_OPTION_DATA as usize {
            return Err(ProtoError::TooLong {
                what: "option data",
                len: data.len() as u64,
                max: MAX_OPTION_DATA.into(),
            });
        }
        let empty = |o: ClientOption| {
            if data.is_empty() {
                Ok(o)
            } else {
                Err(invalid("option data", format!("{} takes no data", option_name(option))))
            }
        };
        match option {
            OPT_EXPORT_NAME => Ok(ClientOption::ExportName(to_string(data, "export name")?)),
            OPT_ABORT => empty(ClientOption::Abort),
            OPT_LIST => empty(ClientOption::List),
            OPT_STARTTLS => empty(ClientOption::StartTls),
            OPT_STRUCTURED_REPLY => empty(ClientOption::StructuredReply),
            OPT_INFO | OPT_GO => {
                let mut c = Cur::new("NBD_OPT_INFO/GO data", data);
                let len = c.u32()? as usize;
                let export = c.string(len, "export name")?;
                let n = c.u16()? as usize;
                if c.remaining() != n * 2 {
                    return Err(invalid(
                        "NBD_OPT_INFO/GO data",
                        format!("{n} information requests need {} bytes, have {}", n * 2, c.remaining()),
                    ));
                }
                let mut info = Vec::with_capacity(n);
                for _ in 0..n {
                    info.push(c.u16()?);
                }
                let r = InfoRequest { export, info };
                Ok(if option == OPT_GO {
                    ClientOption::Go(r)
                } else {
                    ClientOption::Info(r)
                })
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let mut c = Cur::new("meta context option data", data);
                let len = c.u32()? as usize;
                let export = c.string(len, "export name")?;
                let n = c.u32()? as usize;
                if n > MAX_QUERIES {
                    return Err(ProtoError::TooLong {
                        what: "meta context query count",
                        len: n as u64,
                        max: MAX_QUERIES as u64,
                    });
                }
                let mut queries = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = c.u32()? as usize;
                    queries.push(c.string(len, "meta context query")?);
                }
                c.end()?;
                let r = MetaContextRequest { export, queries };
                Ok(if option == OPT_SET_META_CONTEXT {
                    ClientOption::SetMetaContext(r)
                } else {
                    ClientOption::ListMetaContext(r)
                })
            }
            _ => Ok(ClientOption::Unknown {
                option,
                data: data.to_vec(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// Option replies (server to client)

/// The header of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option being answered.
    pub option: u32,
    /// The reply type (`REP_*`).
    pub reply: u32,
    /// Length of the data that follows (at most [`MAX_OPTION_DATA`]).
    pub length: u32,
}

impl OptionReplyHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; OPTION_REPLY_HEADER_LEN] {
        let mut b = [0u8; OPTION_REPLY_HEADER_LEN];
        b[..8].copy_from_slice(&REPLY_MAGIC.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.reply.to_be_bytes());
        b[16..].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Decodes a header; checks the magic and caps the length at [`MAX_OPTION_DATA`].
    pub fn decode(b: &[u8]) -> ProtoResult<Self> {
        let mut c = Cur::new("option reply header", b);
        let magic = c.u64()?;
        if magic != REPLY_MAGIC {
            return Err(ProtoError::Magic {
                what: "option reply header",
                got: magic,
            });
        }
        let option = c.u32()?;
        let reply = c.u32()?;
        let length = c.u32()?;
        if length > MAX_OPTION_DATA {
            return Err(ProtoError::TooLong {
                what: "option reply data",
                len: length.into(),
                max: MAX_OPTION_DATA.into(),
            });
        }
        Ok(OptionReplyHeader { option, reply, length })
    }
}

/// Information about an export (`NBD_REP_INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export {
        /// Size in bytes.
        size: u64,
        /// Transmission flags (`TFLAG_*`).
        flags: u16,
    },
    /// `NBD_INFO_NAME`.
    Name(String),
    /// `NBD_INFO_DESCRIPTION`.
    Description(String),
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize {
        /// Minimum block size.
        min: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum payload of one request.
        max: u32,
    },
    /// Another information type, ignored by clients.
    Unknown {
        /// The type.
        kind: u16,
        /// Its payload.
        data: Vec<u8>,
    },
}

/// An option reply, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionReply {
    /// `NBD_REP_ACK`.
    Ack,
    /// `NBD_REP_SERVER`: one export.
    Server {
        /// Export name.
        name: String,
        /// Description (may be empty).
        description: String,
    },
    /// `NBD_REP_INFO`.
    Info(Info),
    /// `NBD_REP_META_CONTEXT`.
    MetaContext {
        /// Context id used in block status replies.
        id: u32,
        /// Context name.
        name: String,
    },
    /// An error reply (type with bit 31 set) with its optional message.
    Error {
        /// The reply type (`REP_ERR_*`).
        code: u32,
        /// The server's message (may be empty).
        message: String,
    },
    /// A non-error reply type this decoder does not know.
    Unknown {
        /// The reply type.
        reply: u32,
        /// Its data.
        data: Vec<u8>,
    },
}

impl OptionReply {
    /// The reply type.
    pub fn code(&self) -> u32 {
        match self {
            OptionReply::Ack => REP_ACK,
            OptionReply::Server { .. } => REP_SERVER,
            OptionReply::Info(_) => REP_INFO,
            OptionReply::MetaContext { .. } => REP_META_CONTEXT,
            OptionReply::Error { code, .. } => *code,
            OptionReply::Unknown { reply, .. } => *reply,
        }
    }

    /// Appends the reply to `option` (header and data) to `out`.
    pub fn encode(&self, option: u32, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; OPTION_REPLY_HEADER_LEN]);
        match self {
            OptionReply::Ack => {}
            OptionReply::Server { name, description } => {
                put_str32(out, name);
                out.extend_from_slice(description.as_bytes());
            }
            OptionReply::Info(info) => match info {
                Info::Export { size, flags } => {
                    put_u16(out, INFO_EXPORT);
                    put_u64(out, *size);
                    put_u16(out, *flags);
                }
                Info::Name(s) => {
                    put_u16(out, INFO_NAME);
                    out.extend_from_slice(s.as_bytes());
                }
                Info::Description(s) => {
                    put_u16(out, INFO_DESCRIPTION);
                    out.extend_from_slice(s.as_bytes());
                }
                Info::BlockSize { min, preferred, max } => {
                    put_u16(out, INFO_BLOCK_SIZE);
                    put_u32(out, *min);
                    put_u32(out, *preferred);
                    put_u32(out, *max);
                }
                Info::Unknown { kind, data } => {
                    put_u16(out, *kind);
                    out.extend_from_slice(data);
                }
            },
            OptionReply::MetaContext { id, name } => {
                put_u32(out, *id);
                out.extend_from_slice(name.as_bytes());
            }
            OptionReply::Error { message, .. } => out.extend_from_slice(message.as_bytes()),
            OptionReply::Unknown { data, .. } => out.extend_from_slice(data),
        }
        let header = OptionReplyHeader {
            option,
            reply: self.code(),
            length: (out.len() - start - OPTION_REPLY_HEADER_LEN) as u32,
        };
        out[start..start + OPTION_REPLY_HEADER_LEN].copy_from_slice(&header.encode());
    }

    /// Decodes the data of a reply of type `reply`.
    pub fn decode(reply: u32, data: &[u8]) -> ProtoResult<Self> {
        if data.len() > MAX_OPTION_DATA as usize {
            return Err(ProtoError::TooLong {
                what: "option reply data",
                len: data.len() as u64,
                max: MAX_OPTION_DATA.into(),
            });
        }
        if reply & REP_FLAG_ERROR != 0 {
            // Messages are for humans: keep what decodes, never fail on them.
            let message = human_message(data);
            return Ok(OptionReply::Error { code: reply, message });
        }
        match reply {
            REP_ACK => {
                if !data.is_empty() {
                    return Err(invalid("NBD_REP_ACK", format!("{} bytes of data", data.len())));
                }
                Ok(OptionReply::Ack)
            }
            REP_SERVER => {
                let mut c = Cur::new("NBD_REP_SERVER", data);
                let len = c.u32()? as usize;
                let name = c.string(len, "export name")?;
                let description = to_string(c.rest(), "export description")?;
                Ok(OptionReply::Server { name, description })
            }
            REP_INFO => {
                let mut c = Cur::new("NBD_REP_INFO", data);
                let kind = c.u16()?;
                let info = match kind {
                    INFO_EXPORT => {
                        let size = c.u64()?;
                        let flags = c.u16()?;
                        c.end()?;
                        Info::Export { size, flags }
                    }
                    INFO_NAME => Info::Name(to_string(c.rest(), "NBD_INFO_NAME")?),
                    INFO_DESCRIPTION => Info::Description(to_string(c.rest(), "NBD_INFO_DESCRIPTION")?),
                    INFO_BLOCK_SIZE => {
                        let min = c.u32()?;
                        let preferred = c.u32()?;
                        let max = c.u32()?;
                        c.end()?;
                        Info::BlockSize { min, preferred, max }
                    }
                    kind => Info::Unknown {
                        kind,
                        data: c.rest().to_vec(),
                    },
                };
                Ok(OptionReply::Info(info))
            }
            REP_META_CONTEXT => {
                let mut c = Cur::new("NBD_REP_META_CONTEXT", data);
                let id = c.u32()?;
                let name = to_string(c.rest(), "meta context name")?;
                if name.is_empty() {
                    return Err(invalid("NBD_REP_META_CONTEXT", "empty context name"));
                }
                Ok(OptionReply::MetaContext { id, name })
            }
            reply => Ok(OptionReply::Unknown {
                reply,
                data: data.to_vec(),
            }),
        }
    }
}

/// Appends the reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and
/// 124 zero bytes unless `no_zeroes`.
pub fn encode_export_name_reply(size: u64, flags: u16, no_zeroes: bool, out: &mut Vec<u8>) {
    put_u64(out, size);
    put_u16(out, flags);
    if !no_zeroes {
        out.extend_from_slice(&[0u8; EXPORT_NAME_ZEROES]);
    }
}

/// Decodes the first [`EXPORT_NAME_REPLY_LEN`] bytes of the reply to
/// `NBD_OPT_EXPORT_NAME` into (size, transmission flags).
pub fn decode_export_name_reply(b: &[u8]) -> ProtoResult<(u64, u16)> {
    let mut c = Cur::new("NBD_OPT_EXPORT_NAME reply", b);
    let size = c.u64()?;
    let flags = c.u16()?;
    Ok((size, flags))
}

mod transmission;
pub use transmission::*;

impl fmt::Display for OptionHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", option_name(self.option), self.length)
    }
}

#[cfg(test)]
mod tests;
