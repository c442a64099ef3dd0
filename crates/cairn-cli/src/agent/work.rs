//! The agent's work: a long poll for instructions (`POST /api/v1/agents/work`), one tokio task
//! per instruction that starts a task (source, target, repository set-up), and a link per task
//! that posts its reports in order (`POST /api/v1/agents/tasks/{task}/events`) and keeps the
//! server's latest steering.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_mover::TaskLink;
use cairn_mover::protocol::{Control, Instruction, TaskEvent};
use cairn_transfer::{Receiver, TlsIdentity};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Seconds the server may hold a poll open.
const POLL_SECS: u64 = 25;
/// Reports are sent at least this often while a task runs.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Runs instructions from the server.
pub(super) struct Worker {
    /// The agent's data folder (never written by a restore).
    pub(super) data_dir: std::path::PathBuf,
    pub(super) http: reqwest::Client,
    pub(super) server: String,
    pub(super) name: String,
    pub(super) identity: Arc<TlsIdentity>,
    pub(super) receiver: Option<Arc<Receiver>>,
    pub(super) tasks: Mutex<HashMap<u64, mpsc::UnboundedSender<Instruction>>>,
    /// Tasks started and not yet reported to their end (every kind: each has an [`HttpLink`]).
    pub(super) running: AtomicUsize,
}

impl Worker {
    /// Stops every running task, giving `reason` for their logs.
    pub(super) fn cancel_all(&self, reason: &str) {
        for (task, tx) in self.tasks().iter() {
            let _ = tx.send(Instruction::Cancel {
                task: *task,
                reason: reason.to_owned(),
            });
        }
    }

    /// Whether no task is running (the agent may then renew its certificate).
    pub(super) fn is_idle(&self) -> bool {
        self.running.load(Ordering::SeqCst) == 0
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<Instruction>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Polls for instructions until the process ends (401/403 are left to the heartbeats,
    /// which end the process).
    pub(super) async fn run(self: Arc<Self>) {
        let url = format!("{}/api/v1/agents/work", self.server);
        loop {
            let resp = self
                .http
                .post(&url)
                .timeout(Duration::from_secs(POLL_SECS + 15))
                .json(&json!({ "wait_secs": POLL_SECS }))
                .send()
                .await;
            let instructions: Vec<Instruction> = match resp {
                Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                    Ok(v) => match serde_json::from_value(v["instructions"].clone()) {
                        Ok(list) => list,
                        Err(e) => {
                            eprintln!("cairn agent: an instruction from the server is not understood: {e}");
                            Vec::new()
                        }
                    },
                    Err(e) => {
                        eprintln!("cairn agent: reading instructions failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Vec::new()
                    }
                },
                Ok(r) => {
                    eprintln!("cairn agent: polling for work refused ({}); retrying", r.status());
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
                Err(e) => {
                    eprintln!(
                        "cairn agent: polling for work failed ({}); retrying",
                        super::error_text(&e)
                    );
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            for instruction in instructions {
                self.clone().dispatch(instruction);
            }
        }
    }

    fn dispatch(self: Arc<Self>, instruction: Instruction) {
        let task = instruction.task();
        match instruction {
            Instruction::ReadPlan { .. } | Instruction::Cancel { .. } => {
                if let Some(tx) = self.tasks().get(&task) {
                    let _ = tx.send(instruction);
                }
            }
            Instruction::Source(source) => {
                let (tx, rx) = mpsc::unbounded_channel();
                self.tasks().insert(task, tx);
                let link = HttpLink::start(self.clone(), task);
                eprintln!(
                    "cairn agent: {}: task {task}: reading {} for the repository's data mover",
                    self.name, source.vm
                );
                let worker = self.clone();
                tokio::spawn(async move {
                    let end = match cairn_mover::source::run_source(source, &worker.identity, rx, link.clone()).await {
                        Ok(summary) => TaskEvent::SourceFinished(summary),
                        Err(e) => e.to_event(),
                    };
                    link.finish(end).await;
                    worker.tasks().remove(&task);
                });
            }
            Instruction::Target(target) => {
                let (tx, rx) = mpsc::unbounded_channel();
                self.tasks().insert(task, tx);
                let link = HttpLink::start(self.clone(), task);
                let worker = self.clone();
                tokio::spawn(async move {
                    let end = match &worker.receiver {
                        None => TaskEvent::Failed {
                            disk: None,
                            error: format!(
                                "agent {} has no data channel listener (it was not started with the repository role)",
                                worker.name
                            ),
                        },
                        Some(receiver) => {
                            eprintln!(
                                "cairn agent: {}: task {task}: backing up {} into {}",
                                worker.name, target.vm, target.repository
                            );
                            match cairn_mover::target::run_target(target, receiver, rx, link.clone()).await {
                                // The Committed report was already sent by the task.
                                Ok(_) => {
                                    link.finish_quietly().await;
                                    worker.tasks().remove(&task);
                                    return;
                                }
                                Err(e) => e.to_event(),
                            }
                        }
                    };
                    link.finish(end).await;
                    worker.tasks().remove(&task);
                });
            }
            Instruction::Restore(restore) => {
                let (tx, rx) = mpsc::unbounded_channel();
                self.tasks().insert(task, tx);
                let link = HttpLink::start(self.clone(), task);
                eprintln!(
                    "cairn agent: {}: task {task}: restoring {} disk {} to {}",
                    self.name, restore.vm, restore.disk, restore.target_path
                );
                let worker = self.clone();
                let protect = [self.data_dir.clone()];
                tokio::spawn(async move {
                    let end = match cairn_mover::target::run_restore(restore, &protect, rx, link.clone()).await {
                        Ok(summary) => TaskEvent::Restored(summary),
                        Err(e) => e.to_event(),
                    };
                    link.finish(end).await;
                    worker.tasks().remove(&task);
                });
            }
            Instruction::InitRepository { path, password, .. } => {
                let link = HttpLink::start(self.clone(), task);
                tokio::spawn(async move {
                    let path = PathBuf::from(path);
                    let end = match tokio::task::spawn_blocking(move || {
                        cairn_mover::target::init_repository(&path, &password)
                    })
                    .await
                    {
                        Ok(Ok(summary)) => TaskEvent::RepositoryReady { summary },
                        Ok(Err(e)) => e.to_event(),
                        Err(e) => TaskEvent::Failed {
                            disk: None,
                            error: format!("setting up the repository ended abnormally: {e}"),
                        },
                    };
                    link.finish(end).await;
                });
            }
            Instruction::PreviousPoint {
                repository,
                password,
                vm,
                ..
            } => {
                let link = HttpLink::start(self.clone(), task);
                tokio::spawn(async move {
                    let path = PathBuf::from(repository);
                    let end = match tokio::task::spawn_blocking(move || {
                        cairn_mover::target::previous_point(&path, &password, &vm)
                    })
                    .await
                    {
                        Ok(Ok(found)) => TaskEvent::PreviousPoint {
                            point: found.point,
                            sources: found.sources,
                        },
                        Ok(Err(e)) => e.to_event(),
                        Err(e) => TaskEvent::Failed {
                            disk: None,
                            error: format!("reading the previous restore point ended abnormally: {e}"),
                        },
                    };
                    link.finish(end).await;
                });
            }
        }
    }
}

/// Counts a task as running from its start until its last report was delivered.
struct Running(Arc<Worker>);

impl Running {
    fn new(worker: Arc<Worker>) -> Running {
        worker.running.fetch_add(1, Ordering::SeqCst);
        Running(worker)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Posts a task's reports in order and keeps the server's steering.
struct HttpLink {
    tx: mpsc::UnboundedSender<TaskEvent>,
    control: Arc<Mutex<Control>>,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl HttpLink {
    fn start(worker: Arc<Worker>, task: u64) -> Arc<HttpLink> {
        let (tx, rx) = mpsc::unbounded_channel();
        let control = Arc::new(Mutex::new(Control::default()));
        let running = Running::new(worker.clone());
        let flusher = tokio::spawn({
            let control = control.clone();
            async move {
                let _running = running;
                flush(worker, task, rx, control).await;
            }
        });
        Arc::new(HttpLink {
            tx,
            control,
            flusher: Mutex::new(Some(flusher)),
        })
    }

    /// Sends the final report and waits until everything was delivered.
    async fn finish(&self, end: TaskEvent) {
        let _ = self.tx.send(end);
        self.finish_quietly().await;
    }

    /// Waits until every report (the last one final) was delivered.
    async fn finish_quietly(&self) {
        let handle = self.flusher.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }
}

impl TaskLink for HttpLink {
    fn emit(&self, event: TaskEvent) {
        let _ = self.tx.send(event);
    }

    fn control(&self) -> Control {
        self.control.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Delivers reports in batches until a final one was delivered; retries on network errors. A 404
/// (the server no longer knows the task) turns into a cancel.
async fn flush(
    worker: Arc<Worker>,
    task: u64,
    mut rx: mpsc::UnboundedReceiver<TaskEvent>,
    control: Arc<Mutex<Control>>,
) {
    let url = format!("{}/api/v1/agents/tasks/{task}/events", worker.server);
    let mut done = false;
    while !done {
        let Some(first) = rx.recv().await else {
            return;
        };
        // Reports the other side waits for (a read plan, the disks' description, a task's end)
        // go at once; progress and log lines are gathered for a moment.
        let urgent = |e: &TaskEvent| !matches!(e, TaskEvent::Progress { .. } | TaskEvent::Log { .. });
        if !urgent(&first) {
            tokio::time::sleep(FLUSH_EVERY).await;
        }
        let mut batch = vec![first];
        while let Ok(e) = rx.try_recv() {
            batch.push(e);
        }
        done = batch.iter().any(TaskEvent::is_final);
        let mut attempt = 0u32;
        loop {
            let resp = worker.http.post(&url).json(&json!({ "events": batch })).send().await;
            match resp {
                Ok(r) if r.status().is_success() => {
                    if let Ok(c) = r.json::<Control>().await {
                        *control.lock().unwrap_or_else(PoisonError::into_inner) = c;
                    }
                    break;
                }
                Ok(r) if r.status().as_u16() == 404 || r.status().as_u16() == 403 => {
                    let status = r.status();
                    control.lock().unwrap_or_else(PoisonError::into_inner).cancel =
                        Some(format!("the server no longer runs task {task} ({status})"));
                    if done {
                        return;
                    }
                    break;
                }
                Ok(r) => eprintln!(
                    "cairn agent: reporting on task {task} refused ({}); retrying",
                    r.status()
                ),
                Err(e) => eprintln!(
                    "cairn agent: reporting on task {task} failed ({}); retrying",
                    super::error_text(&e)
                ),
            }
            attempt += 1;
            if done && attempt > 30 {
                eprintln!("cairn agent: giving up reporting the end of task {task}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt.min(6)))).await;
        }
    }
}
