//! How cairn starts a VM again that it started once: a launch record per VM.
//!
//! Every VM cairn starts on a qemu host — a restored VM, a replaced original, an instant
//! recovery once migrated to production disks — gets a record of its QEMU command line:
//! `DATA/vms/host-<id>/<NAME>.json` (`NAME` is its QMP socket's name, `NAME.qmp`). `cairn vm
//! start HOST/NAME` runs it again, so the VM keeps its disks, sockets, MAC addresses and UUID.
//! The records are in the data folder because the command line runs as root: a copy beside the
//! disks lies in a restore folder, where a restore operator can create files.
//!
//! A VM's pid file and serial log lie beside its disks (`NAME.pid`, `NAME.serial.log`), made
//! fresh and private (0600) before each start beneath the disks' folder without following
//! links ([`fresh_files`]).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use cairn_confine::{AllowedFolders, ConfineError, ConfinedDir};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Folder of the launch records in the data folder.
pub const RECORDS_DIR: &str = "vms";

/// How to start a VM again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchRecord {
    /// The name of its QMP socket (`NAME.qmp`), which keys the record (usually the VM's name).
    pub name: String,
    /// The qemu host it belongs to.
    pub host_id: i64,
    /// Its QMP socket.
    pub qmp: PathBuf,
    /// Its guest agent socket.
    pub qga: Option<PathBuf>,
    /// The arguments of `qemu-system-x86_64` (with `-daemonize` and `-pidfile`).
    pub argv: Vec<String>,
    /// Its pid file.
    pub pidfile: PathBuf,
    /// Its serial console log.
    pub serial_log: PathBuf,
    /// Its disk files, in disk order.
    pub disks: Vec<PathBuf>,
    /// When the record was written.
    pub saved_at: Timestamp,
}

/// The folder of host `host_id`'s records.
fn host_dir(data_dir: &Path, host_id: i64) -> PathBuf {
    data_dir.join(RECORDS_DIR).join(format!("host-{host_id}"))
}

/// The name of the VM whose QMP socket is `qmp` (`NAME.qmp` → `NAME`).
pub fn vm_name_of(qmp: &Path) -> Option<String> {
    let stem = qmp.file_stem()?.to_str()?;
    (!stem.is_empty() && !stem.starts_with('.')).then(|| stem.to_owned())
}

impl LaunchRecord {
    /// Where the record of VM `name` of host `host_id` is kept.
    pub fn path(data_dir: &Path, host_id: i64, name: &str) -> PathBuf {
        host_dir(data_dir, host_id).join(format!("{name}.json"))
    }

    /// Writes the record (0600, in a 0700 folder), replacing an older one; returns its path.
    pub fn save(&self, data_dir: &Path) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = host_dir(data_dir, self.host_id);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let path = LaunchRecord::path(data_dir, self.host_id, &self.name);
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::secrets::write_private(&path, &text)?;
        Ok(path)
    }

    /// The record of VM `name` of host `host_id`, if cairn started it.
    pub fn load(data_dir: &Path, host_id: i64, name: &str) -> Result<Option<LaunchRecord>, String> {
        let path = LaunchRecord::path(data_dir, host_id, name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("launch record {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading launch record {}: {e}", path.display())),
        }
    }
}

/// Forgets the records of host `host_id` (the host was removed).
pub fn remove_host(data_dir: &Path, host_id: i64) {
    let dir = host_dir(data_dir, host_id);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("removing the launch records {}: {e}", dir.display());
    }
}

/// `NAME.pid` and `NAME.serial.log`.
pub fn file_names(name: &str) -> (OsString, OsString) {
    (format!("{name}.pid").into(), format!("{name}.serial.log").into())
}

/// Makes an empty, private pid file and serial log named `pid` and `serial` in `dir`, replacing
/// those of an earlier run (an entry of that name is removed, never followed). Returns their
/// paths.
pub fn fresh_files(dir: &ConfinedDir, pid: &OsStr, serial: &OsStr) -> Result<(PathBuf, PathBuf), ConfineError> {
    for file in [pid, serial] {
        if dir.contains(file)? {
            dir.remove_file(file)?;
        }
        drop(dir.create_file(file, cairn_confine::DEFAULT_FILE_MODE)?);
    }
    Ok((dir.path().join(pid), dir.path().join(serial)))
}

/// Opens `folder` (a VM's disk folder) to make files in: confined beneath the restore folders
/// `allowed` when it lies beneath one, else (an original VM's own folder) from the folder itself
/// down; never in the data folder.
pub fn open_vm_folder(allowed: &AllowedFolders, data_dir: &Path, folder: &Path) -> Result<ConfinedDir, ConfineError> {
    if allowed.check_text(folder).is_ok() {
        return allowed.open_folder(folder);
    }
    AllowedFolders::new([folder.to_path_buf()])
        .protect(data_dir)
        .open_folder(folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_fresh_files_replace_links() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let record = LaunchRecord {
            name: "web01-restored".into(),
            host_id: 3,
            qmp: "/run/vms/web01-restored.qmp".into(),
            qga: None,
            argv: vec!["-name".into(), "web01-restored".into()],
            pidfile: "/r/web01-restored.pid".into(),
            serial_log: "/r/web01-restored.serial.log".into(),
            disks: vec!["/r/disk0.qcow2".into()],
            saved_at: Timestamp::now(),
        };
        let path = record.save(&data).unwrap();
        assert_eq!(path, data.join("vms/host-3/web01-restored.json"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(LaunchRecord::load(&data, 3, "web01-restored").unwrap(), Some(record));
        assert_eq!(LaunchRecord::load(&data, 3, "other").unwrap(), None);
        remove_host(&data, 3);
        assert_eq!(LaunchRecord::load(&data, 3, "web01-restored").unwrap(), None);
        assert_eq!(vm_name_of(Path::new("/run/vms/web01.qmp")).as_deref(), Some("web01"));

        let folder = tmp.path().join("restore/web01");
        std::fs::create_dir_all(&folder).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, folder.join("vm.serial.log")).unwrap();
        let allowed = AllowedFolders::new([tmp.path().join("restore")]).protect(&data);
        let dir = open_vm_folder(&allowed, &data, &folder).unwrap();
        let (pid_name, serial_name) = file_names("vm");
        let (pid, serial) = fresh_files(&dir, &pid_name, &serial_name).unwrap();
        assert_eq!(pid, folder.join("vm.pid"));
        assert!(!std::fs::symlink_metadata(&serial).unwrap().file_type().is_symlink());
        assert_eq!(
            std::fs::read(&outside).unwrap(),
            b"keep",
            "the link's target is untouched"
        );
        assert_eq!(std::fs::metadata(&serial).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(open_vm_folder(&allowed, &data, &data).is_err(), "never the data folder");
    }
}
