//! The guest agent's channel as QEMU sees it (`query-chardev`): whether a client holds the
//! agent's socket, and whether the guest opened its end of the port (qemu-ga runs).
//!
//! The agent's socket (`-chardev socket,server=on`) serves one client at a time. A second
//! client's `connect` still succeeds (the kernel queues it), but QEMU reads nothing from it
//! until the first one leaves, so the agent seems not to answer. QEMU reports the state of the
//! chardev through QMP: its `filename` starts with `disconnected:` while no client holds it, and
//! `frontend-open` is true while the guest has the `org.qemu.guest_agent.0` port open.
//! [`agent_channel`] reads both, so a caller can name the real cause before waiting for a reply
//! that cannot come.

use std::path::Path;

use serde_json::Value;

use crate::Result;
use crate::config::GUEST_AGENT_PORT;
use crate::qmp::Qmp;

/// The state of a guest agent channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentChannel {
    /// A client is connected to the socket (for a caller that has not connected yet: another one).
    pub held: bool,
    /// The guest opened its end of the port: the agent runs in the guest.
    pub guest_open: bool,
}

impl AgentChannel {
    /// Why a new client cannot talk to the agent at `socket`, or `None` when it can.
    pub fn problem(&self, socket: &Path) -> Option<String> {
        if self.held {
            Some(format!(
                "guest agent socket {} is held by another client (QEMU serves one client at a time: close the \
                 other one)",
                socket.display()
            ))
        } else if !self.guest_open {
            Some(format!(
                "the guest agent does not run in the guest (the guest has not opened port {GUEST_AGENT_PORT} of \
                 socket {})",
                socket.display()
            ))
        } else {
            None
        }
    }
}

/// The state of the channel whose socket is `socket`, from `query-chardev`; `None` when no
/// chardev of the VM listens on that path.
pub async fn agent_channel(qmp: &Qmp, socket: &Path) -> Result<Option<AgentChannel>> {
    let chardevs = qmp.execute("query-chardev", Value::Null).await?;
    Ok(channel_of(&chardevs, socket))
}

/// [`agent_channel`] on a `query-chardev` reply.
pub fn channel_of(chardevs: &Value, socket: &Path) -> Option<AgentChannel> {
    let wanted = socket.to_string_lossy();
    chardevs.as_array()?.iter().find_map(|c| {
        let filename = c.get("filename")?.as_str()?;
        let (held, rest) = match filename.strip_prefix("disconnected:") {
            Some(rest) => (false, rest),
            None => (true, filename),
        };
        let path = rest.strip_prefix("unix:")?;
        let path = path.split_once(",server").map_or(path, |(p, _)| p);
        (path == wanted).then(|| AgentChannel {
            held,
            guest_open: c.get("frontend-open").and_then(Value::as_bool).unwrap_or(false),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// As QEMU 7.2 answers: free and held sockets, a guest without and with its agent.
    #[test]
    fn held_sockets_and_closed_ports_are_told_apart() {
        let reply = |filename: &str, open: bool| {
            json!([
                {"frontend-open": true, "filename": "unix:/run/vms/web01.qmp,server=on", "label": "compat_monitor0"},
                {"frontend-open": open, "filename": filename, "label": "qga0"}
            ])
        };
        let socket = Path::new("/run/vms/web01.qga");
        let free = channel_of(&reply("disconnected:unix:/run/vms/web01.qga,server=on", true), socket).unwrap();
        assert_eq!(
            free,
            AgentChannel {
                held: false,
                guest_open: true
            }
        );
        assert_eq!(free.problem(socket), None);
        let held = channel_of(&reply("unix:/run/vms/web01.qga,server=on", true), socket).unwrap();
        assert!(held.problem(socket).unwrap().contains("held by another client"));
        let closed = channel_of(&reply("disconnected:unix:/run/vms/web01.qga,server=on", false), socket).unwrap();
        assert!(closed.problem(socket).unwrap().contains("does not run in the guest"));
        assert_eq!(
            channel_of(&reply("disconnected:unix:/other.qga,server=on", true), socket),
            None
        );
        assert_eq!(channel_of(&json!({"error": "x"}), socket), None);
    }
}
