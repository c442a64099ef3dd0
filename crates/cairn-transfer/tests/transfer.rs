//! Whole transfers over real TCP and TLS on loopback: delivery exactly once, CRC re-sends,
//! dropped connections, consumer failures, throttling.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_transfer::wire::ErrorCode;
use cairn_transfer::{Block, Error, FaultInjector, PeerPolicy, Sender, SenderStats, TransferId};
use common::{Collected, CuttingProxy, Peers, bind_local, local_pair, random_blocks, sender_config};

async fn send_all(sender: Sender, blocks: &[Block]) -> Result<SenderStats, Error> {
    for (i, block) in blocks.iter().enumerate() {
        let seq = sender.send(block.clone()).await?;
        assert_eq!(seq, i as u64, "seqs are dense from 0");
    }
    sender.finish().await
}

async fn loopback(streams: u16, count: usize, seed: u64) {
    let peers = Peers::localhost();
    let (receiver, id, mut config) = local_pair(&peers).await;
    let collected = Arc::new(Collected::default());
    let incoming = receiver.expect(id, collected.consumer(None)).unwrap();
    config.streams = streams;
    let blocks = random_blocks(count, seed);
    let sender = Sender::connect(config).await.unwrap();
    let stats = send_all(sender, &blocks).await.unwrap();
    let received = incoming.wait().await.unwrap();
    collected.assert_exactly(&blocks);
    let total: u64 = blocks.iter().map(|b| b.data.len() as u64).sum();
    assert_eq!(
        (stats.blocks, stats.bytes, stats.bytes_sent),
        (count as u64, total, total)
    );
    assert_eq!((stats.resent_blocks, stats.nacked_blocks, stats.reconnects), (0, 0, 0));
    assert_eq!(
        (received.blocks, received.bytes, received.duplicates, received.nacks),
        (count as u64, total, 0, 0)
    );
    assert_eq!(received.connections, u64::from(streams));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_one_stream_delivers_every_block_once() {
    loopback(1, 300, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_five_streams_deliver_every_block_once() {
    loopback(5, 300, 2).await;
}

/// Corrupts chosen seqs on their first send only.
struct CorruptFirstSend(Vec<u64>);

impl FaultInjector for CorruptFirstSend {
    fn corrupt(&self, seq: u64, attempt: u32) -> bool {
        attempt == 1 && self.0.contains(&seq)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blocks_are_nacked_and_resent_without_failing() {
    let peers = Peers::localhost();
    let (receiver, id, mut config) = local_pair(&peers).await;
    let collected = Arc::new(Collected::default());
    let incoming = receiver.expect(id, collected.consumer(None)).unwrap();
    let corrupt = vec![0, 3, 17, 42, 79];
    config.fault_injector = Some(Arc::new(CorruptFirstSend(corrupt.clone())));
    let blocks = random_blocks(80, 3);
    let stats = send_all(Sender::connect(config).await.unwrap(), &blocks).await.unwrap();
    let received = incoming.wait().await.unwrap();
    collected.assert_exactly(&blocks);
    assert_eq!(stats.nacked_blocks, corrupt.len() as u64);
    assert_eq!(stats.resent_blocks, corrupt.len() as u64);
    assert_eq!(received.nacks, corrupt.len() as u64);
    assert_eq!(stats.reconnects, 0);
    let resent_bytes: u64 = corrupt.iter().map(|&s| blocks[s as usize].data.len() as u64).sum();
    assert_eq!(stats.bytes_sent, stats.bytes + resent_bytes);
}

/// Corrupts one block on every send.
struct AlwaysCorrupt(u64);

impl FaultInjector for AlwaysCorrupt {
    fn corrupt(&self, seq: u64, _attempt: u32) -> bool {
        seq == self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_that_never_passes_its_crc_fails_the_transfer_on_both_sides() {
    let peers = Peers::localhost();
    let (receiver, id, mut config) = local_pair(&peers).await;
    let collected = Arc::new(Collected::default());
    let incoming = receiver.expect(id, collected.consumer(None)).unwrap();
    config.max_resends = 3;
    config.fault_injector = Some(Arc::new(AlwaysCorrupt(2)));
    let blocks = random_blocks(6, 4);
    let err = send_all(Sender::connect(config).await.unwrap(), &blocks)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("block seq 2 failed its CRC-32C at the receiver 4 times"),
        "{err}"
    );
    let err = tokio::time::timeout(Duration::from_secs(10), incoming.wait())
        .await
        .unwrap()
        .unwrap_err();
    match err {
        Error::Peer { code, .. } => assert_eq!(code, ErrorCode::Protocol),
        other => panic!("receiver saw {other}"),
    }
    assert!(!collected.blocks.lock().unwrap().contains_key(&2));
    assert_eq!(incoming.stats().nacks, 4);
}

async fn through_cutting_proxy(streams: u16, cuts: usize, after: u64, seed: u64) {
    let peers = Peers::localhost();
    let receiver = bind_local(peers.receiver_config(PeerPolicy::default())).await;
    let proxy = CuttingProxy::start(receiver.local_addr(), cuts, after).await;
    let id = TransferId::random();
    let collected = Arc::new(Collected::default());
    let incoming = receiver.expect(id, collected.consumer(None)).unwrap();
    let mut config = sender_config(&peers.sender, proxy.addr, "localhost", id);
    config.streams = streams;
    config.window = 16;
    let blocks = random_blocks(120, seed);
    let stats = send_all(Sender::connect(config).await.unwrap(), &blocks).await.unwrap();
    let received = incoming.wait().await.unwrap();
    collected.assert_exactly(&blocks);
    assert_eq!(
        proxy.cut.load(Ordering::SeqCst),
        cuts,
        "the proxy cut every doomed connection"
    );
    assert_eq!(stats.reconnects, cuts as u64);
    assert_eq!(received.connections, u64::from(streams) + cuts as u64);
    assert_eq!(stats.blocks, blocks.len() as u64);
    // What was in flight on a cut connection went again, unless the receiver reported having it.
    assert!(stats.bytes_sent >= stats.bytes);
    eprintln!(
        "{streams} streams, {cuts} cuts: resent {} blocks, receiver saw {} duplicates",
        stats.resent_blocks, received.duplicates
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_resume_with_one_stream() {
    through_cutting_proxy(1, 4, 3 << 20, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_resume_with_five_streams() {
    through_cutting_proxy(5, 10, 2 << 20, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_failure_fails_the_transfer_on_both_sides() {
    let peers = Peers::localhost();
    let (receiver, id, config) = local_pair(&peers).await;
    let collected = Arc::new(Collected::default());
    let incoming = receiver.expect(id, collected.consumer(Some(7))).unwrap();
    let blocks = random_blocks(40, 7);
    let err = send_all(Sender::connect(config).await.unwrap(), &blocks)
        .await
        .unwrap_err();
    match &err {
        Error::Peer { code, message, .. } => {
            assert_eq!(*code, ErrorCode::Consumer);
            assert!(message.contains("disk full writing seq 7"), "{message}");
        }
        other => panic!("sender saw {other}"),
    }
    match incoming.wait().await.unwrap_err() {
        Error::Consumer { seq, message, .. } => {
            assert_eq!(seq, 7);
            assert!(message.contains("disk full"));
        }
        other => panic!("receiver saw {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_is_called_per_block_and_its_waits_are_counted() {
    let peers = Peers::localhost();
    let (receiver, id, mut config) = local_pair(&peers).await;
    let collected = Arc::new(Collected::default());
    let incoming = receiver.expect(id, collected.consumer(None)).unwrap();
    let asked = Arc::new(AtomicU64::new(0));
    let asked2 = asked.clone();
    config.throttle = Some(Arc::new(move |bytes: u64| {
        asked2.fetch_add(bytes, Ordering::SeqCst);
        Duration::from_millis(10)
    }));
    let blocks = random_blocks(20, 8);
    let stats = send_all(Sender::connect(config).await.unwrap(), &blocks).await.unwrap();
    incoming.wait().await.unwrap();
    collected.assert_exactly(&blocks);
    assert_eq!(asked.load(Ordering::SeqCst), stats.bytes);
    assert!(
        stats.throttled >= Duration::from_millis(10) * 20,
        "{:?}",
        stats.throttled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_transfer_is_refused_and_a_window_bounds_memory() {
    let peers = Peers::localhost();
    let receiver = bind_local(peers.receiver_config(PeerPolicy::default())).await;
    let mut config = sender_config(&peers.sender, receiver.local_addr(), "localhost", TransferId::random());
    config.streams = 2;
    let err = Sender::connect(config.clone())
        .await
        .err()
        .expect("unknown transfer refused");
    match err {
        Error::Peer { code, .. } => assert_eq!(code, ErrorCode::UnknownTransfer),
        other => panic!("{other}"),
    }
    // A receiver that allows fewer streams than asked refuses with a limits error.
    let mut small = peers.receiver_config(PeerPolicy::default());
    small.max_streams = 1;
    let receiver = bind_local(small).await;
    let _incoming = receiver.expect(config.transfer, |_b| async { Ok(()) }).unwrap();
    config.addr = receiver.local_addr();
    match Sender::connect(config).await.err().expect("limits") {
        Error::Peer { code, message, .. } => {
            assert_eq!(code, ErrorCode::Limits);
            assert!(message.contains("2 streams (at most 1)"), "{message}");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_holds_back_sends_until_acknowledged() {
    let peers = Peers::localhost();
    let (receiver, id, mut config) = local_pair(&peers).await;
    // A consumer that holds block 0 until released; the others pass at once. The window spans
    // seqs from the oldest unacknowledged block, so blocks 1–3 being acknowledged does not
    // make room for block 4 while block 0 is outstanding.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let gate2 = gate.clone();
    let incoming = receiver
        .expect(id, move |b: cairn_transfer::ReceivedBlock| {
            let gate = gate2.clone();
            async move {
                if b.seq == 0 {
                    gate.acquire().await?.forget();
                }
                Ok(())
            }
        })
        .unwrap();
    config.window = 4;
    let sender = Sender::connect(config).await.unwrap();
    let blocks = random_blocks(6, 9);
    for b in &blocks[..4] {
        sender.send(b.clone()).await.unwrap();
    }
    {
        let fifth = sender.send(blocks[4].clone());
        tokio::pin!(fifth);
        // Not a timing assertion: the send cannot complete while block 0 is unacknowledged.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut fifth)
                .await
                .is_err()
        );
        gate.add_permits(1);
        assert_eq!(fifth.await.unwrap(), 4);
    }
    sender.send(blocks[5].clone()).await.unwrap();
    let stats = sender.finish().await.unwrap();
    assert_eq!(stats.blocks, 6);
    assert_eq!(incoming.wait().await.unwrap().blocks, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_going_away_right_after_completion_does_not_fail_the_sender() {
    // The target agent drops its receiver as soon as `wait` returns, while the sender's other
    // streams may still be waiting for their END confirmation: the transfer stays a success.
    let peers = Peers::localhost();
    for round in 0..10 {
        let receiver = bind_local(peers.receiver_config(PeerPolicy::default())).await;
        let id = TransferId::random();
        let collected = Arc::new(Collected::default());
        let incoming = receiver.expect(id, collected.consumer(None)).unwrap();
        let config = sender_config(&peers.sender, receiver.local_addr(), "localhost", id);
        let blocks = random_blocks(3, 100 + round);
        let target = tokio::spawn(async move {
            let stats = incoming.wait().await;
            drop(receiver);
            stats
        });
        let stats = send_all(Sender::connect(config).await.unwrap(), &blocks).await.unwrap();
        assert_eq!(stats.blocks, 3);
        target.await.unwrap().unwrap();
        collected.assert_exactly(&blocks);
    }
}
