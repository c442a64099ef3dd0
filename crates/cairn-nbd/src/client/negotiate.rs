//! Option haggling: greeting, structured replies, metadata contexts, `NBD_OPT_GO`.

use std::io::{self, Read};

use super::NbdClient;
use crate::proto::{self, ClientOption, Info, InfoRequest, MetaContextRequest, OptionReply};
use crate::{ClientOptions, Error, Result};

impl NbdClient {
    pub(super) fn negotiate(&mut self, opts: &ClientOptions) -> Result<()> {
        let mut g = [0u8; proto::GREETING_LEN];
        self.read_exact(&mut g, "read the greeting")?;
        let hflags = proto::decode_greeting(&g).map_err(|e| self.protocol(e.to_string()))?;
        let no_zeroes = hflags & proto::FLAG_NO_ZEROES != 0;
        let mut cflags = proto::FLAG_C_FIXED_NEWSTYLE;
        if no_zeroes {
            cflags |= proto::FLAG_C_NO_ZEROES;
        }
        self.write_all(&cflags.to_be_bytes(), "send client flags")?;

        self.send_option(&ClientOption::StructuredReply)?;
        self.structured = match self.option_reply(proto::OPT_STRUCTURED_REPLY)? {
            OptionReply::Ack => true,
            OptionReply::Error { .. } => false,
            other => return Err(self.unexpected(proto::OPT_STRUCTURED_REPLY, &other)),
        };

        if self.structured && !opts.meta_contexts.is_empty() {
            self.send_option(&ClientOption::SetMetaContext(MetaContextRequest {
                export: opts.export.clone(),
                queries: opts.meta_contexts.clone(),
            }))?;
            loop {
                match self.option_reply(proto::OPT_SET_META_CONTEXT)? {
                    OptionReply::MetaContext { id, name } => {
                        if self.contexts.iter().any(|(i, n)| *i == id || *n == name) {
                            return Err(self.protocol(format!("meta context {name:?} (id {id}) sent twice")));
                        }
                        self.context_names.push(name.clone());
                        self.contexts.push((id, name));
                    }
                    OptionReply::Ack => break,
                    // A server without meta contexts: carry on without them.
                    OptionReply::Error { .. } => {
                        self.contexts.clear();
                        self.context_names.clear();
                        break;
                    }
                    other => return Err(self.unexpected(proto::OPT_SET_META_CONTEXT, &other)),
                }
            }
        }

        self.send_option(&ClientOption::Go(InfoRequest {
            export: opts.export.clone(),
            info: vec![proto::INFO_BLOCK_SIZE],
        }))?;
        let mut got_export = false;
        loop {
            match self.option_reply(proto::OPT_GO)? {
                OptionReply::Info(Info::Export { size, flags }) => {
                    self.size = size;
                    self.flags = flags;
                    got_export = true;
                }
                OptionReply::Info(Info::BlockSize { min, preferred, max }) => {
                    if min == 0 || max < min || preferred < min || !min.is_power_of_two() {
                        return Err(self.protocol(format!(
                            "block sizes min {min}, preferred {preferred}, max {max} are inconsistent"
                        )));
                    }
                    self.max_block = max.min(proto::MAX_PAYLOAD);
                }
                OptionReply::Info(_) => {}
                OptionReply::Ack => {
                    if !got_export {
                        return Err(self.protocol("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT".into()));
                    }
                    break;
                }
                OptionReply::Error {
                    code: proto::REP_ERR_UNSUP,
                    ..
                } => return self.export_name(no_zeroes),
                OptionReply::Error { code, message } => {
                    return Err(Error::Refused {
                        export: self.export.clone(),
                        option: proto::option_name(proto::OPT_GO),
                        reason: proto::reply_error_name(code),
                        message,
                    });
                }
                other => return Err(self.unexpected(proto::OPT_GO, &other)),
            }
        }
        if self.size > i64::MAX as u64 {
            return Err(self.protocol(format!("export size {} is too large", self.size)));
        }
        Ok(())
    }

    /// The old way into transmission, for servers without `NBD_OPT_GO`.
    fn export_name(&mut self, no_zeroes: bool) -> Result<()> {
        self.send_option(&ClientOption::ExportName(self.export.clone()))?;
        let mut b = [0u8; proto::EXPORT_NAME_REPLY_LEN + proto::EXPORT_NAME_ZEROES];
        let n = if no_zeroes {
            proto::EXPORT_NAME_REPLY_LEN
        } else {
            b.len()
        };
        match self.reader.read_exact(&mut b[..n]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(Error::Refused {
                    export: self.export.clone(),
                    option: proto::option_name(proto::OPT_EXPORT_NAME),
                    reason: "the server closed the connection (no such export?)".into(),
                    message: String::new(),
                });
            }
            Err(e) => return Err(self.io("read the export reply", e)),
        }
        let (size, flags) = proto::decode_export_name_reply(&b[..n]).map_err(|e| self.protocol(e.to_string()))?;
        self.size = size;
        self.flags = flags;
        // Without NBD_OPT_GO there are no negotiated contexts to rely on.
        Ok(())
    }

    pub(super) fn send_option(&mut self, opt: &ClientOption) -> Result<()> {
        let mut b = Vec::new();
        opt.encode(&mut b);
        self.write_all(&b, "send an option")?;
        self.flush_writer()
    }

    fn option_reply(&mut self, option: u32) -> Result<OptionReply> {
        let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
        self.read_exact(&mut h, "read an option reply")?;
        let h = proto::OptionReplyHeader::decode(&h).map_err(|e| self.protocol(e.to_string()))?;
        if h.option != option {
            return Err(self.protocol(format!(
                "reply for {} while waiting for {}",
                proto::option_name(h.option),
                proto::option_name(option)
            )));
        }
        let mut data = std::mem::take(&mut self.payload);
        data.resize(h.length as usize, 0);
        let r = self.read_exact(&mut data, "read option reply data");
        let decoded = r.and_then(|()| OptionReply::decode(h.reply, &data).map_err(|e| self.protocol(e.to_string())));
        self.payload = data;
        decoded
    }

    fn unexpected(&self, option: u32, reply: &OptionReply) -> Error {
        self.protocol(format!(
            "unexpected reply type {:#x} to {}",
            reply.code(),
            proto::option_name(option)
        ))
    }
}
