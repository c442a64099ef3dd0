//! One stream of a sender: connect (with backoff), hand-shake and resume, then write blocks
//! and read acknowledgements until END is confirmed or the connection breaks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::Shared;
use crate::error::Error;
use crate::net::{FrameReader, FrameWriter};
use crate::wire::{BlockHeader, ErrorCode, Frame, Hello, Limits, PROTOCOL_VERSION, TransferStatus};

type Reader = FrameReader<ReadHalf<TlsStream<TcpStream>>>;
type Writer = FrameWriter<WriteHalf<TlsStream<TcpStream>>>;

/// One stream: connect, run, and on a drop requeue its blocks and reconnect.
pub(super) async fn run_stream(shared: Arc<Shared>, index: u16) {
    let mut first = true;
    loop {
        let connected = connect_retrying(&shared, index).await;
        let settle = |first: &mut bool| {
            if std::mem::take(first) {
                shared.lock().settled += 1;
                shared.changed.notify_waiters();
            }
        };
        let (reader, writer, done) = match connected {
            Ok(c) => {
                settle(&mut first);
                c
            }
            Err(e) => {
                let mut state = shared.lock();
                state.requeue(index);
                state.alive -= 1;
                let last = state.alive == 0;
                drop(state);
                // A stream given up after retryable errors costs only that stream.
                let fatal = match &e {
                    Error::GaveUp { .. } => last,
                    e => !e.is_retryable() || last,
                };
                // Record the failure before `connect` can see this stream as settled.
                if fatal {
                    shared.fail(e);
                } else {
                    tracing::warn!(transfer = %shared.config.transfer, stream = index, error = %e,
                        "stream given up; the other streams carry its blocks");
                }
                settle(&mut first);
                shared.changed.notify_waiters();
                return;
            }
        };
        if done {
            return;
        }
        match run_connection(&shared, index, reader, writer).await {
            Ok(()) => return,
            Err(e) => {
                let finished = {
                    let mut state = shared.lock();
                    state.requeue(index);
                    state.failed.is_some() || state.end_confirmed
                };
                shared.changed.notify_waiters();
                if finished {
                    return;
                }
                if !e.is_retryable() {
                    shared.fail(e);
                    return;
                }
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(transfer = %shared.config.transfer, stream = index, error = %e,
                    "stream dropped; reconnecting and resuming");
            }
        }
    }
}

/// Connects with backoff until the reconnect time limit. Returns `done` = true when the
/// receiver reports the transfer complete.
async fn connect_retrying(shared: &Shared, index: u16) -> Result<(Reader, Writer, bool), Error> {
    let policy = &shared.config.reconnect;
    let lost_at = Instant::now();
    let mut backoff = policy.initial_backoff;
    let mut failed_rx = shared.failed_tx.subscribe();
    loop {
        {
            let state = shared.lock();
            if let Some(e) = &state.failed {
                return Err(e.clone());
            }
            if state.end_confirmed {
                return Err(Error::Cancelled {
                    transfer: shared.config.transfer,
                    reason: "complete on another stream".into(),
                });
            }
        }
        let attempt = tokio::select! {
            r = connect_once(shared, index) => r,
            _ = failed_rx.wait_for(|f| *f) => continue,
        };
        match attempt {
            Ok(c) => return Ok(c),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                let waited = lost_at.elapsed();
                if waited + backoff > policy.give_up_after {
                    return Err(Error::GaveUp {
                        peer: shared.config.addr,
                        stream: index,
                        limit: policy.give_up_after,
                        last: Box::new(e),
                    });
                }
                tracing::debug!(stream = index, error = %e, ?backoff, "connect failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = failed_rx.wait_for(|f| *f) => {}
                }
                backoff = (backoff * 2).min(policy.max_backoff);
            }
        }
    }
}

async fn connect_once(shared: &Shared, index: u16) -> Result<(Reader, Writer, bool), Error> {
    let config = &shared.config;
    let peer = config.addr;
    let t = config.io_timeout;
    let timeout_err = |doing| Error::Timeout {
        peer,
        doing,
        timeout: t,
    };
    let socket = config
        .socket
        .socket_for(peer)
        .map_err(|e| Error::io(peer, "create a socket for", e))?;
    let tcp = tokio::time::timeout(t, socket.connect(peer))
        .await
        .map_err(|_| timeout_err("connecting"))?
        .map_err(|e| Error::io(peer, "connect to", e))?;
    config
        .socket
        .apply(&tcp)
        .map_err(|e| Error::io(peer, "set socket options for", e))?;
    let tls = tokio::time::timeout(
        t,
        TlsConnector::from(config.tls.clone()).connect(config.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| timeout_err("in the TLS handshake"))?
    .map_err(|e| Error::io(peer, "TLS handshake with", e))?;
    let (r, w) = tokio::io::split(tls);
    // The receiver never sends BLOCKs: a zero limit refuses any payload it might announce.
    let mut reader = FrameReader::new(r, Limits { max_block_len: 0 }, peer);
    let mut writer = FrameWriter::new(w, peer);
    let (acked_below, next_seq) = {
        let state = shared.lock();
        (state.acked_below(), state.next_seq)
    };
    let hello = Hello {
        version: PROTOCOL_VERSION,
        transfer: config.transfer,
        stream: index,
        streams: config.streams,
        window: config.window,
        max_block_len: config.max_block_len,
        acked_below,
    };
    let answer = tokio::time::timeout(t, async {
        writer.send(&Frame::Hello(hello)).await?;
        reader.next("waiting for HELLO_OK from").await
    })
    .await
    .map_err(|_| timeout_err("waiting for HELLO_OK"))??;
    let ok = match answer {
        Frame::HelloOk(ok) => ok,
        Frame::Error(code, message) => return Err(Error::Peer { peer, code, message }),
        other => {
            return Err(Error::Protocol {
                peer,
                cause: format!("expected HELLO_OK, got {}", other.kind_name()),
            });
        }
    };
    if ok.version != PROTOCOL_VERSION {
        return Err(Error::Protocol {
            peer,
            cause: format!("answered with protocol version {}", ok.version),
        });
    }
    let mut state = shared.lock();
    // Blocks may have been queued since HELLO was built; the receiver cannot have more.
    if ok.received_below > state.next_seq.max(next_seq) {
        return Err(Error::Protocol {
            peer,
            cause: format!(
                "claims to have blocks below seq {} but only {} were sent",
                ok.received_below, state.next_seq
            ),
        });
    }
    // Resume: whatever the receiver already has counts as acknowledged.
    let resumed: Vec<u64> = state.pending.range(..ok.received_below).map(|(&s, _)| s).collect();
    for seq in &resumed {
        state.ack(*seq);
    }
    let done = match ok.status {
        TransferStatus::Active => false,
        TransferStatus::Complete => {
            if state.total != Some(ok.received_below) {
                return Err(Error::Protocol {
                    peer,
                    cause: format!(
                        "reports the transfer complete at {} blocks while {} are queued",
                        ok.received_below, state.next_seq
                    ),
                });
            }
            state.end_confirmed = true;
            true
        }
    };
    drop(state);
    if !resumed.is_empty() {
        tracing::debug!(
            stream = index,
            blocks = resumed.len(),
            "receiver already had blocks; resumed after them"
        );
        shared.changed.notify_waiters();
    }
    Ok((reader, writer, done))
}

enum Next {
    Send(u32, BlockHeader, Bytes),
    End(u64),
    Wait,
    /// Another stream got the receiver's END confirmation.
    Complete,
    Fail(Error),
}

/// Runs one established connection until the receiver confirms END (Ok) or it breaks.
async fn run_connection(shared: &Shared, index: u16, mut reader: Reader, mut writer: Writer) -> Result<(), Error> {
    let end_sent = AtomicBool::new(false);
    let read = async {
        loop {
            let next = reader.next("waiting for acknowledgements from");
            let frame = match tokio::time::timeout(shared.config.io_timeout, next).await {
                Ok(frame) => frame?,
                Err(_) => {
                    let waiting = shared.lock().inflight[usize::from(index)] > 0 || end_sent.load(Ordering::Acquire);
                    if waiting {
                        return Err(Error::Timeout {
                            peer: shared.config.addr,
                            doing: "waiting for acknowledgements",
                            timeout: shared.config.io_timeout,
                        });
                    }
                    continue;
                }
            };
            if handle_frame(shared, index, frame, end_sent.load(Ordering::Acquire))? {
                return Ok(());
            }
        }
    };
    // The writer returns an error (including the transfer's failure, after telling the
    // receiver), or Ok once another stream got END confirmed; the reader returns Ok once END is
    // confirmed on this stream.
    tokio::select! {
        r = write_loop(shared, index, &mut writer, &end_sent) => r,
        r = read => r,
    }
}

async fn write_loop(shared: &Shared, index: u16, writer: &mut Writer, end_sent: &AtomicBool) -> Result<(), Error> {
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match next_action(shared, index, end_sent.load(Ordering::Acquire)) {
            Next::Send(attempt, header, payload) => {
                send_block(shared, writer, attempt, header, payload).await?;
            }
            Next::End(total) => {
                let sent = tokio::time::timeout(shared.config.io_timeout, writer.send(&Frame::End(total))).await;
                match sent {
                    Ok(Ok(())) => end_sent.store(true, Ordering::Release),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        return Err(Error::Timeout {
                            peer: shared.config.addr,
                            doing: "writing END",
                            timeout: shared.config.io_timeout,
                        });
                    }
                }
            }
            Next::Wait => notified.await,
            Next::Complete => {
                writer.shutdown().await;
                return Ok(());
            }
            Next::Fail(e) => {
                let code = match &e {
                    Error::Peer { .. } => None, // the receiver knows already
                    Error::Protocol { .. } | Error::Wire { .. } => Some(ErrorCode::Protocol),
                    _ => Some(ErrorCode::Cancelled),
                };
                if let Some(code) = code {
                    let frame = Frame::Error(code, e.to_string());
                    let _ = tokio::time::timeout(Duration::from_secs(1), writer.send(&frame)).await;
                }
                writer.shutdown().await;
                return Err(e);
            }
        }
    }
}

/// Applies one frame from the receiver; true when it confirms the transfer's END.
fn handle_frame(shared: &Shared, index: u16, frame: Frame, end_sent: bool) -> Result<bool, Error> {
    let peer = shared.config.addr;
    match frame {
        Frame::Ack(seq) => {
            if shared.lock().ack(seq) {
                shared.changed.notify_waiters();
            } else {
                tracing::debug!(stream = index, seq, "ACK for a block no longer pending");
            }
            Ok(false)
        }
        Frame::Nack(seq, reason) => {
            let mut state = shared.lock();
            let Some(p) = state.pending.get_mut(&seq) else {
                tracing::debug!(stream = index, seq, "NACK for a block no longer pending");
                return Ok(false);
            };
            if p.on_stream != Some(index) {
                tracing::debug!(stream = index, seq, "NACK for a block not in flight on this stream");
                return Ok(false);
            }
            p.on_stream = None;
            let sends = p.sends;
            state.inflight[usize::from(index)] -= 1;
            shared.nacked.fetch_add(1, Ordering::Relaxed);
            if sends > shared.config.max_resends {
                drop(state);
                let message = format!("block seq {seq} failed its CRC-32C at the receiver {sends} times");
                shared.fail(Error::Protocol { peer, cause: message });
                return Ok(false);
            }
            tracing::info!(stream = index, seq, ?reason, "receiver asked for block again");
            state.queue.push_front(seq);
            drop(state);
            shared.changed.notify_waiters();
            Ok(false)
        }
        Frame::End(n) => {
            let total = shared.lock().total;
            if end_sent && total == Some(n) {
                shared.lock().end_confirmed = true;
                shared.changed.notify_waiters();
                Ok(true)
            } else {
                Err(Error::Protocol {
                    peer,
                    cause: format!("confirmed END of {n} blocks, but this side sent END={end_sent} total={total:?}"),
                })
            }
        }
        Frame::Error(code, message) => Err(Error::Peer { peer, code, message }),
        other => Err(Error::Protocol {
            peer,
            cause: format!("sent an unexpected {} frame", other.kind_name()),
        }),
    }
}

/// Decides what the writer does next, under the state lock.
fn next_action(shared: &Shared, index: u16, end_sent: bool) -> Next {
    let mut state = shared.lock();
    if let Some(e) = &state.failed {
        return Next::Fail(e.clone());
    }
    if state.end_confirmed {
        return Next::Complete;
    }
    while let Some(seq) = state.queue.pop_front() {
        let Some(p) = state.pending.get_mut(&seq) else {
            continue; // acknowledged meanwhile (resume)
        };
        p.on_stream = Some(index);
        p.sends += 1;
        let header = BlockHeader {
            seq,
            disk: p.block.disk,
            offset: p.block.offset,
            len: p.block.data.len() as u32,
            crc32c: p.crc,
        };
        let (attempt, payload) = (p.sends, p.block.data.clone());
        state.inflight[usize::from(index)] += 1;
        return Next::Send(attempt, header, payload);
    }
    match state.total {
        Some(total) if state.pending.is_empty() && !end_sent => Next::End(total),
        _ => Next::Wait,
    }
}

async fn send_block(
    shared: &Shared,
    writer: &mut Writer,
    attempt: u32,
    header: BlockHeader,
    mut payload: Bytes,
) -> Result<(), Error> {
    let config = &shared.config;
    if attempt > 1 {
        shared.resent.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(throttle) = &config.throttle {
        let delay = throttle.delay_for(payload.len() as u64);
        if !delay.is_zero() {
            let started = Instant::now();
            tokio::time::sleep(delay).await;
            let waited = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            shared.throttled_nanos.fetch_add(waited, Ordering::Relaxed);
        }
    }
    let mut header = header;
    if let Some(injector) = &config.fault_injector
        && injector.corrupt(header.seq, attempt)
    {
        if payload.is_empty() {
            header.crc32c ^= 1;
        } else {
            let mut damaged = BytesMut::from(&payload[..]);
            let mid = damaged.len() / 2;
            damaged[mid] ^= 0x10;
            payload = damaged.freeze();
        }
    }
    tokio::time::timeout(config.io_timeout, writer.send_block(&header, &payload))
        .await
        .map_err(|_| Error::Timeout {
            peer: config.addr,
            doing: "writing a block",
            timeout: config.io_timeout,
        })??;
    shared.bytes_sent.fetch_add(payload.len() as u64, Ordering::Relaxed);
    Ok(())
}
