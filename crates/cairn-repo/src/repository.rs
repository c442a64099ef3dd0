//! Opening a repository folder and reading its chains.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_format::crypto::{KdfParams, Keys};
use cairn_format::index::{BlockRef, PointIndex};
use cairn_format::record::{RECORD_HEADER_LEN, RecordDecoder};

use crate::chain::{ChainMeta, Location, PointMeta};
use crate::config::{Config, Encryption};
use crate::error::{RepoError, Result, fmt, io};
use crate::fsutil;

/// Name of the config file at the repository root.
pub(crate) const CONFIG_FILE: &str = "config";
/// Folder holding one sub-folder per chain.
pub(crate) const CHAINS_DIR: &str = "chains";
/// Name of the metadata file in a chain folder.
pub(crate) const CHAIN_META: &str = "chain.meta";
/// Name of the lock file in a chain folder.
pub(crate) const LOCK_FILE: &str = "lock";

/// An open repository: its folder, config and unlocked keys.
pub struct Repository {
    root: PathBuf,
    config: Config,
    keys: Arc<Keys>,
}

impl Repository {
    /// Creates a repository in `root` (absent or an empty folder).
    pub fn init(root: &Path, encryption: Encryption, password: Option<&[u8]>, kdf: Option<KdfParams>) -> Result<Self> {
        if root.exists() {
            let mut entries = std::fs::read_dir(root).map_err(io(root, "read directory"))?;
            if entries.next().is_some() {
                return Err(RepoError::AlreadyExists {
                    path: root.to_path_buf(),
                });
            }
        }
        let (config, keys) = Config::generate(encryption, password, kdf)?;
        // The folder and everything in it are private to the owner (0700/0600):
        // an unencrypted repository holds guest data in clear. An existing
        // (empty) folder is the user's: where its mode cannot be changed (a
        // share's root), say so and go on.
        if root.exists() {
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(fsutil::DIR_MODE);
            if let Err(e) = std::fs::set_permissions(root, private) {
                tracing::warn!(path = %root.display(), error = %e, "cannot make the repository folder private (0700)");
            }
        } else {
            fsutil::create_private_dir(root)?;
        }
        let chains = root.join(CHAINS_DIR);
        fsutil::create_private_dir(&chains)?;
        fsutil::sync_parent(&chains)?;
        // The config is written last: a folder without it is not a repository yet.
        fsutil::write_atomic(&root.join(CONFIG_FILE), &config.encode()?)?;
        Ok(Repository {
            root: root.to_path_buf(),
            config,
            keys: Arc::new(keys),
        })
    }

    /// Opens the repository in `root`, unlocking it with `password` if encrypted.
    pub fn open(root: &Path, password: Option<&[u8]>) -> Result<Self> {
        let path = root.join(CONFIG_FILE);
        if !path.exists() {
            if root.join(CHAINS_DIR).is_dir() {
                return Err(RepoError::Damaged {
                    path,
                    reason: "missing, although the folder holds a repository's chains".into(),
                });
            }
            return Err(RepoError::NotARepository {
                path: root.to_path_buf(),
            });
        }
        let config = Config::decode(&fsutil::read(&path)?, &path)?;
        let keys = config.keys(password, &path)?;
        Ok(Repository {
            root: root.to_path_buf(),
            config,
            keys: Arc::new(keys),
        })
    }

    /// The repository folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parsed config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The unlocked keys.
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// The chain id of a VM: derived from its name with the repository's hash
    /// key, so folder names reveal nothing in encrypted repositories.
    pub fn chain_id(&self, vm: &str) -> String {
        let h = blake3::keyed_hash(self.keys.hash_key(), format!("vm\0{vm}").as_bytes());
        hex::encode(&h.as_bytes()[..16])
    }

    /// The folder of a VM's chain.
    pub fn chain_dir(&self, vm: &str) -> PathBuf {
        self.root.join(CHAINS_DIR).join(self.chain_id(vm))
    }

    /// Every chain folder in the repository.
    pub fn chain_dirs(&self) -> Result<Vec<PathBuf>> {
        let dir = self.root.join(CHAINS_DIR);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io(&dir, "read directory"))? {
            let e = e.map_err(io(&dir, "read directory"))?;
            if e.path().join(CHAIN_META).exists() {
                out.push(e.path());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads the metadata of the chain in `dir`.
    pub fn read_meta(&self, dir: &Path) -> Result<ChainMeta> {
        let path = dir.join(CHAIN_META);
        ChainMeta::decode(&fsutil::read(&path)?, &self.keys, &path)
    }

    /// The metadata of every chain (VM) in the repository, sorted by VM name.
    /// A chain whose metadata cannot be read is returned as its error, so one
    /// damaged chain does not hide the others.
    pub fn list(&self) -> Result<Vec<Result<ChainMeta>>> {
        let mut out = Vec::new();
        for dir in self.chain_dirs()? {
            out.push(fsutil::lock(&dir.join(LOCK_FILE), false).and_then(|_lock| self.read_meta(&dir)));
        }
        out.sort_by(|a, b| match (a, b) {
            (Ok(a), Ok(b)) => a.vm.cmp(&b.vm),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(_), Err(_)) => std::cmp::Ordering::Equal,
        });
        Ok(out)
    }

    /// Opens a VM's chain for reading (shared lock held while the reader lives).
    pub fn chain(&self, vm: &str) -> Result<ChainReader> {
        let dir = self.chain_dir(vm);
        if !dir.join(CHAIN_META).exists() {
            return Err(RepoError::NoSuchVm { vm: vm.to_string() });
        }
        ChainReader::open(self, &dir)
    }

    /// Opens the chain in `dir` for reading.
    pub fn chain_at(&self, dir: &Path) -> Result<ChainReader> {
        ChainReader::open(self, dir)
    }
}

/// A chain opened for reading: metadata, open data files, a shared lock.
///
/// A data file that cannot be opened (deleted, unreadable) does not make the
/// chain unreadable: only reads of records inside it fail, naming the file,
/// so the restore points that do not need it still restore.
pub struct ChainReader {
    dir: PathBuf,
    meta: ChainMeta,
    keys: Arc<Keys>,
    files: HashMap<u32, (PathBuf, File)>,
    /// Listed data files that could not be opened, with the cause.
    unopened: HashMap<u32, (PathBuf, std::io::Error)>,
    _lock: Option<fsutil::Lock>,
}

impl ChainReader {
    fn open(repo: &Repository, dir: &Path) -> Result<Self> {
        let lock = fsutil::lock(&dir.join(LOCK_FILE), false)?;
        let meta = repo.read_meta(dir)?;
        let mut reader = Self::open_unlocked(repo, dir, meta)?;
        reader._lock = Some(lock);
        Ok(reader)
    }

    /// Opens a chain whose lock the caller already holds.
    pub(crate) fn open_unlocked(repo: &Repository, dir: &Path, meta: ChainMeta) -> Result<Self> {
        let mut files = HashMap::new();
        let mut unopened = HashMap::new();
        for f in &meta.files {
            let path = dir.join(&f.name);
            match File::open(&path) {
                Ok(file) => {
                    files.insert(f.no, (path, file));
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "data file cannot be opened");
                    unopened.insert(f.no, (path, e));
                }
            }
        }
        Ok(ChainReader {
            dir: dir.to_path_buf(),
            meta,
            keys: repo.keys.clone(),
            files,
            unopened,
            _lock: None,
        })
    }

    /// The chain's metadata.
    pub fn meta(&self) -> &ChainMeta {
        &self.meta
    }

    /// The chain folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The repository keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Selects a point by id, id prefix or `latest`.
    pub fn point(&self, sel: &str) -> Result<&PointMeta> {
        self.meta.find_point(sel).ok_or_else(|| RepoError::NoSuchPoint {
            vm: self.meta.vm.clone(),
            point: sel.to_string(),
        })
    }

    /// Reads and checks a point's index.
    pub fn index(&self, point: &PointMeta) -> Result<PointIndex> {
        let path = self.dir.join(&point.index);
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RepoError::Damaged {
                path: path.clone(),
                reason: format!("index of restore point {} is missing", point.id),
            },
            _ => io(&path, "read")(e),
        })?;
        PointIndex::decode(&bytes, &self.keys).map_err(fmt(&path))
    }

    /// Where `r`'s record is, or a damage error naming the chain.
    pub fn locate(&self, r: &BlockRef) -> Result<Location> {
        self.meta.locate(r).ok_or_else(|| RepoError::Damaged {
            path: self.dir.join(CHAIN_META),
            reason: format!("block {} refers to unknown data file {}", r.block, r.file),
        })
    }

    /// Reads the raw bytes of `r`'s record (header and payload) into `buf`.
    pub fn read_record(&self, r: &BlockRef, buf: &mut Vec<u8>) -> Result<()> {
        let loc = self.locate(r)?;
        let Some((path, file)) = self.files.get(&loc.file) else {
            return Err(self.file_error(loc.file).unwrap_or_else(|| RepoError::Damaged {
                path: self.dir.join(CHAIN_META),
                reason: format!("data file {} is not open", loc.file),
            }));
        };
        buf.resize(RECORD_HEADER_LEN + r.stored_len as usize, 0);
        fsutil::read_exact_at(file, path, buf, loc.offset)
    }

    /// Reads, checks and decodes `r`'s block into `out`.
    pub fn read_block(
        &self,
        decoder: &mut RecordDecoder,
        r: &BlockRef,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.read_record(r, scratch)?;
        let h = decoder.decode(&self.keys, scratch, Some(&r.hash), out).map_err(|e| {
            let loc = self.meta.locate(r);
            let path = loc
                .and_then(|l| self.files.get(&l.file))
                .map(|(p, _)| p.clone())
                .unwrap_or_else(|| self.dir.clone());
            RepoError::Format { path, source: e }
        })?;
        if h.stored_len != r.stored_len {
            return Err(RepoError::Damaged {
                path: self.dir.clone(),
                reason: format!(
                    "block {}: record length {} differs from the index's {}",
                    r.block, h.stored_len, r.stored_len
                ),
            });
        }
        Ok(())
    }

    /// The open data file with physical number `no`.
    pub fn data_file(&self, no: u32) -> Option<(&Path, &File)> {
        self.files.get(&no).map(|(p, f)| (p.as_path(), f))
    }

    /// Why the listed data file `no` could not be opened, if it could not:
    /// [`RepoError::Damaged`] when it is missing, else the I/O error.
    pub fn file_error(&self, no: u32) -> Option<RepoError> {
        let (path, e) = self.unopened.get(&no)?;
        Some(match e.kind() {
            std::io::ErrorKind::NotFound => RepoError::Damaged {
                path: path.clone(),
                reason: "data file is missing (chain.meta lists it)".into(),
            },
            kind => RepoError::Io {
                path: path.clone(),
                op: "open data file",
                source: match e.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(kind, e.to_string()),
                },
            },
        })
    }
}
