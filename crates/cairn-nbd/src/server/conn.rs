//! One server connection: option negotiation, then the request loop.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use cairn_disk::buf::AlignedBuf;

use super::{ExportEntry, NbdServer};
use crate::StatusExtent;
use crate::proto::{self, *};

/// The `base:allocation` context id this server hands out.
const BASE_ALLOCATION_ID: u32 = 1;
/// The most descriptors in one block status reply (clients ask again for the rest).
const MAX_DESCRIPTORS: usize = 128 << 10;

/// What negotiation settled.
struct Session {
    export: Arc<ExportEntry>,
    structured: bool,
    base_allocation: bool,
}

/// Serves one connection; `id` is its registry entry (None for bare streams).
/// `workers` > 0 serves requests on that many threads; 0 serves them inline.
pub(super) fn serve<R: Read, W: Write + Send>(
    server: &NbdServer,
    id: Option<u64>,
    mut reader: R,
    mut writer: W,
    workers: usize,
) -> io::Result<()> {
    let Some(session) = negotiate(server, &mut reader, &mut writer)? else {
        return Ok(());
    };
    if let Some(id) = id {
        server.set_conn_export(id, &session.export.name);
    }
    transmission(&session, reader, writer, workers)
}

/// Reads exactly `buf.len()` bytes; Ok(false) on a clean end of stream before the first byte.
fn read_or_eof<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) if done == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn transmission_flags(export: &ExportEntry, structured: bool) -> u16 {
    let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_CACHE | TFLAG_CAN_MULTI_CONN;
    if export.backend.writable() {
        f |= TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
    } else {
        f |= TFLAG_READ_ONLY;
    }
    if structured {
        f |= TFLAG_SEND_DF;
    }
    f
}

/// True when the metadata context query selects `base:allocation`.
fn selects_base_allocation(query: &str) -> bool {
    query == BASE_ALLOCATION || query == "base:"
}

/// Option haggling. Ok(None) when the client went away, aborted, or broke the protocol.
fn negotiate<R: Read, W: Write>(server: &NbdServer, r: &mut R, w: &mut W) -> io::Result<Option<Session>> {
    let Some(no_zeroes) = handshake(r, w)? else {
        return Ok(None);
    };
    let mut state = Negotiation {
        server,
        no_zeroes,
        structured: false,
        meta: None,
    };
    let mut out = Vec::new();
    let mut data = Vec::new();
    loop {
        let Some(option) = read_option(r, &mut data)? else {
            return Ok(None);
        };
        out.clear();
        match state.answer(option, &data, &mut out) {
            AfterOption::Continue => {}
            AfterOption::Start(session) => {
                w.write_all(&out)?;
                w.flush()?;
                return Ok(Some(session));
            }
            AfterOption::Abort => {
                let _ = w.write_all(&out).and_then(|()| w.flush());
                return Ok(None);
            }
            AfterOption::Hangup => return Ok(None),
        }
        w.write_all(&out)?;
        w.flush()?;
    }
}

/// Sends the greeting and reads the client's flags. Returns whether the client asked for no
/// zero padding; None when it went away or sent flags we do not know.
fn handshake<R: Read, W: Write>(r: &mut R, w: &mut W) -> io::Result<Option<bool>> {
    w.write_all(&encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))?;
    w.flush()?;
    let mut f = [0u8; 4];
    if !read_or_eof(r, &mut f)? {
        return Ok(None);
    }
    let cflags = u32::from_be_bytes(f);
    if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Ok(None);
    }
    Ok(Some(cflags & FLAG_C_NO_ZEROES != 0))
}

/// Reads the next option header and its data into `data`. Returns the option number; None
/// when the client went away or sent a bad header.
fn read_option<R: Read>(r: &mut R, data: &mut Vec<u8>) -> io::Result<Option<u32>> {
    let mut h = [0u8; OPTION_HEADER_LEN];
    if !read_or_eof(r, &mut h)? {
        return Ok(None);
    }
    let Ok(h) = OptionHeader::decode(&h) else {
        return Ok(None);
    };
    data.resize(h.length as usize, 0);
    r.read_exact(data)?;
    Ok(Some(h.option))
}

/// What follows an option's reply.
enum AfterOption {
    /// Send the reply and read the next option.
    Continue,
    /// Send the reply and enter transmission.
    Start(Session),
    /// Send the reply if possible, then close.
    Abort,
    /// Close without a reply.
    Hangup,
}

/// The state negotiation builds up, option by option.
struct Negotiation<'a> {
    /// The server whose exports are looked up.
    server: &'a NbdServer,
    /// The client asked for no zero padding after the export name reply.
    no_zeroes: bool,
    /// Structured replies were negotiated.
    structured: bool,
    /// The export `base:allocation` was selected for, if any.
    meta: Option<String>,
}

impl Negotiation<'_> {
    /// Encodes the reply to option number `option` with `data` into `out`.
    fn answer(&mut self, option: u32, data: &[u8], out: &mut Vec<u8>) -> AfterOption {
        match ClientOption::decode(option, data) {
            Err(e) => reply_err(option, out, REP_ERR_INVALID, e.to_string()),
            Ok(ClientOption::ExportName(name)) => return self.export_name(&name, out),
            Ok(ClientOption::Abort) => {
                OptionReply::Ack.encode(option, out);
                return AfterOption::Abort;
            }
            Ok(ClientOption::List) => self.list(option, out),
            Ok(ClientOption::StartTls) => reply_err(option, out, REP_ERR_UNSUP, "TLS is not supported".into()),
            Ok(ClientOption::StructuredReply) => self.structured_reply(option, out),
            Ok(ClientOption::Info(req)) | Ok(ClientOption::Go(req)) => return self.info_or_go(option, &req, out),
            Ok(ClientOption::ListMetaContext(req)) | Ok(ClientOption::SetMetaContext(req)) => {
                self.meta_context(option, &req, out)
            }
            Ok(ClientOption::Unknown { option: unknown, .. }) => reply_err(
                option,
                out,
                REP_ERR_UNSUP,
                format!("{} is not supported", proto::option_name(unknown)),
            ),
        }
        AfterOption::Continue
    }

    /// The session on `export` with what was negotiated so far.
    fn session(&self, export: Arc<ExportEntry>) -> Session {
        let base_allocation = self.structured && self.meta.as_deref() == Some(export.name.as_str());
        Session {
            export,
            structured: self.structured,
            base_allocation,
        }
    }

    /// `NBD_OPT_EXPORT_NAME`: starts on the export, or hangs up when there is none of that
    /// name (the protocol allows no error reply here).
    fn export_name(&self, name: &str, out: &mut Vec<u8>) -> AfterOption {
        let Some(export) = self.server.lookup(name) else {
            return AfterOption::Hangup;
        };
        let flags = transmission_flags(&export, self.structured);
        encode_export_name_reply(export.backend.size(), flags, self.no_zeroes, out);
        AfterOption::Start(self.session(export))
    }

    /// `NBD_OPT_LIST`: one reply per export.
    fn list(&self, option: u32, out: &mut Vec<u8>) {
        for e in self.server.all_exports() {
            OptionReply::Server {
                name: e.name.clone(),
                description: e.description.clone(),
            }
            .encode(option, out);
        }
        OptionReply::Ack.encode(option, out);
    }

    /// `NBD_OPT_STRUCTURED_REPLY`: turns structured replies on (once).
    fn structured_reply(&mut self, option: u32, out: &mut Vec<u8>) {
        if self.structured {
            reply_err(
                option,
                out,
                REP_ERR_INVALID,
                "structured replies already negotiated".into(),
            );
        } else {
            self.structured = true;
            OptionReply::Ack.encode(option, out);
        }
    }

    /// `NBD_OPT_INFO` and `NBD_OPT_GO`: describes the export; `GO` then starts on it.
    fn info_or_go(&self, option: u32, req: &InfoRequest, out: &mut Vec<u8>) -> AfterOption {
        let Some(export) = self.server.lookup(&req.export) else {
            reply_err(
                option,
                out,
                REP_ERR_UNKNOWN,
                format!("no export named {:?}", req.export),
            );
            return AfterOption::Continue;
        };
        let flags = transmission_flags(&export, self.structured);
        let info = |i: Info, out: &mut Vec<u8>| OptionReply::Info(i).encode(option, out);
        info(
            Info::Export {
                size: export.backend.size(),
                flags,
            },
            out,
        );
        for kind in &req.info {
            match *kind {
                INFO_NAME => info(Info::Name(export.name.clone()), out),
                INFO_DESCRIPTION if !export.description.is_empty() => {
                    info(Info::Description(export.description.clone()), out)
                }
                INFO_BLOCK_SIZE => info(
                    Info::BlockSize {
                        min: 1,
                        preferred: 4096,
                        max: MAX_PAYLOAD,
                    },
                    out,
                ),
                _ => {}
            }
        }
        OptionReply::Ack.encode(option, out);
        if option == OPT_GO {
            AfterOption::Start(self.session(export))
        } else {
            AfterOption::Continue
        }
    }

    /// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`: offers `base:allocation`,
    /// and `SET` selects it (or nothing) for the export.
    fn meta_context(&mut self, option: u32, req: &MetaContextRequest, out: &mut Vec<u8>) {
        let set = option == OPT_SET_META_CONTEXT;
        if !self.structured {
            reply_err(
                option,
                out,
                REP_ERR_INVALID,
                "negotiate structured replies first".into(),
            );
            return;
        }
        let Some(export) = self.server.lookup(&req.export) else {
            reply_err(
                option,
                out,
                REP_ERR_UNKNOWN,
                format!("no export named {:?}", req.export),
            );
            return;
        };
        let selected = if set {
            req.queries.iter().any(|q| selects_base_allocation(q))
        } else {
            req.queries.is_empty() || req.queries.iter().any(|q| selects_base_allocation(q))
        };
        if selected {
            OptionReply::MetaContext {
                id: if set { BASE_ALLOCATION_ID } else { 0 },
                name: BASE_ALLOCATION.into(),
            }
            .encode(option, out);
        }
        if set {
            self.meta = selected.then(|| export.name.clone());
        }
        OptionReply::Ack.encode(option, out);
    }
}

/// Encodes an error reply to `option`.
fn reply_err(option: u32, out: &mut Vec<u8>, code: u32, message: String) {
    OptionReply::Error { code, message }.encode(option, out);
}

/// A request with its write payload, handed to a worker.
struct Job {
    req: Request,
    payload: Vec<u8>,
}

/// Per-worker buffers, reused across requests.
struct Scratch {
    buf: AlignedBuf,
    out: Vec<u8>,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            buf: AlignedBuf::new(0),
            out: Vec::new(),
        }
    }
}

enum Next {
    Request(Job),
    Disconnect,
}

/// Reads the next request (and its write payload). Ok(Disconnect) at the end
/// of the stream, on `NBD_CMD_DISC`, and on a malformed request.
fn next_request<R: Read>(r: &mut R, payload: Vec<u8>) -> io::Result<Next> {
    let mut h = [0u8; REQUEST_LEN];
    if !read_or_eof(r, &mut h)? {
        return Ok(Next::Disconnect);
    }
    let Ok(req) = Request::decode(&h) else {
        return Ok(Next::Disconnect);
    };
    let mut payload = payload;
    payload.clear();
    match req.kind {
        CMD_DISC => return Ok(Next::Disconnect),
        CMD_WRITE => {
            // A payload this large cannot be skipped safely: end the connection.
            if req.length > MAX_PAYLOAD {
                return Ok(Next::Disconnect);
            }
            payload.resize(req.length as usize, 0);
            r.read_exact(&mut payload)?;
        }
        _ => {}
    }
    Ok(Next::Request(Job { req, payload }))
}

fn transmission<R: Read, W: Write + Send>(s: &Session, mut reader: R, writer: W, workers: usize) -> io::Result<()> {
    let writer = Mutex::new(writer);
    if workers == 0 {
        let mut scratch = Scratch::new();
        let mut payload = Vec::new();
        loop {
            match next_request(&mut reader, std::mem::take(&mut payload))? {
                Next::Disconnect => return Ok(()),
                Next::Request(job) => {
                    handle(s, &job.req, &job.payload, &writer, &mut scratch)?;
                    payload = job.payload;
                }
            }
        }
    }
    let failed = AtomicBool::new(false);
    let pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let (tx, rx) = mpsc::sync_channel::<Job>(workers * 4);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut scratch = Scratch::new();
                loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    if failed.load(Ordering::Relaxed) {
                        continue; // drain the queue without answering
                    }
                    if handle(s, &job.req, &job.payload, &writer, &mut scratch).is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    if let Ok(mut p) = pool.lock()
                        && p.len() < workers * 2
                    {
                        p.push(job.payload);
                    }
                }
            });
        }
        let result = loop {
            if failed.load(Ordering::Relaxed) {
                break Ok(());
            }
            let payload = pool.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default();
            match next_request(&mut reader, payload) {
                Ok(Next::Request(job)) => {
                    if tx.send(job).is_err() {
                        break Ok(());
                    }
                }
                Ok(Next::Disconnect) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        drop(tx);
        result
    })
}

/// Maps an I/O error from a backend to an NBD error number.
fn errno_of(e: &io::Error) -> u32 {
    if let Some(code) = e.raw_os_error() {
        let code = code as u32;
        if [EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN].contains(&code) {
            return code;
        }
    }
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => EPERM,
        io::ErrorKind::InvalidInput => EINVAL,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ENOSPC,
        io::ErrorKind::OutOfMemory => ENOMEM,
        io::ErrorKind::Unsupported => ENOTSUP,
        _ => EIO,
    }
}

/// Clips backend extents to `[offset, offset + length)`, fills gaps with
/// data, and merges neighbours: whatever a backend returns, the result
/// covers the range exactly once.
fn sanitize(mut v: Vec<StatusExtent>, offset: u64, length: u64) -> Vec<StatusExtent> {
    v.sort_by_key(|e| e.offset);
    let end = offset + length;
    let mut out = Vec::with_capacity(v.len() + 1);
    let mut pos = offset;
    for e in v {
        let s = e.offset.max(pos);
        let t = e.offset.saturating_add(e.length).min(end);
        if s >= t {
            continue;
        }
        crate::export::push_status(&mut out, pos, s - pos, 0);
        crate::export::push_status(&mut out, s, t - s, e.flags);
        pos = t;
    }
    crate::export::push_status(&mut out, pos, end - pos, 0);
    out
}

fn send<W: Write>(writer: &Mutex<W>, bytes: &[u8]) -> io::Result<()> {
    let mut w = writer.lock().map_err(|_| io::Error::other("writer lock poisoned"))?;
    w.write_all(bytes)?;
    w.flush()
}

/// Answers a request without payload: a simple reply, or (structured) an error chunk with a message.
fn reply<W: Write>(
    s: &Session,
    writer: &Mutex<W>,
    sc: &mut Scratch,
    cookie: u64,
    error: u32,
    msg: &str,
) -> io::Result<()> {
    if error == 0 {
        return send(writer, &SimpleReply { error: 0, cookie }.encode());
    }
    if s.structured {
        sc.out.clear();
        Chunk::Error {
            error,
            message: msg.to_string(),
            offset: None,
        }
        .encode(REPLY_FLAG_DONE, cookie, &mut sc.out);
        send(writer, &sc.out)
    } else {
        send(writer, &SimpleReply { error, cookie }.encode())
    }
}

/// Serves one request. Err only when the reply cannot be sent.
fn handle<W: Write>(s: &Session, req: &Request, payload: &[u8], writer: &Mutex<W>, sc: &mut Scratch) -> io::Result<()> {
    let backend = &s.export.backend;
    let size = backend.size();
    let len = u64::from(req.length);
    let cookie = req.cookie;
    let what = || proto::command_name(req.kind);
    if s.export.removed.load(Ordering::Acquire) {
        return reply(s, writer, sc, cookie, ESHUTDOWN, "the export was removed");
    }
    let in_range = req.offset.checked_add(len).is_some_and(|e| e <= size);
    let range_msg = || {
        format!(
            "{} of {len} bytes at {} is outside the export's {size} bytes",
            what(),
            req.offset
        )
    };
    let fua = |r: io::Result<()>| {
        r.and_then(|()| {
            if req.flags & CMD_FLAG_FUA != 0 {
                backend.flush()
            } else {
                Ok(())
            }
        })
    };
    let result = |s: &Session, sc: &mut Scratch, r: io::Result<()>| match r {
        Ok(()) => reply(s, writer, sc, cookie, 0, ""),
        Err(e) => reply(s, writer, sc, cookie, errno_of(&e), &format!("{}: {e}", what())),
    };
    match req.kind {
        CMD_READ => read(s, req, writer, sc),
        CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM => {
            if !backend.writable() {
                return reply(s, writer, sc, cookie, EPERM, "the export is read-only");
            }
            if !in_range {
                let errno = if req.kind == CMD_TRIM { EINVAL } else { ENOSPC };
                return reply(s, writer, sc, cookie, errno, &range_msg());
            }
            let r = match req.kind {
                CMD_WRITE => backend.write_at(payload, req.offset),
                CMD_WRITE_ZEROES => backend.write_zeroes(req.offset, len),
                _ => Ok(()), // TRIM is advisory: the data may stay
            };
            result(s, sc, fua(r))
        }
        CMD_FLUSH => result(s, sc, backend.flush()),
        CMD_CACHE => {
            if !in_range {
                return reply(s, writer, sc, cookie, EINVAL, &range_msg());
            }
            reply(s, writer, sc, cookie, 0, "")
        }
        CMD_BLOCK_STATUS => {
            if !s.structured || !s.base_allocation {
                return reply(s, writer, sc, cookie, EINVAL, "no metadata context was negotiated");
            }
            if len == 0 || !in_range {
                return reply(s, writer, sc, cookie, EINVAL, &range_msg());
            }
            let extents = match backend.block_status(req.offset, len) {
                Ok(v) => sanitize(v, req.offset, len),
                Err(e) => return reply(s, writer, sc, cookie, errno_of(&e), &format!("{}: {e}", what())),
            };
            let mut descriptors: Vec<Descriptor> = extents
                .iter()
                .map(|e| Descriptor {
                    length: e.length as u32,
                    flags: e.flags,
                })
                .collect();
            let keep = if req.flags & CMD_FLAG_REQ_ONE != 0 {
                1
            } else {
                MAX_DESCRIPTORS
            };
            descriptors.truncate(keep);
            sc.out.clear();
            Chunk::BlockStatus {
                context: BASE_ALLOCATION_ID,
                descriptors,
            }
            .encode(REPLY_FLAG_DONE, cookie, &mut sc.out);
            send(writer, &sc.out)
        }
        _ => reply(s, writer, sc, cookie, EINVAL, &format!("{} is not supported", what())),
    }
}

/// `NBD_CMD_READ`: data and hole chunks with structured replies, else a simple reply with the data.
fn read<W: Write>(s: &Session, req: &Request, writer: &Mutex<W>, sc: &mut Scratch) -> io::Result<()> {
    let backend = &s.export.backend;
    let size = backend.size();
    let len = u64::from(req.length);
    let cookie = req.cookie;
    if req.length > MAX_PAYLOAD {
        let msg = format!("a read of {len} bytes exceeds the maximum of {MAX_PAYLOAD}");
        return reply(s, writer, sc, cookie, EINVAL, &msg);
    }
    if req.offset.checked_add(len).is_none_or(|e| e > size) {
        let msg = format!(
            "a read of {len} bytes at {} is outside the export's {size} bytes",
            req.offset
        );
        return reply(s, writer, sc, cookie, EINVAL, &msg);
    }
    if len == 0 {
        if s.structured {
            sc.out.clear();
            Chunk::None.encode(REPLY_FLAG_DONE, cookie, &mut sc.out);
            return send(writer, &sc.out);
        }
        return reply(s, writer, sc, cookie, 0, "");
    }
    sc.buf.resize(len as usize);
    let extents = if s.structured && req.flags & CMD_FLAG_DF == 0 {
        match backend.block_status(req.offset, len) {
            Ok(v) => sanitize(v, req.offset, len),
            Err(_) => sanitize(Vec::new(), req.offset, len),
        }
    } else {
        sanitize(Vec::new(), req.offset, len)
    };
    for e in extents.iter().filter(|e| e.flags & STATE_ZERO == 0) {
        let at = (e.offset - req.offset) as usize;
        if let Err(err) = backend.read_at(&mut sc.buf[at..at + e.length as usize], e.offset) {
            let msg = format!("NBD_CMD_READ of {} bytes at {}: {err}", e.length, e.offset);
            return reply(s, writer, sc, cookie, errno_of(&err), &msg);
        }
    }
    let mut w = writer.lock().map_err(|_| io::Error::other("writer lock poisoned"))?;
    if !s.structured {
        w.write_all(&SimpleReply { error: 0, cookie }.encode())?;
        w.write_all(&sc.buf)?;
        return w.flush();
    }
    let last = extents.len() - 1;
    for (i, e) in extents.iter().enumerate() {
        let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
        if e.flags & STATE_ZERO != 0 {
            let h = ChunkHeader {
                flags,
                kind: REPLY_TYPE_OFFSET_HOLE,
                cookie,
                length: 12,
            };
            let mut b = [0u8; CHUNK_HEADER_LEN + 12];
            b[..CHUNK_HEADER_LEN].copy_from_slice(&h.encode());
            b[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + 8].copy_from_slice(&e.offset.to_be_bytes());
            b[CHUNK_HEADER_LEN + 8..].copy_from_slice(&(e.length as u32).to_be_bytes());
            w.write_all(&b)?;
        } else {
            let h = ChunkHeader {
                flags,
                kind: REPLY_TYPE_OFFSET_DATA,
                cookie,
                length: 8 + e.length as u32,
            };
            let mut b = [0u8; CHUNK_HEADER_LEN + 8];
            b[..CHUNK_HEADER_LEN].copy_from_slice(&h.encode());
            b[CHUNK_HEADER_LEN..].copy_from_slice(&e.offset.to_be_bytes());
            w.write_all(&b)?;
            let at = (e.offset - req.offset) as usize;
            w.write_all(&sc.buf[at..at + e.length as usize])?;
        }
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(offset: u64, length: u64, flags: u32) -> StatusExtent {
        StatusExtent { offset, length, flags }
    }

    #[test]
    fn sanitize_clips_fills_and_merges() {
        let v = vec![x(50, 100, 3), x(0, 20, 0), x(10, 5, 3), x(u64::MAX - 1, 5, 3)];
        let got = sanitize(v, 5, 100);
        assert_eq!(got, vec![x(5, 45, 0), x(50, 55, 3)]);
        assert_eq!(sanitize(Vec::new(), 7, 3), vec![x(7, 3, 0)]);
    }
}
