//! Where a VM's data goes: the repository agent, the proxy whose slot the VM got, and the
//! network rule between them.

use std::net::{IpAddr, SocketAddr};

use cairn_configdb::LogLevel;
use jiff::Timestamp;

use super::super::session::{Shared, log_db};
use super::super::tasks;
use super::{Ctx, Halt, ProxyRoute, RepoSide, Slots};

/// The repository's agent, checked to be available, with its data address and the repository's
/// password.
pub(super) async fn repository_side(shared: &Shared) -> Result<RepoSide, Halt> {
    let (db, movers) = (&shared.mgr.ctx.db, &shared.mgr.ctx.movers);
    let name = &shared.repository.settings.name;
    let Some(agent_id) = shared.repository.settings.agent_id else {
        return Err(Halt::Fail("internal error: the repository is not on an agent".into()));
    };
    let agent = db
        .get_agent(agent_id)
        .await
        .map_err(|e| Halt::Fail(format!("the agent of repository {name}: {e}")))?;
    if let Some(why) = movers.unavailable(&agent, Timestamp::now()) {
        return Err(Halt::Fail(format!("repository {name} cannot be written: {why}")));
    }
    let instance = movers.hub.instance(agent.id);
    let Some(data_addr) = agent.address.as_deref().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        return Err(Halt::Fail(format!(
            "repository agent {} reported no data channel address (IP:port) in its heartbeats",
            agent.name
        )));
    };
    let secrets = &shared.mgr.ctx.secrets;
    let password = match secrets.repository_password(shared.repository.id) {
        Ok(Some(p)) => String::from_utf8_lossy(&p).into_owned(),
        Ok(None) => {
            return Err(Halt::Fail(format!(
                "repository {name} has no password in {}",
                secrets.repository_password_path(shared.repository.id).display()
            )));
        }
        Err(e) => return Err(Halt::Fail(format!("reading the password of repository {name}: {e}"))),
    };
    Ok(RepoSide {
        agent,
        instance,
        data_addr,
        password,
    })
}

/// Waits for the VM's task slots (a running VM's on this server's own proxy) and checks the
/// proxy agent it got, as it is now.
pub(super) async fn take_slots(shared: &Shared, live_vm: bool) -> Result<Slots, Halt> {
    let request = match server_proxy(shared) {
        Some(id) if live_vm => shared.request.clone().with_proxies([id]),
        _ => shared.request.clone(),
    };
    let lease = tokio::select! {
        lease = shared.mgr.ctx.resources.acquire_async(request) => {
            lease.map_err(|e| Halt::Fail(format!("no task slot: {e}")))?
        }
        () = shared.stop.wait() => return Err(Halt::Stopped(tasks::stop_text(shared))),
    };
    let Some((proxy_id, proxy_name, mut route)) = shared.proxy_routes.get(lease.proxy().as_str()).cloned() else {
        return Err(Halt::Fail(format!(
            "internal error: proxy {} has no route",
            lease.proxy().as_str()
        )));
    };
    if let ProxyRoute::Agent(agent) = &mut route {
        // The session's list is from its start: look at the agent as it is now.
        match shared.mgr.ctx.db.get_agent(agent.id).await {
            Ok(fresh) => **agent = fresh,
            Err(e) => return Err(Halt::Fail(format!("proxy {proxy_name}: {e}"))),
        }
        if let Some(why) = shared.mgr.ctx.movers.unavailable(agent, Timestamp::now()) {
            return Err(Halt::Fail(format!("proxy {proxy_name} cannot read: {why}")));
        }
    }
    Ok(Slots {
        lease,
        proxy_id,
        proxy_name,
        route,
    })
}

/// The resource id of this server's own proxy.
fn server_proxy(shared: &Shared) -> Option<cairn_resources::ProxyId> {
    shared
        .proxy_routes
        .iter()
        .find(|(_, (_, _, route))| matches!(route, ProxyRoute::Server))
        .map(|(id, _)| cairn_resources::ProxyId::new(id.clone()))
}

/// The network rules' share for the transfer from the proxy to the repository agent
/// (registered while it lives); logs the rule that applies, if any.
pub(super) async fn network(ctx: &Ctx<'_>, route: &ProxyRoute) -> Option<crate::throttle::ActiveTransfer> {
    let data_addr = ctx.repo.data_addr;
    let source_ip = match route {
        ProxyRoute::Agent(agent) => agent.address.as_deref().and_then(agent_ip),
        ProxyRoute::Server => outbound_ip(data_addr),
    };
    let network = source_ip.map(|ip| ctx.shared.mgr.ctx.throttles.register(ip, data_addr.ip()));
    if let Some(rule) = network.as_ref().and_then(|n| n.rule_text(Timestamp::now())) {
        log_db(
            ctx.db,
            ctx.tasks[0],
            LogLevel::Info,
            &format!("network throttling applies: {rule}"),
        )
        .await;
    }
    network
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
