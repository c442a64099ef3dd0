//! Inventory of cairn backup sources: which VMs a host has and which disks each VM has.
//!
//! The first host type is the *image folder*: a folder of disk images (raw, qcow2, VHDX,
//! VHD). [`scan`] lists it:
//!
//! ```no_run
//! let inv = cairn_inventory::scan("/srv/images".as_ref()).unwrap();
//! for vm in &inv.vms {
//!     for disk in &vm.disks {
//!         println!("{} disk {}: {} ({} bytes)", vm.name, disk.index, disk.path.display(), disk.virtual_size);
//!     }
//! }
//! ```
//!
//! # Layout
//!
//! - Every direct subfolder of the root (not hidden) is a VM named after the folder; its
//!   image files (direct children only, nested folders are not scanned) are its disks.
//! - Image files directly in the root form VMs of one disk chain each, named after the
//!   stem of the chain's lowest file in the root (`web.qcow2` → `web`). When that name
//!   is taken by a folder or another file, the full file name (`web.qcow2`) is used.
//!
//! # Which files are disks
//!
//! Hidden files (name starting with `.`), anything that is not a regular file (after
//! following symlinks) and files smaller than 512 bytes are skipped silently. Every
//! other file is probed by content:
//!
//! - qcow2, VHDX and VHD files are disks whatever their name;
//! - a file without such a header is a raw disk only if it is named `*.img` or `*.raw`
//!   (case-insensitive) and its size is a multiple of 512; other files are not disks.
//!   A `*.img`/`*.raw` file of another size, a `*.qcow2`/`*.vhdx`/`*.avhdx`/`*.vhd`/`*.avhd`
//!   file without the matching header, and a file that cannot be read at all are
//!   reported as problems of their VM (or of the inventory, for the root), not as disks.
//!
//! # Differencing chains
//!
//! A file that is the parent (backing file) of another file of the same VM is not a disk
//! of its own: the disk is the *top* of each chain (the newest child, e.g. the latest
//! `.avhdx`), and [`Disk::chain`] lists the files from the top down to the base. A
//! parent with two children (a branch) gives two disks that share the lower files.
//! A parent outside the VM (a shared template) is followed and listed in the chain but
//! still counts for the VM it is in.
//!
//! # Problems
//!
//! A broken image does not abort the scan: an image whose header cannot be read is
//! still listed as a disk, with [`Disk::problem`] naming the file and the cause, and so
//! is a chain whose parent is missing or changed. Only a missing or unreadable root is
//! an error.
//!
//! # Stable keys
//!
//! [`Disk::key`] matches a disk across re-scans while snapshots come and go: it is the
//! path, relative to the root, of the lowest file of the chain that belongs to the VM
//! (the base, or the first overlay on a shared template), then `#` and the disk's
//! position among the VM's disks with that same base, ordered by top path (`#0` unless
//! the chain branches).

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use cairn_disk::Format;
use cairn_disk::image::{Image, MAX_DEPTH, open_layer, probe};
use cairn_disk::io::ImageFile;
use serde::{Deserialize, Serialize};

/// Errors that stop a scan (problems with single files do not).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// The root folder does not exist or is not a folder.
    #[error("{path}: {reason}")]
    BadRoot {
        /// The root as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An I/O call on the root folder failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = InventoryError> = std::result::Result<T, E>;

/// Everything found in an image folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The root folder, canonical; relative paths below are relative to it.
    pub root: PathBuf,
    /// VMs, sorted by name.
    pub vms: Vec<Vm>,
    /// Problems with files directly in the root that belong to no VM.
    pub problems: Vec<String>,
}

/// One VM and its disks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// Unique name: the folder name, or the image file's stem for a file in the root.
    pub name: String,
    /// The folder or root-level file the VM comes from, relative to the root.
    pub path: PathBuf,
    /// Disks in order: disk 0, 1, ...
    pub disks: Vec<Disk>,
    /// Problems with files of the VM that are not disks (unreadable, misnamed).
    pub problems: Vec<String>,
}

/// One disk of a VM: the top of a chain of image files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Position in the VM (sorted by base file name, then top path).
    pub index: usize,
    /// Key that matches the disk across re-scans (see the crate docs).
    pub key: String,
    /// The top file (the one to open), relative to the root when inside it.
    pub path: PathBuf,
    /// Format of the top file.
    pub format: Format,
    /// Size of the disk in bytes as the guest sees it (0 when the top cannot be read).
    pub virtual_size: u64,
    /// Logical sector size in bytes (512 when unknown).
    pub logical_sector_size: u32,
    /// Physical sector size in bytes (512 when unknown).
    pub physical_sector_size: u32,
    /// Files from the top (index 0) down to the base, as far as they could be followed.
    pub chain: Vec<ChainFile>,
    /// Why the disk cannot be read as a whole, naming the file; `None` when it opens.
    pub problem: Option<String>,
}

/// One file of a disk's chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainFile {
    /// The file, relative to the root when inside it, else absolute.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
}

/// Scans the image folder `root` for VMs and their disks.
///
/// Fails only if `root` is missing, not a folder or cannot be listed; problems with
/// single files and VM folders are reported in the result.
pub fn scan(root: &Path) -> Result<Inventory> {
    let root = std::fs::canonicalize(root).map_err(|e| InventoryError::BadRoot {
        path: root.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !root.is_dir() {
        return Err(InventoryError::BadRoot {
            path: root,
            reason: "not a folder".into(),
        });
    }
    let entries = list(&root).map_err(|(op, source)| InventoryError::Io {
        path: root.clone(),
        op,
        source,
    })?;
    let mut scanner = Scanner {
        root: root.clone(),
        cache: HashMap::new(),
    };

    let mut folders = Vec::new();
    let mut root_files = Vec::new();
    let mut problems = Vec::new();
    for (name, path) in entries {
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => folders.push(name),
            Ok(m) => root_files.push((name, path, m)),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }

    let mut vms = Vec::new();
    for name in &folders {
        let dir = root.join(name);
        let mut vm = Vm {
            name: name.clone(),
            path: PathBuf::from(name),
            disks: Vec::new(),
            problems: Vec::new(),
        };
        match list(&dir) {
            Ok(entries) => {
                let files = entries
                    .into_iter()
                    .filter_map(|(name, path)| match std::fs::metadata(&path) {
                        Ok(m) if m.is_dir() => None,
                        Ok(m) => Some((name, path, m)),
                        Err(e) => {
                            vm.problems.push(format!("{}: {e}", path.display()));
                            None
                        }
                    })
                    .collect();
                let images = scanner.classify_all(files, &mut vm.problems);
                vm.disks = scanner.disks(&images).into_iter().map(|(_, d)| d).collect();
            }
            Err((op, e)) => vm.problems.push(format!("{}: {op}: {e}", dir.display())),
        }
        vms.push(vm);
    }

    // Root-level files: one VM per chain base in the root.
    let images = scanner.classify_all(root_files, &mut problems);
    let mut by_base: BTreeMap<PathBuf, Vec<Disk>> = BTreeMap::new();
    for (base, disk) in scanner.disks(&images) {
        by_base.entry(base).or_default().push(disk);
    }
    let mut file_vms: Vec<Vm> = by_base
        .into_iter()
        .map(|(base, mut disks)| {
            for (i, d) in disks.iter_mut().enumerate() {
                d.index = i;
            }
            let file_name = base
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = base
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Vm {
                name: stem,
                path: PathBuf::from(file_name),
                disks,
                problems: Vec::new(),
            }
        })
        .collect();
    // Names must be unique: a file VM whose stem is taken uses its full file name, which
    // no folder or other file can have; repeat until nothing collides.
    loop {
        let mut count: HashMap<String, usize> = HashMap::new();
        for n in folders.iter().chain(file_vms.iter().map(|v| &v.name)) {
            *count.entry(n.clone()).or_default() += 1;
        }
        let mut changed = false;
        for vm in &mut file_vms {
            let full = vm.path.to_string_lossy().into_owned();
            if count.get(&vm.name).copied().unwrap_or(0) > 1 && vm.name != full {
                vm.name = full;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    vms.extend(file_vms);
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Inventory { root, vms, problems })
}

/// Lists a folder: non-hidden entries as (name, path), sorted by name.
fn list(dir: &Path) -> std::result::Result<Vec<(String, PathBuf)>, (&'static str, std::io::Error)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ("list", e))? {
        let entry = entry.map_err(|e| ("list", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        out.push((name, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// What one file of a chain is, as far as it could be read.
#[derive(Clone, Debug)]
struct FileInfo {
    /// Format, when the header could be probed.
    format: Option<Format>,
    /// The open layer's facts, or why it would not open.
    layer: std::result::Result<LayerInfo, String>,
}

#[derive(Clone, Debug)]
struct LayerInfo {
    virtual_size: u64,
    logical: u32,
    physical: u32,
    /// The parent's canonical path, or why it cannot be found.
    parent: Option<std::result::Result<PathBuf, String>>,
    /// The parent's format, when the file declares it (qcow2 backing format).
    parent_format: Option<Format>,
}

/// A file of a VM classified as a disk image: canonical path and probed format.
type ImageEntry = (PathBuf, Format);

struct Scanner {
    root: PathBuf,
    /// Files read so far, by canonical path.
    cache: HashMap<PathBuf, FileInfo>,
}

const RAW_EXTENSIONS: [&str; 2] = ["img", "raw"];
const IMAGE_EXTENSIONS: [(&str, Format); 5] = [
    ("qcow2", Format::Qcow2),
    ("vhdx", Format::Vhdx),
    ("avhdx", Format::Vhdx),
    ("vhd", Format::Vhd),
    ("avhd", Format::Vhd),
];

impl Scanner {
    /// Picks the disk images out of one folder's files, reporting unreadable and
    /// misnamed ones in `problems`.
    fn classify_all(
        &mut self,
        files: Vec<(String, PathBuf, std::fs::Metadata)>,
        problems: &mut Vec<String>,
    ) -> Vec<ImageEntry> {
        let mut out = Vec::new();
        for (name, path, meta) in files {
            if !meta.is_file() || meta.len() < 512 {
                continue;
            }
            let ext = Path::new(&name)
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            let format = match ImageFile::open(&path).and_then(|f| probe(&f)) {
                Ok(f) => f,
                Err(e) => {
                    problems.push(format!("{e} (cannot tell whether it is a disk image)"));
                    continue;
                }
            };
            if format == Format::Raw {
                if let Some((_, named)) = IMAGE_EXTENSIONS.iter().find(|(x, _)| *x == ext) {
                    problems.push(format!(
                        "{}: named like a {named} image but has no {named} header",
                        path.display()
                    ));
                    continue;
                }
                if !RAW_EXTENSIONS.contains(&ext.as_str()) {
                    continue;
                }
                if meta.len() % 512 != 0 {
                    problems.push(format!(
                        "{}: not used as a raw disk: its size {} is not a multiple of 512",
                        path.display(),
                        meta.len()
                    ));
                    continue;
                }
            }
            out.push((canonical(&path), format));
        }
        out
    }

    /// Reads (once) the file at canonical `path`, as `format` or its probed format.
    fn info(&mut self, path: &Path, format: Option<Format>) -> &FileInfo {
        self.cache
            .entry(path.to_path_buf())
            .or_insert_with(|| read_info(path, format))
    }

    /// The disks made of `images` (one folder's image files), indexed and keyed, each
    /// with the canonical path of its lowest file among `images`.
    fn disks(&mut self, images: &[ImageEntry]) -> Vec<(PathBuf, Disk)> {
        let members: HashSet<&PathBuf> = images.iter().map(|(p, _)| p).collect();
        let mut parents: HashSet<PathBuf> = HashSet::new();
        for (path, format) in images {
            if let Ok(LayerInfo {
                parent: Some(Ok(parent)),
                ..
            }) = &self.info(path, Some(*format)).layer
                && members.contains(parent)
                && parent != path
            {
                parents.insert(parent.clone());
            }
        }
        // Tops: files no other file of the folder builds on. A loop of parents leaves
        // files no top reaches; those become tops too (and report the loop).
        let mut tops: Vec<&PathBuf> = images
            .iter()
            .map(|(p, _)| p)
            .filter(|p| !parents.contains(*p))
            .collect();
        let mut covered: HashSet<PathBuf> = HashSet::new();
        for top in &tops {
            covered.extend(self.chain(top).into_iter().map(|(p, _)| p));
        }
        for (path, _) in images {
            if !covered.contains(path) {
                tops.push(path);
                covered.extend(self.chain(path).into_iter().map(|(p, _)| p));
            }
        }

        let mut drafts: Vec<(PathBuf, Disk)> = tops
            .into_iter()
            .map(|top| {
                let chain = self.chain(top);
                let base = chain
                    .iter()
                    .rev()
                    .find(|(p, _)| members.contains(p))
                    .map_or_else(|| top.clone(), |(p, _)| p.clone());
                (base, self.disk(top, &chain))
            })
            .collect();
        drafts.sort_by(|(ba, da), (bb, db)| ba.file_name().cmp(&bb.file_name()).then(da.path.cmp(&db.path)));
        let mut per_base: HashMap<PathBuf, usize> = HashMap::new();
        drafts
            .into_iter()
            .enumerate()
            .map(|(index, (base, mut disk))| {
                let n = per_base.entry(base.clone()).or_default();
                disk.key = format!("{}#{n}", self.relative(&base).display());
                *n += 1;
                disk.index = index;
                (base, disk)
            })
            .collect()
    }

    /// The chain from canonical `top` down, as far as it can be followed: canonical
    /// paths and formats.
    fn chain(&mut self, top: &Path) -> Vec<(PathBuf, Format)> {
        let mut out: Vec<(PathBuf, Format)> = Vec::new();
        let mut seen = HashSet::new();
        let mut next = Some((top.to_path_buf(), None));
        while let Some((path, declared)) = next.take() {
            if out.len() >= MAX_DEPTH || !seen.insert(path.clone()) {
                break;
            }
            let info = self.info(&path, declared).clone();
            let Some(format) = info.format else { break };
            out.push((path, format));
            if let Ok(LayerInfo {
                parent: Some(Ok(parent)),
                parent_format,
                ..
            }) = info.layer
            {
                next = Some((parent, parent_format));
            }
        }
        out
    }

    /// The disk whose top is `top` with `chain` below it (index and key filled in later).
    fn disk(&mut self, top: &Path, chain: &[(PathBuf, Format)]) -> Disk {
        let info = self.info(top, None).clone();
        let format = info.format.unwrap_or(Format::Raw);
        let (virtual_size, logical, physical, problem) = match &info.layer {
            Ok(l) => {
                let problem = Image::open(top).err().map(|e| e.to_string());
                (l.virtual_size, l.logical, l.physical, problem)
            }
            Err(e) => (0, 512, 512, Some(e.clone())),
        };
        Disk {
            index: 0,
            key: String::new(),
            path: self.relative(top),
            format,
            virtual_size,
            logical_sector_size: logical,
            physical_sector_size: physical,
            chain: chain
                .iter()
                .map(|(p, f)| ChainFile {
                    path: self.relative(p),
                    format: *f,
                })
                .collect(),
            problem,
        }
    }

    /// `path` relative to the root when inside it, else as is.
    fn relative(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root)
            .map_or_else(|_| path.to_path_buf(), Path::to_path_buf)
    }
}

/// Reads the header of `path` as `format` (or probes it).
fn read_info(path: &Path, format: Option<Format>) -> FileInfo {
    let file = match ImageFile::open(path) {
        Ok(f) => f,
        Err(e) => {
            return FileInfo {
                format,
                layer: Err(e.to_string()),
            };
        }
    };
    let format = match format {
        Some(f) => f,
        None => match probe(&file) {
            Ok(f) => f,
            Err(e) => {
                return FileInfo {
                    format: None,
                    layer: Err(e.to_string()),
                };
            }
        },
    };
    let layer = open_layer(file, Some(format)).map_err(|e| e.to_string()).map(|layer| {
        let sectors = layer.sector_sizes();
        let parent = layer.parent().map(|p| {
            p.candidates
                .iter()
                .find(|c| c.exists())
                .map(|c| canonical(c))
                .ok_or_else(|| {
                    let tried: Vec<String> = p.candidates.iter().map(|c| c.display().to_string()).collect();
                    format!("parent {} not found (looked for {})", p.name, tried.join(", "))
                })
        });
        LayerInfo {
            virtual_size: layer.virtual_size(),
            logical: sectors.logical,
            physical: sectors.physical,
            parent,
            parent_format: layer.parent().and_then(|p| p.format),
        }
    });
    FileInfo {
        format: Some(format),
        layer,
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
