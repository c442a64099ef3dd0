//! A running VM's point-in-time view, as both VM paths start and end it.

use std::path::Path;

use crate::live::backup::{LiveBackup, Previous};

use super::SessionError;
use super::session::Shared;
use super::settings::VmUnit;
use super::tasks::log_lines;

/// Makes the view of `unit`'s running VM (`previous`: its previous restore point) and logs its
/// lines; its work files go next to the VM's first disk.
pub(crate) async fn start(
    shared: &Shared,
    unit: &VmUnit,
    tasks: &[i64],
    previous: Previous,
) -> Result<LiveBackup, SessionError> {
    let work_dir = unit
        .disks
        .first()
        .and_then(|d| Path::new(&d.path).parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
    let view = crate::live::backup::start(unit, previous, shared.repository.id, &shared.settings.guest, &work_dir)
        .await
        .map_err(|text| SessionError::LiveView { disk: None, text })?;
    log_lines(shared, tasks, &view.lines).await;
    Ok(view)
}

/// Ends the view, if any (its new checkpoints become current only if the point was
/// `committed`), and logs its lines. Returns whether it fell back (it warned or had lines).
pub(crate) async fn end(shared: &Shared, tasks: &[i64], view: Option<LiveBackup>, committed: bool) -> bool {
    let Some(mut view) = view else {
        return false;
    };
    let lines = view.finish(committed).await;
    log_lines(shared, tasks, &lines).await;
    view.warning || !lines.is_empty()
}
