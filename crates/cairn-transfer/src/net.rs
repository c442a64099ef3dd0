//! Socket options and framed reading/writing over a TLS stream.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::Error;
use crate::wire::{BlockHeader, Decoded, Frame, Limits, decode_frame, encode_block_header};

/// TCP settings applied to every data channel connection, on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    /// `SO_SNDBUF` in bytes; `None` keeps the kernel's auto-tuning (recommended where
    /// `net.ipv4.tcp_wmem`'s maximum is large enough for the link's bandwidth × delay).
    pub send_buffer: Option<u32>,
    /// `SO_RCVBUF` in bytes; `None` keeps the kernel's auto-tuning.
    pub recv_buffer: Option<u32>,
    /// TCP keep-alive idle time, so that a silent dead peer is noticed.
    pub keepalive: Option<Duration>,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged by the peer's TCP before
    /// the kernel drops the connection (a cut link).
    pub user_timeout: Option<Duration>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            send_buffer: None,
            recv_buffer: None,
            keepalive: Some(Duration::from_secs(10)),
            user_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl SocketOptions {
    /// Options that must be set before connecting (buffer sizes decide the window scale).
    pub(crate) fn socket_for(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(n) = self.send_buffer {
            socket.set_send_buffer_size(n)?;
        }
        if let Some(n) = self.recv_buffer {
            socket.set_recv_buffer_size(n)?;
        }
        Ok(socket)
    }

    /// Options set on an established connection (both sides).
    pub(crate) fn apply(&self, stream: &TcpStream) -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        let sock = socket2::SockRef::from(stream);
        if let Some(idle) = self.keepalive {
            let ka = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(idle.div_f32(2.0).max(Duration::from_secs(1)))
                .with_retries(4);
            sock.set_tcp_keepalive(&ka)?;
        }
        if let Some(t) = self.user_timeout {
            sock.set_tcp_user_timeout(Some(t))?;
        }
        Ok(())
    }
}

/// Reads frames from one side of a connection into a reusable buffer.
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    limits: Limits,
    peer: SocketAddr,
}

/// Read granularity: large enough that a 1 MiB block takes few reads.
const READ_CHUNK: usize = 256 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R, limits: Limits, peer: SocketAddr) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK),
            limits,
            peer,
        }
    }

    /// The next frame; `doing` names what the caller waits for, for error messages.
    ///
    /// Cancel-safe: a partially read frame stays in the buffer.
    pub(crate) async fn next(&mut self, doing: &'static str) -> Result<Frame, Error> {
        loop {
            match decode_frame(&mut self.buf, &self.limits).map_err(|source| Error::Wire {
                peer: self.peer,
                source,
            })? {
                Decoded::Frame(frame) => return Ok(frame),
                Decoded::Incomplete { needed } => {
                    let want = needed
                        .saturating_sub(self.buf.len())
                        .max(READ_CHUNK.min(needed.max(4096)));
                    self.buf.reserve(want);
                    let n = self
                        .inner
                        .read_buf(&mut self.buf)
                        .await
                        .map_err(|e| Error::io(self.peer, doing, e))?;
                    if n == 0 {
                        return Err(Error::Closed { peer: self.peer, doing });
                    }
                }
            }
        }
    }
}

/// Writes frames to one side of a connection.
pub(crate) struct FrameWriter<W> {
    inner: W,
    scratch: BytesMut,
    peer: SocketAddr,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(inner: W, peer: SocketAddr) -> Self {
        Self {
            inner,
            scratch: BytesMut::with_capacity(256),
            peer,
        }
    }

    /// Writes and flushes one control frame.
    pub(crate) async fn send(&mut self, frame: &Frame) -> Result<(), Error> {
        self.scratch.clear();
        frame.encode(&mut self.scratch);
        self.inner
            .write_all(&self.scratch)
            .await
            .map_err(|e| Error::io(self.peer, "write to", e))?;
        self.flush().await
    }

    /// Writes one BLOCK frame (header, then the payload straight from its buffer) and flushes.
    pub(crate) async fn send_block(&mut self, header: &BlockHeader, payload: &Bytes) -> Result<(), Error> {
        self.scratch.clear();
        encode_block_header(header, &mut self.scratch);
        self.inner
            .write_all(&self.scratch)
            .await
            .map_err(|e| Error::io(self.peer, "write to", e))?;
        self.inner
            .write_all(payload)
            .await
            .map_err(|e| Error::io(self.peer, "write to", e))?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), Error> {
        self.inner
            .flush()
            .await
            .map_err(|e| Error::io(self.peer, "write to", e))
    }

    /// Sends TLS close_notify and shuts the write side down (best effort).
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.inner.shutdown().await;
    }
}
