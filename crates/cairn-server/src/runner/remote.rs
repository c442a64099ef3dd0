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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cairn_configdb::{Agent, HostKind, LogLevel, SessionState};
use cairn_mover::TaskLink;
use cairn_mover::protocol::{
    Control, DiskDescription, Instruction, Level, SourceSummary, SourceTask, TargetTask, TaskEvent, TransferEndpoint,
};
use cairn_mover::source::SourceDisk;
use cairn_repo::{Method, PointStats};
use cairn_transfer::TransferId;
use jiff::Timestamp;
use tokio::sync::mpsc;

use super::session::{Shared, log_db, set_task_state};
use super::settings::{FORWARD_FULL_EVERY, VmUnit};
use super::vm::{VmOutcome, human_bytes};
use super::{TaskProgress, lock, stats};
use crate::agent_hub::HubTask;
use crate::live::backup::LiveBackup;

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

/// One end of the data path as the runner sees it.
enum End {
    Agent {
        task: HubTask,
        agent: Box<Agent>,
        /// The agent's process when the task was given to it.
        instance: Option<String>,
    },
    Local {
        id: u64,
        events: mpsc::UnboundedReceiver<TaskEvent>,
        instructions: mpsc::UnboundedSender<Instruction>,
        control: Arc<Mutex<Control>>,
    },
}

impl End {
    fn id(&self) -> u64 {
        match self {
            End::Agent { task, .. } => task.id,
            End::Local { id, .. } => *id,
        }
    }

    async fn recv(&mut self) -> Option<TaskEvent> {
        match self {
            End::Agent { task, .. } => task.events.recv().await,
            End::Local { events, .. } => events.recv().await,
        }
    }

    fn send(&self, instruction: Instruction) {
        match self {
            End::Agent { task, .. } => task.send(instruction),
            End::Local { instructions, .. } => {
                let _ = instructions.send(instruction);
            }
        }
    }

    fn steer(&self, change: impl FnOnce(&mut Control)) {
        match self {
            End::Agent { task, .. } => task.steer(change),
            End::Local { control, .. } => change(&mut lock(control)),
        }
    }

    fn cancel(&self, reason: &str) {
        self.send(Instruction::Cancel {
            task: self.id(),
            reason: reason.to_string(),
        });
        self.steer(|c| c.cancel = Some(reason.to_string()));
    }

    fn agent(&self) -> Option<&Agent> {
        match self {
            End::Agent { agent, .. } => Some(agent),
            End::Local { .. } => None,
        }
    }

    /// The agent's process when the task was given to it.
    fn instance(&self) -> Option<&str> {
        match self {
            End::Agent { instance, .. } => instance.as_deref(),
            End::Local { .. } => None,
        }
    }
}

/// The server's own source data mover reports through this.
struct LocalLink {
    events: mpsc::UnboundedSender<TaskEvent>,
    control: Arc<Mutex<Control>>,
}

impl TaskLink for LocalLink {
    fn emit(&self, event: TaskEvent) {
        let _ = self.events.send(event);
    }

    fn control(&self) -> Control {
        lock(&self.control).clone()
    }
}

/// What happened to a VM, as the event loop sees it.
#[derive(Default)]
struct Progress {
    started: HashMap<u32, Instant>,
    finished: HashMap<u32, (PointStats, f64, f64)>,
    summary: Option<SourceSummary>,
    committed: Option<(String, String, Vec<String>, String, bool)>,
    failure: Option<(Option<u32>, String)>,
    stopped: Option<String>,
}

fn level(l: Level) -> LogLevel {
    match l {
        Level::Info => LogLevel::Info,
        Level::Warning => LogLevel::Warning,
        Level::Error => LogLevel::Error,
    }
}

/// Backs up one VM into a repository on an agent; every task in `tasks` ends final.
pub(crate) async fn run_vm(shared: Arc<Shared>, unit: VmUnit, tasks: Vec<i64>) -> VmOutcome {
    let db = shared.mgr.ctx.db.clone();
    let fail_all = |text: String| {
        let (db, tasks) = (db.clone(), tasks.clone());
        async move {
            for &task in &tasks {
                log_db(&db, task, LogLevel::Error, &text).await;
                set_task_state(&db, task, SessionState::Failed).await;
            }
            VmOutcome::Failed
        }
    };
    if let Some(reason) = shared.stop.reason() {
        for &task in &tasks {
            log_db(&db, task, LogLevel::Warning, &reason.log_text()).await;
            set_task_state(&db, task, SessionState::Stopped).await;
        }
        return VmOutcome::Stopped;
    }
    if let Some((_, problem)) = &unit.problem {
        return fail_all(problem.clone()).await;
    }
    // A running QEMU VM's view and its NBD export are made on this server (its QMP socket is
    // here), so this server reads it and sends it to the repository agent.
    let live_vm = unit.host.kind == HostKind::Qemu;
    let movers = shared.mgr.ctx.movers.clone();
    let Some(agent_id) = shared.repository.settings.agent_id else {
        return fail_all("internal error: the repository is not on an agent".into()).await;
    };
    let repo_agent = match db.get_agent(agent_id).await {
        Ok(a) => a,
        Err(e) => {
            return fail_all(format!(
                "the agent of repository {}: {e}",
                shared.repository.settings.name
            ))
            .await;
        }
    };
    if let Some(why) = movers.unavailable(&repo_agent, Timestamp::now()) {
        return fail_all(format!(
            "repository {} cannot be written: {why}",
            shared.repository.settings.name
        ))
        .await;
    }
    // The process whose address is used: if the agent restarts after this, the task is lost with
    // the old process (and the address may have changed).
    let repo_instance = movers.hub.instance(repo_agent.id);
    let Some(data_addr) = repo_agent.address.as_deref().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        return fail_all(format!(
            "repository agent {} reported no data channel address (IP:port) in its heartbeats",
            repo_agent.name
        ))
        .await;
    };
    let password = match shared.mgr.ctx.secrets.repository_password(shared.repository.id) {
        Ok(Some(p)) => String::from_utf8_lossy(&p).into_owned(),
        Ok(None) => {
            return fail_all(format!(
                "repository {} has no password in {}",
                shared.repository.settings.name,
                shared
                    .mgr
                    .ctx
                    .secrets
                    .repository_password_path(shared.repository.id)
                    .display()
            ))
            .await;
        }
        Err(e) => {
            return fail_all(format!(
                "reading the password of repository {}: {e}",
                shared.repository.settings.name
            ))
            .await;
        }
    };

    // 1. Task slots for the whole VM.
    log_db(
        &db,
        tasks[0],
        LogLevel::Info,
        &format!(
            "waiting for resources: a task slot on a proxy and on repository {}",
            shared.repository.settings.name
        ),
    )
    .await;
    let request = match server_proxy(&shared) {
        Some(id) if live_vm => shared.request.clone().with_proxies([id]),
        _ => shared.request.clone(),
    };
    let lease = tokio::select! {
        lease = shared.mgr.ctx.resources.acquire_async(request) => match lease {
            Ok(l) => l,
            Err(e) => return fail_all(format!("no task slot: {e}")).await,
        },
        () = shared.stop.wait() => {
            let reason = shared.stop.reason().map_or_else(|| "stopped".to_string(), |r| r.log_text());
            for &task in &tasks {
                log_db(&db, task, LogLevel::Warning, &reason).await;
                set_task_state(&db, task, SessionState::Stopped).await;
            }
            return VmOutcome::Stopped;
        }
    };
    let Some((proxy_row_id, proxy_name, mut route)) = shared.proxy_routes.get(lease.proxy().as_str()).cloned() else {
        return fail_all(format!("internal error: proxy {} has no route", lease.proxy().as_str())).await;
    };
    if let ProxyRoute::Agent(agent) = &mut route {
        // The session's list is from its start: look at the agent as it is now.
        match db.get_agent(agent.id).await {
            Ok(fresh) => **agent = fresh,
            Err(e) => return fail_all(format!("proxy {proxy_name}: {e}")).await,
        }
        if let Some(why) = movers.unavailable(agent, Timestamp::now()) {
            return fail_all(format!("proxy {proxy_name} cannot read: {why}")).await;
        }
    }

    // A running VM: its point-in-time view, made now that the slots are taken.
    let mut live = None;
    let mut live_disks = None;
    if live_vm {
        route = ProxyRoute::Server;
        if movers.identity().is_none() {
            return fail_all("the backup server has no data mover certificate to send from".into()).await;
        }
        match start_live(&shared, &unit, &tasks, &repo_agent, &password).await {
            Ok((view, disks)) => {
                live = Some(view);
                live_disks = Some(disks);
            }
            Err(text) => return fail_all(text).await,
        }
    }

    // 2. The source.
    let transfer = TransferId::random();
    let paths: Vec<String> = unit
        .disks
        .iter()
        .map(|d| {
            let p = PathBuf::from(&d.path);
            if p.is_relative() {
                Path::new(&unit.host.location).join(p)
            } else {
                p
            }
            .display()
            .to_string()
        })
        .collect();
    let source_ip = match &route {
        ProxyRoute::Agent(agent) => agent.address.as_deref().and_then(agent_ip),
        ProxyRoute::Server => outbound_ip(data_addr),
    };
    let network = source_ip.and_then(|ip| network_share(&shared, ip, data_addr.ip()));
    let network_rate = network.as_ref().and_then(|n| n.rate(Timestamp::now()));
    if let Some(rule) = network.as_ref().and_then(|n| n.rule_text(Timestamp::now())) {
        log_db(
            &db,
            tasks[0],
            LogLevel::Info,
            &format!("network throttling applies: {rule}"),
        )
        .await;
    }
    let hub = &movers.hub;
    let mut source = match &route {
        ProxyRoute::Agent(agent) => {
            let task = hub.open_task(agent.id);
            End::Agent {
                task,
                instance: hub.instance(agent.id),
                agent: agent.clone(),
            }
        }
        ProxyRoute::Server => {
            let Some((identity, _)) = movers.identity() else {
                return fail_all("the backup server has no data mover certificate to send from".into()).await;
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let (ins_tx, ins_rx) = mpsc::unbounded_channel();
            let control = Arc::new(Mutex::new(Control::default()));
            let id = hub.next_task_id();
            let link: Arc<dyn TaskLink> = Arc::new(LocalLink {
                events: tx,
                control: control.clone(),
            });
            let identity = identity.clone();
            let task = source_task(
                id,
                &unit,
                paths.clone(),
                &shared,
                &repo_agent,
                data_addr,
                transfer,
                network_rate,
            );
            let opened = live_disks.take();
            tokio::spawn(async move {
                let sent = match opened {
                    Some(disks) => cairn_mover::source::send_disks(task, disks, &identity, ins_rx, link.clone()).await,
                    None => cairn_mover::source::run_source(task, &identity, ins_rx, link.clone()).await,
                };
                let end = match sent {
                    Ok(summary) => TaskEvent::SourceFinished(summary),
                    Err(e) => e.to_event(),
                };
                link.emit(end);
            });
            End::Local {
                id,
                events: rx,
                instructions: ins_tx,
                control,
            }
        }
    };
    if let End::Agent { task, .. } = &source {
        task.send(Instruction::Source(source_task(
            task.id,
            &unit,
            paths,
            &shared,
            &repo_agent,
            data_addr,
            transfer,
            network_rate,
        )));
    }
    let source_fingerprint = match &route {
        ProxyRoute::Agent(agent) => agent.cert_fingerprint.clone(),
        ProxyRoute::Server => movers.identity().map(|(_, fp)| fp.clone()).unwrap_or_default(),
    };
    for &task in &tasks {
        log_db(
            &db,
            task,
            LogLevel::Info,
            &format!(
                "data path: proxy {proxy_name}{} reads, repository agent {} ({data_addr}) writes repository {}; {} \
                 parallel stream(s), blocks go directly from the proxy to the repository agent",
                if matches!(route, ProxyRoute::Server) {
                    " (this server)"
                } else {
                    ""
                },
                repo_agent.name,
                shared.repository.settings.name,
                movers.streams
            ),
        )
        .await;
    }

    // 3. Wait for the disks' descriptions.
    let mut progress = Progress::default();
    let mut tick = tokio::time::interval(TICK);
    let described: Vec<DiskDescription> = loop {
        tokio::select! {
            ev = source.recv() => match ev {
                Some(TaskEvent::Described { disks }) => break disks,
                Some(TaskEvent::Log { disk, level: l, text }) => log_event(&db, &tasks, disk, level(l), &text).await,
                Some(ev @ (TaskEvent::Failed { .. } | TaskEvent::Stopped { .. })) => {
                    record_end(&mut progress, ev, "the proxy");
                    return finish(&shared, &unit, &tasks, progress, &proxy_name, &repo_agent, live.take()).await;
                }
                Some(_) => {}
                None => {
                    progress.failure = Some((None, format!("proxy {proxy_name} ended the task without a report")));
                    return finish(&shared, &unit, &tasks, progress, &proxy_name, &repo_agent, live.take()).await;
                }
            },
            () = shared.stop.wait() => {
                let reason = shared.stop.reason().map_or_else(|| "stopped".to_string(), |r| r.log_text());
                source.cancel(&reason);
                progress.stopped = Some(reason);
                return finish(&shared, &unit, &tasks, progress, &proxy_name, &repo_agent, live.take()).await;
            }
            _ = tick.tick() => {
                if let Some(why) = lost(&db, &movers, &source).await {
                    source.cancel(&why);
                    progress.failure = Some((None, why));
                    return finish(&shared, &unit, &tasks, progress, &proxy_name, &repo_agent, live.take()).await;
                }
            }
        }
    };
    if described.len() != unit.disks.len() {
        source.cancel("the proxy described another number of disks");
        progress.failure = Some((
            None,
            format!(
                "proxy {proxy_name} described {} disks, the VM has {}",
                described.len(),
                unit.disks.len()
            ),
        ));
        return finish(&shared, &unit, &tasks, progress, &proxy_name, &repo_agent, live.take()).await;
    }

    // 4. The target.
    let target = hub.open_task(repo_agent.id);
    let settings = &shared.settings;
    target.send(Instruction::Target(TargetTask {
        task: target.id,
        transfer: transfer.to_string(),
        source_fingerprint,
        repository: shared.repository.settings.path.clone(),
        password,
        vm: unit.repo_name(),
        block_size: settings.block_size,
        method: settings.method,
        full_every: (settings.method == Method::Forward).then_some(FORWARD_FULL_EVERY),
        compression: settings.compression.to_string(),
        retention: u32::try_from(settings.retention).unwrap_or(u32::MAX),
        vm_config: live.as_ref().map(|l| l.vm_config.clone()),
        disks: described,
        write_rate: lease.rate_limiter().rate(),
    }));
    let mut target = End::Agent {
        task: target,
        instance: repo_instance,
        agent: Box::new(repo_agent.clone()),
    };

    // 5. Relay and record until the target ends (and the source, or the grace runs out).
    let mut target_over = false;
    let mut source_over = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut cancelled = false;
    loop {
        if target_over && source_over {
            break;
        }
        if let Some(d) = deadline
            && tokio::time::Instant::now() >= d
        {
            if !target_over && progress.failure.is_none() && progress.stopped.is_none() {
                progress.failure = Some((
                    None,
                    format!("repository agent {} did not end the task", repo_agent.name),
                ));
            }
            break;
        }
        tokio::select! {
            ev = target.recv(), if !target_over => {
                let Some(ev) = ev else { target_over = true; continue; };
                match ev {
                    TaskEvent::ReadPlan { disk, runs } => source.send(Instruction::ReadPlan { task: source.id(), disk, runs }),
                    TaskEvent::Log { disk, level: l, text } => log_event(&db, &tasks, disk, level(l), &text).await,
                    TaskEvent::DiskStarting { disk, total_bytes } => {
                        progress.started.insert(disk, Instant::now());
                        disk_starting(&shared, &tasks, disk, total_bytes, proxy_row_id, &proxy_name, &repo_agent).await;
                    }
                    TaskEvent::Progress { disk, done_bytes, total_bytes } => {
                        if let Some(&task) = tasks.get(disk as usize) {
                            lock(&shared.mgr.progress).insert(task, TaskProgress { done_bytes, total_bytes });
                        }
                    }
                    TaskEvent::DiskFinished { disk, stats, throttle_secs, wall_secs } => {
                        disk_finished(&shared, &tasks, disk, &stats).await;
                        progress.finished.insert(disk, (stats, throttle_secs, wall_secs));
                    }
                    ev @ (TaskEvent::Committed { .. } | TaskEvent::Failed { .. } | TaskEvent::Stopped { .. }) => {
                        let failed = !matches!(ev, TaskEvent::Committed { .. });
                        record_end(&mut progress, ev, &format!("repository agent {}", repo_agent.name));
                        target_over = true;
                        if failed && !source_over && !cancelled {
                            cancelled = true;
                            source.cancel("the repository's side of the task ended");
                        }
                        deadline.get_or_insert(tokio::time::Instant::now() + GRACE);
                    }
                    _ => {}
                }
            }
            ev = source.recv(), if !source_over => {
                let Some(ev) = ev else { source_over = true; continue; };
                match ev {
                    TaskEvent::Log { disk, level: l, text } => log_event(&db, &tasks, disk, level(l), &text).await,
                    TaskEvent::SourceFinished(summary) => {
                        progress.summary = Some(summary);
                        source_over = true;
                    }
                    ev @ (TaskEvent::Failed { .. } | TaskEvent::Stopped { .. }) => {
                        source_over = true;
                        if target_over && !cancelled {
                            // The point is committed (or the target failed on its own): the
                            // source's end no longer decides the VM, but is worth a line.
                            let why = match ev {
                                TaskEvent::Failed { error, .. } => error,
                                TaskEvent::Stopped { reason } => reason,
                                _ => String::new(),
                            };
                            log_db(&db, tasks[0], LogLevel::Warning, &format!(
                                "proxy {proxy_name} ended its side of the task with an error after the repository's side ended: {why}"
                            )).await;
                        } else if !target_over {
                            if progress.failure.is_none() && progress.stopped.is_none() {
                                record_end(&mut progress, ev, &format!("proxy {proxy_name}"));
                            }
                            if !cancelled {
                                cancelled = true;
                                target.cancel("the proxy's side of the task ended");
                            }
                            deadline.get_or_insert(tokio::time::Instant::now() + GRACE);
                        }
                    }
                    _ => {}
                }
            }
            () = shared.stop.wait(), if !cancelled => {
                let reason = shared.stop.reason().map_or_else(|| "stopped".to_string(), |r| r.log_text());
                cancelled = true;
                source.cancel(&reason);
                target.cancel(&reason);
                progress.stopped = Some(reason);
                deadline.get_or_insert(tokio::time::Instant::now() + GRACE);
            }
            _ = tick.tick() => {
                let now = Timestamp::now();
                let write_rate = lease.rate_limiter().rate();
                target.steer(|c| c.write_rate = write_rate);
                let network_rate = network.as_ref().and_then(|n| n.rate(now));
                source.steer(|c| c.network_rate = network_rate);
                if !cancelled {
                    for (end, other) in [(&source, &target), (&target, &source)] {
                        if let Some(why) = lost(&db, &movers, end).await {
                            cancelled = true;
                            other.cancel(&why);
                            progress.failure = Some((None, why));
                            // The lost side will not answer: only the other one is waited for.
                            if std::ptr::eq(end, &source) { source_over = true } else { target_over = true }
                            deadline.get_or_insert(tokio::time::Instant::now() + GRACE);
                            break;
                        }
                    }
                }
            }
        }
    }
    drop(lease);
    drop(network);
    finish(&shared, &unit, &tasks, progress, &proxy_name, &repo_agent, live.take()).await
}

/// The resource id of this server's own proxy.
fn server_proxy(shared: &Shared) -> Option<cairn_resources::ProxyId> {
    shared
        .proxy_routes
        .iter()
        .find(|(_, (_, _, route))| matches!(route, ProxyRoute::Server))
        .map(|(id, _)| cairn_resources::ProxyId::new(id.clone()))
}

/// Longest wait for the repository agent to tell a VM's previous restore point.
const PREVIOUS_POINT_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes a running VM's point-in-time view and opens its disks for sending. The checkpoints the
/// previous restore point was read at come from the repository agent (the repository is there).
/// On error nothing of the view is left.
async fn start_live(
    shared: &Shared,
    unit: &VmUnit,
    tasks: &[i64],
    repo_agent: &Agent,
    password: &str,
) -> Result<(LiveBackup, Vec<SourceDisk>), String> {
    let hub = &shared.mgr.ctx.movers.hub;
    let mut task = hub.open_task(repo_agent.id);
    task.send(Instruction::PreviousPoint {
        task: task.id,
        repository: shared.repository.settings.path.clone(),
        password: password.to_string(),
        vm: unit.repo_name(),
    });
    let answer = tokio::time::timeout(PREVIOUS_POINT_TIMEOUT, async {
        loop {
            match task.events.recv().await {
                Some(TaskEvent::PreviousPoint { sources, .. }) => return Ok(sources),
                Some(TaskEvent::Failed { error, .. }) => return Err(error),
                Some(_) => continue,
                None => return Err("it ended the task without an answer".to_string()),
            }
        }
    })
    .await;
    let sources = match answer {
        Ok(Ok(sources)) => sources,
        Ok(Err(e)) => {
            return Err(format!(
                "repository agent {} could not tell the previous restore point of {}: {e}",
                repo_agent.name,
                unit.repo_name()
            ));
        }
        Err(_) => {
            return Err(format!(
                "repository agent {} did not tell the previous restore point of {} within {} s",
                repo_agent.name,
                unit.repo_name(),
                PREVIOUS_POINT_TIMEOUT.as_secs()
            ));
        }
    };
    let previous = crate::live::backup::previous_of(&sources, unit.disks.len());
    let work_dir = unit
        .disks
        .first()
        .and_then(|d| Path::new(&d.path).parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
    let mut view =
        crate::live::backup::start(unit, previous, shared.repository.id, &shared.settings.guest, &work_dir).await?;
    super::vm::log_lines(shared, tasks, &view.lines).await;
    let (specs, disks) = (view.specs.clone(), unit.disks.clone());
    let opened = tokio::task::spawn_blocking(move || {
        let notes = Mutex::new(Vec::new());
        let inputs = crate::live::backup::open_inputs(&specs, &disks, &|disk, text| {
            lock(&notes).push((disk, text.to_string()));
        })?;
        let mut opened = Vec::new();
        for (i, input) in inputs.into_iter().enumerate() {
            let disk = SourceDisk::new(input.source, input.changed.as_deref(), input.changed_since)
                .map_err(|e| (i, format!("describing the view of disk {}: {e}", disks[i].key)))?;
            opened.push(disk);
        }
        Ok::<_, (usize, String)>((opened, notes.into_inner().unwrap_or_else(PoisonError::into_inner)))
    })
    .await;
    let failure = match opened {
        Ok(Ok((opened, notes))) => {
            for (disk, text) in notes {
                log_event(&shared.mgr.ctx.db, tasks, Some(disk as u32), LogLevel::Info, &text).await;
            }
            return Ok((view, opened));
        }
        Ok(Err((_, text))) => text,
        Err(e) => format!("opening the view ended abnormally: {e}"),
    };
    let lines = view.finish(false).await;
    super::vm::log_lines(shared, tasks, &lines).await;
    Err(failure)
}

#[allow(clippy::too_many_arguments)]
fn source_task(
    id: u64,
    unit: &VmUnit,
    disks: Vec<String>,
    shared: &Shared,
    repo_agent: &Agent,
    data_addr: SocketAddr,
    transfer: TransferId,
    network_rate: Option<u64>,
) -> SourceTask {
    SourceTask {
        task: id,
        vm: unit.repo_name(),
        disks,
        block_size: shared.settings.block_size,
        target: TransferEndpoint {
            address: data_addr.to_string(),
            server_name: crate::agent_tls::agent_dns_name(repo_agent.id),
            fingerprint: repo_agent.cert_fingerprint.clone(),
            transfer: transfer.to_string(),
            streams: shared.mgr.ctx.movers.streams,
        },
        network_rate,
    }
}

/// The network rules' share for a transfer from `from` to `to` (registered while it lives).
fn network_share(shared: &Shared, from: IpAddr, to: IpAddr) -> Option<crate::throttle::ActiveTransfer> {
    Some(shared.mgr.ctx.throttles.register(from, to))
}

/// The IP part of an agent's reported address (`IP` or `IP:port`).
fn agent_ip(address: &str) -> Option<IpAddr> {
    address
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| address.parse::<IpAddr>())
        .ok()
}

/// The local address this machine would use to reach `to` (no packet is sent).
fn outbound_ip(to: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(to).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Why the agent of `end` (if it is one) has lost the task now: it stopped sending heartbeats,
/// or it was restarted (a new process: the task died with the old one; an agent that renewed its
/// certificate counts as a new process too).
async fn lost(db: &cairn_configdb::ConfigDb, movers: &crate::movers::Movers, end: &End) -> Option<String> {
    let agent = end.agent()?;
    if let (Some(then), Some(now)) = (end.instance(), movers.hub.instance(agent.id))
        && then != now
    {
        return Some(format!(
            "agent {} was restarted while it ran this task (a new process, or a certificate renewal, since the \
             task was given to it)",
            agent.name
        ));
    }
    match db.get_agent(agent.id).await {
        Ok(fresh) => movers.unavailable(&fresh, Timestamp::now()),
        Err(e) => {
            tracing::warn!(agent = agent.name, error = %e, "reading an agent's heartbeat failed");
            None
        }
    }
}

fn record_end(progress: &mut Progress, ev: TaskEvent, who: &str) {
    match ev {
        TaskEvent::Committed {
            point,
            kind,
            notes,
            retention,
            retention_failed,
        } => progress.committed = Some((point, kind, notes, retention, retention_failed)),
        TaskEvent::Failed { disk, error } => {
            progress.failure.get_or_insert((disk, format!("{who}: {error}")));
        }
        TaskEvent::Stopped { reason } if progress.failure.is_none() => {
            progress.stopped.get_or_insert(reason);
        }
        _ => {}
    }
}

async fn log_event(db: &cairn_configdb::ConfigDb, tasks: &[i64], disk: Option<u32>, level: LogLevel, text: &str) {
    match disk.and_then(|d| tasks.get(d as usize)) {
        Some(&task) => log_db(db, task, level, text).await,
        None => {
            for &task in tasks {
                log_db(db, task, level, text).await;
            }
        }
    }
}

async fn disk_starting(
    shared: &Shared,
    tasks: &[i64],
    disk: u32,
    total_bytes: u64,
    proxy_id: i64,
    proxy_name: &str,
    repo_agent: &Agent,
) {
    let Some(&task) = tasks.get(disk as usize) else {
        return;
    };
    let db = &shared.mgr.ctx.db;
    let now = Timestamp::now();
    lock(&shared.mgr.progress).insert(
        task,
        TaskProgress {
            done_bytes: 0,
            total_bytes,
        },
    );
    if let Err(e) = db.assign_task(task, Some(proxy_id), Some(shared.repository.id)).await {
        tracing::error!(task, error = %e, "recording a task's proxy failed");
    }
    set_task_state(db, task, SessionState::Running).await;
    if !shared.running.swap(true, Ordering::SeqCst)
        && let Err(e) = db
            .set_session_state(shared.session_id, SessionState::Running, now)
            .await
    {
        tracing::error!(session = shared.session_id, error = %e, "storing the session's state failed");
    }
    log_db(
        db,
        task,
        LogLevel::Info,
        &format!(
            "processing on proxy {proxy_name}, writing to repository {} on agent {}; {} to read",
            shared.repository.settings.name,
            repo_agent.name,
            human_bytes(total_bytes)
        ),
    )
    .await;
}

async fn disk_finished(shared: &Shared, tasks: &[i64], disk: u32, stats: &PointStats) {
    let Some(&task) = tasks.get(disk as usize) else {
        return;
    };
    let db = &shared.mgr.ctx.db;
    lock(&shared.mgr.progress).remove(&task);
    set_task_state(db, task, SessionState::Success).await;
    log_db(
        db,
        task,
        LogLevel::Info,
        &format!("disk done on the repository agent: {}", stats::disk_done_text(stats)),
    )
    .await;
}

/// Busy percentages of a disk on the two machines: the engine's "source" is the time it waited
/// for blocks from the network; the proxy's read time becomes "source".
fn remote_busy(stats: &PointStats, summary: Option<&SourceSummary>) -> Vec<(String, f64)> {
    let engine = |name: &str| stats.busy.iter().find(|(n, _)| n == name).map_or(0.0, |(_, v)| *v);
    let source = summary
        .filter(|s| s.elapsed_secs > 0.0)
        .map_or(0.0, |s| (s.read_secs / s.elapsed_secs * 100.0).min(100.0));
    vec![
        ("source".to_string(), source),
        ("proxy".to_string(), engine("proxy")),
        ("network".to_string(), engine("source")),
        ("target".to_string(), engine("target")),
    ]
}

/// Records the VM's end on its tasks, after ending a running VM's view (its new checkpoints
/// become current only when the point was committed).
async fn finish(
    shared: &Shared,
    unit: &VmUnit,
    tasks: &[i64],
    progress: Progress,
    proxy_name: &str,
    repo_agent: &Agent,
    live: Option<LiveBackup>,
) -> VmOutcome {
    let db = &shared.mgr.ctx.db;
    for &task in tasks {
        lock(&shared.mgr.progress).remove(&task);
    }
    let mut fell_back = false;
    if let Some(mut view) = live {
        let lines = view.finish(progress.committed.is_some()).await;
        super::vm::log_lines(shared, tasks, &lines).await;
        fell_back = view.warning || !lines.is_empty();
    }
    if let Some(summary) = &progress.summary {
        let line = format!(
            "proxy {proxy_name}: read {} in {:.2} s, sent {} blocks ({} all-zero, sent without data), {} on the wire \
             over {} stream(s); {} block(s) re-sent, {} reconnection(s), {:.2} s waiting on network throttling",
            human_bytes(summary.read_bytes),
            summary.read_secs,
            summary.blocks,
            summary.zero_blocks,
            human_bytes(summary.sent_bytes),
            summary.streams,
            summary.resent_blocks,
            summary.reconnects,
            summary.throttled_secs
        );
        log_db(db, tasks[0], LogLevel::Info, &line).await;
    }
    let total_read: u64 = progress.finished.values().map(|(s, _, _)| s.read_bytes).sum();
    let network_throttle = progress.summary.as_ref().map_or(0.0, |s| s.throttled_secs);
    let point = progress.committed.as_ref().map(|c| c.0.clone());
    for (i, &task) in tasks.iter().enumerate() {
        if let Some((stats, throttle, wall)) = progress.finished.get(&(i as u32)) {
            let mut stats = stats.clone();
            stats.busy = remote_busy(&stats, progress.summary.as_ref());
            let share = if total_read > 0 {
                stats.read_bytes as f64 / total_read as f64
            } else {
                0.0
            };
            let doc = stats::task_statistics(&stats, throttle + network_throttle * share, *wall, point.as_deref());
            if let Err(e) = db.set_task_statistics(task, &doc).await {
                tracing::error!(task, error = %e, "storing task statistics failed");
            }
        }
    }
    if let Some((point, kind, notes, retention, retention_failed)) = progress.committed {
        for note in &notes {
            log_event(db, tasks, None, LogLevel::Info, note).await;
        }
        for &task in tasks {
            log_db(
                db,
                task,
                LogLevel::Info,
                &format!(
                    "restore point {point} ({kind}) of {} committed to repository {} by agent {}",
                    unit.repo_name(),
                    shared.repository.settings.name,
                    repo_agent.name
                ),
            )
            .await;
        }
        let level = if retention_failed {
            LogLevel::Warning
        } else {
            LogLevel::Info
        };
        log_db(db, tasks[0], level, &retention).await;
        if retention_failed {
            set_task_state(db, tasks[0], SessionState::Warning).await;
        }
        if fell_back {
            for &task in tasks {
                set_task_state(db, task, SessionState::Warning).await;
            }
        }
        return VmOutcome::Success {
            warning: retention_failed || fell_back,
        };
    }
    if let Some(reason) = progress.stopped.filter(|_| progress.failure.is_none()) {
        for &task in tasks {
            log_db(
                db,
                task,
                LogLevel::Warning,
                &format!("{reason}: no restore point was committed"),
            )
            .await;
            set_task_state(db, task, SessionState::Stopped).await;
        }
        return VmOutcome::Stopped;
    }
    let (disk, text) = progress
        .failure
        .unwrap_or((None, "the task ended without a restore point".to_string()));
    for (i, &task) in tasks.iter().enumerate() {
        let line = match disk {
            Some(d) if d as usize != i => format!("not backed up: disk {d} of this VM failed: {text}"),
            _ if progress.finished.contains_key(&(i as u32)) => {
                format!("not backed up: the VM's restore point was not committed: {text}")
            }
            _ => text.clone(),
        };
        log_db(db, task, LogLevel::Error, &line).await;
        set_task_state(db, task, SessionState::Failed).await;
    }
    VmOutcome::Failed
}
