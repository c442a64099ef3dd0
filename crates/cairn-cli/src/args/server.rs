//! Arguments of `cairn server`: running the backup server.

use std::path::PathBuf;

use clap::Args;

/// `cairn server`.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Data folder: configuration database (SQLite), CA and certificate, secrets.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8520")]
    pub listen: std::net::SocketAddr,
    /// `postgres://…` to keep the configuration in PostgreSQL instead of SQLite.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Where to create the default repository on first start (default: the volume with the
    /// most free space).
    #[arg(long, value_name = "PATH")]
    pub default_repository: Option<PathBuf>,
    /// Time zone of schedules that name none (IANA name; default: the system's).
    #[arg(long, value_name = "TZ")]
    pub time_zone: Option<String>,
    /// Extra DNS name or IP address for the server's certificate (repeatable).
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Seconds between agents' heartbeats; an agent silent for three of them is lost and its
    /// running tasks fail (and are retried).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub agent_heartbeat: u64,
    /// Parallel TCP streams per data transfer between data movers (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub streams: u16,
    /// Restore folder set on first start (repeatable; default: DATA-restore beside the data
    /// folder): restores are written only beneath these. Change them later with `cairn settings
    /// --restore-folder`.
    #[arg(long = "restore-folder", value_name = "DIR")]
    pub restore_folders: Vec<PathBuf>,
}
