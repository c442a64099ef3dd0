//! Where the server may write what users name: the restore folders.
//!
//! Every file or folder a user names to the server (restore targets, folders of restored VMs,
//! migration targets) must lie beneath one of the *restore folders* an administrator configured
//! (the setting `restore_folders`; on first start `cairn server --restore-folder DIR…`, else
//! `DATA-restore` beside the data folder). It is created through [`cairn_confine`]: no `..`, no
//! symlink followed below the folder, never inside the data folder or a repository of the
//! server, never over an existing file, mode 0600 unless the request asks for another.
//!
//! The same list is sent to agents with a restore task; the agent holds its writes to it in the
//! same way (protecting its own data folder and repositories).

use std::path::{Path, PathBuf};

use cairn_configdb::{ConfigDb, SETTING_RESTORE_FOLDERS};
use cairn_confine::{AllowedFolders, ConfineError};

use crate::error::{ServiceError, ServiceResult};

/// Most restore folders an administrator may configure.
pub const MAX_RESTORE_FOLDERS: usize = 32;

/// The restore folder of a data folder that has none configured: `DATA-restore` beside it.
pub fn default_restore_folder(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "cairn".into());
    name.push("-restore");
    data_dir.with_file_name(name)
}

/// The configured restore folders (the stored setting; an empty list when it is unset).
pub async fn configured(db: &ConfigDb) -> ServiceResult<Vec<PathBuf>> {
    match db.get_setting(SETTING_RESTORE_FOLDERS).await? {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str::<Vec<PathBuf>>(&text).map_err(|e| {
            ServiceError::internal(
                "the restore folders setting cannot be read (see the server log)",
                format!("setting {SETTING_RESTORE_FOLDERS} {text:?}: {e}"),
            )
        }),
    }
}

/// Stores `folders` as the restore folders.
pub async fn store(db: &ConfigDb, folders: &[PathBuf]) -> ServiceResult<()> {
    let text = serde_json::to_string(folders).map_err(|e| ServiceError::internal("storing the restore folders", e))?;
    db.set_setting(SETTING_RESTORE_FOLDERS, &text).await?;
    Ok(())
}

/// Checks folders an administrator wants as restore folders: each absolute, without `..`, an
/// existing folder that other users cannot write (unless sticky), not inside (nor equal to) the
/// data folder. Returns them normalised, without duplicates.
pub fn validate(folders: &[String], data_dir: &Path) -> ServiceResult<Vec<PathBuf>> {
    if folders.len() > MAX_RESTORE_FOLDERS {
        return Err(ServiceError::invalid(format!(
            "restore_folders: at most {MAX_RESTORE_FOLDERS} folders, not {}",
            folders.len()
        )));
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for folder in folders {
        cairn_api::checks::absolute_path("restore_folders", folder)?;
        let norm = cairn_confine::validate_root(Path::new(folder), &[data_dir.to_path_buf()]).map_err(|e| {
            let mut error = confine_error(e);
            error.message = format!("restore_folders: {}", error.message);
            error
        })?;
        if !out.contains(&norm) {
            out.push(norm);
        }
    }
    Ok(out)
}

/// What the server may write beneath: the configured restore folders, protecting the data
/// folder and the folders of the server's own repositories.
pub async fn allowed(db: &ConfigDb, data_dir: &Path) -> ServiceResult<AllowedFolders> {
    let mut allowed = AllowedFolders::new(configured(db).await?).protect(data_dir);
    for repo in db.list_repositories().await? {
        if repo.settings.agent_id.is_none() {
            allowed = allowed.protect(&repo.settings.path);
        }
    }
    Ok(allowed)
}

/// The API error of a refused or failed confined write: a path the rules do not allow (outside
/// the restore folders, `..`, a symbolic link, a protected or shared folder) is 403; a missing
/// folder 404; an existing target, or a file where a folder is needed, 409; a relative path or a
/// bad mode 422; a failure of the system 500.
pub fn confine_error(e: ConfineError) -> ServiceError {
    use crate::error::ErrorKind;
    let kind = match &e {
        ConfineError::NotAllowed { .. }
        | ConfineError::DotDot { .. }
        | ConfineError::Protected { .. }
        | ConfineError::Symlink { .. }
        | ConfineError::Writable { .. } => ErrorKind::Forbidden,
        ConfineError::NoFolder { .. } => ErrorKind::NotFound,
        ConfineError::Exists { .. } | ConfineError::NotAFolder { .. } | ConfineError::IsRoot { .. } => {
            ErrorKind::Conflict
        }
        ConfineError::Io { source, .. } if source.raw_os_error() == Some(libc_enametoolong()) => ErrorKind::NotFound,
        ConfineError::NotAbsolute { .. } | ConfineError::Mode { .. } => ErrorKind::Invalid,
        _ => return ServiceError::internal("writing beneath a restore folder failed", e),
    };
    ServiceError::new(kind, e.to_string())
}

/// `ENAMETOOLONG`: a path no file can have is as good as missing.
fn libc_enametoolong() -> i32 {
    rustix::io::Errno::NAMETOOLONG.raw_os_error()
}

/// Checks a folder an administrator names for the server to read or keep data in (a
/// repository, an image-folder host): an absolute path without `..`, neither inside the data
/// folder nor containing it (the data folder holds keys and passwords: a host scanning it would
/// back them up for any restore operator to read). `what` names the field for messages.
pub fn check_admin_folder(what: &str, path: &str, data_dir: &Path) -> ServiceResult<PathBuf> {
    cairn_api::checks::absolute_path(what, path)?;
    let norm =
        cairn_confine::normalize(Path::new(path)).map_err(|e| ServiceError::forbidden(format!("{what}: {e}")))?;
    if cairn_confine::is_within(&norm, data_dir) {
        return Err(ServiceError::forbidden(format!(
            "{what}: {} is inside the server's data folder {}",
            norm.display(),
            data_dir.display()
        )));
    }
    if cairn_confine::is_within(data_dir, &norm) {
        return Err(ServiceError::forbidden(format!(
            "{what}: {} contains the server's data folder {}",
            norm.display(),
            data_dir.display()
        )));
    }
    Ok(norm)
}

/// Parses a requested file mode (`"0640"`, octal; `None`: 0600): permission bits only.
pub fn file_mode(text: Option<&str>) -> ServiceResult<u32> {
    let Some(text) = text else {
        return Ok(cairn_confine::DEFAULT_FILE_MODE);
    };
    // Exactly `^(0o|0)?[0-7]{1,3}$`, as the API document says.
    let digits = text
        .strip_prefix("0o")
        .or_else(|| text.strip_prefix('0').filter(|d| d.len() == 3))
        .unwrap_or(text);
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(ServiceError::invalid(format!(
            "file_mode {text:?}: give octal permission bits such as 0640 (at most 0777)"
        )));
    }
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| ServiceError::invalid(format!("file_mode {text:?}: give octal permission bits such as 0640")))?;
    cairn_confine::check_mode(mode).map_err(|e| ServiceError::invalid(format!("file_mode: {e}")))?;
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_restore_folder_is_beside_the_data_folder() {
        assert_eq!(
            default_restore_folder(Path::new("/var/lib/cairn")),
            PathBuf::from("/var/lib/cairn-restore")
        );
        assert_eq!(
            default_restore_folder(Path::new("/tmp/x/data/")),
            PathBuf::from("/tmp/x/data-restore")
        );
    }

    #[test]
    fn file_modes_are_octal_permission_bits() {
        assert_eq!(file_mode(None).unwrap(), 0o600);
        assert_eq!(file_mode(Some("0640")).unwrap(), 0o640);
        assert_eq!(file_mode(Some("644")).unwrap(), 0o644);
        assert_eq!(file_mode(Some("0o750")).unwrap(), 0o750);
        assert_eq!(file_mode(Some("7")).unwrap(), 0o7);
        for bad in ["4755", "rw", "0o1777", "99", "", "00640", "0o"] {
            assert_eq!(
                file_mode(Some(bad)).unwrap_err().kind,
                crate::error::ErrorKind::Invalid,
                "{bad}"
            );
        }
    }
}
