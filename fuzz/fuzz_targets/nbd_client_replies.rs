//! NBD client: the input (after the mode byte) is everything a server sends.
//! The client negotiates (greeting, structured replies, meta contexts,
//! `NBD_OPT_GO` or the `NBD_OPT_EXPORT_NAME` fallback), reads, asks block
//! status, writes and flushes, parsing whatever comes back
//! (`nbd_common::client_session`); its own requests go to a sink.
//!
//! Mode byte: bit 0: instead, feed the bytes to every pure decoder of
//! `cairn_nbd::proto`; bits 1–2: the meta contexts the client asks for
//! (`nbd_common::CONTEXTS`).
#![no_main]

#[path = "nbd_common.rs"]
mod nbd_common;

use cairn_nbd::proto::*;
use libfuzzer_sys::fuzz_target;

fn decoders(b: &[u8]) {
    let _ = decode_greeting(b);
    let _ = decode_export_name_reply(b);
    let _ = OptionHeader::decode(b);
    let _ = OptionReplyHeader::decode(b);
    let _ = Request::decode(b);
    let _ = ReplyHeader::decode(b);
    let Some((&code, rest)) = b.split_first() else { return };
    let code = u32::from(code);
    for option in [
        code,
        OPT_GO,
        OPT_SET_META_CONTEXT,
        OPT_LIST_META_CONTEXT,
        OPT_EXPORT_NAME,
    ] {
        if let Ok(o) = ClientOption::decode(option, rest) {
            let mut again = Vec::new();
            o.encode(&mut again);
            assert_eq!(ClientOption::decode(option, &again[OPTION_HEADER_LEN..]).ok(), Some(o));
        }
    }
    for reply in [code, REP_SERVER, REP_INFO, REP_META_CONTEXT, REP_FLAG_ERROR | code] {
        let _ = OptionReply::decode(reply, rest);
    }
    for kind in [
        code as u16,
        REPLY_TYPE_OFFSET_DATA,
        REPLY_TYPE_OFFSET_HOLE,
        REPLY_TYPE_BLOCK_STATUS,
        REPLY_TYPE_ERROR,
        REPLY_TYPE_ERROR_OFFSET,
    ] {
        if let Ok(c) = Chunk::decode(kind, rest) {
            let mut again = Vec::new();
            c.encode(0, 0, &mut again);
            assert_eq!(
                Chunk::decode(c.kind(), &again[CHUNK_HEADER_LEN..]).ok().as_ref(),
                Some(&c)
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 != 0 {
        decoders(rest);
        return;
    }
    nbd_common::client_session(std::io::Cursor::new(rest.to_vec()), std::io::sink(), mode);
});
