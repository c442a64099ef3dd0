//! The receiver's connections: accepting them, the TLS handshake and HELLO, attaching a
//! connection to a stream of an expected transfer, then its frames (BLOCK, END, ERROR) until
//! the transfer ends, the connection drops or a reconnection supersedes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::config::ReceiverConfig;
use super::consumer::ReceivedBlock;
use super::transfer::{Have, RecvShared, SlotGuard, TransferState};
use crate::error::Error;
use crate::net::{FrameReader, FrameWriter};
use crate::tls::Fingerprint;
use crate::wire::{
    BlockHeader, ErrorCode, Frame, Hello, HelloOk, Limits, MAX_STREAMS, MAX_WINDOW, NackReason, PROTOCOL_VERSION,
    TransferStatus, block_crc,
};

type Reader = FrameReader<ReadHalf<TlsStream<TcpStream>>>;
type Writer = FrameWriter<WriteHalf<TlsStream<TcpStream>>>;

/// Accepts connections until the receiver is dropped (which aborts this task), serving each
/// in its own task, at most [`ReceiverConfig::max_connections`] at a time.
pub(super) async fn accept_loop(shared: Arc<RecvShared>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(shared.config.max_connections));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "data channel accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many data channel connections; refusing one");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve(&shared, tcp, peer).await {
                if e.is_retryable() {
                    tracing::debug!(%peer, error = %e, "data channel connection ended");
                } else {
                    tracing::warn!(%peer, error = %e, "data channel connection refused or failed");
                }
            }
        });
    }
}

/// Serves one connection: handshake, HELLO, attaching it to its transfer's stream, then its
/// frames.
async fn serve(shared: &RecvShared, tcp: TcpStream, peer: SocketAddr) -> Result<(), Error> {
    let config = &shared.config;
    let (mut reader, mut writer, peer_fingerprint) = accept_tls(config, tcp, peer).await?;
    let first = tokio::time::timeout(config.handshake_timeout, reader.next("waiting for HELLO from"))
        .await
        .map_err(|_| Error::Timeout {
            peer,
            doing: "waiting for HELLO",
            timeout: config.handshake_timeout,
        })?;
    let hello = match first {
        Ok(Frame::Hello(h)) => h,
        Ok(other) => {
            let cause = format!("sent {} before HELLO", other.kind_name());
            return refuse(&mut writer, ErrorCode::Protocol, Error::Protocol { peer, cause }).await;
        }
        Err(e @ Error::Wire { .. }) => return refuse(&mut writer, ErrorCode::Protocol, e).await,
        Err(e) => return Err(e),
    };
    if let Some((code, cause)) = check_hello(config, &hello) {
        return refuse(&mut writer, code, Error::Protocol { peer, cause }).await;
    }
    let transfer = shared.transfers().get(&hello.transfer).cloned();
    let Some(transfer) = transfer else {
        return answer_finished(shared, &mut reader, &mut writer, &hello, peer).await;
    };
    if let Some(pinned) = transfer.sender
        && peer_fingerprint != Some(pinned)
    {
        tracing::warn!(%peer, transfer = %hello.transfer, "refused a stream from a data mover the transfer is not pinned to");
        let cause = format!(
            "transfer {} accepts streams only from the data mover with certificate {pinned}",
            hello.transfer
        );
        return refuse(&mut writer, ErrorCode::UnknownTransfer, Error::Protocol { peer, cause }).await;
    }
    transfer.connections.fetch_add(1, Ordering::Relaxed);
    let stream = Stream {
        shared,
        transfer: &transfer,
        hello: &hello,
        peer,
    };
    let superseded = Arc::new(Notify::new());
    let received_below = match transfer.attach(hello.stream, hello.acked_below, &superseded) {
        Ok(n) => n,
        Err(cause) => {
            return stream
                .fail(&mut writer, ErrorCode::Protocol, Error::Protocol { peer, cause })
                .await;
        }
    };
    tracing::debug!(%peer, transfer = %hello.transfer, stream = hello.stream, received_below, "stream attached");
    writer
        .send(&Frame::HelloOk(HelloOk {
            version: PROTOCOL_VERSION,
            status: TransferStatus::Active,
            received_below,
        }))
        .await?;
    stream.receive(&mut reader, &mut writer, &superseded).await
}

/// Sets the socket options and runs the TLS handshake (within the handshake timeout); returns
/// the connection's framed halves and the fingerprint of the peer's certificate.
async fn accept_tls(
    config: &ReceiverConfig,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<(Reader, Writer, Option<Fingerprint>), Error> {
    let t = config.handshake_timeout;
    config
        .socket
        .apply(&tcp)
        .map_err(|e| Error::io(peer, "set socket options for", e))?;
    let tls = tokio::time::timeout(t, TlsAcceptor::from(config.tls.clone()).accept(tcp))
        .await
        .map_err(|_| Error::Timeout {
            peer,
            doing: "in the TLS handshake",
            timeout: t,
        })?
        .map_err(|e| Error::io(peer, "TLS handshake with", e))?;
    let peer_fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(Fingerprint::of);
    let (r, w) = tokio::io::split(tls);
    let limits = Limits {
        max_block_len: config.max_block_len,
    };
    Ok((
        FrameReader::new(r, limits, peer),
        FrameWriter::new(w, peer),
        peer_fingerprint,
    ))
}

/// Checks a HELLO against this receiver's limits.
fn check_hello(config: &ReceiverConfig, hello: &Hello) -> Option<(ErrorCode, String)> {
    if hello.version != PROTOCOL_VERSION {
        let cause = format!(
            "protocol version {} (this receiver speaks {PROTOCOL_VERSION})",
            hello.version
        );
        return Some((ErrorCode::Version, cause));
    }
    let max_streams = config.max_streams.min(MAX_STREAMS);
    let max_window = config.max_window.min(MAX_WINDOW);
    if hello.streams > max_streams {
        return Some((
            ErrorCode::Limits,
            format!("{} streams (at most {max_streams})", hello.streams),
        ));
    }
    if hello.window > max_window {
        return Some((
            ErrorCode::Limits,
            format!("a window of {} blocks (at most {max_window})", hello.window),
        ));
    }
    if hello.max_block_len > config.max_block_len {
        let cause = format!(
            "blocks of up to {} bytes (at most {})",
            hello.max_block_len, config.max_block_len
        );
        return Some((ErrorCode::Limits, cause));
    }
    None
}

/// Sends an ERROR frame (best effort), closes, and returns the error.
async fn refuse(writer: &mut Writer, code: ErrorCode, error: Error) -> Result<(), Error> {
    let frame = Frame::Error(code, error.to_string());
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.send(&frame)).await;
    writer.shutdown().await;
    Err(error)
}

/// A HELLO for a transfer that is not (or no longer) expected.
async fn answer_finished<R: AsyncRead + Unpin>(
    shared: &RecvShared,
    reader: &mut FrameReader<R>,
    writer: &mut Writer,
    hello: &Hello,
    peer: SocketAddr,
) -> Result<(), Error> {
    match shared.finished(hello.transfer) {
        Some(Ok(total)) => {
            // The sender missed our END confirmation: tell it the transfer is complete.
            let ok = HelloOk {
                version: PROTOCOL_VERSION,
                status: TransferStatus::Complete,
                received_below: total,
            };
            writer.send(&Frame::HelloOk(ok)).await?;
            writer.shutdown().await;
            let _ = tokio::time::timeout(shared.config.handshake_timeout, reader.next("closing")).await;
            Ok(())
        }
        Some(Err((code, message))) => {
            let e = Error::Peer {
                peer,
                code,
                message: format!("reconnection to a failed transfer {}: {message}", hello.transfer),
            };
            refuse(writer, code, e).await
        }
        None => {
            let cause = format!(
                "asked for transfer {}, which this receiver does not expect",
                hello.transfer
            );
            refuse(writer, ErrorCode::UnknownTransfer, Error::Protocol { peer, cause }).await
        }
    }
}

/// A connection attached to one stream of an expected transfer.
struct Stream<'a> {
    shared: &'a RecvShared,
    transfer: &'a TransferState,
    hello: &'a Hello,
    peer: SocketAddr,
}

impl Stream<'_> {
    /// Handles the stream's frames until the transfer ends or fails, the connection drops, a
    /// reconnection supersedes it or the receiver shuts down.
    async fn receive(&self, reader: &mut Reader, writer: &mut Writer, superseded: &Notify) -> Result<(), Error> {
        let (transfer, peer) = (self.transfer, self.peer);
        let mut outcome_rx = transfer.outcome.subscribe();
        let mut shutdown_rx = self.shared.shutdown.subscribe();
        loop {
            let frame = tokio::select! {
                f = reader.next("waiting for blocks from") => f,
                _ = superseded.notified() => {
                    tracing::debug!(%peer, stream = self.hello.stream, "stream superseded by a reconnection");
                    return Ok(());
                }
                _ = async { outcome_rx.wait_for(|o| matches!(o, Some(Err(_)))).await.map(|_| ()) } => {
                    let e = transfer.failure().unwrap_or(Error::Cancelled { transfer: transfer.id, reason: "failed".into() });
                    let code = if matches!(e, Error::Consumer { .. }) { ErrorCode::Consumer } else { ErrorCode::Cancelled };
                    return refuse(writer, code, e).await;
                }
                _ = async { shutdown_rx.wait_for(|s| *s).await.map(|_| ()) } => {
                    if matches!(&*transfer.outcome.borrow(), Some(Ok(_))) {
                        // Complete already: the sender has its END confirmation on another stream.
                        writer.shutdown().await;
                        return Ok(());
                    }
                    return refuse(writer, ErrorCode::Cancelled, Error::Cancelled {
                        transfer: transfer.id,
                        reason: "the receiver was shut down".into(),
                    }).await;
                }
            };
            let frame = match frame {
                Ok(f) => f,
                Err(e @ Error::Wire { .. }) => return self.fail(writer, ErrorCode::Protocol, e).await,
                Err(e) => return Err(e),
            };
            match frame {
                Frame::Block(header, data) => self.block(writer, header, data).await?,
                Frame::End(total) => return self.end(writer, total).await,
                Frame::Error(code, message) => {
                    let e = Error::Peer { peer, code, message };
                    self.shared.finish(transfer, Err(e.clone()));
                    return Err(e);
                }
                other => {
                    let cause = format!("sent an unexpected {} frame", other.kind_name());
                    return self
                        .fail(writer, ErrorCode::Protocol, Error::Protocol { peer, cause })
                        .await;
                }
            }
        }
    }

    /// Fails the transfer with `e` and refuses this connection with `code`.
    async fn fail(&self, writer: &mut Writer, code: ErrorCode, e: Error) -> Result<(), Error> {
        self.shared.finish(self.transfer, Err(e.clone()));
        refuse(writer, code, e).await
    }

    /// Handles END: completes the transfer if every one of its `total` blocks was consumed.
    async fn end(&self, writer: &mut Writer, total: u64) -> Result<(), Error> {
        if !self.transfer.has_all(total) {
            let cause = format!("sent END of {total} blocks before all of them were received");
            let e = Error::Protocol { peer: self.peer, cause };
            return self.fail(writer, ErrorCode::Protocol, e).await;
        }
        // Confirm first, then report completion: a target that exits as soon as `wait`
        // returns must not leave the sender without its confirmation.
        let confirmed = writer.send(&Frame::End(total)).await;
        self.shared.finish(self.transfer, Ok(total));
        writer.shutdown().await;
        confirmed
    }

    /// Handles one BLOCK: CRC check, de-duplication, consumption, ACK or NACK.
    async fn block(&self, writer: &mut Writer, header: BlockHeader, data: Bytes) -> Result<(), Error> {
        let (t, peer) = (self.transfer, self.peer);
        let seq = header.seq;
        if block_crc(&data) != header.crc32c {
            t.nacks.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, transfer = %t.id, seq, "block failed its CRC-32C; asking for it again");
            return writer.send(&Frame::Nack(seq, NackReason::Crc)).await;
        }
        loop {
            let notified = t.slot_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(e) = t.failure() {
                return Err(e);
            }
            match t.claim(seq, self.hello.window) {
                Have::Already => {
                    t.duplicates.fetch_add(1, Ordering::Relaxed);
                    return writer.send(&Frame::Ack(seq)).await;
                }
                // Another stream is handing the same block over (a re-send after a reconnect).
                Have::Wait => notified.await,
                Have::New => break,
                Have::BeyondWindow(received_below) => {
                    let cause = format!(
                        "sent block seq {seq}, beyond its window of {} blocks after seq {received_below}",
                        self.hello.window
                    );
                    return self
                        .fail(writer, ErrorCode::Protocol, Error::Protocol { peer, cause })
                        .await;
                }
            }
        }
        let len = data.len() as u64;
        let guard = SlotGuard::new(t, seq);
        let block = ReceivedBlock {
            seq,
            disk: header.disk,
            offset: header.offset,
            data,
        };
        match t.consumer.consume_boxed(block).await {
            Ok(()) => {
                guard.complete();
                t.blocks.fetch_add(1, Ordering::Relaxed);
                t.bytes.fetch_add(len, Ordering::Relaxed);
                writer.send(&Frame::Ack(seq)).await
            }
            Err(cause) => {
                drop(guard);
                let e = Error::Consumer {
                    transfer: t.id,
                    seq,
                    message: cause.to_string(),
                };
                self.fail(writer, ErrorCode::Consumer, e).await
            }
        }
    }
}
