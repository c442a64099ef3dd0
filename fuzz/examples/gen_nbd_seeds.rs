//! Writes the seed inputs of the NBD fuzz targets under
//! `fuzz/seeds/nbd_client_replies/` and `fuzz/seeds/nbd_server_requests/`:
//! `cargo run --example gen_nbd_seeds` (from `fuzz/`). Most seeds are
//! recorded: cairn's client talks to cairn's server over a socket pair and
//! both directions are captured (what the server sent seeds the client
//! target, what the client sent seeds the server target); a few cover
//! paths cairn's own peers never take (simple replies, the
//! `NBD_OPT_EXPORT_NAME` fallback, option errors, odd requests).

#[path = "../fuzz_targets/nbd_common.rs"]
mod nbd_common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cairn_nbd::proto::*;
use cairn_nbd::{ClientOptions, NbdClient};

fn write(target: &str, name: &str, mode: u8, body: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = vec![mode];
    bytes.extend_from_slice(body);
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A stream half that copies what passes through it into a log.
struct Tap {
    inner: UnixStream,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.log.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.log.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Runs `client` against cairn's server (server mode `mode`); returns
/// (client-to-server bytes, server-to-client bytes).
fn record(mode: u8, client: impl FnOnce(UnixStream, UnixStream)) -> (Vec<u8>, Vec<u8>) {
    let (a, b) = UnixStream::pair().unwrap();
    let c2s = Arc::new(Mutex::new(Vec::new()));
    let s2c = Arc::new(Mutex::new(Vec::new()));
    let (r, w) = (
        Tap {
            inner: a.try_clone().unwrap(),
            log: Arc::clone(&c2s),
        },
        Tap {
            inner: a,
            log: Arc::clone(&s2c),
        },
    );
    let server = nbd_common::server(mode);
    let t = std::thread::spawn(move || {
        let _ = server.serve_stream(r, w);
    });
    client(b.try_clone().unwrap(), b);
    t.join().unwrap();
    let (c2s, s2c) = (c2s.lock().unwrap().clone(), s2c.lock().unwrap().clone());
    (c2s, s2c)
}

fn option(out: &mut Vec<u8>, o: ClientOption) {
    o.encode(out);
}

fn reply(out: &mut Vec<u8>, option: u32, r: OptionReply) {
    r.encode(option, out);
}

fn request(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, offset: u64, length: u32) {
    out.extend_from_slice(
        &Request {
            flags,
            kind,
            cookie,
            offset,
            length,
        }
        .encode(),
    );
}

fn main() {
    // Recorded sessions of the client target's own sequence, per context choice.
    for (i, mode) in [0u8, 2, 4].into_iter().enumerate() {
        let (c2s, s2c) = record(1, |r, w| nbd_common::client_session(r, w, mode));
        write("nbd_client_replies", &format!("session-contexts-{i}"), mode, &s2c);
        write("nbd_server_requests", &format!("client-session-contexts-{i}"), 1, &c2s);
    }

    // A client writing into the copy-on-write export.
    let (c2s, _) = record(2, |r, w| {
        let opts = ClientOptions {
            export: "rw".into(),
            meta_contexts: vec![BASE_ALLOCATION.into()],
            timeout: None,
        };
        let mut c = NbdClient::from_streams(r, w, "seed", &opts).unwrap();
        c.write(100, &[7u8; 700]).unwrap();
        c.write(65536 - 10, &[8u8; 20]).unwrap();
        c.write(c.size() - 5, &[9u8; 5]).unwrap();
        let mut buf = vec![0u8; 70_000];
        c.read(0, &mut buf).unwrap();
        c.block_status(BASE_ALLOCATION, 0, c.size()).unwrap();
        c.flush().unwrap();
        c.disconnect().unwrap();
    });
    write("nbd_server_requests", "cow-writes", 2, &c2s);

    // Options cairn's client never sends, then odd requests after EXPORT_NAME.
    let mut c = Vec::new();
    c.extend_from_slice(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
    option(&mut c, ClientOption::List);
    option(&mut c, ClientOption::StartTls);
    option(
        &mut c,
        ClientOption::Unknown {
            option: 42,
            data: vec![1, 2, 3],
        },
    );
    option(
        &mut c,
        ClientOption::Info(InfoRequest {
            export: "ro".into(),
            info: vec![INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, 99],
        }),
    );
    option(
        &mut c,
        ClientOption::Info(InfoRequest {
            export: "missing".into(),
            info: vec![],
        }),
    );
    option(
        &mut c,
        ClientOption::ListMetaContext(MetaContextRequest {
            export: "rw".into(),
            queries: vec![],
        }),
    );
    option(&mut c, ClientOption::StructuredReply);
    option(&mut c, ClientOption::StructuredReply);
    option(
        &mut c,
        ClientOption::ListMetaContext(MetaContextRequest {
            export: "rw".into(),
            queries: vec!["base:".into(), "x-y:z".into()],
        }),
    );
    option(
        &mut c,
        ClientOption::SetMetaContext(MetaContextRequest {
            export: "rw".into(),
            queries: vec![BASE_ALLOCATION.into()],
        }),
    );
    option(&mut c, ClientOption::ExportName("rw".into()));
    request(&mut c, CMD_FLAG_FUA, CMD_WRITE, 1, 4000, 200);
    c.extend_from_slice(&[0x5a; 200]);
    request(&mut c, 0, CMD_WRITE_ZEROES, 2, 0, 70_000);
    request(&mut c, CMD_FLAG_FUA, CMD_TRIM, 3, 4096, 4096);
    request(&mut c, 0, CMD_CACHE, 4, 0, 1 << 20);
    request(&mut c, CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 5, 1000, 100_000);
    request(&mut c, 0, CMD_BLOCK_STATUS, 6, 0, 1 << 20);
    request(&mut c, CMD_FLAG_DF, CMD_READ, 7, 0, 8192);
    request(&mut c, 0, CMD_READ, 8, 3000, 70_000);
    request(&mut c, 0, CMD_READ, 9, (1 << 20) + 900, 200);
    request(&mut c, 0, CMD_FLUSH, 10, 0, 0);
    request(&mut c, 0, 77, 11, 0, 0);
    request(&mut c, 0, CMD_DISC, 12, 0, 0);
    write("nbd_server_requests", "options-and-odd-requests", 0, &c);

    // A server without structured replies, answering with simple replies.
    let size = 8192u64;
    let mut s = encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_vec();
    reply(
        &mut s,
        OPT_STRUCTURED_REPLY,
        OptionReply::Error {
            code: REP_ERR_UNSUP,
            message: "no".into(),
        },
    );
    reply(
        &mut s,
        OPT_GO,
        OptionReply::Info(Info::Export {
            size,
            flags: TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH,
        }),
    );
    reply(
        &mut s,
        OPT_GO,
        OptionReply::Info(Info::BlockSize {
            min: 1,
            preferred: 512,
            max: 4096,
        }),
    );
    reply(&mut s, OPT_GO, OptionReply::Ack);
    for cookie in 1..=2u64 {
        s.extend_from_slice(&SimpleReply { error: 0, cookie }.encode());
        s.extend_from_slice(&vec![cookie as u8; 4096]);
    }
    s.extend_from_slice(
        &SimpleReply {
            error: EPERM,
            cookie: 3,
        }
        .encode(),
    );
    s.extend_from_slice(&SimpleReply { error: 0, cookie: 4 }.encode());
    write("nbd_client_replies", "simple-replies", 2, &s);

    // A server without NBD_OPT_GO: the NBD_OPT_EXPORT_NAME fallback, with zeroes.
    let mut s = encode_greeting(FLAG_FIXED_NEWSTYLE).to_vec();
    reply(&mut s, OPT_STRUCTURED_REPLY, OptionReply::Ack);
    reply(
        &mut s,
        OPT_GO,
        OptionReply::Error {
            code: REP_ERR_UNSUP,
            message: String::new(),
        },
    );
    encode_export_name_reply(4096, TFLAG_HAS_FLAGS, false, &mut s);
    let mut chunks = Vec::new();
    Chunk::OffsetHole {
        offset: 0,
        length: 1000,
    }
    .encode(0, 1, &mut chunks);
    Chunk::Error {
        error: EIO,
        message: "bad sector".into(),
        offset: Some(2000),
    }
    .encode(0, 1, &mut chunks);
    Chunk::OffsetData {
        offset: 1000,
        data: &[3u8; 3096],
    }
    .encode(REPLY_FLAG_DONE, 1, &mut chunks);
    s.extend_from_slice(&chunks);
    write("nbd_client_replies", "export-name-fallback", 0, &s);

    // The pure decoders: a chunk type and its payload; a whole chunk.
    let mut chunk = Vec::new();
    Chunk::BlockStatus {
        context: 1,
        descriptors: vec![Descriptor { length: 4096, flags: 3 }],
    }
    .encode(0, 9, &mut chunk);
    let mut b = vec![REPLY_TYPE_BLOCK_STATUS as u8];
    b.extend_from_slice(&chunk[CHUNK_HEADER_LEN..]);
    write("nbd_client_replies", "decoders-payload", 1, &b);
    write("nbd_client_replies", "decoders-chunk", 1, &chunk);
}
