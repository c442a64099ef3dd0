//! One VM whose repository is on a repository agent: the server only plans and relays.
//!
//! 1. The VM's task slots (a proxy and the repository) are taken for the whole VM.
//! 2. The source — the chosen proxy agent, or the server itself when no proxy agent is online —
//!    opens the disks and describes them ([`TaskEvent::Described`]). A running QEMU VM is read
//!    by the server itself (its QMP socket, view and NBD export are here): it asks the repository
//!    agent for the previous point's checkpoints, makes the view and sends from it; the view ends
//!    with the VM, its new checkpoints current only if the point was committed.
//! 3. The repository agent gets the target task: it expects the transfer from that source only,
//!    runs the engine, and announces each disk's read plan, which the server relays to the
//!    source; the source then sends those blocks straight to the repository agent.
//! 4. Reports (log lines, progress, per-disk statistics, the committed point, retention) become
//!    task rows and log lines as they arrive. Every half second the server refreshes the
//!    steering (the repository's write rate share, the network rule's share) and checks that
//!    both agents still send heartbeats; a lost agent fails the VM (the other side is cancelled)
//!    and the session's retries take over.
//!
//! [`TaskEvent::Described`]: cairn_mover::protocol::TaskEvent::Described

mod end;
mod finish;
mod live;
mod relay;
mod route;
mod source;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_configdb::{Agent, ConfigDb, HostKind, LogLevel, SessionState};
use cairn_mover::source::SourceDisk;
use cairn_resources::Lease;
use cairn_transfer::TransferId;

use super::session::{Shared, log_db};
use super::settings::VmUnit;
use super::tasks;
use super::vm::VmOutcome;
use crate::live::backup::LiveBackup;
use relay::Progress;

/// How long a side gets to end after it was cancelled or the other side ended.
const GRACE: Duration = Duration::from_secs(30);
/// How often steering and heartbeats are checked.
const TICK: Duration = Duration::from_millis(500);

/// Where a proxy's work runs.
#[derive(Clone)]
pub(crate) enum ProxyRoute {
    /// The backup server itself.
    Server,
    /// A proxy agent.
    Agent(Box<Agent>),
}

/// The repository agent as the VM uses it.
struct RepoSide {
    agent: Agent,
    /// The agent's process whose address is used: if the agent restarts after this, the task is
    /// lost with the old process (and the address may have changed).
    instance: Option<String>,
    /// Its data channel address.
    data_addr: SocketAddr,
    /// The repository's password.
    password: String,
}

/// The VM's task slots and the proxy they are on.
struct Slots {
    lease: Lease,
    /// The proxy's row id.
    proxy_id: i64,
    proxy_name: String,
    route: ProxyRoute,
}

/// What every phase of a VM after its slots were taken refers to.
struct Ctx<'a> {
    shared: &'a Shared,
    unit: &'a VmUnit,
    tasks: &'a [i64],
    db: &'a ConfigDb,
    repo: &'a RepoSide,
    /// The proxy's row id.
    proxy_id: i64,
    proxy_name: &'a str,
}

/// Why a VM ends before any data moved.
enum Halt {
    /// It fails with this text.
    Fail(String),
    /// The session was stopped, for this reason.
    Stopped(String),
}

impl Halt {
    /// Ends every task of the VM failed or stopped with the text.
    async fn record(self, db: &ConfigDb, tasks: &[i64]) -> VmOutcome {
        match self {
            Halt::Fail(text) => {
                tasks::end_all(db, tasks, LogLevel::Error, SessionState::Failed, &text).await;
                VmOutcome::Failed
            }
            Halt::Stopped(reason) => {
                tasks::end_all(db, tasks, LogLevel::Warning, SessionState::Stopped, &reason).await;
                VmOutcome::Stopped
            }
        }
    }
}

/// What is settled before any data moves.
struct Prepared {
    repo: RepoSide,
    slots: Slots,
    /// A running VM's view and its opened disks.
    live: Option<(LiveBackup, Vec<SourceDisk>)>,
}

/// Backs up one VM into a repository on an agent; every task in `tasks` ends final.
pub(crate) async fn run_vm(shared: Arc<Shared>, unit: VmUnit, tasks: Vec<i64>) -> VmOutcome {
    if let Some(outcome) = tasks::stopped_before_start(&shared, &tasks).await {
        return outcome;
    }
    match prepare(&shared, &unit, &tasks).await {
        Ok(prepared) => transfer(&shared, &unit, &tasks, prepared).await,
        Err(halt) => halt.record(&shared.mgr.ctx.db, &tasks).await,
    }
}

/// Checks the repository agent, takes the VM's task slots and, for a running VM, makes its view.
async fn prepare(shared: &Shared, unit: &VmUnit, tasks: &[i64]) -> Result<Prepared, Halt> {
    if let Some((_, problem)) = &unit.problem {
        return Err(Halt::Fail(problem.clone()));
    }
    // A running QEMU VM's view and its NBD export are made on this server (its QMP socket is
    // here), so this server reads it and sends it to the repository agent.
    let live_vm = unit.host.kind == HostKind::Qemu;
    let repo = route::repository_side(shared).await?;
    log_db(
        &shared.mgr.ctx.db,
        tasks[0],
        LogLevel::Info,
        &format!(
            "waiting for resources: a task slot on a proxy and on repository {}",
            shared.repository.settings.name
        ),
    )
    .await;
    let mut slots = route::take_slots(shared, live_vm).await?;
    // A running VM: its point-in-time view, made now that the slots are taken.
    let mut live = None;
    if live_vm {
        slots.route = ProxyRoute::Server;
        if shared.mgr.ctx.movers.identity().is_none() {
            return Err(Halt::Fail(source::NO_CERTIFICATE.into()));
        }
        let started = live::start_live(shared, unit, tasks, &repo.agent, &repo.password).await;
        live = Some(started.map_err(|e| Halt::Fail(e.to_string()))?);
    }
    Ok(Prepared { repo, slots, live })
}

/// Starts the source, waits for its disk descriptions, gives the repository agent the target
/// task, relays until both ends are over and records the VM's end.
async fn transfer(shared: &Shared, unit: &VmUnit, tasks: &[i64], prepared: Prepared) -> VmOutcome {
    let Prepared { repo, slots, live } = prepared;
    let (view, live_disks) = live.map_or((None, None), |(view, disks)| (Some(view), Some(disks)));
    let db = &shared.mgr.ctx.db;
    let ctx = Ctx {
        shared,
        unit,
        tasks,
        db,
        repo: &repo,
        proxy_id: slots.proxy_id,
        proxy_name: &slots.proxy_name,
    };
    let transfer = TransferId::random();
    let network = route::network(&ctx, &slots.route).await;
    let network_rate = network.as_ref().and_then(|n| n.rate(jiff::Timestamp::now()));
    let mut source = match source::start(&ctx, &slots.route, transfer, network_rate, live_disks) {
        Ok(source) => source,
        Err(text) => return Halt::Fail(text).record(db, tasks).await,
    };
    source::log_data_path(&ctx, &slots.route).await;
    let mut progress = Progress::default();
    let mut tick = tokio::time::interval(TICK);
    let Some(described) = relay::describe(&ctx, &mut source, &mut progress, &mut tick).await else {
        return finish::finish(&ctx, progress, view).await;
    };
    let fingerprint = source::fingerprint(shared, &slots.route);
    let target = relay::start_target(&ctx, transfer, fingerprint, described, view.as_ref(), &slots.lease);
    let progress = relay::Relay::new(&ctx, source, target, progress)
        .run(&slots.lease, network.as_ref(), &mut tick)
        .await;
    drop(slots.lease);
    drop(network);
    finish::finish(&ctx, progress, view).await
}
