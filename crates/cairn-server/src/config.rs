//! What the server is started with.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Options of `cairn server`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data folder: configuration database (SQLite), CA and certificate, secrets, and by
    /// default the default repository.
    pub data_dir: PathBuf,
    /// Address to listen on (default `127.0.0.1:8520`).
    pub listen: SocketAddr,
    /// `postgres://…` to keep the configuration in PostgreSQL; `None` uses SQLite in the data folder.
    pub database_url: Option<String>,
    /// Where to create the default repository on first start; `None` picks the volume with the
    /// most free space (the data folder's when it ties).
    pub default_repository: Option<PathBuf>,
    /// Time zone for schedules that name none (IANA name); `None` uses the system's.
    pub time_zone: Option<String>,
    /// Extra DNS names / IP addresses for the serving certificate (besides localhost,
    /// 127.0.0.1, ::1, the host name and the listen address).
    pub extra_names: Vec<String>,
    /// How often agents send heartbeats (default 10 s); an agent silent for three intervals is
    /// offline, and its running tasks fail.
    pub agent_heartbeat: std::time::Duration,
    /// Parallel TCP streams per data transfer between data movers (default 5, 1..=64).
    pub streams: u16,
    /// The restore folders set on first start (when the database has none yet); empty: the
    /// default `DATA-restore` beside the data folder. Later changes go through the settings.
    pub restore_folders: Vec<PathBuf>,
}

impl ServerConfig {
    /// The defaults for a data folder.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8520)),
            database_url: None,
            default_repository: None,
            time_zone: None,
            extra_names: Vec::new(),
            agent_heartbeat: std::time::Duration::from_secs(cairn_api::agent::HEARTBEAT_INTERVAL_SECS),
            streams: 5,
            restore_folders: Vec::new(),
        }
    }
}
