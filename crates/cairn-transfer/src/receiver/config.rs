//! The receiver's settings ([`ReceiverConfig`]).

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;

use crate::net::SocketOptions;

/// Receiver settings. Build with [`ReceiverConfig::new`], then adjust fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct ReceiverConfig {
    /// TLS server configuration, from [`receiver_tls_config`](crate::receiver_tls_config).
    pub tls: Arc<ServerConfig>,
    /// Longest block payload accepted (default 8 MiB, at most 16 MiB). Memory bound per
    /// connection: one block.
    pub max_block_len: u32,
    /// Largest sender window accepted (default 1024 blocks); bounds the de-duplication state.
    pub max_window: u32,
    /// Most streams per transfer (default 16).
    pub max_streams: u16,
    /// Time allowed for a new connection's TLS handshake and HELLO (default 30 s).
    pub handshake_timeout: Duration,
    /// Most simultaneous connections (default 256); more are closed at once.
    pub max_connections: usize,
    /// TCP settings.
    pub socket: SocketOptions,
}

impl ReceiverConfig {
    /// Defaults around the given TLS configuration.
    pub fn new(tls: Arc<ServerConfig>) -> Self {
        Self {
            tls,
            max_block_len: 8 << 20,
            max_window: 1024,
            max_streams: 16,
            handshake_timeout: Duration::from_secs(30),
            max_connections: 256,
            socket: SocketOptions::default(),
        }
    }
}
