//! Transmission phase: requests, simple replies and structured reply chunks.

use super::*;

/// A transmission request (the data of `NBD_CMD_WRITE` follows it on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`CMD_*`).
    pub kind: u16,
    /// Opaque value the reply carries back.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

impl Request {
    /// Encodes the request header.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Decodes a request header (checks the magic; range and length limits
    /// depend on the export and command, so the server checks them).
    pub fn decode(b: &[u8]) -> ProtoResult<Self> {
        let mut c = Cur::new("request", b);
        let magic = c.u32()?;
        if magic != REQUEST_MAGIC {
            return Err(ProtoError::Magic {
                what: "request",
                got: magic.into(),
            });
        }
        Ok(Request {
            flags: c.u16()?,
            kind: c.u16()?,
            cookie: c.u64()?,
            offset: c.u64()?,
            length: c.u32()?,
        })
    }
}

/// A simple reply header (the data of a successful read follows it when
/// structured replies are not in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// 0 or an error number (`EIO`, ...).
    pub error: u32,
    /// The request's cookie.
    pub cookie: u64,
}

impl SimpleReply {
    /// Encodes the reply header.
    pub fn encode(&self) -> [u8; SIMPLE_REPLY_LEN] {
        let mut b = [0u8; SIMPLE_REPLY_LEN];
        b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.error.to_be_bytes());
        b[8..].copy_from_slice(&self.cookie.to_be_bytes());
        b
    }
}

/// A structured reply chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Reply flags (`REPLY_FLAG_DONE`).
    pub flags: u16,
    /// Chunk type (`REPLY_TYPE_*`).
    pub kind: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// Payload length: at most [`MAX_PAYLOAD`] + 8 for `OFFSET_DATA`, at most
    /// [`MAX_CHUNK_META`] for other types.
    pub length: u32,
}

impl ChunkHeader {
    /// Encodes the chunk header.
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut b = [0u8; CHUNK_HEADER_LEN];
        b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// True when this is the last chunk of its reply.
    pub fn done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }
}

/// A reply header: simple or structured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply.
    Simple(SimpleReply),
    /// A structured reply chunk.
    Chunk(ChunkHeader),
}

impl ReplyHeader {
    /// The length of the header that starts with these four magic bytes:
    /// [`SIMPLE_REPLY_LEN`] or [`CHUNK_HEADER_LEN`].
    pub fn len_for_magic(magic: [u8; 4]) -> ProtoResult<usize> {
        match u32::from_be_bytes(magic) {
            SIMPLE_REPLY_MAGIC => Ok(SIMPLE_REPLY_LEN),
            STRUCTURED_REPLY_MAGIC => Ok(CHUNK_HEADER_LEN),
            got => Err(ProtoError::Magic {
                what: "reply",
                got: got.into(),
            }),
        }
    }

    /// Decodes a whole reply header (16 or 20 bytes, by its magic) and caps chunk lengths.
    pub fn decode(b: &[u8]) -> ProtoResult<Self> {
        let mut c = Cur::new("reply header", b);
        let magic = c.u32()?;
        match magic {
            SIMPLE_REPLY_MAGIC => {
                let error = c.u32()?;
                let cookie = c.u64()?;
                c.end()?;
                Ok(ReplyHeader::Simple(SimpleReply { error, cookie }))
            }
            STRUCTURED_REPLY_MAGIC => {
                let flags = c.u16()?;
                let kind = c.u16()?;
                let cookie = c.u64()?;
                let length = c.u32()?;
                c.end()?;
                let max = if kind == REPLY_TYPE_OFFSET_DATA {
                    MAX_PAYLOAD + 8
                } else {
                    MAX_CHUNK_META
                };
                if length > max {
                    return Err(ProtoError::TooLong {
                        what: "structured reply chunk",
                        len: length.into(),
                        max: max.into(),
                    });
                }
                Ok(ReplyHeader::Chunk(ChunkHeader {
                    flags,
                    kind,
                    cookie,
                    length,
                }))
            }
            got => Err(ProtoError::Magic {
                what: "reply",
                got: got.into(),
            }),
        }
    }
}

/// One block status descriptor: `length` bytes with `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Length in bytes (never 0).
    pub length: u32,
    /// Context-defined flags (`STATE_*`).
    pub flags: u32,
}

/// The payload of a structured reply chunk, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// `NBD_REPLY_TYPE_NONE`.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_DATA`: `data` at `offset`.
    OffsetData {
        /// Export offset of the data.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`: `length` bytes of zeros at `offset`.
    OffsetHole {
        /// Export offset of the hole.
        offset: u64,
        /// Its length (never 0).
        length: u32,
    },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS` for one context.
    BlockStatus {
        /// The context id from `NBD_REP_META_CONTEXT`.
        context: u32,
        /// Consecutive extents from the request's offset.
        descriptors: Vec<Descriptor>,
    },
    /// `NBD_REPLY_TYPE_ERROR`, `NBD_REPLY_TYPE_ERROR_OFFSET` or another error type.
    Error {
        /// The error number (never 0).
        error: u32,
        /// The server's message.
        message: String,
        /// The offset (`ERROR_OFFSET` only).
        offset: Option<u64>,
    },
    /// A non-error chunk type this decoder does not know.
    Unknown {
        /// The chunk type.
        kind: u16,
    },
}

impl<'a> Chunk<'a> {
    /// The chunk type of this payload (an `Error` with an offset is `ERROR_OFFSET`).
    pub fn kind(&self) -> u16 {
        match self {
            Chunk::None => REPLY_TYPE_NONE,
            Chunk::OffsetData { .. } => REPLY_TYPE_OFFSET_DATA,
            Chunk::OffsetHole { .. } => REPLY_TYPE_OFFSET_HOLE,
            Chunk::BlockStatus { .. } => REPLY_TYPE_BLOCK_STATUS,
            Chunk::Error { offset: None, .. } => REPLY_TYPE_ERROR,
            Chunk::Error { offset: Some(_), .. } => REPLY_TYPE_ERROR_OFFSET,
            Chunk::Unknown { kind } => *kind,
        }
    }

    /// Appends the chunk (header and payload) to `out`. Error messages
    /// longer than [`MAX_STRING`] bytes are cut at a character boundary.
    pub fn encode(&self, flags: u16, cookie: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; CHUNK_HEADER_LEN]);
        match self {
            Chunk::None | Chunk::Unknown { .. } => {}
            Chunk::OffsetData { offset, data } => {
                put_u64(out, *offset);
                out.extend_from_slice(data);
            }
            Chunk::OffsetHole { offset, length } => {
                put_u64(out, *offset);
                put_u32(out, *length);
            }
            Chunk::BlockStatus { context, descriptors } => {
                put_u32(out, *context);
                for d in descriptors {
                    put_u32(out, d.length);
                    put_u32(out, d.flags);
                }
            }
            Chunk::Error { error, message, offset } => {
                let mut end = message.len().min(MAX_STRING);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                put_u32(out, *error);
                put_u16(out, end as u16);
                out.extend_from_slice(&message.as_bytes()[..end]);
                if let Some(o) = offset {
                    put_u64(out, *o);
                }
            }
        }
        let header = ChunkHeader {
            flags,
            kind: self.kind(),
            cookie,
            length: (out.len() - start - CHUNK_HEADER_LEN) as u32,
        };
        out[start..start + CHUNK_HEADER_LEN].copy_from_slice(&header.encode());
    }

    /// Decodes the payload of a chunk of type `kind`.
    pub fn decode(kind: u16, payload: &'a [u8]) -> ProtoResult<Self> {
        match kind {
            REPLY_TYPE_NONE => {
                if !payload.is_empty() {
                    return Err(invalid(
                        "NBD_REPLY_TYPE_NONE",
                        format!("{} bytes of payload", payload.len()),
                    ));
                }
                Ok(Chunk::None)
            }
            REPLY_TYPE_OFFSET_DATA => {
                let mut c = Cur::new("NBD_REPLY_TYPE_OFFSET_DATA", payload);
                let offset = c.u64()?;
                let data = c.rest();
                if data.is_empty() {
                    return Err(invalid("NBD_REPLY_TYPE_OFFSET_DATA", "no data"));
                }
                Ok(Chunk::OffsetData { offset, data })
            }
            REPLY_TYPE_OFFSET_HOLE => {
                let mut c = Cur::new("NBD_REPLY_TYPE_OFFSET_HOLE", payload);
                let offset = c.u64()?;
                let length = c.u32()?;
                c.end()?;
                if length == 0 {
                    return Err(invalid("NBD_REPLY_TYPE_OFFSET_HOLE", "hole of length 0"));
                }
                Ok(Chunk::OffsetHole { offset, length })
            }
            REPLY_TYPE_BLOCK_STATUS => {
                if payload.len() > MAX_CHUNK_META as usize {
                    return Err(ProtoError::TooLong {
                        what: "NBD_REPLY_TYPE_BLOCK_STATUS",
                        len: payload.len() as u64,
                        max: MAX_CHUNK_META.into(),
                    });
                }
                let mut c = Cur::new("NBD_REPLY_TYPE_BLOCK_STATUS", payload);
                let context = c.u32()?;
                let n = c.remaining() / 8;
                if n == 0 || !c.remaining().is_multiple_of(8) {
                    return Err(invalid(
                        "NBD_REPLY_TYPE_BLOCK_STATUS",
                        format!("{} bytes of descriptors, not a positive multiple of 8", c.remaining()),
                    ));
                }
                let mut descriptors = Vec::with_capacity(n);
                for _ in 0..n {
                    let length = c.u32()?;
                    let flags = c.u32()?;
                    if length == 0 {
                        return Err(invalid("NBD_REPLY_TYPE_BLOCK_STATUS", "descriptor of length 0"));
                    }
                    descriptors.push(Descriptor { length, flags });
                }
                Ok(Chunk::BlockStatus { context, descriptors })
            }
            k if k & REPLY_TYPE_ERROR_BIT != 0 => {
                let mut c = Cur::new("error chunk", payload);
                let error = c.u32()?;
                if error == 0 {
                    return Err(invalid("error chunk", "error number 0"));
                }
                let len = c.u16()? as usize;
                let bytes = c.take(len)?;
                let message = human_message(bytes);
                let offset = match k {
                    REPLY_TYPE_ERROR => {
                        c.end()?;
                        None
                    }
                    REPLY_TYPE_ERROR_OFFSET => {
                        let o = c.u64()?;
                        c.end()?;
                        Some(o)
                    }
                    // Unknown error types: the error number and message are
                    // all a client can use; anything after them is ignored.
                    _ => None,
                };
                Ok(Chunk::Error { error, message, offset })
            }
            kind => Ok(Chunk::Unknown { kind }),
        }
    }
}
