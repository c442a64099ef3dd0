//! The agent process (`cairn agent run`): enrolment, then heartbeats over mutual TLS.
//!
//! First start (no identity in the data folder): a new ECDSA P-256 key and a certificate signing
//! request are made, and sent with the one-time token to `POST /api/v1/agents/enroll` over TLS
//! that trusts only the CA given with `--ca-cert` (the server's `DATA/ca.pem`). The answer's
//! certificate and CA are stored next to the key. Later starts reuse them and need no token.
//!
//! Files in the data folder (mode 0700; files 0600):
//!
//! | file | content |
//! |------|---------|
//! | `agent-key.pem` | the agent's private key (never leaves the host) |
//! | `agent.pem` | its client certificate from the server's CA |
//! | `ca.pem` | the server's CA: the only root the agent trusts (pinned) |
//! | `agent.json` | server URL, agent id and name, certificate fingerprint |
//!
//! Then every [`HEARTBEAT_INTERVAL_SECS`] seconds the agent posts its version, task slots and free
//! space to `POST /api/v1/agents/heartbeat`, presenting its certificate. A 401/403 answer (revoked,
//! unknown certificate) ends the process with an error naming the cause; network failures are
//! logged and retried. SIGTERM or SIGINT end it cleanly.
//!
//! Certificate renewal: when a heartbeat's answer says `renew_certificate` (the certificate ends
//! within 30 days, or an administrator ran `cairn agent renew`) and no task is running (in the
//! certificate's last 7 days regardless: running tasks are cancelled), the agent stops taking
//! work, makes a new key, and sends a signing request to `POST /api/v1/agents/renew` with its
//! current certificate. The new key and certificate are written beside the current ones
//! (`agent-key.next.pem`, `agent.next.pem`) and then renamed over them, the key first; a start
//! that finds `agent.next.pem` finishes the renames (the server accepts both certificates until
//! the new one is used). The agent then carries on with the new certificate as a new process
//! instance, and the server refuses the old one from its first request with the new.

use std::fs;

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_api::agent::HEARTBEAT_INTERVAL_SECS;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

mod identity;
mod work;

use identity::{load_identity, prepare_dir, write_private};

use crate::args::{AgentRunArgs, Global};
use crate::client::{error_text, normalize_url, read_ca_file, usage};

const KEY_FILE: &str = "agent-key.pem";
const CERT_FILE: &str = "agent.pem";
const CA_FILE: &str = "ca.pem";
const STATE_FILE: &str = "agent.json";
/// A renewed key, written before it replaces [`KEY_FILE`].
const NEXT_KEY_FILE: &str = "agent-key.next.pem";
/// A renewed certificate, written after [`NEXT_KEY_FILE`]; its presence means both are complete.
const NEXT_CERT_FILE: &str = "agent.next.pem";
/// Days before its certificate ends from which a due renewal no longer waits for running tasks.
const RENEW_BUSY_DAYS: i64 = 7;
/// How long after a failed renewal the agent tries again.
const RENEW_RETRY: Duration = Duration::from_secs(600);
/// How long one request to the server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the agent remembers about its enrolment (`agent.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Enrolment {
    /// Base URL of the server.
    server: String,
    /// Agent id on that server.
    agent_id: i64,
    /// Agent name.
    name: String,
    /// SHA-256 of `agent.pem` as the server pins it.
    cert_fingerprint: String,
}

/// The agent's identity as loaded from its data folder.
struct Identity {
    enrolment: Enrolment,
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
}

/// Runs the agent until it is stopped or refused.
pub fn run(g: &Global, a: &AgentRunArgs) -> anyhow::Result<ExitCode> {
    let Some(dir) = &a.data else {
        return Err(usage!(
            "give the agent's data folder with --data DIR (e.g. --data /var/lib/cairn-agent)"
        ));
    };
    crate::commands::server::private_umask();
    prepare_dir(dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .thread_name("cairn-agent")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let identity = match load_identity(dir)? {
            Some(identity) => {
                if let Some(server) = &g.server {
                    let server = normalize_url(server)?;
                    if server != identity.enrolment.server {
                        return Err(usage!(
                            "{} holds the identity of agent {} of {}, not of {server}: use another --data folder \
                             to enrol with another server",
                            dir.display(),
                            identity.enrolment.name,
                            identity.enrolment.server
                        ));
                    }
                }
                eprintln!(
                    "cairn agent: {} (id {}) of {}, identity from {}",
                    identity.enrolment.name,
                    identity.enrolment.agent_id,
                    identity.enrolment.server,
                    dir.display()
                );
                identity
            }
            None => enrol(g, a, dir).await?,
        };
        heartbeats(identity, a, dir).await
    })
}

/// First start: key, CSR, enrolment with the token, files stored.
async fn enrol(g: &Global, a: &AgentRunArgs, dir: &Path) -> anyhow::Result<Identity> {
    let Some(server) = &g.server else {
        return Err(usage!(
            "{} holds no agent identity yet: enrol with --server URL --token TOKEN --ca-cert FILE",
            dir.display()
        ));
    };
    let server = normalize_url(server)?;
    let Some(token) = a.token.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
        return Err(usage!(
            "{} holds no agent identity yet: the first start needs a one-time token \
             (`cairn agent token --roles …` on the server) with --token",
            dir.display()
        ));
    };
    let Some(ca_path) = &g.ca_cert else {
        return Err(usage!(
            "the first start needs --ca-cert FILE: a copy of the server's DATA/ca.pem, the only CA the agent \
             will trust"
        ));
    };
    let ca_pem = read_ca_file(ca_path)?;
    let name = match &a.name {
        Some(n) => n.clone(),
        None => default_name(),
    };
    let (key_pem, csr_pem) = cairn_server::agent_tls::new_key_and_csr(&name)?;
    let http = reqwest::Client::builder()
        .user_agent(concat!("cairn-agent/", env!("CARGO_PKG_VERSION")))
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes())?)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("setting up the HTTPS client")?;
    let body = json!({
        "token": token,
        "name": name,
        "csr_pem": csr_pem,
        "version": env!("CARGO_PKG_VERSION"),
        "max_tasks": max_tasks(a),
        "free_bytes": free_bytes(dir),
    });
    let url = format!("{server}/api/v1/agents/enroll");
    let resp = http
        .post(&url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the server {server} to enrol"))?;
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = answer["error"].as_str().unwrap_or("no explanation");
        bail!("the server {server} refused the enrolment of agent {name} ({status}): {msg}");
    }
    let field = |k: &str| {
        answer[k]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the enrolment answer has no {k}"))
    };
    let cert_pem = field("certificate_pem")?;
    let server_ca = field("ca_pem")?;
    if server_ca.trim() != ca_pem.trim() {
        bail!(
            "the server {server} answered with a CA other than {}: refusing to pin it",
            ca_path.display()
        );
    }
    let enrolment = Enrolment {
        server,
        agent_id: answer["agent_id"]
            .as_i64()
            .context("the enrolment answer has no agent_id")?,
        name: field("name")?,
        cert_fingerprint: field("cert_fingerprint")?,
    };
    // The key first: a certificate without its key would be useless.
    write_private(&dir.join(KEY_FILE), key_pem.as_bytes())?;
    write_private(&dir.join(CERT_FILE), cert_pem.as_bytes())?;
    write_private(&dir.join(CA_FILE), ca_pem.as_bytes())?;
    write_private(
        &dir.join(STATE_FILE),
        serde_json::to_string_pretty(&enrolment)?.as_bytes(),
    )?;
    eprintln!(
        "cairn agent: enrolled as {} (id {}) with {}; identity stored in {}",
        enrolment.name,
        enrolment.agent_id,
        enrolment.server,
        dir.display()
    );
    Ok(Identity {
        enrolment,
        key_pem,
        cert_pem,
        ca_pem,
    })
}

/// The HTTPS client of the control channel: trusts only the server's CA and presents the
/// agent's certificate.
fn control_client(identity: &Identity) -> anyhow::Result<reqwest::Client> {
    let client_identity = reqwest::Identity::from_pem(format!("{}{}", identity.cert_pem, identity.key_pem).as_bytes())
        .context("the agent's key or certificate in the data folder is not usable")?;
    reqwest::Client::builder()
        .user_agent(concat!("cairn-agent/", env!("CARGO_PKG_VERSION")))
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(identity.ca_pem.as_bytes())?)
        .identity(client_identity)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("setting up the mutual TLS client")
}

/// Renews the agent's key and certificate with `http` (which presents the current one) and
/// stores them in `dir`; returns the new identity.
async fn renew(identity: &Identity, http: &reqwest::Client, dir: &Path) -> anyhow::Result<Identity> {
    let e = &identity.enrolment;
    let (key_pem, csr_pem) = cairn_server::agent_tls::new_key_and_csr(&e.name)?;
    let resp = http
        .post(format!("{}/api/v1/agents/renew", e.server))
        .json(&json!({ "csr_pem": csr_pem }))
        .send()
        .await
        .map_err(|err| anyhow::anyhow!("cannot reach {}: {}", e.server, error_text(&err)))?;
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = answer["error"].as_str().unwrap_or("no explanation");
        bail!("the server refused the renewal ({status}): {msg}");
    }
    let cert_pem = answer["certificate_pem"]
        .as_str()
        .context("the renewal answer has no certificate_pem")?;
    let fingerprint = cairn_server::agent_tls::pem_fingerprint(cert_pem)
        .map_err(|err| anyhow::anyhow!("the renewal answer's certificate: {err}"))?;
    if answer["cert_fingerprint"].as_str() != Some(fingerprint.as_str()) {
        bail!("the renewal answer's fingerprint is not that of its certificate");
    }
    // The key first: the certificate's presence tells a later start that both are complete.
    write_private(&dir.join(NEXT_KEY_FILE), key_pem.as_bytes())?;
    write_private(&dir.join(NEXT_CERT_FILE), cert_pem.as_bytes())?;
    // Loading puts them in place (as it would after a crash here).
    load_identity(dir)?.with_context(|| format!("{} lost the agent's identity", dir.display()))
}

/// Whether a due renewal happens now: when no task runs, or regardless when the certificate
/// ends within [`RENEW_BUSY_DAYS`] days (or its end is unknown), since an agent with an
/// expired certificate could run no task at all.
fn renew_now(idle: bool, ends_in: Option<jiff::SignedDuration>) -> bool {
    idle || ends_in.is_none_or(|left| left < jiff::SignedDuration::from_hours(24 * RENEW_BUSY_DAYS))
}

/// A new id for this agent process: the server sees a restart (and that the old tasks are gone).
fn new_instance() -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{started}", std::process::id())
}

/// The agent's work: the worker and its work loop.
type Running = (Arc<work::Worker>, tokio::task::JoinHandle<()>);

/// Heartbeats until a signal or a refusal.
async fn heartbeats(mut identity: Identity, a: &AgentRunArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    let mut http = control_client(&identity)?;
    let e = identity.enrolment.clone();
    let url = format!("{}/api/v1/agents/heartbeat", e.server);
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut period = Duration::from_secs(HEARTBEAT_INTERVAL_SECS);
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connected = false;
    let mut address: Option<String> = None;
    let mut worker: Option<Running> = None;
    let mut instance = new_instance();
    let mut renew_after = tokio::time::Instant::now();
    let mut waiting_to_renew = false;
    loop {
        tokio::select! {
            _ = term.recv() => {
                eprintln!("cairn agent: {} stopping (SIGTERM)", e.name);
                return Ok(ExitCode::SUCCESS);
            }
            _ = tokio::signal::ctrl_c() => {
                eprintln!("cairn agent: {} stopping (SIGINT)", e.name);
                return Ok(ExitCode::SUCCESS);
            }
            _ = interval.tick() => {}
        }
        let body = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "max_tasks": max_tasks(a),
            "free_bytes": free_bytes(dir),
            "address": address,
            "instance": instance,
        });
        match http.post(&url).json(&body).send().await {
            Ok(resp) if resp.status().is_success() => {
                let answer: Value = resp.json().await.unwrap_or(Value::Null);
                if !connected {
                    eprintln!("cairn agent: {} connected to {} (mutual TLS)", e.name, e.server);
                    connected = true;
                }
                follow_period(&answer, &mut period, &mut interval);
                let idle = worker.as_ref().is_none_or(|(w, _)| w.is_idle());
                let ends_in = answer["cert_not_after"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map(|end| end.duration_since(jiff::Timestamp::now()));
                let due = answer["renew_certificate"] == true && tokio::time::Instant::now() >= renew_after;
                if due && !idle && !waiting_to_renew {
                    eprintln!(
                        "cairn agent: {} has a certificate renewal due; it renews once its running tasks end",
                        e.name
                    );
                }
                waiting_to_renew = due && !idle;
                if due && renew_now(idle, ends_in) {
                    // No task may run on the old identity: stop taking work first (running tasks, if
                    // the certificate is about to end, are failed and retried by their jobs).
                    stop_worker(worker.take(), idle).await;
                    eprintln!("cairn agent: {} renewing its key and certificate", e.name);
                    match renew(&identity, &http, dir).await {
                        Ok(renewed) => {
                            identity = renewed;
                            http = control_client(&identity)?;
                            // The tasks the server may think of as running are gone.
                            instance = new_instance();
                            eprintln!(
                                "cairn agent: {} renewed its certificate (SHA-256 {}); the old one is refused from \
                                 now on",
                                e.name, identity.enrolment.cert_fingerprint
                            );
                        }
                        Err(err) => {
                            renew_after = tokio::time::Instant::now() + RENEW_RETRY;
                            eprintln!(
                                "cairn agent: {} could not renew its certificate ({err:#}); it keeps the current one \
                                 and tries again in {} minutes",
                                e.name,
                                RENEW_RETRY.as_secs() / 60
                            );
                        }
                    }
                    // The next heartbeat (at once) uses the new certificate and restarts the work.
                    interval.reset_immediately();
                    continue;
                }
                if worker.is_none() {
                    let (started, advertised) = start_worker(&identity, a, &http, &roles(&answer)).await?;
                    address = Some(advertised);
                    worker = Some(started);
                    // Tell the server the data channel address at once.
                    interval.reset_immediately();
                }
            }
            Ok(resp) => {
                heartbeat_refused(resp, &e).await?;
                connected = false;
            }
            Err(err) => {
                heartbeat_failed(&err, &e, dir)?;
                connected = false;
            }
        }
    }
}

/// Follows the heartbeat period the server's answer names, when it changed.
fn follow_period(answer: &Value, period: &mut Duration, interval: &mut tokio::time::Interval) {
    if let Some(secs) = answer["heartbeat_secs"].as_u64().filter(|&s| s >= 1)
        && Duration::from_secs(secs) != *period
    {
        *period = Duration::from_secs(secs);
        *interval = tokio::time::interval_at(tokio::time::Instant::now() + *period, *period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
}

/// The roles the server's heartbeat answer gives the agent.
fn roles(answer: &Value) -> Vec<&str> {
    answer["roles"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Stops the agent's work, first failing its running tasks unless it is idle.
async fn stop_worker(worker: Option<Running>, idle: bool) {
    if let Some((w, run)) = worker {
        if !idle {
            w.cancel_all("the agent renews its certificate, which ends within days");
        }
        run.abort();
        let _ = run.await;
        drop(w);
    }
}

/// A heartbeat the server answered with an error: the end of the agent when the server refuses
/// it (401, 403), else a note before the next try.
async fn heartbeat_refused(resp: reqwest::Response, e: &Enrolment) -> anyhow::Result<()> {
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    let msg = answer["error"].as_str().unwrap_or("no explanation").to_owned();
    if status.as_u16() == 401 || status.as_u16() == 403 {
        bail!("the server {} refused agent {} ({status}): {msg}", e.server, e.name);
    }
    eprintln!("cairn agent: heartbeat refused ({status}): {msg}; retrying");
    Ok(())
}

/// A heartbeat that did not reach the server: the end of the agent when the TLS handshake refused
/// its certificate, else a note before the next try.
fn heartbeat_failed(err: &reqwest::Error, e: &Enrolment, dir: &Path) -> anyhow::Result<()> {
    let text = error_text(err);
    // A refused certificate will be refused again: retrying would hide the cause.
    if let Some(alert) = refused_certificate(&text) {
        bail!(
            "the server {} refused agent {}'s certificate in the TLS handshake (alert {alert}): {} must \
             be the certificate the server issued at enrolment, unexpired ({text})",
            e.server,
            e.name,
            dir.join(CERT_FILE).display()
        );
    }
    eprintln!("cairn agent: cannot reach {} ({text}); retrying", e.server);
    Ok(())
}

/// Starts the data channel listener (repository role) and the work loop; returns the worker, its
/// work loop and the address to advertise (`IP:port` with a listener, else `IP`).
async fn start_worker(
    identity: &Identity,
    a: &AgentRunArgs,
    http: &reqwest::Client,
    roles: &[&str],
) -> anyhow::Result<(Running, String)> {
    let e = &identity.enrolment;
    let tls = Arc::new(
        cairn_transfer::TlsIdentity::from_pem(
            identity.ca_pem.as_bytes(),
            identity.cert_pem.as_bytes(),
            identity.key_pem.as_bytes(),
        )
        .context("the agent's certificate, key or CA in the data folder is not usable for the data channel")?,
    );
    let ip = match a.advertise {
        Some(ip) => ip,
        None => outbound_ip(&e.server).await.with_context(|| {
            format!(
                "finding this host's address towards {} (give it with --advertise IP)",
                e.server
            )
        })?,
    };
    let mut receiver = None;
    let mut advertised = ip.to_string();
    if roles.contains(&"repository") {
        let config = cairn_transfer::ReceiverConfig::new(
            cairn_transfer::receiver_tls_config(&tls, cairn_transfer::PeerPolicy::default())
                .context("setting up the data channel's TLS")?,
        );
        let r = bind_receiver(a.listen, config)
            .await
            .with_context(|| format!("listening for data on {} (change it with --listen)", a.listen))?;
        advertised = std::net::SocketAddr::new(ip, r.local_addr().port()).to_string();
        eprintln!(
            "cairn agent: {} receives data on {} (advertised as {advertised})",
            e.name,
            r.local_addr()
        );
        receiver = Some(Arc::new(r));
    }
    let worker = Arc::new(work::Worker {
        data_dir: a.data.clone().unwrap_or_default(),
        http: http.clone(),
        server: e.server.clone(),
        name: e.name.clone(),
        identity: tls,
        receiver,
        tasks: std::sync::Mutex::new(std::collections::HashMap::new()),
        running: std::sync::atomic::AtomicUsize::new(0),
    });
    let run = tokio::spawn(worker.clone().run());
    Ok(((worker, run), advertised))
}

/// Binds the data channel listener, waiting up to 5 s for the port while a listener this process
/// just stopped (after a certificate renewal) lets go of it.
async fn bind_receiver(
    addr: std::net::SocketAddr,
    config: cairn_transfer::ReceiverConfig,
) -> Result<cairn_transfer::Receiver, cairn_transfer::Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match cairn_transfer::Receiver::bind(addr, config.clone()).await {
            Err(cairn_transfer::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// The local address used to reach the server at `url` (no packet is sent).
async fn outbound_ip(url: &str) -> anyhow::Result<std::net::IpAddr> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{url} is not a URL"))?;
    let host = parsed.host_str().context("the server URL has no host")?;
    let port = parsed.port_or_known_default().unwrap_or(8520);
    let target = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let bind: std::net::SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.connect(target)?;
    Ok(socket.local_addr()?.ip())
}

/// The host name as an agent name (letters, digits, `.`, `_`, `-`), else `agent`.
fn default_name() -> String {
    let name: String = cairn_server::tls::host_name()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    if name.is_empty() { "agent".into() } else { name }
}

fn max_tasks(a: &AgentRunArgs) -> u32 {
    a.max_tasks
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
        .max(1)
}

/// Free bytes of the file system of `dir` (0 when unknown).
fn free_bytes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir).map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize))
}

/// The TLS alert in `text` (an error's text) by which a server refuses a client certificate.
fn refused_certificate(text: &str) -> Option<&str> {
    const ALERTS: [&str; 8] = [
        "UnknownCA",
        "BadCertificate",
        "CertificateExpired",
        "CertificateRevoked",
        "CertificateUnknown",
        "UnsupportedCertificate",
        "CertificateRequired",
        "AccessDenied",
    ];
    let alert = text
        .split("received fatal alert: ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()?;
    ALERTS.contains(&alert).then_some(alert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A key and a certificate, PEM (self-signed: it stands in for one from the CA).
    fn key_and_cert(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (key.serialize_pem(), cert.pem())
    }

    fn enrolment(fingerprint: &str) -> Enrolment {
        Enrolment {
            server: "https://backup01:8520".into(),
            agent_id: 7,
            name: "prx07".into(),
            cert_fingerprint: fingerprint.into(),
        }
    }

    #[test]
    fn a_due_renewal_waits_for_running_tasks_until_the_last_week() {
        let days = |d: i64| Some(jiff::SignedDuration::from_hours(24 * d));
        assert!(renew_now(true, days(300)), "idle: at once");
        assert!(!renew_now(false, days(29)), "busy with weeks left: later");
        assert!(!renew_now(false, days(8)));
        assert!(renew_now(false, days(6)), "busy in the last week: now");
        assert!(renew_now(false, days(-1)));
        assert!(renew_now(false, None), "an unknown end is treated as near");
    }

    #[test]
    fn an_interrupted_renewal_is_finished_or_dropped_at_the_next_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (key, cert) = key_and_cert("old");
        write_private(&dir.join(KEY_FILE), key.as_bytes()).unwrap();
        write_private(&dir.join(CERT_FILE), cert.as_bytes()).unwrap();
        write_private(&dir.join(CA_FILE), cert.as_bytes()).unwrap();
        let old_fp = cairn_server::agent_tls::pem_fingerprint(&cert).unwrap();
        write_private(
            &dir.join(STATE_FILE),
            serde_json::to_string(&enrolment(&old_fp)).unwrap().as_bytes(),
        )
        .unwrap();

        // Only the new key was written: its certificate never came, the old identity stays.
        let (next_key, next_cert) = key_and_cert("new");
        write_private(&dir.join(NEXT_KEY_FILE), next_key.as_bytes()).unwrap();
        let loaded = load_identity(dir).unwrap().unwrap();
        assert_eq!(
            (loaded.key_pem.as_str(), loaded.cert_pem.as_str()),
            (key.as_str(), cert.as_str())
        );
        assert!(!dir.join(NEXT_KEY_FILE).exists());

        // Stopped after the key was renamed, before the certificate: finished at the next start.
        write_private(&dir.join(KEY_FILE), next_key.as_bytes()).unwrap();
        write_private(&dir.join(NEXT_CERT_FILE), next_cert.as_bytes()).unwrap();
        let loaded = load_identity(dir).unwrap().unwrap();
        assert_eq!(loaded.key_pem, next_key);
        assert_eq!(loaded.cert_pem, next_cert);
        let new_fp = cairn_server::agent_tls::pem_fingerprint(&next_cert).unwrap();
        assert_eq!(loaded.enrolment.cert_fingerprint, new_fp);
        assert_ne!(new_fp, old_fp);
        assert!(!dir.join(NEXT_CERT_FILE).exists());

        // Both written, neither renamed.
        let (third_key, third_cert) = key_and_cert("third");
        write_private(&dir.join(NEXT_KEY_FILE), third_key.as_bytes()).unwrap();
        write_private(&dir.join(NEXT_CERT_FILE), third_cert.as_bytes()).unwrap();
        let loaded = load_identity(dir).unwrap().unwrap();
        assert_eq!((loaded.key_pem, loaded.cert_pem), (third_key, third_cert));
        for f in [KEY_FILE, CERT_FILE, STATE_FILE] {
            let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }

    #[test]
    fn a_certificate_alert_is_a_refusal_and_a_network_error_is_not() {
        let unknown = "error sending request: client error (SendRequest): connection error: received fatal alert: \
                       UnknownCA";
        assert_eq!(refused_certificate(unknown), Some("UnknownCA"));
        let expired = "connection error: received fatal alert: CertificateExpired; more";
        assert_eq!(refused_certificate(expired), Some("CertificateExpired"));
        assert_eq!(
            refused_certificate("connection error: received fatal alert: InternalError"),
            None
        );
        assert_eq!(
            refused_certificate("tcp connect error: Connection refused (os error 111)"),
            None
        );
    }
}
