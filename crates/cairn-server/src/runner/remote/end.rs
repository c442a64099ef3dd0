//! The two ends of a VM's data path: a task on an agent, or the server's own source.

use std::sync::{Arc, Mutex};

use cairn_configdb::Agent;
use cairn_mover::TaskLink;
use cairn_mover::protocol::{Control, Instruction, TaskEvent};
use jiff::Timestamp;
use tokio::sync::mpsc;

use super::super::lock;
use crate::agent_hub::HubTask;

/// One end of the data path as the runner sees it.
pub(super) enum End {
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
    pub(super) fn id(&self) -> u64 {
        match self {
            End::Agent { task, .. } => task.id,
            End::Local { id, .. } => *id,
        }
    }

    pub(super) async fn recv(&mut self) -> Option<TaskEvent> {
        match self {
            End::Agent { task, .. } => task.events.recv().await,
            End::Local { events, .. } => events.recv().await,
        }
    }

    pub(super) fn send(&self, instruction: Instruction) {
        match self {
            End::Agent { task, .. } => task.send(instruction),
            End::Local { instructions, .. } => {
                let _ = instructions.send(instruction);
            }
        }
    }

    pub(super) fn steer(&self, change: impl FnOnce(&mut Control)) {
        match self {
            End::Agent { task, .. } => task.steer(change),
            End::Local { control, .. } => change(&mut lock(control)),
        }
    }

    pub(super) fn cancel(&self, reason: &str) {
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
pub(super) struct LocalLink {
    pub(super) events: mpsc::UnboundedSender<TaskEvent>,
    pub(super) control: Arc<Mutex<Control>>,
}

impl TaskLink for LocalLink {
    fn emit(&self, event: TaskEvent) {
        let _ = self.events.send(event);
    }

    fn control(&self) -> Control {
        lock(&self.control).clone()
    }
}

/// Why the agent of `end` (if it is one) has lost the task now: it stopped sending heartbeats,
/// or it was restarted (a new process: the task died with the old one; an agent that renewed its
/// certificate counts as a new process too).
pub(super) async fn lost(db: &cairn_configdb::ConfigDb, movers: &crate::movers::Movers, end: &End) -> Option<String> {
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
