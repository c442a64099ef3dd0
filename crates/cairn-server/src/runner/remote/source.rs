//! The source of a VM's data: a task on the proxy agent, or the server's own data mover.

use std::sync::{Arc, Mutex};

use cairn_configdb::LogLevel;
use cairn_mover::TaskLink;
use cairn_mover::protocol::{Control, Instruction, SourceTask, TaskEvent, TransferEndpoint};
use cairn_mover::source::SourceDisk;
use cairn_transfer::{TlsIdentity, TransferId};
use tokio::sync::mpsc;

use super::super::session::{Shared, log_db};
use super::end::{End, LocalLink};
use super::{Ctx, ProxyRoute};

/// The failure of a VM the server should send but cannot.
pub(super) const NO_CERTIFICATE: &str = "the backup server has no data mover certificate to send from";

/// Gives the source its task: the proxy agent's, or the server's own data mover (sending from a
/// running VM's opened view, `live_disks`, if there is one).
pub(super) fn start(
    ctx: &Ctx<'_>,
    route: &ProxyRoute,
    transfer: TransferId,
    network_rate: Option<u64>,
    live_disks: Option<Vec<SourceDisk>>,
) -> Result<End, String> {
    let movers = &ctx.shared.mgr.ctx.movers;
    let hub = &movers.hub;
    let paths: Vec<String> = super::super::tasks::disk_paths(ctx.unit)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let agent = match route {
        ProxyRoute::Agent(agent) => agent,
        ProxyRoute::Server => {
            let Some((identity, _)) = movers.identity() else {
                return Err(NO_CERTIFICATE.into());
            };
            let id = hub.next_task_id();
            let task = source_task(ctx, id, paths, transfer, network_rate);
            return Ok(start_local(task, identity.clone(), live_disks));
        }
    };
    let task = hub.open_task(agent.id);
    task.send(Instruction::Source(source_task(
        ctx,
        task.id,
        paths,
        transfer,
        network_rate,
    )));
    Ok(End::Agent {
        task,
        instance: hub.instance(agent.id),
        agent: agent.clone(),
    })
}

/// Runs `task` on the server's own data mover in a tokio task.
fn start_local(task: SourceTask, identity: Arc<TlsIdentity>, opened: Option<Vec<SourceDisk>>) -> End {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ins_tx, ins_rx) = mpsc::unbounded_channel();
    let control = Arc::new(Mutex::new(Control::default()));
    let id = task.task;
    let link: Arc<dyn TaskLink> = Arc::new(LocalLink {
        events: tx,
        control: control.clone(),
    });
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

/// The source's task `id`: the VM's disks `disks`, sent to the repository agent.
fn source_task(
    ctx: &Ctx<'_>,
    id: u64,
    disks: Vec<String>,
    transfer: TransferId,
    network_rate: Option<u64>,
) -> SourceTask {
    let repo_agent = &ctx.repo.agent;
    SourceTask {
        task: id,
        vm: ctx.unit.repo_name(),
        disks,
        block_size: ctx.shared.settings.block_size,
        target: TransferEndpoint {
            address: ctx.repo.data_addr.to_string(),
            server_name: crate::agent_tls::agent_dns_name(repo_agent.id),
            fingerprint: repo_agent.cert_fingerprint.clone(),
            transfer: transfer.to_string(),
            streams: ctx.shared.mgr.ctx.movers.streams,
        },
        network_rate,
    }
}

/// The certificate fingerprint the repository agent accepts the source by.
pub(super) fn fingerprint(shared: &Shared, route: &ProxyRoute) -> String {
    match route {
        ProxyRoute::Agent(agent) => agent.cert_fingerprint.clone(),
        ProxyRoute::Server => shared
            .mgr
            .ctx
            .movers
            .identity()
            .map(|(_, fp)| fp.clone())
            .unwrap_or_default(),
    }
}

/// Tells every task of the VM which way its data goes.
pub(super) async fn log_data_path(ctx: &Ctx<'_>, route: &ProxyRoute) {
    let text = format!(
        "data path: proxy {}{} reads, repository agent {} ({}) writes repository {}; {} parallel stream(s), blocks \
         go directly from the proxy to the repository agent",
        ctx.proxy_name,
        if matches!(route, ProxyRoute::Server) {
            " (this server)"
        } else {
            ""
        },
        ctx.repo.agent.name,
        ctx.repo.data_addr,
        ctx.shared.repository.settings.name,
        ctx.shared.mgr.ctx.movers.streams
    );
    for &task in ctx.tasks {
        log_db(ctx.db, task, LogLevel::Info, &text).await;
    }
}
