//! The live part of a running QEMU VM's backup: the point-in-time view with
//! its dirty bitmaps (made inside the job's consistency mode), the NBD
//! exports the engine reads, and the teardown.
//!
//! CBT: each restore point remembers, per disk, the checkpoint bitmap that
//! started recording at its view (`qemu-bitmap:NAME` as the disk's source
//! identity). The next backup merges that bitmap into a frozen temporary one
//! at its own view and reads only the dirty extents; the engine checks that
//! the previous point really was read at that checkpoint. A missing bitmap
//! (QEMU ended without saving it: killed, or a raw disk's VM restarted), an
//! inconsistent or a foreign one means every allocated block is read and
//! compared with the previous point by hash, so only what changed is stored,
//! and a new checkpoint starts; the task log warns and names the likely cause.

use cairn_api::spec::Consistency;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_configdb::{Disk, LogLevel};
use cairn_disk::Extent;
use cairn_engine::DiskInput;
use cairn_nbd::{ClientOptions, Endpoint, NbdDisk};
use cairn_qemu::qga::{AgentError, GuestAgent};
use cairn_qemu::qmp::Qmp;
use cairn_qemu::quiesce::{Agent, ConsistencyMode, ConsistencyPolicy};
use cairn_qemu::view::{self, Cbt, DiskRequest, LiveView, ViewRequest};
use cairn_repo::Repository;

use super::{QMP_TIMEOUT, QemuLocation};
use crate::runner::settings::{GuestSettings, VmUnit};
use cairn_mover::human_bytes;

/// Prefix of a source identity that names a checkpoint bitmap.
const BITMAP_ID: &str = "qemu-bitmap:";
/// How long the guest agent may take to answer before the job's fallback applies.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// NBD connections per disk (parallel reads of the view).
const NBD_CONNECTIONS: usize = 2;

/// A line for a task's log.
pub(crate) struct Line {
    /// Disk position in the VM, or `None` for every task of the VM.
    pub(crate) disk: Option<usize>,
    /// Severity.
    pub(crate) level: LogLevel,
    /// The text.
    pub(crate) text: String,
}

impl Line {
    fn all(level: LogLevel, text: impl Into<String>) -> Line {
        Line {
            disk: None,
            level,
            text: text.into(),
        }
    }
}

/// How the engine reads one disk of the view.
#[derive(Clone)]
pub(crate) struct DiskSpec {
    endpoint: Endpoint,
    export: String,
    dirty_context: Option<String>,
    describe: String,
    identity: String,
    since: Option<String>,
}

/// A running VM's view, exported for the engine.
pub(crate) struct LiveBackup {
    qmp: Qmp,
    view: Option<LiveView>,
    /// What the engine reads, in the VM's disk order.
    pub(crate) specs: Vec<DiskSpec>,
    /// The VM's configuration at the view (kept with the restore point).
    pub(crate) vm_config: serde_json::Value,
    /// Lines for the task logs (consistency, freeze time, CBT decisions).
    pub(crate) lines: Vec<Line>,
    /// The consistency fell back (crash-consistent instead of online): the VM ends `warning`.
    pub(crate) warning: bool,
    _dir: tempfile::TempDir,
}

/// What a VM's previous restore point tells its next live backup.
pub(crate) struct Previous {
    /// Whether there is a previous restore point (else this is the VM's first backup into the
    /// repository).
    pub(crate) exists: bool,
    /// The checkpoint bitmap it was read at, per disk position.
    pub(crate) checkpoints: Vec<Option<String>>,
}

/// The previous restore point of `vm` in `repo`, for a VM of `disks` disks.
pub(crate) fn previous_point(repo: &Repository, vm: &str, disks: usize) -> Previous {
    let last = repo.chain(vm).ok().and_then(|c| c.meta().points.last().cloned());
    let sources: Vec<(u32, String)> = last
        .iter()
        .flat_map(|p| p.disks.iter())
        .filter_map(|d| d.source_id.clone().map(|id| (d.disk, id)))
        .collect();
    Previous {
        exists: last.is_some(),
        checkpoints: checkpoints_of(&sources, disks),
    }
}

/// The previous restore point from its source identities `(disk position, identity)` as a
/// repository agent tells them (none: no previous point).
pub(crate) fn previous_of(sources: &[(u32, String)], disks: usize) -> Previous {
    Previous {
        exists: !sources.is_empty(),
        checkpoints: checkpoints_of(sources, disks),
    }
}

/// The checkpoint bitmaps among a restore point's source identities `(disk position, identity)`,
/// per disk position.
fn checkpoints_of(sources: &[(u32, String)], disks: usize) -> Vec<Option<String>> {
    (0..disks)
        .map(|i| {
            sources
                .iter()
                .find(|(d, _)| *d == i as u32)
                .and_then(|(_, id)| id.strip_prefix(BITMAP_ID))
                .map(str::to_string)
        })
        .collect()
}

/// The VM's guest agent at `path`, or why it cannot be used now. QEMU tells first whether another
/// client holds the socket or the agent does not run in the guest (waiting for a reply would only
/// time out); otherwise the agent is asked.
async fn open_agent(qmp: &Qmp, path: &Path) -> Agent {
    match cairn_qemu::channel::agent_channel(qmp, path).await {
        Ok(Some(channel)) => {
            if let Some(problem) = channel.problem(path) {
                return Agent::Unusable(problem);
            }
        }
        // Not a chardev of this VM (a socket given with the host): only the agent can tell.
        Ok(None) => {}
        Err(e) => tracing::debug!("query-chardev on {}: {e}", qmp.path().display()),
    }
    match GuestAgent::connect(path, AGENT_TIMEOUT).await {
        Ok(agent) => Agent::Ready(agent),
        Err(AgentError::Timeout { .. }) => Agent::Unusable(format!(
            "the guest agent on {} did not answer within {} s (another client may hold its socket, or the agent \
             does not run in the guest)",
            path.display(),
            AGENT_TIMEOUT.as_secs()
        )),
        Err(e) => Agent::Unusable(format!("guest agent socket {}: {e}", path.display())),
    }
}

fn policy(guest: &GuestSettings) -> ConsistencyPolicy {
    ConsistencyPolicy {
        mode: match guest.consistency {
            Consistency::Offline => ConsistencyMode::Offline,
            Consistency::Crash => ConsistencyMode::Crash,
            Consistency::Online => ConsistencyMode::Online,
        },
        require_app: guest.require_app,
        pre_freeze: guest.pre_freeze.clone(),
        post_thaw: guest.post_thaw.clone(),
        ..ConsistencyPolicy::default()
    }
}

/// Makes the point-in-time view of `unit`'s VM and exports it; `previous` is the VM's previous
/// restore point ([`previous_point`]: whether there is one, and the checkpoint bitmap each disk
/// was read at). On error nothing of the view is left in QEMU (and the guest is not frozen or
/// paused).
pub(crate) async fn start(
    unit: &VmUnit,
    previous: Previous,
    repository_id: i64,
    guest: &GuestSettings,
    work_dir: &std::path::Path,
) -> Result<LiveBackup, String> {
    let location = QemuLocation::of(&unit.host)?;
    let qmp_path = PathBuf::from(&unit.vm.external_id);
    let qmp = Qmp::connect(&qmp_path, QMP_TIMEOUT)
        .await
        .map_err(|e| format!("VM {}: its QMP socket {}: {e}", unit.vm.name, qmp_path.display()))?;
    let mut lines = Vec::new();
    let prefix = format!("cairn-r{repository_id}-");

    let first_backup = !previous.exists;
    let previous = previous.checkpoints;
    // Leftovers of a backup that ended abnormally (the server was killed) go first.
    let keep: Vec<String> = previous.iter().flatten().cloned().collect();
    match view::cleanup_leftovers(&qmp, &keep).await {
        Ok(removed) if !removed.is_empty() => lines.push(Line::all(
            LogLevel::Warning,
            format!(
                "removed leftovers of an earlier backup that did not end: {}",
                removed.join(", ")
            ),
        )),
        Ok(_) => {}
        Err(e) => {
            return Err(format!(
                "VM {}: cleaning leftovers of earlier backups: {e}",
                unit.vm.name
            ));
        }
    }

    let live_disks = cairn_qemu::disks::list_disks(&qmp)
        .await
        .map_err(|e| format!("VM {}: listing its disks: {e}", unit.vm.name))?;
    let stamp = jiff::Timestamp::now().as_millisecond();
    let mut requests = Vec::new();
    for (i, disk) in unit.disks.iter().enumerate() {
        let live = live_disks.iter().find(|d| d.device == disk.key).ok_or_else(|| {
            format!(
                "VM {}: disk {} is not attached to the running VM any more (rescan the host)",
                unit.vm.name, disk.key
            )
        })?;
        // Checkpoints of this repository other than the one in use are stale (a backup whose
        // teardown never ran): they would only cost the guest writes.
        for b in live.bitmaps.iter().filter(|b| b.name.starts_with(&prefix)) {
            if previous[i].as_deref() != Some(b.name.as_str()) {
                let _ = qmp.bitmap_remove(&live.node, &b.name).await;
                lines.push(Line {
                    disk: Some(i),
                    level: LogLevel::Info,
                    text: format!("removed stale checkpoint bitmap {} of disk {}", b.name, disk.key),
                });
            }
        }
        requests.push(DiskRequest {
            node: live.node.clone(),
            since: previous[i].clone(),
            next: format!("{prefix}{stamp}-{i}"),
            persistent: live.format == "qcow2",
        });
        if live.format != "qcow2" {
            lines.push(Line {
                disk: Some(i),
                level: LogLevel::Info,
                text: format!(
                    "disk {} is {}: its changed block tracking cannot survive a restart of the VM (only qcow2 \
                     stores dirty bitmaps)",
                    disk.key, live.format
                ),
            });
        }
    }

    let vm_config = cairn_qemu::config::read_config(&qmp)
        .await
        .map_err(|e| format!("VM {}: reading its configuration: {e}", unit.vm.name))?;
    let vm_config = serde_json::to_value(&vm_config).unwrap_or(serde_json::Value::Null);

    let dir = tempfile::Builder::new()
        .prefix("view-")
        .tempdir_in(work_dir)
        .map_err(|e| format!("creating a work folder in {}: {e}", work_dir.display()))?;
    let request = ViewRequest {
        disks: requests.clone(),
        scratch_dir: dir.path().to_path_buf(),
        socket: dir.path().join("nbd.sock"),
    };
    let agent = match location.agent_for(&qmp_path) {
        Some(path) if guest.consistency != Consistency::Crash => open_agent(&qmp, &path).await,
        Some(_) => Agent::Missing,
        None => Agent::Unusable(format!(
            "the VM has no guest agent socket ({} beside its QMP socket, or the host's --qga)",
            qmp_path.with_extension("qga").display()
        )),
    };
    let prepared = view::prepare(&qmp, &request)
        .await
        .map_err(|e| format!("VM {}: preparing the point-in-time view: {e}", unit.vm.name))?;
    let (live_view, report) = cairn_qemu::quiesce::snapshot_with(&qmp, &agent, &policy(guest), prepared)
        .await
        .map_err(|e| format!("VM {}: {e}", unit.vm.name))?;
    // Pausing an `offline` job's VM when the guest cannot be frozen is what the job asks for:
    // worth a line, not a warning.
    let expected = guest.consistency == Consistency::Offline && report.achieved == ConsistencyMode::Offline;
    for text in &report.log {
        if !report.warnings.iter().any(|w| text.ends_with(w.as_str())) {
            lines.push(Line::all(LogLevel::Info, text.clone()));
        }
    }
    let level = if expected { LogLevel::Info } else { LogLevel::Warning };
    for text in &report.warnings {
        lines.push(Line::all(level, text.clone()));
    }
    let warning = !expected && !report.warnings.is_empty();
    let mut backup = LiveBackup {
        qmp,
        view: Some(live_view),
        specs: Vec::new(),
        vm_config,
        lines,
        warning,
        _dir: dir,
    };
    if let Err(e) = backup.export(unit, &requests, first_backup).await {
        backup.finish(false).await;
        return Err(e);
    }
    Ok(backup)
}

impl LiveBackup {
    async fn export(&mut self, unit: &VmUnit, requests: &[DiskRequest], first_backup: bool) -> Result<(), String> {
        let Some(view) = self.view.as_mut() else {
            return Err("the view is gone".into());
        };
        view.export(&self.qmp)
            .await
            .map_err(|e| format!("VM {}: exporting the point-in-time view over NBD: {e}", unit.vm.name))?;
        let socket = view.socket().to_path_buf();
        for (i, (disk, vd)) in unit.disks.iter().zip(view.disks()).enumerate() {
            let request = &requests[i];
            let since = match &vd.cbt {
                Cbt::Incremental { .. } => {
                    self.lines.push(Line {
                        disk: Some(i),
                        level: LogLevel::Info,
                        text: format!(
                            "changed block tracking: dirty bitmap {} of disk {} covers every write since the \
                             previous restore point; only its dirty extents are read",
                            request.since.as_deref().unwrap_or("?"),
                            disk.key
                        ),
                    });
                    request.since.clone()
                }
                Cbt::Full { reason } => {
                    self.lines
                        .push(full_read_line(i, &disk.key, reason, request, first_backup));
                    None
                }
            };
            self.specs.push(DiskSpec {
                endpoint: Endpoint::Unix(socket.clone()),
                export: vd.export.clone(),
                dirty_context: since.as_ref().and(vd.dirty_context.clone()),
                describe: format!("{} disk {} (point-in-time view)", unit.repo_name(), disk.key),
                identity: format!("{BITMAP_ID}{}", request.next),
                since: since.map(|s| format!("{BITMAP_ID}{s}")),
            });
        }
        Ok(())
    }

    /// Ends the view: on success the new checkpoints become current; otherwise the previous ones
    /// stay (they kept recording). Returns lines for the log (teardown problems).
    pub(crate) async fn finish(&mut self, success: bool) -> Vec<Line> {
        let Some(mut view) = self.view.take() else {
            return Vec::new();
        };
        match view.finish(&self.qmp, success).await {
            Ok(()) => Vec::new(),
            Err(e) => vec![Line::all(
                LogLevel::Warning,
                format!("tearing down the point-in-time view: {e}"),
            )],
        }
    }
}

/// The log line of a disk read whole: its first backup, a previous point without a checkpoint,
/// or changed block tracking lost (a warning naming why: QEMU killed, a raw disk restarted…).
fn full_read_line(disk: usize, key: &str, reason: &str, request: &DiskRequest, first_backup: bool) -> Line {
    let (level, text) = if first_backup {
        (
            LogLevel::Info,
            format!(
                "first backup of disk {key}: every allocated block is read; checkpoint bitmap {} starts now for \
                 the changed block tracking of the next backup",
                request.next
            ),
        )
    } else if request.since.is_some() {
        (
            LogLevel::Warning,
            format!(
                "changed block tracking of disk {key} is lost ({reason}): every allocated block is read and \
                 compared with the previous restore point, so only changed blocks are stored; checkpoint bitmap \
                 {} starts now",
                request.next
            ),
        )
    } else {
        (
            LogLevel::Info,
            format!(
                "no changed block tracking for disk {key} (the previous restore point was not read at a checkpoint \
                 bitmap): every allocated block is read and compared with the previous restore point; checkpoint \
                 bitmap {} starts now",
                request.next
            ),
        )
    };
    Line {
        disk: Some(disk),
        level,
        text,
    }
}

/// Opens the engine's inputs for a live view (on a blocking thread), logging what CBT gives.
pub(crate) fn open_inputs(
    specs: &[DiskSpec],
    disks: &[Disk],
    log: &dyn Fn(usize, &str),
) -> Result<Vec<DiskInput>, (usize, String)> {
    let mut inputs = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let mut contexts = vec!["base:allocation".to_string()];
        contexts.extend(spec.dirty_context.iter().cloned());
        let disk = NbdDisk::open(
            spec.endpoint.clone(),
            ClientOptions {
                export: spec.export.clone(),
                meta_contexts: contexts,
                timeout: Some(Duration::from_secs(120)),
            },
            NBD_CONNECTIONS,
            spec.describe.clone(),
            Some(spec.identity.clone()),
        )
        .map_err(|e| (i, format!("reading the view of disk {}: {e}", disks[i].key)))?;
        let changed: Option<Vec<Extent>> = match &spec.dirty_context {
            Some(ctx) => {
                let extents = disk
                    .dirty_extents(ctx)
                    .map_err(|e| (i, format!("reading the dirty bitmap of disk {}: {e}", disks[i].key)))?;
                let bytes: u64 = extents.iter().map(|e| e.length).sum();
                log(
                    i,
                    &format!(
                        "{} dirty extents ({}) of {} since the previous restore point",
                        extents.len(),
                        human_bytes(bytes),
                        human_bytes(cairn_disk::DiskSource::virtual_size(&disk))
                    ),
                );
                Some(extents)
            }
            None => None,
        };
        inputs.push(DiskInput {
            source: Box::new(disk),
            changed,
            changed_since: spec.since.clone(),
        });
    }
    Ok(inputs)
}
