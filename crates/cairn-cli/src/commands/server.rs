//! `cairn server`: runs the backup server in this process.

use std::process::ExitCode;

use anyhow::Context;

use crate::args::{Global, ServerArgs};

/// Makes every file this process (and its children: QEMU, qemu-img) creates private unless a
/// mode is given explicitly: the server runs as root and handles keys, passwords and guests' data.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

pub fn run(_g: &Global, a: &ServerArgs) -> anyhow::Result<ExitCode> {
    private_umask();
    let mut config = cairn_server::ServerConfig::new(&a.data);
    config.listen = a.listen;
    config.database_url = a.database.clone();
    config.default_repository = a.default_repository.clone();
    config.time_zone = a.time_zone.clone();
    config.extra_names = a.names.clone();
    config.agent_heartbeat = std::time::Duration::from_secs(a.agent_heartbeat);
    config.streams = a.streams;
    config.restore_folders = a.restore_folders.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn-server")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(cairn_server::run(config))?;
    Ok(ExitCode::SUCCESS)
}
