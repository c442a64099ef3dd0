//! The control channel to agents, in the server's memory: a queue of instructions per agent
//! (fetched by the agent's long poll, `POST /api/v1/agents/work`) and a route per running task
//! that carries the agent's reports (`POST /api/v1/agents/tasks/{task}/events`) to the job
//! manager and answers them with the task's current steering.
//!
//! Nothing here is persisted: a task lives as long as the session that dispatched it; after a
//! server restart agents get 404 for their old tasks and stop them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cairn_mover::protocol::{Control, Instruction, TaskEvent};
use tokio::sync::{Notify, mpsc};

#[derive(Default)]
struct Queue {
    pending: VecDeque<Instruction>,
    notify: Arc<Notify>,
}

struct Route {
    agent_id: i64,
    events: mpsc::UnboundedSender<TaskEvent>,
    control: Arc<Mutex<Control>>,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<i64, Queue>,
    routes: HashMap<u64, Route>,
    /// The process instance each agent last reported in a heartbeat.
    instances: HashMap<i64, String>,
}

/// Instructions waiting for agents and the routes of running agent tasks.
#[derive(Default)]
pub struct AgentHub {
    inner: Mutex<Inner>,
    next_task: AtomicU64,
}

/// Why an agent's report was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
    /// No such task (ended, or from before a server restart).
    #[error("task {0} is not running on this server (it ended, or the server restarted)")]
    NoSuchTask(u64),
    /// The task belongs to another agent.
    #[error("task {0} belongs to another agent")]
    NotYours(u64),
}

/// A task dispatched to an agent: its reports arrive on `events`; dropping it ends the route
/// (later reports get [`HubError::NoSuchTask`]) and withdraws instructions not fetched yet.
pub struct HubTask {
    /// The task number.
    pub id: u64,
    /// The agent's reports, in order.
    pub events: mpsc::UnboundedReceiver<TaskEvent>,
    control: Arc<Mutex<Control>>,
    agent_id: i64,
    hub: Arc<AgentHub>,
}

impl HubTask {
    /// Queues an instruction for the task's agent.
    pub fn send(&self, instruction: Instruction) {
        self.hub.send(self.agent_id, instruction);
    }

    /// Changes the steering the agent gets with its next report.
    pub fn steer(&self, change: impl FnOnce(&mut Control)) {
        change(&mut self.control.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl Drop for HubTask {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        inner.routes.remove(&self.id);
        if let Some(q) = inner.queues.get_mut(&self.agent_id) {
            let id = self.id;
            q.pending
                .retain(|i| i.task() != id || matches!(i, Instruction::Cancel { .. }));
        }
    }
}

impl AgentHub {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new task number (unique while the server runs; starts at 1).
    pub fn next_task_id(&self) -> u64 {
        self.next_task.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Opens a route for a task on agent `agent_id`.
    pub fn open_task(self: &Arc<Self>, agent_id: i64) -> HubTask {
        let id = self.next_task_id();
        let (tx, rx) = mpsc::unbounded_channel();
        let control = Arc::new(Mutex::new(Control::default()));
        self.lock().routes.insert(
            id,
            Route {
                agent_id,
                events: tx,
                control: control.clone(),
            },
        );
        HubTask {
            id,
            events: rx,
            control,
            agent_id,
            hub: self.clone(),
        }
    }

    /// Queues an instruction for agent `agent_id` and wakes its long poll.
    pub fn send(&self, agent_id: i64, instruction: Instruction) {
        let mut inner = self.lock();
        let q = inner.queues.entry(agent_id).or_default();
        q.pending.push_back(instruction);
        q.notify.notify_one();
    }

    /// The instructions waiting for agent `agent_id`, waiting up to `wait` for the first one.
    pub async fn poll(&self, agent_id: i64, wait: Duration) -> Vec<Instruction> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notify = {
                let mut inner = self.lock();
                let q = inner.queues.entry(agent_id).or_default();
                if !q.pending.is_empty() {
                    return q.pending.drain(..).collect();
                }
                q.notify.clone()
            };
            if tokio::time::timeout_at(deadline, notify.notified()).await.is_err() {
                return Vec::new();
            }
        }
    }

    /// Records the process instance agent `agent_id` reported in a heartbeat.
    pub fn saw_instance(&self, agent_id: i64, instance: &str) {
        let before = self.lock().instances.insert(agent_id, instance.to_string());
        if before.as_deref() != Some(instance) {
            tracing::info!(agent_id, instance, previous = ?before, "agent process started");
        }
    }

    /// The process instance agent `agent_id` last reported (none before its first heartbeat
    /// since the server started).
    pub fn instance(&self, agent_id: i64) -> Option<String> {
        self.lock().instances.get(&agent_id).cloned()
    }

    /// Takes reports of agent `agent_id` about `task` and returns the task's steering.
    pub fn deliver(&self, agent_id: i64, task: u64, events: Vec<TaskEvent>) -> Result<Control, HubError> {
        let inner = self.lock();
        let route = inner.routes.get(&task).ok_or(HubError::NoSuchTask(task))?;
        if route.agent_id != agent_id {
            return Err(HubError::NotYours(task));
        }
        for e in events {
            // A closed receiver means the session is ending: the steering says so.
            let _ = route.events.send(e);
        }
        let control = route.control.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Ok(control)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn instructions_reach_their_agent_and_reports_their_task() {
        let hub = Arc::new(AgentHub::default());
        let mut task = hub.open_task(7);
        task.send(Instruction::Cancel {
            task: task.id,
            reason: "test".into(),
        });
        assert!(hub.poll(8, Duration::from_millis(10)).await.is_empty());
        let got = hub.poll(7, Duration::from_millis(10)).await;
        assert_eq!(got.len(), 1);
        task.steer(|c| c.write_rate = Some(5));
        let ev = TaskEvent::Stopped { reason: "x".into() };
        assert_eq!(
            hub.deliver(8, task.id, vec![ev.clone()]),
            Err(HubError::NotYours(task.id))
        );
        assert_eq!(hub.deliver(7, task.id, vec![ev.clone()]).unwrap().write_rate, Some(5));
        assert_eq!(task.events.recv().await, Some(ev));
        let id = task.id;
        drop(task);
        assert_eq!(hub.deliver(7, id, vec![]), Err(HubError::NoSuchTask(id)));
    }

    #[tokio::test]
    async fn a_long_poll_wakes_on_a_new_instruction() {
        let hub = Arc::new(AgentHub::default());
        let poller = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.poll(1, Duration::from_secs(20)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        hub.send(
            1,
            Instruction::Cancel {
                task: 1,
                reason: "r".into(),
            },
        );
        let got = tokio::time::timeout(Duration::from_secs(5), poller)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 1);
    }
}
