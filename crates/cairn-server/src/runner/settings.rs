//! A job's settings as a session uses them, parsed once when it starts, and the VMs it backs up.

use cairn_configdb::{Disk, Host, Job, Vm};
use cairn_format::codec::Compression;
use cairn_repo::Method;
use cairn_schedule::{BackupWindow, RetryPolicy};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::error::RunError;

/// Parses a job's backup-window text (`always`, `never`, or `DAYS HH:MM-HH:MM … [tz ZONE]`).
/// The same as `text.parse::<BackupWindow>()`, with the error as a message for the API.
pub fn parse_window(text: &str) -> Result<BackupWindow, String> {
    text.parse::<BackupWindow>()
        .map_err(|e| format!("backup window {text:?}: {e}"))
}

/// A forward-incremental job makes a (synthetic) full every this many points.
pub(crate) const FORWARD_FULL_EVERY: u32 = 7;

/// A job's settings, parsed once when its session starts.
pub(crate) struct JobSettings {
    pub(crate) compression: Compression,
    pub(crate) method: Method,
    pub(crate) block_size: u32,
    pub(crate) retention: usize,
    pub(crate) window: Option<BackupWindow>,
    pub(crate) retry: RetryPolicy,
    /// How running VMs are quiesced (qemu hosts).
    pub(crate) guest: GuestSettings,
}

/// A job's guest processing settings, for VMs of qemu hosts.
#[derive(Clone, Debug)]
pub(crate) struct GuestSettings {
    /// `online`, `offline` or `crash`.
    pub(crate) consistency: cairn_api::spec::Consistency,
    /// Fail instead of falling back when the guest cannot be frozen.
    pub(crate) require_app: bool,
    /// Guest command before the freeze.
    pub(crate) pre_freeze: Option<String>,
    /// Guest command after the thaw.
    pub(crate) post_thaw: Option<String>,
}

impl JobSettings {
    /// Parses `job`'s settings; [`RunError::Invalid`] names what is wrong, including a backup
    /// window that is closed at `now`.
    pub(crate) fn parse(job: &Job, now: Timestamp, tz: &TimeZone) -> Result<JobSettings, RunError> {
        let name = &job.spec.name;
        let invalid = |what: String| RunError::Invalid(format!("job {name}: {what}"));
        if job.spec.vm_ids.is_empty() {
            return Err(invalid("it has no VMs to back up".into()));
        }
        let compression = job.spec.compression;
        let method = match job.spec.method {
            cairn_api::spec::Method::ForeverForward => Method::ForeverForward,
            cairn_api::spec::Method::Forward => Method::Forward,
        };
        let retention = job.spec.retention_points.points() as usize;
        let window = match &job.spec.backup_window {
            None => None,
            Some(text) => {
                let window = parse_window(text).map_err(invalid)?;
                if !window.is_open_in(now, tz) {
                    let opens = window
                        .opens_at_in(now, tz)
                        .map_or_else(|| "it never opens".to_string(), |t| format!("it opens at {t}"));
                    return Err(invalid(format!(
                        "it may not run now: its backup window ({text}) is closed; {opens}"
                    )));
                }
                Some(window)
            }
        };
        let retry = RetryPolicy {
            attempts: u32::try_from(job.spec.retries.max(0)).unwrap_or(u32::MAX),
            delay: SignedDuration::from_secs(job.spec.retry_wait_seconds.max(0)),
        };
        Ok(JobSettings {
            compression,
            method,
            block_size: job.spec.block_size.bytes(),
            retention,
            window,
            retry,
            guest: GuestSettings {
                consistency: job.spec.consistency,
                require_app: job.spec.require_app_consistency,
                pre_freeze: job.spec.pre_freeze_script.clone(),
                post_thaw: job.spec.post_thaw_script.clone(),
            },
        })
    }
}

/// A VM of the session with the disks to back up.
#[derive(Clone)]
pub(crate) struct VmUnit {
    pub(crate) vm: Vm,
    pub(crate) host: Host,
    pub(crate) disks: Vec<Disk>,
    /// Why the VM cannot be backed up: the disk at fault (if one) and the reason.
    pub(crate) problem: Option<(Option<usize>, String)>,
}

impl VmUnit {
    /// The VM's name in the repository and in task rows: `<host>/<vm>`, so same-named VMs of
    /// two hosts do not share a chain.
    pub(crate) fn repo_name(&self) -> String {
        format!("{}/{}", self.host.name, self.vm.name)
    }
}
