//! Negotiation: options the client sends and the server's option replies.

use std::fmt;

use super::*;

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

impl fmt::Display for OptionHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", option_name(self.option), self.length)
    }
}
