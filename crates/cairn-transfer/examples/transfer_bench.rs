//! Data channel throughput benchmark (run by `bench/transfer.sh`; needs root and iproute2).
//!
//! Measures, with 1 MiB blocks of random bytes:
//! - over an emulated link with 20 ms delay and 0.1 % loss each way (TUN devices in two network
//!   namespaces; see the `cairn-testnet` crate): 1 stream and 5 streams;
//! - over a clean veth pair between two namespaces: 1 and 5 streams;
//! - in-process: the same blocks through the same CRC-32C work and consumer without network or
//!   TLS (the "local" baseline).
//!
//! Usage: `transfer_bench [LOSSY_MIB] [CLEAN_MIB] [CONGESTION_CONTROL]` (defaults 192, 2048,
//! the kernel's default). Prints one line per measurement and the ratios.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_testnet::{LinkKind, NetPair, RECEIVER_IP, in_netns, run};
use cairn_transfer::{Block, PeerPolicy, ReceivedBlock, Receiver, Sender, TransferId, wire::block_crc};
use common::{Peers, Rng, sender_config};

const BLOCK: usize = 1 << 20;

fn pool() -> Bytes {
    let mut rng = Rng::new(42);
    let mut data = vec![0u8; 64 * BLOCK];
    for chunk in data.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes());
    }
    Bytes::from(data)
}

fn blocks(pool: &Bytes, mib: usize) -> impl Iterator<Item = Block> + '_ {
    let per_pool = pool.len() / BLOCK;
    (0..mib).map(move |i| Block {
        disk: 0,
        offset: (i * BLOCK) as u64,
        data: pool.slice((i % per_pool) * BLOCK..(i % per_pool + 1) * BLOCK),
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One transfer of `mib` MiB over `pair` with `streams` streams; returns MB/s (10^6 bytes).
fn over_link(pair: &NetPair, pool: &Bytes, mib: usize, streams: u16) -> f64 {
    let peers = Arc::new(Peers::new(&[RECEIVER_IP]));
    let id = TransferId::random();
    let (port_tx, port_rx) = mpsc::channel();
    let receiver = {
        let peers = peers.clone();
        in_netns(&pair.receiver_ns, move || {
            runtime().block_on(async move {
                let mut config = peers.receiver_config(PeerPolicy::default());
                config.max_window = 4096;
                let receiver = Receiver::bind("0.0.0.0:0".parse().unwrap(), config).await.unwrap();
                let bytes = Arc::new(AtomicU64::new(0));
                let counted = bytes.clone();
                let incoming = receiver
                    .expect(id, move |b: ReceivedBlock| {
                        counted.fetch_add(b.data.len() as u64, Ordering::Relaxed);
                        std::future::ready(Ok(()))
                    })
                    .unwrap();
                port_tx.send(receiver.local_addr().port()).unwrap();
                incoming.wait().await.expect("receiver side");
                bytes.load(Ordering::Relaxed)
            })
        })
    };
    let port = port_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("receiver listening");
    let addr = format!("{RECEIVER_IP}:{port}").parse().unwrap();
    let sender = {
        let (peers, pool) = (peers.clone(), pool.clone());
        in_netns(&pair.sender_ns, move || {
            runtime().block_on(async move {
                let mut config = sender_config(&peers.sender, addr, RECEIVER_IP, id);
                config.streams = streams;
                config.window = 256;
                config.io_timeout = Duration::from_secs(30);
                let started = Instant::now();
                let sender = Sender::connect(config).await.expect("connect");
                for b in blocks(&pool, mib) {
                    sender.send(b).await.expect("send");
                }
                let stats = sender.finish().await.expect("finish");
                (started.elapsed(), stats)
            })
        })
    };
    let (elapsed, stats) = sender.join().expect("sender thread");
    let received = receiver.join().expect("receiver thread");
    assert_eq!(received, (mib * BLOCK) as u64);
    let mbps = received as f64 / elapsed.as_secs_f64() / 1e6;
    println!(
        "  {streams} stream(s): {mib} MiB in {:.2} s = {mbps:.1} MB/s (re-sent {}, reconnects {})",
        elapsed.as_secs_f64(),
        stats.resent_blocks,
        stats.reconnects
    );
    mbps
}

/// The same blocks through the sender's and receiver's CRC work and a consumer, in-process.
fn in_process(pool: &Bytes, mib: usize) -> f64 {
    runtime().block_on(async {
        let bytes = Arc::new(AtomicU64::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, u32, Block)>(64);
        let counted = bytes.clone();
        let consumer = tokio::spawn(async move {
            while let Some((seq, crc, b)) = rx.recv().await {
                assert_eq!(block_crc(&b.data), crc);
                let block = ReceivedBlock {
                    seq,
                    disk: b.disk,
                    offset: b.offset,
                    data: b.data,
                };
                counted.fetch_add(block.data.len() as u64, Ordering::Relaxed);
            }
        });
        let started = Instant::now();
        for (seq, b) in blocks(pool, mib).enumerate() {
            let crc = block_crc(&b.data);
            tx.send((seq as u64, crc, b)).await.expect("consumer alive");
        }
        drop(tx);
        consumer.await.expect("consumer");
        let elapsed = started.elapsed();
        let mbps = bytes.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64() / 1e6;
        println!(
            "  in-process: {mib} MiB in {:.2} s = {mbps:.1} MB/s",
            elapsed.as_secs_f64()
        );
        mbps
    })
}

fn set_congestion_control(pair: &NetPair, cc: &str) {
    for ns in [&pair.sender_ns, &pair.receiver_ns] {
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv4.tcp_congestion_control={cc}"),
        ]);
    }
}

fn congestion_control(pair: &NetPair) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.sender_ns,
            "sysctl",
            "-n",
            "net.ipv4.tcp_congestion_control",
        ])
        .output()
        .expect("sysctl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lossy_mib: usize = args.get(1).map_or(192, |s| s.parse().expect("LOSSY_MIB"));
    let clean_mib: usize = args.get(2).map_or(2048, |s| s.parse().expect("CLEAN_MIB"));
    let cc = args.get(3).cloned();
    let pool = pool();

    let lossy = NetPair::new(
        "bench-lossy",
        LinkKind::Emulated {
            delay: Duration::from_millis(20),
            loss: 0.001,
        },
    );
    if let Some(cc) = &cc {
        set_congestion_control(&lossy, cc);
    }
    println!(
        "emulated link, 20 ms delay + 0.1 % loss each way (RTT 40 ms), TCP congestion control {}:",
        congestion_control(&lossy)
    );
    let lossy_1 = over_link(&lossy, &pool, lossy_mib, 1);
    let lossy_5 = over_link(&lossy, &pool, lossy_mib, 5);
    println!("  packets dropped by the link: {}", lossy.dropped());
    drop(lossy);

    let clean = NetPair::new("bench-clean", LinkKind::Veth);
    if let Some(cc) = &cc {
        set_congestion_control(&clean, cc);
    }
    println!(
        "clean veth pair between two namespaces, TCP congestion control {}:",
        congestion_control(&clean)
    );
    let clean_1 = over_link(&clean, &pool, clean_mib, 1);
    let clean_5 = over_link(&clean, &pool, clean_mib, 5);
    drop(clean);
    let local = in_process(&pool, clean_mib);

    println!("ratios:");
    println!(
        "  lossy link, 5 streams / 1 stream: {:.2} (target >= 3)",
        lossy_5 / lossy_1
    );
    println!("  clean link, 5 streams / in-process: {:.2}", clean_5 / local);
    println!("  clean link, 1 stream / in-process: {:.2}", clean_1 / local);
}
