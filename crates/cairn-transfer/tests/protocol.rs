//! The receiver driven frame by frame by a hand-written client over real TLS: de-duplication
//! across streams, NACKs, resume watermarks, superseded streams, and protocol violations.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cairn_transfer::wire::{
    BlockHeader, Decoded, ErrorCode, Frame, Hello, HelloOk, Limits, NackReason, PROTOCOL_VERSION, TransferStatus,
    block_crc, decode_frame,
};
use cairn_transfer::{Error, PeerPolicy, Receiver, TransferId, sender_tls_config};
use common::{Collected, Peers, bind_local};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

struct Raw {
    tls: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl Raw {
    async fn connect(peers: &Peers, addr: SocketAddr) -> Raw {
        let config = sender_tls_config(&peers.sender, PeerPolicy::default()).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        Raw {
            tls,
            buf: BytesMut::new(),
        }
    }

    async fn hello(
        peers: &Peers,
        addr: SocketAddr,
        transfer: TransferId,
        stream: u16,
        acked_below: u64,
    ) -> (Raw, Frame) {
        let mut raw = Raw::connect(peers, addr).await;
        raw.send(Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            transfer,
            stream,
            streams: 2,
            window: 8,
            max_block_len: 1 << 20,
            acked_below,
        }))
        .await;
        let answer = raw.next().await.expect("an answer to HELLO");
        (raw, answer)
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        self.send_bytes(&out).await;
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).await.unwrap();
        self.tls.flush().await.unwrap();
    }

    /// The next frame, or None at end of stream.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Decoded::Frame(f) = decode_frame(&mut self.buf, &Limits::default()).unwrap() {
                return Some(f);
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.tls.read_buf(&mut self.buf))
                .await
                .expect("receiver answers within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }
}

fn block(seq: u64, data: &[u8]) -> Frame {
    let data = Bytes::copy_from_slice(data);
    Frame::Block(
        BlockHeader {
            seq,
            disk: 0,
            offset: seq * 4096,
            len: data.len() as u32,
            crc32c: block_crc(&data),
        },
        data,
    )
}

fn active(received_below: u64) -> Frame {
    Frame::HelloOk(HelloOk {
        version: PROTOCOL_VERSION,
        status: TransferStatus::Active,
        received_below,
    })
}

async fn setup() -> (
    Peers,
    Receiver,
    TransferId,
    Arc<Collected>,
    cairn_transfer::IncomingTransfer,
) {
    let peers = Peers::localhost();
    let receiver = bind_local(peers.receiver_config(PeerPolicy::default())).await;
    let id = TransferId::random();
    let collected = Arc::new(Collected::default());
    let incoming = receiver.expect(id, collected.consumer(None)).unwrap();
    (peers, receiver, id, collected, incoming)
}

#[tokio::test]
async fn duplicates_across_streams_reach_the_consumer_once_and_reconnects_resume() {
    let (peers, receiver, id, collected, incoming) = setup().await;
    let addr = receiver.local_addr();
    let (mut s0, answer) = Raw::hello(&peers, addr, id, 0, 0).await;
    assert_eq!(answer, active(0));
    let (mut s1, answer) = Raw::hello(&peers, addr, id, 1, 0).await;
    assert_eq!(answer, active(0));

    s0.send(block(0, b"block zero")).await;
    assert_eq!(s0.next().await, Some(Frame::Ack(0)));
    // The same block again on the other stream (a re-send after a lost ACK): acknowledged,
    // not handed over again.
    s1.send(block(0, b"block zero")).await;
    assert_eq!(s1.next().await, Some(Frame::Ack(0)));
    // A damaged block is NACKed, its good copy acknowledged.
    let Frame::Block(mut header, data) = block(1, b"block one") else {
        unreachable!()
    };
    header.crc32c ^= 1;
    s1.send(Frame::Block(header, data)).await;
    assert_eq!(s1.next().await, Some(Frame::Nack(1, NackReason::Crc)));
    s1.send(block(1, b"block one")).await;
    assert_eq!(s1.next().await, Some(Frame::Ack(1)));
    // Block 3 before block 2: the watermark stays at 2 until 2 arrives.
    s1.send(block(3, b"block three")).await;
    assert_eq!(s1.next().await, Some(Frame::Ack(3)));

    // Stream 0 reconnects (its old connection looked dead to the sender): the receiver reports
    // what it has and drops the old connection.
    let (mut s0b, answer) = Raw::hello(&peers, addr, id, 0, 1).await;
    assert_eq!(answer, active(2));
    assert_eq!(s0.next().await, None, "the superseded connection is closed");
    s0b.send(block(2, b"block two")).await;
    assert_eq!(s0b.next().await, Some(Frame::Ack(2)));
    s0b.send(block(3, b"block three")).await;
    assert_eq!(s0b.next().await, Some(Frame::Ack(3)));
    s0b.send(Frame::End(4)).await;
    assert_eq!(s0b.next().await, Some(Frame::End(4)));

    let stats = incoming.wait().await.unwrap();
    assert_eq!(
        (stats.blocks, stats.duplicates, stats.nacks, stats.connections),
        (4, 2, 1, 3)
    );
    assert_eq!(collected.deliveries.load(std::sync::atomic::Ordering::SeqCst), 4);
    {
        let blocks = collected.blocks.lock().unwrap();
        assert_eq!(&blocks[&1].data[..], b"block one");
        assert_eq!(blocks[&3].offset, 3 * 4096);
    }

    // The other stream's END after completion is confirmed too; a reconnection after
    // completion is told the transfer is complete.
    s1.send(Frame::End(4)).await;
    assert_eq!(s1.next().await, Some(Frame::End(4)));
    let (_s, answer) = Raw::hello(&peers, addr, id, 1, 4).await;
    assert_eq!(
        answer,
        Frame::HelloOk(HelloOk {
            version: PROTOCOL_VERSION,
            status: TransferStatus::Complete,
            received_below: 4
        })
    );
}

async fn expect_error(raw: &mut Raw, code: ErrorCode, text: &str) {
    match raw.next().await {
        Some(Frame::Error(c, message)) => {
            assert_eq!(c, code, "{message}");
            assert!(message.contains(text), "{message:?} should mention {text:?}");
        }
        other => panic!("expected ERROR {code}, got {other:?}"),
    }
    assert_eq!(raw.next().await, None, "closed after ERROR");
}

#[tokio::test]
async fn a_block_beyond_the_window_fails_the_transfer() {
    let (peers, receiver, id, _collected, incoming) = setup().await;
    let (mut s, _) = Raw::hello(&peers, receiver.local_addr(), id, 0, 0).await;
    s.send(block(8, b"too far ahead")).await;
    expect_error(&mut s, ErrorCode::Protocol, "beyond its window of 8 blocks").await;
    assert!(matches!(incoming.wait().await, Err(Error::Protocol { .. })));
    // Later connections for the failed transfer are told it failed.
    let (_s, answer) = Raw::hello(&peers, receiver.local_addr(), id, 0, 0).await;
    assert!(
        matches!(answer, Frame::Error(ErrorCode::Cancelled, ref m) if m.contains("failed transfer")),
        "{answer:?}"
    );
}

#[tokio::test]
async fn garbage_oversized_blocks_and_early_ends_are_refused() {
    let (peers, receiver, id, collected, incoming) = setup().await;
    let addr = receiver.local_addr();
    // Not a HELLO at all: that connection is refused, the transfer is untouched.
    let mut s = Raw::connect(&peers, addr).await;
    s.send_bytes(b"GET / HTTP/1.1\r\n\r\n").await;
    expect_error(&mut s, ErrorCode::Protocol, "unknown frame kind 0x47").await;
    // A HELLO for a transfer nobody expects.
    let (mut s, answer) = Raw::hello(&peers, addr, TransferId::random(), 0, 0).await;
    assert!(
        matches!(answer, Frame::Error(ErrorCode::UnknownTransfer, _)),
        "{answer:?}"
    );
    assert_eq!(s.next().await, None);
    // A HELLO claiming acknowledgements the receiver never gave.
    let (mut s, answer) = Raw::hello(&peers, addr, id, 0, 5).await;
    assert!(
        matches!(answer, Frame::Error(ErrorCode::Protocol, ref m) if m.contains("below seq 5")),
        "{answer:?}"
    );
    assert_eq!(s.next().await, None);
    assert!(matches!(incoming.wait().await, Err(Error::Protocol { .. })));
    assert!(collected.blocks.lock().unwrap().is_empty());

    // A block longer than the receiver allows is refused before its payload is read.
    let incoming = receiver.expect(TransferId([9; 16]), collected.consumer(None)).unwrap();
    let (mut s, _) = Raw::hello(&peers, addr, TransferId([9; 16]), 0, 0).await;
    let mut out = BytesMut::new();
    cairn_transfer::wire::encode_block_header(
        &BlockHeader {
            seq: 0,
            disk: 0,
            offset: 0,
            len: 9 << 20,
            crc32c: 0,
        },
        &mut out,
    );
    s.send_bytes(&out).await;
    expect_error(&mut s, ErrorCode::Protocol, "exceeds the limit of 8388608 bytes").await;
    assert!(incoming.wait().await.is_err());

    // END before every block arrived.
    let incoming = receiver.expect(TransferId([10; 16]), collected.consumer(None)).unwrap();
    let (mut s, _) = Raw::hello(&peers, addr, TransferId([10; 16]), 0, 0).await;
    s.send(block(1, b"one")).await;
    assert_eq!(s.next().await, Some(Frame::Ack(1)));
    s.send(Frame::End(2)).await;
    expect_error(
        &mut s,
        ErrorCode::Protocol,
        "END of 2 blocks before all of them were received",
    )
    .await;
    assert!(incoming.wait().await.is_err());
}

#[tokio::test]
async fn a_sender_error_fails_the_transfer_and_dropping_the_handle_cancels_it() {
    let (peers, receiver, id, _collected, incoming) = setup().await;
    let (mut s, _) = Raw::hello(&peers, receiver.local_addr(), id, 0, 0).await;
    s.send(Frame::Error(ErrorCode::Cancelled, "job stopped by the operator".into()))
        .await;
    match incoming.wait().await {
        Err(Error::Peer { code, message, .. }) => {
            assert_eq!(code, ErrorCode::Cancelled);
            assert_eq!(message, "job stopped by the operator");
        }
        other => panic!("{other:?}"),
    }
    // Dropping an IncomingTransfer tells its connected streams.
    let other = TransferId::random();
    let incoming = receiver.expect(other, |_b| async { Ok(()) }).unwrap();
    let (mut s, answer) = Raw::hello(&peers, receiver.local_addr(), other, 0, 0).await;
    assert_eq!(answer, active(0));
    drop(incoming);
    expect_error(&mut s, ErrorCode::Cancelled, "stopped expecting it").await;
    assert!(
        receiver.expect(other, |_b| async { Ok(()) }).is_ok(),
        "the id can be expected again"
    );
    let dup = receiver.expect(id, |_b| async { Ok(()) }).unwrap();
    assert!(matches!(
        receiver.expect(id, |_b| async { Ok(()) }),
        Err(Error::AlreadyExpected(_))
    ));
    drop(dup);
}
