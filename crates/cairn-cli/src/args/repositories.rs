//! Arguments of `cairn repository …`, `cairn proxy …` and `cairn settings`: the server's
//! repositories, proxies and settings.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::parse::{parse_on_off, parse_rate};

/// Encryption of a server repository.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoEncryption {
    /// AES-256-GCM with a password.
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    /// No encryption.
    None,
}

/// `cairn repository …`.
#[derive(Subcommand, Debug)]
pub enum RepositoryCommand {
    /// Add a repository (creates it in the folder, or adopts a cairn repository there).
    Add {
        /// Repository name.
        name: String,
        /// Folder on the server's machine.
        #[arg(long)]
        path: PathBuf,
        /// Encryption.
        #[arg(long, value_enum, default_value = "aes-256-gcm")]
        encryption: RepoEncryption,
        /// Read the password from standard input (default: --password-file, CAIRN_PASSWORD,
        /// else the server makes one up and keeps it).
        #[arg(long)]
        password_stdin: bool,
        /// Concurrent tasks.
        #[arg(long, value_name = "N")]
        max_tasks: Option<u32>,
        /// Read limit per second, e.g. 100MiB (0 or none: unlimited).
        #[arg(long, value_name = "RATE", value_parser = parse_rate)]
        read_limit: Option<u64>,
        /// Write limit per second, e.g. 100MiB (0 or none: unlimited).
        #[arg(long, value_name = "RATE", value_parser = parse_rate)]
        write_limit: Option<u64>,
        /// Both the read and the write limit, e.g. 200MB/s.
        #[arg(long, value_name = "RATE", value_parser = parse_rate, conflicts_with_all = ["read_limit", "write_limit"])]
        rate: Option<u64>,
        /// The repository agent that owns the folder (the path is on that agent's host, and
        /// only that agent writes to it).
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
    },
    /// List repositories.
    List,
    /// Change a repository's task slots or rate limits.
    Set {
        /// Repository name.
        name: String,
        /// Concurrent tasks.
        #[arg(long, value_name = "N")]
        max_tasks: Option<u32>,
        /// Read limit per second, e.g. 100MiB (0 or none: unlimited).
        #[arg(long, value_name = "RATE", value_parser = parse_rate)]
        read_limit: Option<u64>,
        /// Write limit per second, e.g. 100MiB (0 or none: unlimited).
        #[arg(long, value_name = "RATE", value_parser = parse_rate)]
        write_limit: Option<u64>,
    },
    /// Remove a repository from the server (its files stay on disk).
    Remove {
        /// Repository name.
        name: String,
    },
}

/// `cairn proxy …`.
#[derive(Subcommand, Debug)]
pub enum ProxyCommand {
    /// List proxies with their task slots.
    List,
    /// Change a proxy's task slots.
    Set {
        /// Proxy name.
        name: String,
        /// Concurrent tasks.
        #[arg(long, value_name = "N")]
        max_tasks: u32,
    },
}

/// `cairn settings`.
#[derive(Args, Debug)]
pub struct SettingsArgs {
    /// Process VMs and disks in parallel (off: one by one).
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub parallel_processing: Option<bool>,
    /// Set the restore folders (repeatable; replaces the list): restores, restored VMs and
    /// migrations are written only beneath these folders.
    #[arg(long = "restore-folder", value_name = "DIR")]
    pub restore_folders: Vec<PathBuf>,
    /// Require administrators to log in with a second factor (TOTP).
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub require_totp_for_admins: Option<bool>,
}
