//! The NBD client: one connection to one export.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::proto::{self, Chunk, ClientOption, ReplyHeader, Request};
use crate::{ClientOptions, Endpoint, Error, Result, StatusExtent};

mod negotiate;

/// Requests of one `read` call in flight at once.
const MAX_IN_FLIGHT: usize = 16;
/// Reads are split into pieces of at most this size (or the server's maximum
/// block size if smaller) and pipelined: servers work on several pieces at
/// once and the transfer overlaps their disk reads (measured here: a 32 MiB
/// read from cairn's server runs about twice as fast as one 32 MiB request).
const READ_PIECE: u64 = 1 << 20;
/// The largest `NBD_CMD_BLOCK_STATUS` length asked for in one request.
const MAX_STATUS_REQUEST: u64 = 1 << 31;
/// Socket buffer sizes: data goes straight into the caller's buffer when it
/// is larger, so this only batches headers and small chunks.
const BUF_SIZE: usize = 256 << 10;

/// One connection to an NBD export (fixed newstyle negotiation with
/// `NBD_OPT_GO`, structured replies, metadata contexts).
///
/// Requests are synchronous from the caller's point of view; a large
/// [`read`](NbdClient::read) is split at the server's maximum block size and
/// its pieces are pipelined. After an I/O or protocol error the connection
/// is unusable and every call returns [`Error::Broken`]; an error the server
/// reports for one command ([`Error::Command`]) leaves it usable.
pub struct NbdClient {
    export: String,
    peer: String,
    reader: BufReader<Box<dyn Read + Send>>,
    writer: BufWriter<Box<dyn Write + Send>>,
    timeout: Option<Duration>,
    size: u64,
    flags: u16,
    structured: bool,
    /// Accepted contexts: (server id, name).
    contexts: Vec<(u32, String)>,
    context_names: Vec<String>,
    max_block: u32,
    next_cookie: u64,
    broken: Option<String>,
    closed: bool,
    /// Reused buffer for chunk and option payloads.
    payload: Vec<u8>,
    /// Reused state of the pieces of a read.
    read_slots: Vec<Piece>,
}

/// Per-piece state of a pipelined read.
#[derive(Default)]
struct Piece {
    cookie: u64,
    offset: u64,
    len: u64,
    /// Covered byte ranges (absolute), sorted and disjoint.
    covered: Vec<(u64, u64)>,
    covered_len: u64,
    done: bool,
    failed: bool,
}

impl NbdClient {
    /// Connects to `opts.export` at `ep`: fixed newstyle negotiation,
    /// structured replies, `opts.meta_contexts` (the server may accept only
    /// some, see [`meta_contexts`](Self::meta_contexts)), then `NBD_OPT_GO`
    /// (falling back to `NBD_OPT_EXPORT_NAME` on servers without it). TCP
    /// connections get `TCP_NODELAY`.
    pub fn connect(ep: &Endpoint, opts: &ClientOptions) -> Result<Self> {
        let peer = ep.to_string();
        let io_err = |op: &str, source: io::Error| Error::Io {
            export: opts.export.clone(),
            endpoint: peer.clone(),
            op: op.to_string(),
            source,
        };
        let (reader, writer): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match ep {
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path).map_err(|e| io_err("connect", e))?;
                s.set_read_timeout(opts.timeout).map_err(|e| io_err("set timeout", e))?;
                s.set_write_timeout(opts.timeout)
                    .map_err(|e| io_err("set timeout", e))?;
                let r = s.try_clone().map_err(|e| io_err("clone socket", e))?;
                (Box::new(r), Box::new(s))
            }
            Endpoint::Tcp(addr) => {
                let s = connect_tcp(addr, opts.timeout).map_err(|e| io_err("connect", e))?;
                s.set_nodelay(true).map_err(|e| io_err("set TCP_NODELAY", e))?;
                s.set_read_timeout(opts.timeout).map_err(|e| io_err("set timeout", e))?;
                s.set_write_timeout(opts.timeout)
                    .map_err(|e| io_err("set timeout", e))?;
                let r = s.try_clone().map_err(|e| io_err("clone socket", e))?;
                (Box::new(r), Box::new(s))
            }
        };
        Self::from_streams(reader, writer, &peer, opts)
    }

    /// Negotiates over an already connected stream, given as its reading and
    /// writing halves (for sockets, a `try_clone` of each other). `peer` names
    /// the server in messages. [`connect`](Self::connect) uses this; so do the
    /// fuzz targets, with in-memory streams.
    pub fn from_streams<R, W>(reader: R, writer: W, peer: &str, opts: &ClientOptions) -> Result<Self>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let mut c = NbdClient {
            export: opts.export.clone(),
            peer: peer.to_string(),
            reader: BufReader::with_capacity(BUF_SIZE, Box::new(reader)),
            writer: BufWriter::with_capacity(BUF_SIZE, Box::new(writer)),
            timeout: opts.timeout,
            size: 0,
            flags: 0,
            structured: false,
            contexts: Vec::new(),
            context_names: Vec::new(),
            max_block: proto::MAX_PAYLOAD,
            next_cookie: 1,
            broken: None,
            closed: false,
            payload: Vec::new(),
            read_slots: Vec::new(),
        };
        if let Err(e) = c.negotiate(opts) {
            if matches!(e, Error::Refused { .. }) {
                // Still in negotiation: say goodbye so the server does not log an error.
                let _ = c.send_option(&ClientOption::Abort);
            }
            c.closed = true;
            return Err(e);
        }
        Ok(c)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The metadata contexts the server accepted, by name.
    pub fn meta_contexts(&self) -> &[String] {
        &self.context_names
    }

    /// The transmission flags the server sent (`proto::TFLAG_*`).
    pub fn transmission_flags(&self) -> u16 {
        self.flags
    }

    /// True when the server marked the export read-only.
    pub fn read_only(&self) -> bool {
        self.flags & proto::TFLAG_READ_ONLY != 0
    }

    /// The largest payload of one request: the server's maximum block size
    /// (`NBD_INFO_BLOCK_SIZE`), at most 32 MiB; 32 MiB when the server sent none.
    pub fn max_block_size(&self) -> u32 {
        self.max_block
    }

    /// True when structured replies were negotiated (needed for block status).
    pub fn structured_replies(&self) -> bool {
        self.structured
    }

    /// Reads `buf.len()` bytes at `offset`. Reads are split into pieces of
    /// at most 1 MiB (or the server's maximum block size, if smaller), up to
    /// 16 of them in flight; hole chunks read as zeros. Every
    /// chunk must lie inside its request, chunks must not overlap, and the
    /// whole range must be covered, or the connection fails with a protocol error.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.usable()?;
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut slots = std::mem::take(&mut self.read_slots);
        let r = self.read_inner(offset, buf, &mut slots);
        self.read_slots = slots;
        self.fail_on_fatal(r)
    }

    /// Writes `data` at `offset` (split at the maximum block size).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.usable()?;
        self.check_range(offset, data.len() as u64)?;
        let max = self.max_block as usize;
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(max);
            let r = self.command(
                proto::CMD_WRITE,
                0,
                offset + done as u64,
                n as u32,
                Some(&data[done..done + n]),
            );
            self.fail_on_fatal(r)?;
            done += n;
        }
        Ok(())
    }

    /// Asks the server to make written data durable (`NBD_CMD_FLUSH`); a no-op
    /// when the server does not advertise flush support.
    pub fn flush(&mut self) -> Result<()> {
        self.usable()?;
        if self.flags & proto::TFLAG_SEND_FLUSH == 0 {
            return Ok(());
        }
        let r = self.command(proto::CMD_FLUSH, 0, 0, 0, None);
        self.fail_on_fatal(r)
    }

    /// The extents of `[offset, offset + length)` under the negotiated metadata
    /// `context`, covering the range exactly (descriptors past its end are cut),
    /// with neighbours of equal flags merged. Repeats `NBD_CMD_BLOCK_STATUS`
    /// until the range is covered, since servers may answer for less.
    pub fn block_status(&mut self, context: &str, offset: u64, length: u64) -> Result<Vec<StatusExtent>> {
        self.usable()?;
        let Some(&(id, _)) = self.contexts.iter().find(|(_, n)| n == context) else {
            return Err(Error::NoContext {
                export: self.export.clone(),
                context: context.to_string(),
                accepted: self.context_names.clone(),
            });
        };
        self.check_range(offset, length)?;
        let end = offset + length;
        let mut out: Vec<StatusExtent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let len = (end - pos).min(MAX_STATUS_REQUEST);
            let r = self.block_status_once(id, pos, len, &mut out);
            pos = self.fail_on_fatal(r)?;
        }
        Ok(out)
    }

    /// Ends the connection politely (`NBD_CMD_DISC`).
    pub fn disconnect(mut self) -> Result<()> {
        self.usable()?;
        self.closed = true;
        self.send_disc()
    }

    // -----------------------------------------------------------------
    // Transmission

    /// The pipelined read; `slots` holds the state of pieces in flight
    /// (reused across calls, so steady-state reads allocate nothing).
    fn read_inner(&mut self, offset: u64, buf: &mut [u8], slots: &mut Vec<Piece>) -> Result<()> {
        let max = u64::from(self.max_block).min(READ_PIECE);
        let total = buf.len() as u64;
        let count = total.div_ceil(max);
        // Only the pieces in flight have state, whatever the server's block size.
        for p in slots.iter_mut() {
            p.done = true;
        }
        let mut sent = 0u64;
        let mut finished = 0u64;
        let mut first_err: Option<Error> = None;
        while finished < count {
            while sent < count && sent - finished < MAX_IN_FLIGHT as u64 {
                let o = offset + sent * max;
                let i = match slots.iter().position(|p| p.done) {
                    Some(i) => i,
                    None => {
                        slots.push(Piece::default());
                        slots.len() - 1
                    }
                };
                let p = &mut slots[i];
                p.cookie = self.next_cookie;
                p.offset = o;
                p.len = max.min(offset + total - o);
                p.covered.clear();
                p.covered_len = 0;
                p.done = false;
                p.failed = false;
                self.next_cookie += 1;
                let req = Request {
                    flags: 0,
                    kind: proto::CMD_READ,
                    cookie: p.cookie,
                    offset: p.offset,
                    length: p.len as u32,
                };
                self.write_all(&req.encode(), "send a read request")?;
                sent += 1;
            }
            self.flush_writer()?;
            if self.read_reply(slots, offset, buf, &mut first_err)? {
                finished += 1;
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Reads one reply header and its payload for a pipelined read (`slots`
    /// are the pieces in flight and finished ones); returns true when it
    /// finished a piece.
    fn read_reply(
        &mut self,
        slots: &mut [Piece],
        offset: u64,
        buf: &mut [u8],
        first_err: &mut Option<Error>,
    ) -> Result<bool> {
        let header = self.reply_header()?;
        let cookie = match header {
            ReplyHeader::Simple(r) => r.cookie,
            ReplyHeader::Chunk(h) => h.cookie,
        };
        let Some(p) = slots.iter_mut().find(|p| p.cookie == cookie && !p.done) else {
            return Err(self.protocol(format!("reply with unknown cookie {cookie}")));
        };
        let slice_of = |at: u64, len: u64| {
            let start = (at - offset) as usize;
            start..start + len as usize
        };
        match header {
            ReplyHeader::Simple(r) => {
                if r.error != 0 {
                    p.failed = true;
                    first_err.get_or_insert_with(|| self.command_error(proto::CMD_READ, p.offset, p.len, r.error, ""));
                } else if self.structured {
                    return Err(self.protocol("simple reply to a read after structured replies were negotiated".into()));
                } else {
                    let range = slice_of(p.offset, p.len);
                    self.read_exact(&mut buf[range], "read data")?;
                }
                p.done = true;
                Ok(true)
            }
            ReplyHeader::Chunk(h) => {
                if !self.structured {
                    return Err(self.protocol("structured reply chunk without negotiation".into()));
                }
                match h.kind {
                    proto::REPLY_TYPE_OFFSET_DATA => {
                        if h.length <= 8 {
                            return Err(self.protocol(format!("data chunk of {} bytes", h.length)));
                        }
                        let mut o = [0u8; 8];
                        self.read_exact(&mut o, "read a data chunk")?;
                        let at = u64::from_be_bytes(o);
                        let len = u64::from(h.length - 8);
                        self.cover(p, at, len)?;
                        let range = slice_of(at, len);
                        self.read_exact(&mut buf[range], "read data")?;
                    }
                    proto::REPLY_TYPE_OFFSET_HOLE => {
                        let mut b = [0u8; 12];
                        if h.length != 12 {
                            return Err(self.protocol(format!("hole chunk of {} bytes", h.length)));
                        }
                        self.read_exact(&mut b, "read a hole chunk")?;
                        let Chunk::OffsetHole { offset: at, length } =
                            Chunk::decode(h.kind, &b).map_err(|e| self.protocol(e.to_string()))?
                        else {
                            return Err(self.protocol("hole chunk did not decode as a hole".into()));
                        };
                        self.cover(p, at, length.into())?;
                        let range = slice_of(at, length.into());
                        buf[range].fill(0);
                    }
                    kind => {
                        let mut data = std::mem::take(&mut self.payload);
                        data.resize(h.length as usize, 0);
                        let r = self.read_exact(&mut data, "read a reply chunk");
                        let res = r.and_then(|()| {
                            match Chunk::decode(kind, &data).map_err(|e| self.protocol(e.to_string()))? {
                                Chunk::None if h.done() => Ok(()),
                                Chunk::Error {
                                    error,
                                    message,
                                    offset: at,
                                } => {
                                    if let Some(at) = at
                                        && (at < p.offset || at >= p.offset + p.len)
                                    {
                                        return Err(self.protocol(format!(
                                            "error offset {at} outside the read of {} bytes at {}",
                                            p.len, p.offset
                                        )));
                                    }
                                    p.failed = true;
                                    first_err.get_or_insert_with(|| {
                                        self.command_error(proto::CMD_READ, p.offset, p.len, error, &message)
                                    });
                                    Ok(())
                                }
                                _ => Err(self.protocol(format!("chunk type {kind} in a reply to a read"))),
                            }
                        });
                        self.payload = data;
                        res?;
                    }
                }
                if h.done() {
                    if !p.failed && p.covered_len != p.len {
                        return Err(self.protocol(format!(
                            "the reply to a read of {} bytes at {} covered only {} bytes",
                            p.len, p.offset, p.covered_len
                        )));
                    }
                    p.done = true;
                    return Ok(true);
                }
                Ok(false)
            }
        }
    }

    /// Records that `[at, at + len)` of piece `p` arrived; it must lie inside
    /// the piece and not overlap earlier chunks.
    fn cover(&self, p: &mut Piece, at: u64, len: u64) -> Result<()> {
        let end = at.checked_add(len);
        if at < p.offset || end.is_none_or(|e| e > p.offset + p.len) {
            return Err(self.protocol(format!(
                "chunk of {len} bytes at {at} outside the read of {} bytes at {}",
                p.len, p.offset
            )));
        }
        let end = at + len;
        let i = p.covered.partition_point(|&(s, _)| s < at);
        let overlaps_prev = i > 0 && p.covered[i - 1].1 > at;
        let overlaps_next = i < p.covered.len() && p.covered[i].0 < end;
        if overlaps_prev || overlaps_next {
            return Err(self.protocol(format!("chunk of {len} bytes at {at} overlaps an earlier chunk")));
        }
        p.covered.insert(i, (at, end));
        p.covered_len += len;
        Ok(())
    }

    /// One `NBD_CMD_BLOCK_STATUS` for `[pos, pos + len)`; appends the extents
    /// of context `id` to `out` and returns where they end.
    fn block_status_once(&mut self, id: u32, pos: u64, len: u64, out: &mut Vec<StatusExtent>) -> Result<u64> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let req = Request {
            flags: 0,
            kind: proto::CMD_BLOCK_STATUS,
            cookie,
            offset: pos,
            length: len as u32,
        };
        self.write_all(&req.encode(), "send a block status request")?;
        self.flush_writer()?;
        let end = pos + len;
        let mut reached: Option<u64> = None;
        let mut err: Option<Error> = None;
        loop {
            let header = self.reply_header()?;
            let h = match header {
                ReplyHeader::Simple(r) if r.cookie == cookie => {
                    if r.error == 0 {
                        return Err(self.protocol("simple reply without data to a block status request".into()));
                    }
                    return Err(self.command_error(proto::CMD_BLOCK_STATUS, pos, len, r.error, ""));
                }
                ReplyHeader::Chunk(h) if h.cookie == cookie => h,
                _ => return Err(self.protocol("reply with an unknown cookie".into())),
            };
            let mut data = std::mem::take(&mut self.payload);
            data.resize(h.length as usize, 0);
            let r = self.read_exact(&mut data, "read a block status chunk");
            let res =
                r.and_then(
                    |()| match Chunk::decode(h.kind, &data).map_err(|e| self.protocol(e.to_string()))? {
                        Chunk::None if h.done() => Ok(()),
                        Chunk::BlockStatus { context, descriptors } => {
                            if context != id {
                                if !self.contexts.iter().any(|(i, _)| *i == context) {
                                    return Err(self.protocol(format!("block status for unknown context id {context}")));
                                }
                                return Ok(());
                            }
                            if reached.is_some() {
                                return Err(self.protocol(format!("two block status chunks for context id {context}")));
                            }
                            let mut at = pos;
                            for d in descriptors {
                                if at >= end {
                                    break;
                                }
                                let l = u64::from(d.length).min(end - at);
                                match out.last_mut() {
                                    Some(last) if last.flags == d.flags && last.end() == at => last.length += l,
                                    _ => out.push(StatusExtent {
                                        offset: at,
                                        length: l,
                                        flags: d.flags,
                                    }),
                                }
                                at += l;
                            }
                            reached = Some(at);
                            Ok(())
                        }
                        Chunk::Error { error, message, .. } => {
                            err.get_or_insert_with(|| {
                                self.command_error(proto::CMD_BLOCK_STATUS, pos, len, error, &message)
                            });
                            Ok(())
                        }
                        _ => Err(self.protocol(format!("chunk type {} in a reply to block status", h.kind))),
                    },
                );
            self.payload = data;
            res?;
            if h.done() {
                break;
            }
        }
        if let Some(e) = err {
            return Err(e);
        }
        reached.ok_or_else(|| self.protocol("block status reply without the negotiated context".into()))
    }

    /// Sends a command without reply payload (write, flush) and waits for its reply.
    fn command(&mut self, kind: u16, flags: u16, offset: u64, length: u32, data: Option<&[u8]>) -> Result<()> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let req = Request {
            flags,
            kind,
            cookie,
            offset,
            length,
        };
        self.write_all(&req.encode(), "send a request")?;
        if let Some(d) = data {
            self.write_all(d, "send write data")?;
        }
        self.flush_writer()?;
        let mut err = None;
        loop {
            match self.reply_header()? {
                ReplyHeader::Simple(r) if r.cookie == cookie => {
                    if r.error != 0 {
                        return Err(self.command_error(kind, offset, length.into(), r.error, ""));
                    }
                    return Ok(());
                }
                ReplyHeader::Chunk(h) if h.cookie == cookie => {
                    let mut data = std::mem::take(&mut self.payload);
                    data.resize(h.length as usize, 0);
                    let r = self.read_exact(&mut data, "read a reply chunk");
                    let res = r.and_then(|()| match Chunk::decode(h.kind, &data) {
                        Ok(Chunk::None) if h.done() => Ok(()),
                        Ok(Chunk::Error { error, message, .. }) => {
                            err.get_or_insert_with(|| self.command_error(kind, offset, length.into(), error, &message));
                            Ok(())
                        }
                        Ok(_) => Err(self.protocol(format!(
                            "chunk type {} in a reply to {}",
                            h.kind,
                            proto::command_name(kind)
                        ))),
                        Err(e) => Err(self.protocol(e.to_string())),
                    });
                    self.payload = data;
                    res?;
                    if h.done() {
                        return match err {
                            Some(e) => Err(e),
                            None => Ok(()),
                        };
                    }
                }
                _ => return Err(self.protocol("reply with an unknown cookie".into())),
            }
        }
    }

    fn reply_header(&mut self) -> Result<ReplyHeader> {
        let mut b = [0u8; proto::CHUNK_HEADER_LEN];
        self.read_exact(&mut b[..4], "read a reply")?;
        let magic = [b[0], b[1], b[2], b[3]];
        let n = ReplyHeader::len_for_magic(magic).map_err(|e| self.protocol(e.to_string()))?;
        self.read_exact(&mut b[4..n], "read a reply")?;
        ReplyHeader::decode(&b[..n]).map_err(|e| self.protocol(e.to_string()))
    }

    fn send_disc(&mut self) -> Result<()> {
        let req = Request {
            kind: proto::CMD_DISC,
            cookie: self.next_cookie,
            ..Request::default()
        };
        self.next_cookie += 1;
        self.write_all(&req.encode(), "send disconnect")?;
        self.flush_writer()
    }

    // -----------------------------------------------------------------
    // Helpers

    fn usable(&self) -> Result<()> {
        match &self.broken {
            Some(reason) => Err(Error::Broken {
                export: self.export.clone(),
                reason: reason.clone(),
            }),
            None if self.closed => Err(Error::Broken {
                export: self.export.clone(),
                reason: "disconnected".into(),
            }),
            None => Ok(()),
        }
    }

    fn check_range(&self, offset: u64, length: u64) -> Result<()> {
        match offset.checked_add(length) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::OutOfRange {
                export: self.export.clone(),
                offset,
                length,
                size: self.size,
            }),
        }
    }

    /// Marks the connection broken after an error that leaves the stream out of step.
    fn fail_on_fatal<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r
            && !matches!(e, Error::Command { .. })
        {
            self.broken = Some(e.to_string());
        }
        r
    }

    fn read_exact(&mut self, buf: &mut [u8], op: &str) -> Result<()> {
        self.reader.read_exact(buf).map_err(|e| self.io(op, e))
    }

    fn write_all(&mut self, buf: &[u8], op: &str) -> Result<()> {
        self.writer.write_all(buf).map_err(|e| self.io(op, e))
    }

    fn flush_writer(&mut self) -> Result<()> {
        self.writer.flush().map_err(|e| self.io("send", e))
    }

    fn io(&self, op: &str, e: io::Error) -> Error {
        let source = match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                let t = self
                    .timeout
                    .map(|t| format!("{t:?}"))
                    .unwrap_or_else(|| "the timeout".into());
                io::Error::new(io::ErrorKind::TimedOut, format!("no progress within {t}"))
            }
            io::ErrorKind::UnexpectedEof => {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")
            }
            _ => e,
        };
        Error::Io {
            export: self.export.clone(),
            endpoint: self.peer.clone(),
            op: op.to_string(),
            source,
        }
    }

    fn protocol(&self, reason: String) -> Error {
        Error::Protocol {
            export: self.export.clone(),
            reason: format!("{reason} (server {})", self.peer),
        }
    }

    fn command_error(&self, kind: u16, offset: u64, length: u64, code: u32, message: &str) -> Error {
        Error::Command {
            export: self.export.clone(),
            command: proto::command_name(kind),
            offset,
            length,
            code,
            errno: proto::errno_name(code),
            message: message.to_string(),
        }
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        if !self.closed && self.broken.is_none() {
            // Best effort: servers log an abrupt end as an error.
            let _ = self.send_disc();
        }
    }
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("export", &self.export)
            .field("peer", &self.peer)
            .field("size", &self.size)
            .field("contexts", &self.context_names)
            .finish_non_exhaustive()
    }
}

/// Connects to the first address of `addr` that answers.
fn connect_tcp(addr: &str, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        let r = match timeout {
            Some(t) => TcpStream::connect_timeout(&a, t),
            None => TcpStream::connect(a),
        };
        match r {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to no address"))))
}
