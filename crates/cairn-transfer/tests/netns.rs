//! Transfers between two network namespaces: over an emulated link with 20 ms delay and 0.1 %
//! loss each way (see the `cairn-testnet` crate for why not `tc netem`), and over a veth pair whose
//! link is cut (`ip link set down`) mid-transfer and restored. Needs root and iproute2; fails
//! loudly (never skips) without them.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use cairn_testnet::{LinkKind, NetPair, RECEIVER_IP, in_netns};
use cairn_transfer::{Block, PeerPolicy, ReceivedBlock, Receiver, ReconnectPolicy, Sender, SenderStats, TransferId};
use common::{Collected, Peers, random_blocks, sender_config};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

struct Outcome {
    sender: SenderStats,
    consumed: u64,
}

/// Transfers `blocks` from the sender namespace to the receiver namespace; `during` runs on the
/// test thread while the transfer goes on, with the count of consumed blocks.
fn transfer(
    pair: &NetPair,
    blocks: Vec<Block>,
    streams: u16,
    io_timeout: Duration,
    during: impl FnOnce(&AtomicU64),
) -> Outcome {
    let peers = Arc::new(Peers::new(&[RECEIVER_IP]));
    let id = TransferId::random();
    let consumed = Arc::new(AtomicU64::new(0));
    let collected = Arc::new(Collected::default());
    let (port_tx, port_rx) = mpsc::channel();
    let receiver = {
        let (peers, consumed, collected) = (peers.clone(), consumed.clone(), collected.clone());
        in_netns(&pair.receiver_ns, move || {
            runtime().block_on(async move {
                let config = peers.receiver_config(PeerPolicy::default());
                let receiver = Receiver::bind("0.0.0.0:0".parse().unwrap(), config).await.unwrap();
                let inner = collected.consumer(None);
                let incoming = receiver
                    .expect(id, move |b: ReceivedBlock| {
                        consumed.fetch_add(1, Ordering::SeqCst);
                        inner(b)
                    })
                    .unwrap();
                port_tx.send(receiver.local_addr().port()).unwrap();
                tokio::time::timeout(Duration::from_secs(60), incoming.wait()).await
            })
        })
    };
    let port = port_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("receiver listening");
    let addr = format!("{RECEIVER_IP}:{port}").parse().unwrap();
    let sender = {
        let (peers, blocks) = (peers.clone(), blocks.clone());
        in_netns(&pair.sender_ns, move || {
            runtime().block_on(async move {
                let mut config = sender_config(&peers.sender, addr, RECEIVER_IP, id);
                config.streams = streams;
                config.io_timeout = io_timeout;
                config.reconnect = ReconnectPolicy {
                    initial_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_millis(500),
                    give_up_after: Duration::from_secs(30),
                };
                let sender = Sender::connect(config).await?;
                for b in blocks {
                    sender.send(b).await?;
                }
                sender.finish().await
            })
        })
    };
    during(&consumed);
    let sender_stats = sender.join().expect("sender thread").expect("transfer completes");
    let received = receiver
        .join()
        .expect("receiver thread")
        .expect("receiver done within 60 s")
        .unwrap();
    collected.assert_exactly(&blocks);
    assert_eq!(received.blocks, blocks.len() as u64);
    Outcome {
        sender: sender_stats,
        consumed: consumed.load(Ordering::SeqCst),
    }
}

#[test]
fn a_transfer_between_namespaces_over_a_delayed_lossy_link_completes() {
    let kind = LinkKind::Emulated {
        delay: Duration::from_millis(20),
        loss: 0.001,
    };
    let pair = NetPair::new("lossy", kind);
    let blocks = random_blocks(60, 11);
    let started = Instant::now();
    let out = transfer(&pair, blocks, 5, Duration::from_secs(10), |_| {});
    eprintln!(
        "lossy link: {:?}, {} packets dropped, {:?}",
        started.elapsed(),
        pair.dropped(),
        out.sender
    );
    assert_eq!(out.consumed, 60);
    assert_eq!(out.sender.blocks, 60);
}

#[test]
fn a_link_cut_mid_transfer_resumes_once_the_link_is_back() {
    let pair = NetPair::new("cut", LinkKind::Veth);
    let blocks = random_blocks(80, 12);
    let out = transfer(&pair, blocks, 5, Duration::from_secs(2), |consumed| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while consumed.load(Ordering::SeqCst) < 20 {
            assert!(Instant::now() < deadline, "no progress before the cut");
            std::thread::sleep(Duration::from_millis(5));
        }
        pair.set_sender_link(false);
        let at_cut = consumed.load(Ordering::SeqCst);
        // Longer than the sender's 2 s I/O timeout, so its streams drop and reconnect.
        std::thread::sleep(Duration::from_secs(4));
        pair.set_sender_link(true);
        assert!(at_cut < 80, "the transfer finished before the cut");
    });
    eprintln!("cut link: {:?}", out.sender);
    assert!(
        out.sender.reconnects >= 1,
        "streams reconnected after the cut: {:?}",
        out.sender
    );
    assert_eq!(out.consumed, 80);
}
