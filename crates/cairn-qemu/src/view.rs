//! A point-in-time view of a running VM's disks, exported over NBD, with changed
//! block tracking (CBT) through checkpoint bitmaps.
//!
//! The runner calls, per VM:
//! 1. [`prepare`]: checks each disk's `since` checkpoint bitmap (missing, inconsistent or
//!    not recording → [`Cbt::Full`]; an inconsistent one is removed), creates a scratch
//!    qcow2 file per disk (no backing in the file) and attaches it as node
//!    `cairn-scratch-<n>` whose backing is the live node. Nothing the guest sees changes.
//! 2. [`PreparedView::commit`]: ONE `transaction` — for incremental disks a disabled
//!    temporary bitmap `cairn-tmp-<n>` gets a copy of `since` (merge), the `next`
//!    checkpoint bitmap is added, and `blockdev-backup sync=none` (job `cairn-fleece-<n>`,
//!    filter node `cairn-cbw-<n>`) starts copying the old data of every cluster the guest
//!    overwrites into the scratch node. The scratch node now reads as the disk at that
//!    instant. This is the only step that must run while the guest is frozen or paused.
//! 3. [`LiveView::export`]: an NBD server on the Unix socket and one read-only export
//!    `cairn-<n>` per disk (node `cairn-scratch-<n>`), incremental ones with the meta
//!    context `qemu:dirty-bitmap:cairn-tmp-<n>`.
//! 4. [`LiveView::finish`]: removes the exports, the NBD server, the jobs, the scratch nodes
//!    and files and the temporary bitmaps; on success also the `since` bitmaps (`next` is
//!    now the checkpoint), on failure the `next` bitmaps.
//!
//! The `since` bitmaps stay enabled throughout: if the backup fails, they still cover
//! every write since the previous restore point, so the next attempt loses nothing.
//! (Disabling them inside the transaction, as QEMU's docs do, would need re-enabling
//! on failure — and a crash before that would lose writes.)
//!
//! Dropping a [`LiveView`] or [`PreparedView`] without `finish`/`abort` leaves
//! everything in QEMU (as a crash of cairn would); [`cleanup_leftovers`] removes it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::disks::{bitmaps_by_node, find_disk, list_disks};
use crate::qmp::Qmp;
use crate::{Error, Result, io_err};

mod teardown;

use teardown::{cancel_jobs, remove_exports, remove_scratch};

/// Prefix of every QEMU object a view creates.
pub const PREFIX: &str = "cairn-";
/// Prefix of temporary bitmaps (`cairn-tmp-<n>`).
pub const TEMP_BITMAP_PREFIX: &str = "cairn-tmp-";
/// Prefix of scratch nodes (`cairn-scratch-<n>`) and scratch files (`cairn-scratch-*.qcow2`).
pub const SCRATCH_PREFIX: &str = "cairn-scratch-";
/// How long teardown waits for exports and jobs to go away.
const TEARDOWN_WAIT: Duration = Duration::from_secs(60);

/// One disk to put into the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRequest {
    /// The disk's format node (a device id or drive name is accepted too).
    pub node: String,
    /// The checkpoint bitmap of the previous restore point (`None`: first backup).
    pub since: Option<String>,
    /// The checkpoint bitmap to create for this restore point.
    pub next: String,
    /// Store `next` in the image (qcow2 only; other formats get a transient bitmap and a warning).
    pub persistent: bool,
}

/// What to put into a view and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRequest {
    /// The disks, in export order (`cairn-0`, `cairn-1`, ...).
    pub disks: Vec<DiskRequest>,
    /// Where the scratch qcow2 files go (must be writable by QEMU; needs room for the
    /// data the guest overwrites while the view exists).
    pub scratch_dir: PathBuf,
    /// The NBD server's Unix socket path.
    pub socket: PathBuf,
}

/// Whether a disk's view can be read incrementally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Cbt {
    /// Only the extents dirty in the export's bitmap context changed since `since`.
    Incremental {
        /// The checkpoint bitmap the view was compared with.
        since: String,
    },
    /// Read the whole disk.
    Full {
        /// Why (for the session log).
        reason: String,
    },
}

impl Cbt {
    /// True for [`Cbt::Incremental`].
    pub fn is_incremental(&self) -> bool {
        matches!(self, Cbt::Incremental { .. })
    }
}

/// One disk of a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDisk {
    /// Position in the request (the `<n>` of the names below).
    pub index: usize,
    /// The live format node.
    pub node: String,
    /// The guest device id.
    pub device: String,
    /// Disk size in bytes.
    pub size: u64,
    /// NBD export name (`cairn-<n>`).
    pub export: String,
    /// `qemu:dirty-bitmap:cairn-tmp-<n>` for incremental disks.
    pub dirty_context: Option<String>,
    /// Incremental or full, and why.
    pub cbt: Cbt,
    /// The checkpoint bitmap of the previous restore point, as requested.
    pub since: Option<String>,
    /// The checkpoint bitmap created at the view's instant.
    pub next: String,
    /// Whether `next` is stored in the image.
    pub persistent: bool,
    /// The scratch node (`cairn-scratch-<n>`).
    pub scratch_node: String,
    /// The scratch file.
    pub scratch_file: PathBuf,
    /// The block job (`cairn-fleece-<n>`).
    pub job: String,
    /// The temporary bitmap (`cairn-tmp-<n>`) for incremental disks.
    pub temp_bitmap: Option<String>,
    #[serde(default)]
    since_granularity: Option<u64>,
}

/// A view whose scratch nodes exist but whose instant is not yet taken.
#[derive(Debug)]
#[must_use = "commit or abort a prepared view; dropping it leaves scratch nodes in QEMU"]
pub struct PreparedView {
    disks: Vec<ViewDisk>,
    socket: PathBuf,
    warnings: Vec<String>,
}

/// A taken view: the instant is fixed, the guest runs on.
#[derive(Debug)]
#[must_use = "finish a live view; dropping it leaves jobs, nodes and bitmaps in QEMU"]
pub struct LiveView {
    disks: Vec<ViewDisk>,
    socket: PathBuf,
    warnings: Vec<String>,
    server_started: bool,
    /// The outcome the first `finish` call chose (decides which bitmaps go).
    outcome: Option<bool>,
    finished: bool,
}

static SCRATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

fn scratch_file_name(index: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{SCRATCH_PREFIX}{}-{nanos:x}-{n}-{index}.qcow2", std::process::id())
}

/// Checks the request against the VM, removes inconsistent `since` bitmaps, and creates
/// and attaches the scratch nodes. On error nothing is left behind.
pub async fn prepare(qmp: &Qmp, request: &ViewRequest) -> Result<PreparedView> {
    if request.disks.is_empty() {
        return Err(Error::Invalid("view request without disks".into()));
    }
    let live = list_disks(qmp).await?;
    let mut seen = HashSet::new();
    let mut warnings = Vec::new();
    let mut disks = Vec::new();
    for (index, req) in request.disks.iter().enumerate() {
        let disk = find_disk(&live, &req.node)
            .ok_or_else(|| Error::Invalid(format!("the VM has no disk with node or device {:?}", req.node)))?;
        if !seen.insert(disk.node.clone()) {
            return Err(Error::Invalid(format!(
                "disk {} ({}) is requested twice",
                disk.device, disk.node
            )));
        }
        if req.next.is_empty() || req.next.starts_with(TEMP_BITMAP_PREFIX) {
            return Err(Error::Invalid(format!("invalid checkpoint bitmap name {:?}", req.next)));
        }
        if req.since.as_deref() == Some(req.next.as_str()) {
            return Err(Error::Invalid(format!(
                "disk {}: since and next are both {:?}",
                disk.device, req.next
            )));
        }
        let mut since_granularity = None;
        let cbt = match &req.since {
            None => Cbt::Full {
                reason: "no previous checkpoint".into(),
            },
            Some(since) => match disk.bitmap(since) {
                None => Cbt::Full {
                    reason: missing_reason(since, &disk.device, &disk.format),
                },
                Some(b) if b.inconsistent => {
                    qmp.bitmap_remove(&disk.node, since).await?;
                    Cbt::Full {
                        reason: format!(
                            "checkpoint bitmap {since} on {} is inconsistent: QEMU ended without saving it (killed, \
                             or the host crashed) after loading it from the image; removed it",
                            disk.device
                        ),
                    }
                }
                Some(b) if !b.recording => Cbt::Full {
                    reason: format!("checkpoint bitmap {since} on {} is not recording", disk.device),
                },
                Some(b) => {
                    since_granularity = Some(b.granularity);
                    Cbt::Incremental { since: since.clone() }
                }
            },
        };
        if disk.bitmap(&req.next).is_some() {
            // A leftover of an attempt that never finished: it is no checkpoint of any restore point.
            qmp.bitmap_remove(&disk.node, &req.next).await?;
            warnings.push(format!("removed a leftover bitmap {} from {}", req.next, disk.device));
        }
        let persistent = req.persistent && disk.format == "qcow2";
        if req.persistent && !persistent {
            warnings.push(format!(
                "{} is {}, not qcow2: checkpoint bitmap {} is not persistent (a QEMU restart loses it; \
                 the next backup then reads everything)",
                disk.device, disk.format, req.next
            ));
        }
        let incremental = cbt.is_incremental();
        disks.push(ViewDisk {
            index,
            node: disk.node.clone(),
            device: disk.device.clone(),
            size: disk.virtual_size,
            export: format!("{PREFIX}{index}"),
            dirty_context: incremental.then(|| format!("qemu:dirty-bitmap:{TEMP_BITMAP_PREFIX}{index}")),
            cbt,
            since: req.since.clone(),
            next: req.next.clone(),
            persistent,
            scratch_node: format!("{SCRATCH_PREFIX}{index}"),
            scratch_file: request.scratch_dir.join(scratch_file_name(index)),
            job: format!("{PREFIX}fleece-{index}"),
            temp_bitmap: incremental.then(|| format!("{TEMP_BITMAP_PREFIX}{index}")),
            since_granularity,
        });
    }
    check_no_leftovers(qmp, &disks).await?;
    let prepared = PreparedView {
        disks,
        socket: request.socket.clone(),
        warnings,
    };
    if let Err(e) = prepared.attach_scratch(qmp).await {
        let _ = remove_scratch(qmp, &prepared.disks).await;
        return Err(e);
    }
    Ok(prepared)
}

/// Fails when objects with the names this view needs already exist (an earlier view was
/// not finished: call [`cleanup_leftovers`]).
async fn check_no_leftovers(qmp: &Qmp, disks: &[ViewDisk]) -> Result<()> {
    let nodes: Vec<Value> = qmp.execute_as("query-named-block-nodes", Value::Null).await?;
    let jobs = qmp.query_block_jobs().await?;
    let exports = qmp.query_block_exports().await?;
    let bitmaps = bitmaps_by_node(qmp).await?;
    let mut found = Vec::new();
    for d in disks {
        if nodes.iter().any(|n| n["node-name"] == d.scratch_node.as_str()) {
            found.push(format!("node {}", d.scratch_node));
        }
        if jobs.iter().any(|j| j.device == d.job) {
            found.push(format!("job {}", d.job));
        }
        if exports.iter().any(|e| e.id == d.export) {
            found.push(format!("export {}", d.export));
        }
        if let Some(tmp) = &d.temp_bitmap
            && bitmaps
                .get(&d.node)
                .is_some_and(|list| list.iter().any(|b| &b.name == tmp))
        {
            found.push(format!("bitmap {tmp}"));
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "an earlier view was not torn down ({}): run cleanup_leftovers first",
            found.join(", ")
        )))
    }
}

impl PreparedView {
    /// The disks, in request order.
    pub fn disks(&self) -> &[ViewDisk] {
        &self.disks
    }

    /// Things the caller should log (non-persistent bitmaps, removed leftovers).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    async fn attach_scratch(&self, qmp: &Qmp) -> Result<()> {
        for d in &self.disks {
            create_scratch_file(&d.scratch_file, d.size).await?;
            qmp.blockdev_add(json!({
                "driver": "qcow2",
                "node-name": d.scratch_node,
                "file": {
                    "driver": "file",
                    "filename": d.scratch_file.to_string_lossy(),
                    "node-name": format!("{}-file", d.scratch_node),
                },
                "backing": d.node,
                "read-only": false,
            }))
            .await?;
        }
        Ok(())
    }

    /// Detaches and deletes the scratch nodes without taking the view.
    pub async fn abort(self, qmp: &Qmp) -> Result<()> {
        let errors = remove_scratch(qmp, &self.disks).await;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown(errors))
        }
    }

    /// The `transaction` actions of the view's instant.
    fn actions(&self) -> Vec<Value> {
        let mut actions = Vec::new();
        for d in &self.disks {
            if let (Some(tmp), Cbt::Incremental { since }) = (&d.temp_bitmap, &d.cbt) {
                let mut add = json!({ "node": d.node, "name": tmp, "persistent": false, "disabled": true });
                if let Some(g) = d.since_granularity {
                    add["granularity"] = json!(g);
                }
                actions.push(json!({ "type": "block-dirty-bitmap-add", "data": add }));
                actions.push(json!({
                    "type": "block-dirty-bitmap-merge",
                    "data": { "node": d.node, "target": tmp, "bitmaps": [since] },
                }));
            }
            actions.push(json!({
                "type": "block-dirty-bitmap-add",
                "data": { "node": d.node, "name": d.next, "persistent": d.persistent, "disabled": false },
            }));
            actions.push(json!({
                "type": "blockdev-backup",
                "data": {
                    "job-id": d.job,
                    "device": d.node,
                    "target": d.scratch_node,
                    "sync": "none",
                    "filter-node-name": format!("{PREFIX}cbw-{}", d.index),
                },
            }));
        }
        actions
    }

    /// Takes the view's instant: one `transaction` (temporary bitmaps, `next` bitmaps,
    /// copy-before-write jobs). The only step to run while the guest is frozen or paused.
    /// On error the scratch nodes are removed and nothing else changed.
    pub async fn commit(self, qmp: &Qmp) -> Result<LiveView> {
        if let Err(e) = qmp.transaction(self.actions()).await {
            let errors = remove_scratch(qmp, &self.disks).await;
            if !errors.is_empty() {
                let errors = errors.join("; ");
                tracing::warn!(target: "cairn_qemu::view", "removing scratch nodes after a failed commit: {errors}");
            }
            return Err(e.into());
        }
        Ok(LiveView {
            disks: self.disks,
            socket: self.socket,
            warnings: self.warnings,
            server_started: false,
            outcome: None,
            finished: false,
        })
    }
}

impl LiveView {
    /// The disks, in request order.
    pub fn disks(&self) -> &[ViewDisk] {
        &self.disks
    }

    /// The NBD server's Unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Things the caller should log.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// True once [`LiveView::finish`] completed without problems.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The NBD URI of a disk's export (`nbd+unix:///cairn-0?socket=…`).
    pub fn uri(&self, disk: &ViewDisk) -> String {
        format!("nbd+unix:///{}?socket={}", disk.export, self.socket.display())
    }

    /// Starts the NBD server on the socket and adds a read-only export per disk. On error
    /// the view stays as it is: call [`LiveView::finish`] with `success = false`.
    pub async fn export(&mut self, qmp: &Qmp) -> Result<()> {
        if !self.server_started {
            qmp.nbd_server_start_unix(&self.socket).await?;
            self.server_started = true;
        }
        let existing = qmp.query_block_exports().await?;
        for d in &self.disks {
            if existing
                .iter()
                .any(|e| e.id == d.export && e.node_name == d.scratch_node)
            {
                continue;
            }
            let mut args = json!({
                "type": "nbd",
                "id": d.export,
                "node-name": d.scratch_node,
                "name": d.export,
                "writable": false,
                "description": format!("cairn point-in-time view of {}", d.device),
            });
            if let Some(tmp) = &d.temp_bitmap {
                args["bitmaps"] = json!([tmp]);
            }
            qmp.execute("block-export-add", args).await?;
        }
        Ok(())
    }

    /// Tears the view down: exports, NBD server, jobs, scratch nodes and files, temporary
    /// bitmaps; with `success` the `since` bitmaps (`next` is the new checkpoint), without
    /// it the `next` bitmaps (`since` kept recording, so nothing is lost). Every step is
    /// attempted; the problems are returned together. Calling it again retries what is
    /// left; the first call's `success` decides which bitmaps go.
    pub async fn finish(&mut self, qmp: &Qmp, success: bool) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        let success = *self.outcome.get_or_insert(success);
        let mut errors = Vec::new();
        let exports: Vec<String> = self.disks.iter().map(|d| d.export.clone()).collect();
        if let Err(e) = remove_exports(qmp, &exports).await {
            errors.push(e);
        }
        if self.server_started {
            match qmp.nbd_server_stop().await {
                Ok(()) => self.server_started = false,
                Err(e) => errors.push(e.to_string()),
            }
        }
        let jobs: Vec<String> = self.disks.iter().map(|d| d.job.clone()).collect();
        if let Err(e) = cancel_jobs(qmp, &jobs).await {
            errors.push(e);
        }
        errors.extend(remove_scratch(qmp, &self.disks).await);
        match bitmaps_by_node(qmp).await {
            Ok(bitmaps) => {
                for d in &self.disks {
                    let has = |name: &str| bitmaps.get(&d.node).is_some_and(|l| l.iter().any(|b| b.name == name));
                    let mut remove = Vec::new();
                    if let Some(tmp) = &d.temp_bitmap {
                        remove.push(tmp.clone());
                    }
                    if success {
                        remove.extend(d.since.clone());
                    } else {
                        remove.push(d.next.clone());
                    }
                    for name in remove.into_iter().filter(|n| has(n)) {
                        if let Err(e) = qmp.bitmap_remove(&d.node, &name).await {
                            errors.push(e.to_string());
                        }
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        if errors.is_empty() {
            self.finished = true;
            Ok(())
        } else {
            Err(Error::Teardown(errors))
        }
    }
}

async fn create_scratch_file(path: &Path, size: u64) -> Result<()> {
    let output = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size.to_string())
        .output()
        .await
        .map_err(io_err(format!(
            "running qemu-img create for scratch file {}",
            path.display()
        )))?;
    if !output.status.success() {
        return Err(Error::Io {
            context: format!("creating scratch file {}", path.display()),
            source: std::io::Error::other(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        });
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            context: format!("removing scratch file {}", path.display()),
            source: e,
        }),
    }
}

/// Why checkpoint bitmap `since` of a disk is gone. A persistent bitmap reaches its qcow2
/// image only when QEMU closes the image cleanly, so after `kill -9` (or a host crash) one
/// created since QEMU started is simply missing; a bitmap of another format never reaches an
/// image, so any restart of QEMU loses it.
fn missing_reason(since: &str, device: &str, format: &str) -> String {
    if format == "qcow2" {
        format!(
            "checkpoint bitmap {since} is missing on {device}: QEMU most likely ended without saving its \
             persistent bitmaps (it was killed, or the host crashed); else it was removed, or the VM runs from \
             other images"
        )
    } else {
        format!(
            "checkpoint bitmap {since} is missing on {device}: the disk is {format}, whose bitmaps live only in \
             QEMU's memory, and QEMU was restarted since the previous backup"
        )
    }
}

/// After a crash of cairn: removes every `cairn-*` export, `cairn-*` block job, scratch
/// node (`cairn-scratch-*`, with its file when named `cairn-scratch-*.qcow2`) and temporary
/// bitmap (`cairn-tmp-*`) whose name is not in `keep`, and stops the NBD server when no
/// export is left on it. Checkpoint bitmaps are not touched. Returns what it removed.
pub async fn cleanup_leftovers(qmp: &Qmp, keep: &[String]) -> Result<Vec<String>> {
    let kept = |name: &str| keep.iter().any(|k| k == name);
    let mut removed = Vec::new();
    let mut errors = Vec::new();

    let exports = qmp.query_block_exports().await?;
    let ours: Vec<String> = exports
        .iter()
        .filter(|e| e.id.starts_with(PREFIX) && !kept(&e.id))
        .map(|e| e.id.clone())
        .collect();
    match remove_exports(qmp, &ours).await {
        Ok(()) => removed.extend(ours.iter().map(|id| format!("export {id}"))),
        Err(e) => errors.push(e),
    }
    if qmp.query_block_exports().await?.is_empty() && qmp.nbd_server_stop().await.is_ok() {
        removed.push("NBD server".to_owned());
    }

    let jobs = qmp.query_block_jobs().await?;
    let ours: Vec<String> = jobs
        .iter()
        .filter(|j| j.device.starts_with(PREFIX) && !kept(&j.device))
        .map(|j| j.device.clone())
        .collect();
    match cancel_jobs(qmp, &ours).await {
        Ok(()) => removed.extend(ours.iter().map(|id| format!("job {id}"))),
        Err(e) => errors.push(e),
    }

    let nodes: Vec<Value> = qmp.execute_as("query-named-block-nodes", Value::Null).await?;
    let name_of = |n: &Value| n["node-name"].as_str().unwrap_or("").to_owned();
    let scratch: Vec<String> = nodes
        .iter()
        .map(name_of)
        .filter(|n| n.starts_with(SCRATCH_PREFIX) && !n.ends_with("-file") && !kept(n))
        .collect();
    for node in &scratch {
        let file_node = format!("{node}-file");
        let file = nodes
            .iter()
            .find(|n| n["node-name"] == file_node.as_str())
            .and_then(|n| n["file"].as_str())
            .map(PathBuf::from);
        match qmp.blockdev_del(node).await {
            Ok(()) => removed.push(format!("node {node}")),
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        }
        if let Some(file) = file
            && file
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(SCRATCH_PREFIX) && f.ends_with(".qcow2"))
        {
            match remove_file(&file) {
                Ok(()) => removed.push(format!("file {}", file.display())),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }

    for (node, bitmaps) in bitmaps_by_node(qmp).await? {
        for b in bitmaps
            .iter()
            .filter(|b| b.name.starts_with(TEMP_BITMAP_PREFIX) && !kept(&b.name))
        {
            match qmp.bitmap_remove(&node, &b.name).await {
                Ok(()) => removed.push(format!("bitmap {} on {node}", b.name)),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    if errors.is_empty() {
        if !removed.is_empty() {
            tracing::info!(target: "cairn_qemu::view", "removed leftovers: {}", removed.join(", "));
        }
        Ok(removed)
    } else {
        Err(Error::Teardown(errors))
    }
}
