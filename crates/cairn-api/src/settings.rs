//! The server's global settings.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Global settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SettingsDto {
    /// Whether the disks and VMs of a job are processed in parallel.
    pub parallel_processing: bool,
    /// Time zone of schedules that name none.
    pub time_zone: String,
    /// Folders beneath which the server (and agents) write what users name: restored disks,
    /// restored VMs, migrated instant recoveries.
    pub restore_folders: Vec<String>,
    /// Whether administrators must log in with a second factor (TOTP).
    pub require_totp_for_administrators: bool,
}

/// `PATCH /api/v1/settings` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateSettings {
    /// Parallel processing on or off.
    #[serde(default)]
    pub parallel_processing: Option<bool>,
    /// The new list of restore folders (replaces the old one): absolute paths of existing
    /// folders that other users cannot write, outside the server's data folder.
    #[serde(default)]
    #[schema(max_items = 32, value_type = Option<Vec<AbsolutePath>>)]
    pub restore_folders: Option<Vec<String>>,
    /// Require a second factor (TOTP) of administrators: one without it can, after logging in,
    /// only set one up.
    #[serde(default)]
    pub require_totp_for_administrators: Option<bool>,
}

/// An absolute path (the item schema of `restore_folders`).
#[derive(ToSchema)]
#[schema(pattern = r"^(/[^/\x00]{0,255})+$", max_length = 4096)]
pub struct AbsolutePath(pub String);
