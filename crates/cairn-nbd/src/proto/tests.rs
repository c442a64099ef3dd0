//! Unit and property tests of the wire protocol: known byte layouts,
//! encode→decode round trips, limits, and decoders that never panic.

use proptest::prelude::*;

use super::*;

/// Splits an encoded option into header and data and decodes it.
fn decode_option(b: &[u8]) -> ClientOption {
    let h = OptionHeader::decode(&b[..OPTION_HEADER_LEN]).unwrap();
    assert_eq!(h.length as usize, b.len() - OPTION_HEADER_LEN);
    ClientOption::decode(h.option, &b[OPTION_HEADER_LEN..]).unwrap()
}

fn decode_reply(b: &[u8]) -> (u32, OptionReply) {
    let h = OptionReplyHeader::decode(&b[..OPTION_REPLY_HEADER_LEN]).unwrap();
    assert_eq!(h.length as usize, b.len() - OPTION_REPLY_HEADER_LEN);
    (
        h.option,
        OptionReply::decode(h.reply, &b[OPTION_REPLY_HEADER_LEN..]).unwrap(),
    )
}

#[test]
fn greeting_bytes_are_what_qemu_nbd_sends() {
    let g = encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
    assert_eq!(&g[16..], &[0, 3]);
    assert_eq!(decode_greeting(&g).unwrap(), 3);
    let mut old = g;
    old[8..16].copy_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
    assert!(decode_greeting(&old).unwrap_err().to_string().contains("oldstyle"));
    let not_fixed = encode_greeting(FLAG_NO_ZEROES);
    assert!(decode_greeting(&not_fixed).is_err());
    assert!(matches!(
        decode_greeting(&g[..10]),
        Err(ProtoError::Short { need: 16, have: 10, .. })
    ));
}

#[test]
fn known_layouts() {
    let mut b = Vec::new();
    ClientOption::Go(InfoRequest {
        export: "ab".into(),
        info: vec![INFO_BLOCK_SIZE],
    })
    .encode(&mut b);
    let mut want = b"IHAVEOPT".to_vec();
    want.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 10, 0, 0, 0, 2, b'a', b'b', 0, 1, 0, 3]);
    assert_eq!(b, want);

    let mut b = Vec::new();
    OptionReply::Ack.encode(OPT_STRUCTURED_REPLY, &mut b);
    assert_eq!(&b[..8], &0x0003_e889_0455_65a9u64.to_be_bytes());
    assert_eq!(&b[8..], &[0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0]);

    let r = Request {
        flags: CMD_FLAG_FUA,
        kind: CMD_WRITE,
        cookie: 0x0102_0304_0506_0708,
        offset: 4096,
        length: 512,
    };
    let e = r.encode();
    assert_eq!(&e[..8], &[0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1]);
    assert_eq!(&e[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);

    let mut b = Vec::new();
    Chunk::OffsetHole {
        offset: 9,
        length: 4096,
    }
    .encode(REPLY_FLAG_DONE, 5, &mut b);
    assert_eq!(&b[..8], &[0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 2]);
    assert_eq!(&b[16..20], &[0, 0, 0, 12]);
}

#[test]
fn length_fields_are_capped() {
    let big = OptionHeader {
        option: OPT_GO,
        length: MAX_OPTION_DATA + 1,
    };
    assert!(matches!(
        OptionHeader::decode(&big.encode()),
        Err(ProtoError::TooLong { .. })
    ));
    let big = OptionReplyHeader {
        option: OPT_GO,
        reply: REP_INFO,
        length: u32::MAX,
    };
    assert!(matches!(
        OptionReplyHeader::decode(&big.encode()),
        Err(ProtoError::TooLong { .. })
    ));
    let chunk = |kind, length| {
        ChunkHeader {
            flags: 0,
            kind,
            cookie: 1,
            length,
        }
        .encode()
    };
    assert!(ReplyHeader::decode(&chunk(REPLY_TYPE_OFFSET_DATA, MAX_PAYLOAD + 8)).is_ok());
    assert!(ReplyHeader::decode(&chunk(REPLY_TYPE_OFFSET_DATA, MAX_PAYLOAD + 9)).is_err());
    assert!(ReplyHeader::decode(&chunk(REPLY_TYPE_BLOCK_STATUS, MAX_CHUNK_META + 1)).is_err());
    assert!(ReplyHeader::decode(&chunk(REPLY_TYPE_ERROR, u32::MAX)).is_err());

    // A name longer than the protocol allows.
    let mut data = Vec::new();
    data.extend_from_slice(&5000u32.to_be_bytes());
    data.extend_from_slice(&[b'a'; 5000]);
    data.extend_from_slice(&[0, 0]);
    assert!(matches!(
        ClientOption::decode(OPT_GO, &data),
        Err(ProtoError::TooLong { .. })
    ));
    // A name length pointing past the data.
    let mut data = Vec::new();
    data.extend_from_slice(&100u32.to_be_bytes());
    data.extend_from_slice(b"abc");
    assert!(matches!(
        ClientOption::decode(OPT_GO, &data),
        Err(ProtoError::Short { .. })
    ));
    // Too many meta context queries.
    let mut data = Vec::new();
    data.extend_from_slice(&0u32.to_be_bytes());
    data.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        ClientOption::decode(OPT_SET_META_CONTEXT, &data),
        Err(ProtoError::TooLong { .. })
    ));
}

#[test]
fn malformed_payloads_are_rejected() {
    // Zero-length descriptor (a client would loop forever on it).
    let mut p = 1u32.to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
    assert!(Chunk::decode(REPLY_TYPE_BLOCK_STATUS, &p).is_err());
    // Descriptors not a multiple of 8, or none.
    assert!(Chunk::decode(REPLY_TYPE_BLOCK_STATUS, &[0, 0, 0, 1, 0, 0, 0, 5]).is_err());
    assert!(Chunk::decode(REPLY_TYPE_BLOCK_STATUS, &[0, 0, 0, 1]).is_err());
    // Holes of length 0, data chunks without data, error 0, message past the end.
    assert!(Chunk::decode(REPLY_TYPE_OFFSET_HOLE, &[0; 12]).is_err());
    assert!(Chunk::decode(REPLY_TYPE_OFFSET_DATA, &[0; 8]).is_err());
    assert!(Chunk::decode(REPLY_TYPE_ERROR, &[0, 0, 0, 0, 0, 0]).is_err());
    assert!(Chunk::decode(REPLY_TYPE_ERROR, &[0, 0, 0, 5, 0, 9, b'x']).is_err());
    assert!(Chunk::decode(REPLY_TYPE_NONE, &[1]).is_err());
    // An unknown error type still yields its error number.
    let c = Chunk::decode(REPLY_TYPE_ERROR_BIT | 77, &[0, 0, 0, 5, 0, 2, b'h', b'i', 9, 9]).unwrap();
    assert_eq!(
        c,
        Chunk::Error {
            error: EIO,
            message: "hi".into(),
            offset: None
        }
    );
    // Option data where none belongs; ACK with data; INFO_EXPORT of the wrong size.
    assert!(ClientOption::decode(OPT_LIST, &[1]).is_err());
    assert!(OptionReply::decode(REP_ACK, &[1]).is_err());
    assert!(OptionReply::decode(REP_INFO, &[0, 0, 1, 2, 3]).is_err());
    assert!(OptionReply::decode(REP_META_CONTEXT, &[0, 0, 0, 1]).is_err());
    // Strings must be UTF-8 without NUL.
    assert!(ClientOption::decode(OPT_EXPORT_NAME, &[0xff]).is_err());
    assert!(ClientOption::decode(OPT_EXPORT_NAME, b"a\0b").is_err());
    // Bad magics.
    assert!(matches!(
        Request::decode(&[0u8; REQUEST_LEN]),
        Err(ProtoError::Magic { .. })
    ));
    assert!(ReplyHeader::len_for_magic([1, 2, 3, 4]).is_err());
}

#[test]
fn errno_and_option_names() {
    assert!(errno_name(EPERM).starts_with("EPERM"));
    assert!(errno_name(ENOSPC).starts_with("ENOSPC"));
    assert_eq!(errno_name(1234), "error 1234");
    assert_eq!(option_name(OPT_GO), "NBD_OPT_GO");
    assert!(reply_error_name(REP_ERR_UNKNOWN).contains("no such export"));
    assert_eq!(command_name(CMD_BLOCK_STATUS), "NBD_CMD_BLOCK_STATUS");
}

fn name() -> impl Strategy<Value = String> + Clone {
    "[a-zA-Z0-9:/._ é-]{0,40}"
}

fn client_option() -> impl Strategy<Value = ClientOption> {
    let info =
        || (name(), prop::collection::vec(any::<u16>(), 0..6)).prop_map(|(export, info)| InfoRequest { export, info });
    let meta = || {
        (name(), prop::collection::vec(name(), 0..5))
            .prop_map(|(export, queries)| MetaContextRequest { export, queries })
    };
    prop_oneof![
        name().prop_map(ClientOption::ExportName),
        Just(ClientOption::Abort),
        Just(ClientOption::List),
        Just(ClientOption::StartTls),
        Just(ClientOption::StructuredReply),
        info().prop_map(ClientOption::Info),
        info().prop_map(ClientOption::Go),
        meta().prop_map(ClientOption::ListMetaContext),
        meta().prop_map(ClientOption::SetMetaContext),
        (11u32..1000, prop::collection::vec(any::<u8>(), 0..50))
            .prop_map(|(option, data)| ClientOption::Unknown { option, data }),
    ]
}

fn option_reply() -> impl Strategy<Value = OptionReply> {
    prop_oneof![
        Just(OptionReply::Ack),
        (name(), name()).prop_map(|(name, description)| OptionReply::Server { name, description }),
        (any::<u64>(), any::<u16>()).prop_map(|(size, flags)| OptionReply::Info(Info::Export { size, flags })),
        name().prop_map(|n| OptionReply::Info(Info::Name(n))),
        name().prop_map(|n| OptionReply::Info(Info::Description(n))),
        (any::<u32>(), any::<u32>(), any::<u32>())
            .prop_map(|(min, preferred, max)| OptionReply::Info(Info::BlockSize { min, preferred, max })),
        (4u16..100, prop::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(kind, data)| OptionReply::Info(Info::Unknown { kind, data })),
        (any::<u32>(), "[a-z:-]{1,40}").prop_map(|(id, name)| OptionReply::MetaContext { id, name }),
        (1u32..100, "[ -~]{0,60}").prop_map(|(n, message)| OptionReply::Error {
            code: REP_FLAG_ERROR | n,
            message
        }),
        (5u32..1000, prop::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(reply, data)| OptionReply::Unknown { reply, data }),
    ]
}

fn chunk() -> impl Strategy<Value = Chunk<'static>> {
    prop_oneof![
        Just(Chunk::None),
        (any::<u64>(), prop::collection::vec(any::<u8>(), 1..100)).prop_map(|(offset, data)| Chunk::OffsetData {
            offset,
            data: Vec::leak(data)
        }),
        (any::<u64>(), 1u32..).prop_map(|(offset, length)| Chunk::OffsetHole { offset, length }),
        (
            any::<u32>(),
            prop::collection::vec(
                (1u32.., any::<u32>()).prop_map(|(length, flags)| Descriptor { length, flags }),
                1..20
            )
        )
            .prop_map(|(context, descriptors)| Chunk::BlockStatus { context, descriptors }),
        (1u32.., "[ -~]{0,60}", prop::option::of(any::<u64>())).prop_map(|(error, message, offset)| Chunk::Error {
            error,
            message,
            offset
        }),
    ]
}

proptest! {
    #[test]
    fn client_options_round_trip(opt in client_option()) {
        let mut b = Vec::new();
        opt.encode(&mut b);
        prop_assert_eq!(decode_option(&b), opt);
    }

    #[test]
    fn option_replies_round_trip(reply in option_reply(), option in any::<u32>()) {
        let mut b = Vec::new();
        reply.encode(option, &mut b);
        prop_assert_eq!(decode_reply(&b), (option, reply));
    }

    #[test]
    fn requests_and_reply_headers_round_trip(
        flags in any::<u16>(), kind in any::<u16>(), cookie in any::<u64>(), offset in any::<u64>(),
        length in any::<u32>(), error in any::<u32>(),
    ) {
        let r = Request { flags, kind, cookie, offset, length };
        prop_assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        let s = SimpleReply { error, cookie };
        let e = s.encode();
        prop_assert_eq!(ReplyHeader::len_for_magic([e[0], e[1], e[2], e[3]]).unwrap(), SIMPLE_REPLY_LEN);
        prop_assert_eq!(ReplyHeader::decode(&e).unwrap(), ReplyHeader::Simple(s));
        let h = ChunkHeader { flags, kind, cookie, length: length % (MAX_CHUNK_META + 1) };
        let e = h.encode();
        prop_assert_eq!(ReplyHeader::len_for_magic([e[0], e[1], e[2], e[3]]).unwrap(), CHUNK_HEADER_LEN);
        prop_assert_eq!(ReplyHeader::decode(&e).unwrap(), ReplyHeader::Chunk(h));
        let mut b = Vec::new();
        encode_export_name_reply(offset, flags, cookie % 2 == 0, &mut b);
        prop_assert_eq!(b.len(), if cookie % 2 == 0 { 10 } else { 134 });
        prop_assert_eq!(decode_export_name_reply(&b).unwrap(), (offset, flags));
        prop_assert_eq!(decode_greeting(&encode_greeting(flags | 1)).unwrap(), flags | 1);
    }

    #[test]
    fn chunks_round_trip(c in chunk(), flags in any::<u16>(), cookie in any::<u64>()) {
        let mut b = Vec::new();
        c.encode(flags, cookie, &mut b);
        let ReplyHeader::Chunk(h) = ReplyHeader::decode(&b[..CHUNK_HEADER_LEN]).unwrap() else {
            panic!("not a chunk")
        };
        prop_assert_eq!((h.flags, h.kind, h.cookie), (flags, c.kind(), cookie));
        prop_assert_eq!(h.length as usize, b.len() - CHUNK_HEADER_LEN);
        prop_assert_eq!(Chunk::decode(h.kind, &b[CHUNK_HEADER_LEN..]).unwrap(), c);
    }

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), code in any::<u32>()) {
        let _ = decode_greeting(&bytes);
        let _ = decode_export_name_reply(&bytes);
        let _ = OptionHeader::decode(&bytes);
        let _ = OptionReplyHeader::decode(&bytes);
        let _ = Request::decode(&bytes);
        let _ = ReplyHeader::decode(&bytes);
        if bytes.len() >= 4 {
            let _ = ReplyHeader::len_for_magic([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        for option in [code, code % 12, OPT_GO, OPT_SET_META_CONTEXT, OPT_LIST_META_CONTEXT, OPT_EXPORT_NAME] {
            let _ = ClientOption::decode(option, &bytes);
        }
        for reply in [code, code % 5, REP_SERVER, REP_INFO, REP_META_CONTEXT, REP_FLAG_ERROR | code] {
            let _ = OptionReply::decode(reply, &bytes);
        }
        for kind in [code as u16, (code % 6) as u16, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR, REPLY_TYPE_ERROR_OFFSET] {
            let _ = Chunk::decode(kind, &bytes);
        }
    }

    #[test]
    fn structured_decoders_never_panic(
        export in name(), n in any::<u32>(), tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        // Well-formed prefixes with hostile counts and tails reach deeper code.
        let mut b = Vec::new();
        b.extend_from_slice(&(export.len() as u32).to_be_bytes());
        b.extend_from_slice(export.as_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&tail);
        let _ = ClientOption::decode(OPT_SET_META_CONTEXT, &b);
        let _ = ClientOption::decode(OPT_GO, &b);
        let _ = OptionReply::decode(REP_SERVER, &b);
    }
}
