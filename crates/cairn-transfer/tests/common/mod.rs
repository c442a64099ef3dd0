//! Shared pieces of the data channel tests: a CA made with rcgen, consumers that record what
//! arrived, deterministic random blocks, and a TCP proxy that cuts connections.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cairn_transfer::{
    Block, ConsumerError, PeerPolicy, ReceivedBlock, Receiver, ReceiverConfig, ReconnectPolicy, SenderConfig,
    TlsIdentity, TransferId, receiver_tls_config, sender_tls_config,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A CA that issues data mover certificates.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// Validity window of an issued certificate.
pub enum Validity {
    Now,
    Expired,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert");
        Self { ca }
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA.
    pub fn identity(&self, names: &[&str], validity: Validity) -> TlsIdentity {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names[0].clone());
        if let Validity::Expired = validity {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("sign leaf");
        TlsIdentity {
            ca: self.ca_der(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// Receiver and sender identities from one CA, the receiver's valid for localhost and the
/// given addresses.
pub struct Peers {
    pub pki: Pki,
    pub receiver: TlsIdentity,
    pub sender: TlsIdentity,
}

impl Peers {
    pub fn new(receiver_names: &[&str]) -> Self {
        let pki = Pki::new("cairn test CA");
        let receiver = pki.identity(receiver_names, Validity::Now);
        let sender = pki.identity(&["proxy01"], Validity::Now);
        Self { pki, receiver, sender }
    }

    pub fn localhost() -> Self {
        Self::new(&["localhost", "127.0.0.1"])
    }

    pub fn receiver_config(&self, policy: PeerPolicy) -> ReceiverConfig {
        ReceiverConfig::new(receiver_tls_config(&self.receiver, policy).expect("receiver TLS"))
    }
}

/// A sender configuration with test-friendly timeouts.
pub fn sender_config(identity: &TlsIdentity, addr: SocketAddr, name: &str, transfer: TransferId) -> SenderConfig {
    let tls = sender_tls_config(identity, PeerPolicy::default()).expect("sender TLS");
    let mut config = SenderConfig::new(
        addr,
        ServerName::try_from(name.to_string()).expect("name"),
        tls,
        transfer,
    );
    config.io_timeout = Duration::from_secs(10);
    config.reconnect = ReconnectPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(500),
        give_up_after: Duration::from_secs(10),
    };
    config
}

pub async fn bind_local(config: ReceiverConfig) -> Receiver {
    Receiver::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("bind receiver")
}

/// A receiver on 127.0.0.1 that trusts `peers`' sender (default policy), a new transfer id, and
/// a sender configuration for that transfer to that receiver (by the name `localhost`).
pub async fn local_pair(peers: &Peers) -> (Receiver, TransferId, SenderConfig) {
    let receiver = bind_local(peers.receiver_config(PeerPolicy::default())).await;
    let id = TransferId::random();
    let config = sender_config(&peers.sender, receiver.local_addr(), "localhost", id);
    (receiver, id, config)
}

/// Records every block the receiver hands over, and how often each seq came.
#[derive(Default)]
pub struct Collected {
    pub blocks: Mutex<HashMap<u64, ReceivedBlock>>,
    pub deliveries: AtomicU64,
    pub repeated: AtomicU64,
}

impl Collected {
    /// A consumer closure feeding this collection; `fail_on` makes that seq fail.
    pub fn consumer(
        self: &Arc<Self>,
        fail_on: Option<u64>,
    ) -> impl Fn(ReceivedBlock) -> std::future::Ready<Result<(), ConsumerError>> + Send + Sync + 'static {
        let this = self.clone();
        move |block: ReceivedBlock| {
            if Some(block.seq) == fail_on {
                return std::future::ready(Err(format!("disk full writing seq {}", block.seq).into()));
            }
            this.deliveries.fetch_add(1, Ordering::SeqCst);
            if this.blocks.lock().unwrap().insert(block.seq, block).is_some() {
                this.repeated.fetch_add(1, Ordering::SeqCst);
            }
            std::future::ready(Ok(()))
        }
    }

    /// Asserts that exactly `sent` arrived, each once, with the right placement and bytes.
    pub fn assert_exactly(&self, sent: &[Block]) {
        assert_eq!(
            self.repeated.load(Ordering::SeqCst),
            0,
            "a block reached the consumer twice"
        );
        assert_eq!(self.deliveries.load(Ordering::SeqCst), sent.len() as u64, "deliveries");
        let blocks = self.blocks.lock().unwrap();
        assert_eq!(blocks.len(), sent.len());
        for (seq, block) in sent.iter().enumerate() {
            let got = blocks.get(&(seq as u64)).unwrap_or_else(|| panic!("seq {seq} missing"));
            assert_eq!(
                (got.disk, got.offset),
                (block.disk, block.offset),
                "placement of seq {seq}"
            );
            assert!(got.data == block.data, "bytes of seq {seq} differ");
        }
    }
}

pub use cairn_testkit::rng::Rng;

/// `count` blocks of 64 KiB to 1 MiB of random bytes, spread over two disks.
pub fn random_blocks(count: usize, seed: u64) -> Vec<Block> {
    let mut rng = Rng::new(seed);
    let mut offsets = [0u64; 2];
    (0..count)
        .map(|_| {
            let len = (64 << 10) + rng.below((1 << 20) - (64 << 10) + 1) as usize;
            let mut data = vec![0u8; len];
            for chunk in data.chunks_mut(8) {
                let v = rng.next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            let disk = rng.below(2) as u32;
            let offset = offsets[disk as usize];
            offsets[disk as usize] += 1 << 20;
            Block {
                disk,
                offset,
                data: Bytes::from(data),
            }
        })
        .collect()
}

/// A TCP proxy in front of `target` that, for the first `cuts` connections, closes both
/// directions once `after` bytes went from client to server.
pub struct CuttingProxy {
    pub addr: SocketAddr,
    pub cut: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    pub async fn start(target: SocketAddr, cuts: usize, after: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (cut2, conns2) = (cut.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let n = conns2.fetch_add(1, Ordering::SeqCst);
                let limit = if n < cuts { Some(after) } else { None };
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let upstream = async {
                        let mut buf = vec![0u8; 64 << 10];
                        let mut sent = 0u64;
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return false,
                                Ok(n) => n,
                            };
                            let n = match limit {
                                Some(l) if sent + n as u64 >= l => {
                                    let part = (l - sent) as usize;
                                    let _ = sw.write_all(&buf[..part]).await;
                                    return true;
                                }
                                _ => n,
                            };
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return false;
                            }
                            sent += n as u64;
                        }
                    };
                    let downstream = async {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        false
                    };
                    let was_cut = tokio::select! {
                        c = upstream => c,
                        c = downstream => c,
                    };
                    if was_cut {
                        cut.fetch_add(1, Ordering::SeqCst);
                    }
                    // Dropping the halves closes both connections.
                });
            }
        });
        Self {
            addr,
            cut,
            connections,
            task,
        }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
