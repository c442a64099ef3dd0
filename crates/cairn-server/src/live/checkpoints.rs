//! cairn's checkpoint bitmaps on VMs it no longer backs up.
//!
//! A live backup leaves one persistent checkpoint bitmap per disk (`cairn-r<repository>-…`,
//! see [`super::backup`]) that records every guest write until the next backup. When no job
//! backs the VM up into that repository any more — the job was removed or edited, or the VM's
//! host was removed — the bitmap would record (and cost the guest) forever, and survive in the
//! qcow2 image. [`tidy`] removes them when jobs change and [`forget_host`] when a host goes;
//! both log what they could not reach instead of failing the change. `POST
//! /api/v1/vms/{id}/forget-checkpoints` removes every cairn bitmap of one VM by hand.

use std::collections::BTreeSet;
use std::path::PathBuf;

use cairn_configdb::{ConfigDb, Host, HostKind, Vm};
use cairn_qemu::disks::RemovedBitmap;
use cairn_qemu::qmp::Qmp;

use super::QMP_TIMEOUT;

/// Prefix of every bitmap cairn makes (checkpoints and temporary ones).
pub const BITMAP_PREFIX: &str = cairn_qemu::view::PREFIX;

/// The repository a checkpoint bitmap belongs to (`cairn-r<id>-…`), or `None` for other names.
pub fn checkpoint_repository(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("cairn-r")?;
    let (id, _) = rest.split_once('-')?;
    id.parse().ok()
}

/// Whether `name` is a bitmap of cairn's that a VM backed up into the repositories `keep` no
/// longer needs: with no repository left, every `cairn-` bitmap; otherwise the checkpoints of
/// other repositories (temporary bitmaps belong to a backup that may be running).
pub fn unneeded(name: &str, keep: &BTreeSet<i64>) -> bool {
    if keep.is_empty() {
        return name.starts_with(BITMAP_PREFIX);
    }
    checkpoint_repository(name).is_some_and(|repo| !keep.contains(&repo))
}

/// Removes from the VM whose QMP socket is `qmp` the bitmaps of cairn's that backups into
/// `keep` do not need. Errors name the VM and the cause.
pub async fn remove_unneeded(
    vm: &str,
    qmp: &std::path::Path,
    keep: &BTreeSet<i64>,
) -> Result<Vec<RemovedBitmap>, String> {
    let client = Qmp::connect(qmp, QMP_TIMEOUT)
        .await
        .map_err(|e| format!("VM {vm}: its QMP socket {}: {e}", qmp.display()))?;
    cairn_qemu::disks::remove_bitmaps(&client, |name| unneeded(name, keep))
        .await
        .map_err(|e| format!("VM {vm}: {e}"))
}

/// The repositories the jobs back `vm_id` up into.
pub async fn repositories_of(db: &ConfigDb, vm_id: i64) -> Result<BTreeSet<i64>, cairn_configdb::Error> {
    Ok(db
        .list_jobs()
        .await?
        .iter()
        .filter(|j| j.spec.vm_ids.contains(&vm_id))
        .map(|j| j.spec.repository_id)
        .collect())
}

/// After jobs changed: removes from each of `vm_ids` (VMs of qemu hosts; others are skipped) the
/// checkpoint bitmaps of repositories no job backs it up into any more. VMs are asked side by
/// side; one that cannot be reached (stopped, its socket held) is logged as a warning — its
/// bitmaps stay until `cairn vm forget-checkpoints`.
pub async fn tidy(db: &ConfigDb, vm_ids: &[i64]) {
    let hosts: Vec<Host> = match db.list_hosts().await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("checkpoint bitmaps of VMs no job backs up: reading the hosts: {e}");
            return;
        }
    };
    let mut work = tokio::task::JoinSet::new();
    for &id in vm_ids.iter().collect::<BTreeSet<_>>() {
        let Ok(vm) = db.get_vm(id).await else { continue };
        let Some(host) = hosts.iter().find(|h| h.id == vm.host_id && h.kind == HostKind::Qemu) else {
            continue;
        };
        let keep = match repositories_of(db, id).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(
                    "checkpoint bitmaps of VM {}/{}: reading the jobs: {e}",
                    host.name,
                    vm.name
                );
                continue;
            }
        };
        work.spawn(remove_logged(format!("{}/{}", host.name, vm.name), vm, keep));
    }
    while work.join_next().await.is_some() {}
}

/// Before host `host` is removed (no job backs up its VMs any more): removes every bitmap of
/// cairn's from its VMs, side by side; logs the VMs it cannot reach.
pub async fn forget_host(host: &Host, vms: Vec<Vm>) {
    if host.kind != HostKind::Qemu {
        return;
    }
    let mut work = tokio::task::JoinSet::new();
    for vm in vms {
        work.spawn(remove_logged(format!("{}/{}", host.name, vm.name), vm, BTreeSet::new()));
    }
    while work.join_next().await.is_some() {}
}

async fn remove_logged(name: String, vm: Vm, keep: BTreeSet<i64>) {
    match remove_unneeded(&name, &PathBuf::from(&vm.external_id), &keep).await {
        Ok(removed) if removed.is_empty() => {}
        Ok(removed) => tracing::info!(
            "VM {name} is no longer backed up into {}: removed its checkpoint bitmaps {}",
            if keep.is_empty() {
                "any repository".to_owned()
            } else {
                "some repositories".to_owned()
            },
            names(&removed)
        ),
        Err(e) => tracing::warn!(
            "VM {name} is no longer backed up, but cairn's checkpoint bitmaps could not be removed from it, so they \
             keep recording its writes ({e}); remove them with `cairn vm forget-checkpoints {name}` once it runs"
        ),
    }
}

/// `disk: bitmap, …` for messages.
pub fn names(removed: &[RemovedBitmap]) -> String {
    removed
        .iter()
        .map(|r| format!("{} ({})", r.name, r.device))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bitmaps_no_job_needs_are_unneeded() {
        assert_eq!(checkpoint_repository("cairn-r12-1763931600000-0"), Some(12));
        assert_eq!(checkpoint_repository("cairn-tmp-0"), None);
        assert_eq!(checkpoint_repository("cairn-rx-1"), None);
        let none = BTreeSet::new();
        assert!(unneeded("cairn-r1-5-0", &none));
        assert!(unneeded("cairn-tmp-3", &none));
        assert!(!unneeded("mine", &none));
        let keep = BTreeSet::from([1]);
        assert!(!unneeded("cairn-r1-5-0", &keep));
        assert!(unneeded("cairn-r2-5-0", &keep));
        assert!(
            !unneeded("cairn-tmp-3", &keep),
            "a backup into repository 1 may be running"
        );
        assert!(!unneeded("backup-of-someone-else", &keep));
    }
}
