//! Arguments of the commands about hosts, VMs and whole-VM restores: `cairn host …`,
//! `cairn vm …`, `cairn restore vm …` and `cairn instant-recovery …`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `cairn restore vm …`.
#[derive(Subcommand, Debug)]
pub enum RestoreWhole {
    /// Restore a whole VM (every disk, and its configuration) to a qemu host and start it.
    Vm(RestoreVmArgs),
}

/// `cairn restore vm VM …`.
#[derive(Args, Debug)]
pub struct RestoreVmArgs {
    /// The VM as backed up (`HOST/VM`, or the VM's name alone when unique).
    pub vm: String,
    /// Repository of the backup server (default: the only one, or `default`).
    #[arg(long, value_name = "NAME")]
    pub repository: Option<String>,
    /// Restore point: `latest`, an id or a unique id prefix.
    #[arg(long, default_value = "latest")]
    pub point: String,
    /// The qemu host to restore to (default: the VM's own host).
    #[arg(long, value_name = "HOST")]
    pub to_host: Option<String>,
    /// Name of the restored VM (default: VM-restored).
    #[arg(long, conflicts_with = "replace_original")]
    pub name: Option<String>,
    /// Stop the original VM, replace its disks, start it again.
    #[arg(long)]
    pub replace_original: bool,
    /// Folder for the new disk files (on the server's machine).
    #[arg(long, conflicts_with = "replace_original")]
    pub folder: Option<PathBuf>,
    /// QEMU accelerator of the started VM (default: as the original ran), e.g. tcg.
    #[arg(long)]
    pub accel: Option<String>,
}

/// `cairn instant-recovery …`.
#[derive(Subcommand, Debug)]
pub enum InstantCommand {
    /// Start a VM from a restore point, its disks served by the backup server over NBD.
    Start {
        /// The VM as backed up (`HOST/VM`, or the VM's name alone when unique).
        vm: String,
        /// Repository (default: the only one, or `default`).
        #[arg(long, value_name = "NAME")]
        repository: Option<String>,
        /// Restore point: `latest`, an id or a unique id prefix.
        #[arg(long, default_value = "latest")]
        point: String,
        /// The qemu host whose socket folder gets the VM (default: the VM's own host).
        #[arg(long, value_name = "HOST")]
        to_host: Option<String>,
        /// Name of the VM (default: VM-instant).
        #[arg(long)]
        name: Option<String>,
        /// QEMU accelerator (default: as the original ran), e.g. tcg.
        #[arg(long)]
        accel: Option<String>,
    },
    /// List instant recoveries.
    List,
    /// Move a running instant recovery onto production disk files (qcow2) while it runs.
    Migrate {
        /// Instant recovery name (or the backed-up VM's name when it has one recovery).
        name: String,
        /// New disk files, one per disk, in the VM's disk order.
        #[arg(long, required = true, num_args = 1..)]
        to: Vec<PathBuf>,
    },
    /// Stop an instant recovery (quit its VM and end its exports); a migrated one is only
    /// forgotten: its VM runs on as a VM of its host (`cairn vm stop HOST/VM`).
    Stop {
        /// Instant recovery name.
        name: String,
    },
}

/// Kinds of hosts.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// A folder of disk images: each sub-folder (or image file) is a VM.
    ImageFolder,
    /// Running QEMU/KVM VMs, reached through their QMP sockets.
    Qemu,
}

/// `cairn host …`.
#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// Add a host and discover its VMs.
    Add {
        /// Kind of host.
        #[arg(value_enum)]
        kind: HostKind,
        /// Folder of the images (image-folder hosts, on the server's machine).
        #[arg(long, required_if_eq("kind", "image-folder"), conflicts_with = "qmp")]
        path: Option<PathBuf>,
        /// QMP socket of a VM, or a folder of `NAME.qmp` sockets (qemu hosts; each VM's guest
        /// agent socket is `NAME.qga` beside it).
        #[arg(long, required_if_eq("kind", "qemu"))]
        qmp: Option<PathBuf>,
        /// Guest agent socket of the VM given with --qmp (default: the `.qga` beside it).
        #[arg(long, requires = "qmp")]
        qga: Option<PathBuf>,
        /// Host name (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List hosts.
    List,
    /// Discover the host's VMs again.
    Rescan {
        /// Host name.
        name: String,
    },
    /// Remove a host.
    Remove {
        /// Host name.
        name: String,
    },
}

/// `cairn vm …`.
#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// List VMs with their disks.
    List {
        /// Only the VMs of this host.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
    },
    /// Start a VM of a qemu host that cairn started before (a restored VM, a migrated instant
    /// recovery) with the command line it saved then (administrator).
    Start {
        /// The VM: HOST/VM, or its name alone when unique.
        vm: String,
    },
    /// Stop a running VM of a qemu host (QMP quit; administrator).
    Stop {
        /// The VM: HOST/VM, or its name alone when unique.
        vm: String,
    },
    /// Remove cairn's dirty bitmaps (`cairn-…`) from a running VM's disks, so they stop recording
    /// its writes: for a VM cairn no longer backs up (administrator). Jobs that still back it up
    /// read every block at their next backup.
    ForgetCheckpoints {
        /// The VM: HOST/VM, or its name alone when unique.
        vm: String,
    },
}
