//! A running VM read by the server for a repository agent: its view, at the previous point's
//! checkpoints as the agent tells them.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cairn_configdb::{Agent, LogLevel};
use cairn_mover::protocol::{Instruction, TaskEvent};
use cairn_mover::source::SourceDisk;

use super::super::session::Shared;
use super::super::settings::VmUnit;
use super::super::{SessionError, lock, tasks, view};
use crate::live::backup::{LiveBackup, Previous};

/// Longest wait for the repository agent to tell a VM's previous restore point.
const PREVIOUS_POINT_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes a running VM's point-in-time view and opens its disks for sending. The checkpoints the
/// previous restore point was read at come from the repository agent (the repository is there).
/// On error nothing of the view is left.
pub(super) async fn start_live(
    shared: &Shared,
    unit: &VmUnit,
    tasks: &[i64],
    repo_agent: &Agent,
    password: &str,
) -> Result<(LiveBackup, Vec<SourceDisk>), SessionError> {
    let previous = previous_point(shared, unit, repo_agent, password).await?;
    let view = view::start(shared, unit, tasks, previous).await?;
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
                tasks::log_event(&shared.mgr.ctx.db, tasks, Some(disk), LogLevel::Info, &text).await;
            }
            return Ok((view, opened));
        }
        Ok(Err((disk, text))) => SessionError::LiveView { disk: Some(disk), text },
        Err(e) => SessionError::LiveViewAbnormal(e),
    };
    view::end(shared, tasks, Some(view), false).await;
    Err(failure)
}

/// The VM's previous restore point, as the repository agent tells it.
async fn previous_point(
    shared: &Shared,
    unit: &VmUnit,
    repo_agent: &Agent,
    password: &str,
) -> Result<Previous, SessionError> {
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
        Ok(Err(error)) => {
            return Err(SessionError::PreviousPoint {
                agent: repo_agent.name.clone(),
                vm: unit.repo_name(),
                error,
            });
        }
        Err(_) => {
            return Err(SessionError::PreviousPointTimeout {
                agent: repo_agent.name.clone(),
                vm: unit.repo_name(),
                secs: PREVIOUS_POINT_TIMEOUT.as_secs(),
            });
        }
    };
    Ok(crate::live::backup::previous_of(&sources, unit.disks.len()))
}
