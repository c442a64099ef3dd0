//! Running the server: bootstrap, resource scheduler, job manager, scheduler, HTTPS listener,
//! graceful shutdown.
//!
//! [`run`] is `cairn server`: it serves until SIGTERM or SIGINT. [`start`] / [`start_with`]
//! start the same server in the calling process and hand back a [`RunningServer`] (bound address,
//! CA path, what was printed, shutdown) — for tests and for embedding.
//!
//! When the listener is ready the server prints `cairn server listening on https://ADDR` on
//! stdout (preceded, on first start, by the administrator's password and where the CA and the
//! repository passwords are); scripts and tests wait for that line.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use cairn_resources::{ResourceScheduler, SchedulerOptions};

use crate::bootstrap::{self, ADMIN_PASSWORD_ENV};
use crate::config::ServerConfig;
use crate::http::settings::parallel_processing;
use crate::repositories::{register_proxy, register_repository};
use crate::runner::{JobManager, RunnerContext};
use crate::state::AppState;

/// How long open connections may finish their requests at shutdown.
const GRACE: Duration = Duration::from_secs(10);

/// Options of an in-process start that are not part of [`ServerConfig`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Password of the first administrator, used only when the database has no user yet;
    /// `None` generates one (printed once).
    pub admin_password: Option<String>,
}

impl StartOptions {
    /// The options of `cairn server`: the first administrator's password from
    /// `CAIRN_ADMIN_PASSWORD` when set.
    pub fn from_env() -> StartOptions {
        StartOptions {
            admin_password: std::env::var(ADMIN_PASSWORD_ENV).ok().filter(|p| !p.is_empty()),
        }
    }
}

/// A server started with [`start`] or [`start_with`].
pub struct RunningServer {
    addr: SocketAddr,
    url: String,
    ca_path: PathBuf,
    banner: String,
    state: AppState,
    handle: Handle<SocketAddr>,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
    scheduler: tokio::task::JoinHandle<()>,
    rescans: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("addr", &self.addr)
            .field("ca_path", &self.ca_path)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// The address the listener is bound to (the real port when the configuration said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://ADDR` of the API.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA certificate clients must trust (`DATA/ca.pem`).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// Everything this start printed on stdout (first-start notice and the listening line).
    pub fn banner(&self) -> &str {
        &self.banner
    }

    /// The state request handlers share (database, job manager, resource scheduler…).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops the server: no new connections, open requests get up to 10 s, running sessions are
    /// stopped, the database is closed.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.scheduler.abort();
        self.rescans.abort();
        self.handle.graceful_shutdown(Some(GRACE));
        self.state.jobs.shutdown().await;
        let served = self.serve.await;
        self.state.db.close().await;
        served
            .context("the HTTPS listener task failed")?
            .context("serving HTTPS")
    }

    /// Serves until `signal` completes (or the listener fails), then shuts down.
    pub async fn serve_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            served = &mut self.serve => {
                self.scheduler.abort();
                self.rescans.abort();
                self.state.jobs.shutdown().await;
                self.state.db.close().await;
                served.context("the HTTPS listener task failed")?.context("serving HTTPS")?;
                anyhow::bail!("the HTTPS listener stopped unexpectedly");
            }
            () = signal => {
                tracing::info!("shutting down");
                self.shutdown().await
            }
        }
    }
}

/// `cairn server`: starts the server with `config` and serves until SIGTERM or SIGINT.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let server = start_with(config, StartOptions::from_env()).await?;
    server.serve_until(shutdown_signal()).await
}

/// Starts the server in this process with the first administrator's password from the
/// environment (see [`StartOptions::from_env`]).
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    start_with(config, StartOptions::from_env()).await
}

/// Starts the server in this process: prepares the data folder, wires the resource scheduler,
/// job manager and scheduler, binds `config.listen` (port 0 picks a free port) and serves HTTPS
/// in the background. Returns once the listener accepts connections.
pub async fn start_with(config: ServerConfig, options: StartOptions) -> anyhow::Result<RunningServer> {
    crate::tls::install_crypto_provider();
    let prepared = bootstrap::prepare(&config, options.admin_password.as_deref()).await?;
    let db = prepared.db.clone();

    let resources = Arc::new(ResourceScheduler::new(SchedulerOptions {
        parallel_processing: parallel_processing(&db).await?,
        ..SchedulerOptions::default()
    }));
    for proxy in db.list_proxies().await? {
        register_proxy(&resources, &proxy).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    }
    for repo in db.list_repositories().await? {
        register_repository(&resources, &repo).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    }
    if config.streams == 0 || config.streams > 64 {
        anyhow::bail!("--streams must be 1 to 64, not {}", config.streams);
    }
    let movers = Arc::new(
        crate::movers::Movers::load(&config.data_dir, config.agent_heartbeat, config.streams)
            .context("preparing the server's data mover certificate")?,
    );
    let throttles = crate::throttle::NetworkThrottles::new(prepared.time_zone.clone());
    throttles
        .reload(&db)
        .await
        .context("reading the network throttling rules")?;
    let jobs = JobManager::new(RunnerContext {
        movers: movers.clone(),
        throttles: throttles.clone(),
        db: db.clone(),
        resources: resources.clone(),
        secrets: prepared.secrets.clone(),
        time_zone: prepared.time_zone.clone(),
        proxy_id: prepared.local_proxy.id,
    });
    let recovered = jobs
        .recover_after_restart()
        .await
        .context("marking the sessions of the previous run as failed")?;
    if recovered > 0 {
        tracing::warn!("{recovered} sessions were still running when the server stopped; they are marked failed");
    }
    let data_dir = std::path::absolute(&config.data_dir)?;
    let state = AppState {
        audit: Arc::new(crate::audit::Auditor::new(db.clone(), &data_dir)),
        logins: Arc::new(crate::auth::throttle::LoginThrottle::new()),
        db,
        jobs,
        resources,
        secrets: prepared.secrets.clone(),
        instant: crate::live::instant::InstantRecoveries::new(data_dir.join("instant")),
        movers,
        data_dir,
        time_zone: prepared.time_zone.clone(),
        throttles,
    };

    let listener =
        std::net::TcpListener::bind(config.listen).with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let handle: Handle<SocketAddr> = Handle::new();
    // Client certificates are asked for (agents), not required (users, browsers).
    let tls = RustlsConfig::from_config(
        crate::agent_tls::listener_config(&prepared.tls).context("preparing mutual TLS for agents")?,
    );
    let app = crate::http::router(state.clone());
    // TCP_NODELAY: without it a response written in two pieces waits for the client's delayed
    // ACK (40 ms on Linux), which dominated API latency.
    let server = axum_server::from_tcp_rustls(listener, tls)?
        .map(|tls| tls.acceptor(axum_server::accept::NoDelayAcceptor::new()))
        .handle(handle.clone());
    let serve = tokio::spawn(async move {
        server
            .serve(app.into_make_service_with_connect_info::<SocketAddr>())
            .await
    });
    if handle.listening().await.is_none() {
        let err = match serve.await {
            Ok(Err(e)) => anyhow::Error::from(e),
            Ok(Ok(())) => anyhow::anyhow!("the listener stopped before it was ready"),
            Err(e) => anyhow::Error::from(e),
        };
        return Err(err.context(format!("serving HTTPS on {addr}")));
    }

    // Jobs start only once the API is up (a missed run starts right away).
    let scheduler = crate::scheduler::spawn(
        state.jobs.clone(),
        state.db.clone(),
        state.time_zone.clone(),
        state.jobs.clock().clone(),
        state.audit.clone(),
    );
    // `cairn vm list` follows the qemu hosts without `cairn host rescan`.
    let rescans = crate::live::inventory::spawn_rescans(state.db.clone());

    let url = format!("https://{addr}");
    let public_url = if addr.ip().is_unspecified() {
        format!(
            "https://{}:{}",
            crate::tls::host_name().unwrap_or_else(|| "localhost".into()),
            addr.port()
        )
    } else {
        url.clone()
    };
    let mut banner = prepared.notice.banner(&public_url);
    banner.push_str(&format!("cairn server listening on {url}\n"));
    {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(banner.as_bytes());
        let _ = stdout.flush();
    }
    tracing::info!("listening on {url} (CA {})", prepared.tls.ca_path.display());
    Ok(RunningServer {
        addr,
        url,
        ca_path: prepared.tls.ca_path.clone(),
        banner,
        state,
        handle,
        serve,
        scheduler,
        rescans,
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
