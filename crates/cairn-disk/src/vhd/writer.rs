//! Writing dynamic VHD files (restore), and differencing children (tests).
//!
//! Layout of a file written here: footer copy (0), dynamic disk header
//! (512), BAT (1536, padded to whole sectors with all-ones entries), parent
//! locator data (children only), then the blocks in the order they were
//! first written (sector bitmap + 2 MiB of data each), then the footer.
//!
//! Size and geometry: the footer's current size (and original size) is the
//! disk size rounded up to whole sectors and then to the next size that the
//! spec's CHS geometry describes exactly, and the geometry is that size's
//! (see [`chs_size`]): geometry × 512 equals the current size. Readers
//! disagree on which of the two is the size — QEMU before 10.0 (Debian 12's
//! 7.2) takes the geometry for any creator it does not know, such as cairn's
//! "crn "; QEMU 10 takes the current size for every creator but Virtual PC
//! and QEMU itself; Hyper-V and libvhdi take the current size; Virtual PC
//! the geometry — so with the two equal they all see the same size. The disk
//! grows by less than one cylinder (at most 16 × 255 sectors, about 2 MiB) of
//! zeros at its end, as qemu-img and Hyper-V grow a new VHD. From about
//! 127 GiB on the geometry is the largest one and every reader takes the
//! current size, which is then the size in whole sectors.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Vhd;
use super::format::{
    DEFAULT_BLOCK_SIZE, DynHeader, EPOCH_2000, FOOTER_LEN, Footer, HEADER_LEN, Locator, MAX_SIZE, SECTOR,
    TYPE_DIFFERENCING, TYPE_DYNAMIC, UNALLOCATED, bitmap_len, chs_size, platform,
};
use crate::io::ImageFile;
use crate::io_error as io;
use crate::layer::Layer;
use crate::output::{NewFile, WriteOptions, check_write_range, disk_writer_by_inherent_methods};
use crate::raw::is_zero;
use crate::{DiskError, Result};

/// Creator application written into the footer: cairn.
const CREATOR: [u8; 4] = *b"crn ";
/// Offset of the dynamic disk header.
const HEADER_AT: u64 = FOOTER_LEN as u64;
/// Offset of the BAT.
const BAT_AT: u64 = HEADER_AT + HEADER_LEN as u64;

/// What a differencing child records about its parent.
struct ChildOf {
    parent_id: [u8; 16],
    parent_timestamp: u32,
    parent_name: String,
    /// (platform code, offset, data) of each locator.
    locators: Vec<(u32, u64, Vec<u8>)>,
}

struct State {
    /// Where the next block goes (the footer goes here at the end).
    next_free: u64,
    bat: Vec<u32>,
    /// Sector bitmaps of a child's blocks (a dynamic disk's are all ones).
    bitmaps: HashMap<usize, Vec<u8>>,
}

/// Writes a dynamic VHD with 2 MiB blocks (see the module documentation for
/// the size rule), or, with [`VhdWriter::create_child`], a differencing child.
///
/// Writes may come from several threads: block allocation takes a lock, the
/// data is written outside it. A dynamic disk skips all-zero data; its
/// blocks' bitmaps are all ones (like QEMU's), so the unwritten parts of a
/// block read as zeros.
pub struct VhdWriter {
    path: PathBuf,
    file: File,
    size: u64,
    block_size: u64,
    bitmap_len: u64,
    footer: Footer,
    child: Option<ChildOf>,
    state: Mutex<State>,
}

fn now_vhd() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    unix.saturating_sub(EPOCH_2000).min(u32::MAX as u64) as u32
}

fn creator_version() -> u32 {
    let mut v = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = v.next().unwrap_or(0).min(0xFFFF);
    let minor = v.next().unwrap_or(0).min(0xFFFF);
    (major << 16) | minor
}

impl VhdWriter {
    /// Creates `path` (which must not exist) for a dynamic disk of `size`
    /// bytes rounded up as the module documentation says ([`chs_size`];
    /// [`crate::writer::image_size`] tells the size). VHD sectors are 512 bytes:
    /// a logical sector size of 4096 is refused; the block size is always
    /// 2 MiB (`opts.block_size` does not apply).
    pub fn create(path: &Path, size: u64, opts: &WriteOptions) -> Result<Self> {
        crate::output::create_at(path, |out| Self::create_in(out, size, opts))
    }

    /// Like [`VhdWriter::create`], into the empty file `out`.
    pub fn create_in(out: NewFile, size: u64, opts: &WriteOptions) -> Result<Self> {
        let path = out.path.as_path();
        if opts.logical_sector != SECTOR as u32 {
            return Err(DiskError::format(
                path,
                "sector size",
                format!(
                    "VHD has 512-byte sectors; logical {} is not possible",
                    opts.logical_sector
                ),
            ));
        }
        let (size, geometry) = chs_size(size);
        Self::make(out, size, geometry, None)
    }

    /// Creates `path` as a differencing child of the VHD `parent`, as
    /// Hyper-V would: same virtual size and geometry, the parent's unique id
    /// and file modification time, its file name, and a relative (W2ru) and
    /// an absolute (W2ku) locator. Meant for tests: writes may cover parts
    /// of blocks (whole sectors); only the written sectors' bits are set, the
    /// others keep reading from the parent, and all-zero data is stored too
    /// (it hides the parent's bytes).
    pub fn create_child(path: &Path, parent: &Path) -> Result<Self> {
        let p = Vhd::open(ImageFile::open(parent)?)?;
        let pf = p.footer();
        let mtime = std::fs::metadata(parent)
            .and_then(|m| m.modified())
            .map_err(io(parent, "stat"))?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let abs = std::fs::canonicalize(parent).map_err(io(parent, "resolve path"))?;
        let child_dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let child_dir = std::fs::canonicalize(child_dir).map_err(io(child_dir, "resolve path"))?;
        let relative = crate::layer::windows_relative(&child_dir, &abs);
        let absolute = abs.to_string_lossy().replace('/', "\\");
        let utf16le = |s: &str| s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect::<Vec<u8>>();
        let child = ChildOf {
            parent_id: pf.unique_id,
            parent_timestamp: mtime.saturating_sub(EPOCH_2000).min(u32::MAX as u64) as u32,
            parent_name: abs
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            locators: vec![
                (platform::W2RU, 0, utf16le(&relative)),
                (platform::W2KU, 0, utf16le(&absolute)),
            ],
        };
        let geometry = (pf.cylinders, pf.heads, pf.sectors_per_track);
        crate::output::create_at(path, |out| Self::make(out, p.virtual_size(), geometry, Some(child)))
    }

    fn make(out: NewFile, size: u64, geometry: (u16, u8, u8), mut child: Option<ChildOf>) -> Result<Self> {
        let path = out.path.as_path();
        if size > MAX_SIZE {
            return Err(DiskError::format(
                path,
                "size",
                format!("{size} bytes is more than the VHD limit of {MAX_SIZE}"),
            ));
        }
        let block_size = DEFAULT_BLOCK_SIZE as u64;
        let blocks = size.div_ceil(block_size) as usize;
        let mut next_free = BAT_AT + (blocks as u64 * 4).div_ceil(SECTOR) * SECTOR;
        if let Some(c) = &mut child {
            for (_, at, data) in &mut c.locators {
                *at = next_free;
                next_free += (data.len() as u64).div_ceil(SECTOR).max(1) * SECTOR;
            }
        }
        let footer = Footer {
            features: 2,
            version: 0x0001_0000,
            data_offset: HEADER_AT,
            timestamp: now_vhd(),
            creator_app: CREATOR,
            creator_version: creator_version(),
            // The spec defines only "Wi2k" and "Mac "; QEMU writes "Wi2k" on every host too.
            creator_os: *b"Wi2k",
            original_size: size,
            current_size: size,
            cylinders: geometry.0,
            heads: geometry.1,
            sectors_per_track: geometry.2,
            disk_type: if child.is_some() {
                TYPE_DIFFERENCING
            } else {
                TYPE_DYNAMIC
            },
            unique_id: *uuid::Uuid::new_v4().as_bytes(),
            saved_state: 0,
        };
        Ok(VhdWriter {
            path: out.path.clone(),
            file: out.file,
            size,
            block_size,
            bitmap_len: bitmap_len(DEFAULT_BLOCK_SIZE),
            footer,
            child,
            state: Mutex::new(State {
                next_free,
                bat: vec![UNALLOCATED; blocks],
                bitmaps: HashMap::new(),
            }),
        })
    }

    /// The virtual size of the disk being written.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes `data` at guest `offset`; see [`DiskWriter::write_at`](crate::output::DiskWriter::write_at).
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        check_write_range(&self.path, self.size, data.len(), offset)?;
        if self.child.is_some() && (!offset.is_multiple_of(SECTOR) || !(data.len() as u64).is_multiple_of(SECTOR)) {
            return Err(DiskError::format(
                &self.path,
                "write",
                format!(
                    "a differencing child takes whole sectors; got {} bytes at {offset}",
                    data.len()
                ),
            ));
        }
        let mut pos = 0usize;
        while pos < data.len() {
            let at = offset + pos as u64;
            let b = (at / self.block_size) as usize;
            let within = at % self.block_size;
            let n = ((self.block_size - within) as usize).min(data.len() - pos);
            let piece = &data[pos..pos + n];
            pos += n;
            if self.child.is_none() && is_zero(piece) {
                continue;
            }
            let (block_at, new) = self.allocate(b, within, n as u64)?;
            if new && self.child.is_none() {
                let ones = vec![0xFFu8; self.bitmap_len as usize];
                self.file
                    .write_all_at(&ones, block_at)
                    .map_err(io(&self.path, "write"))?;
            }
            self.file
                .write_all_at(piece, block_at + self.bitmap_len + within)
                .map_err(io(&self.path, "write"))?;
        }
        Ok(())
    }

    /// The file offset of block `b` (allocating it at the end if needed, and
    /// marking a child's sectors `within..within + len` present), and whether it is new.
    fn allocate(&self, b: usize, within: u64, len: u64) -> Result<(u64, bool)> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut new = false;
        if st.bat[b] == UNALLOCATED {
            let at = st.next_free;
            let sector = at / SECTOR;
            if sector >= UNALLOCATED as u64 {
                return Err(DiskError::format(
                    &self.path,
                    "BAT",
                    format!("block offset {at} does not fit a 32-bit sector number"),
                ));
            }
            st.bat[b] = sector as u32;
            st.next_free += self.bitmap_len + self.block_size;
            new = true;
        }
        let block_at = st.bat[b] as u64 * SECTOR;
        if self.child.is_some() {
            let bm = st
                .bitmaps
                .entry(b)
                .or_insert_with(|| vec![0u8; self.bitmap_len as usize]);
            for s in within / SECTOR..(within + len) / SECTOR {
                bm[(s / 8) as usize] |= 0x80 >> (s % 8);
            }
        }
        Ok((block_at, new))
    }

    /// Writes the BAT, the header, the locators and bitmaps of a child, both
    /// footers, and flushes the file.
    pub fn finish(self) -> Result<()> {
        let st = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        let io_w = |e| io(&self.path, "write")(e);
        let bat_len = (st.bat.len() as u64 * 4).div_ceil(SECTOR) * SECTOR;
        let mut bat = vec![0xFFu8; bat_len as usize];
        for (i, e) in st.bat.iter().enumerate() {
            bat[i * 4..i * 4 + 4].copy_from_slice(&e.to_be_bytes());
        }
        self.file.write_all_at(&bat, BAT_AT).map_err(io_w)?;
        let mut header = DynHeader {
            table_offset: BAT_AT,
            version: 0x0001_0000,
            max_table_entries: st.bat.len() as u32,
            block_size: self.block_size as u32,
            parent_id: [0; 16],
            parent_timestamp: 0,
            parent_name: String::new(),
            locators: [Locator::default(); 8],
        };
        if let Some(c) = &self.child {
            header.parent_id = c.parent_id;
            header.parent_timestamp = c.parent_timestamp;
            header.parent_name = c.parent_name.clone();
            for (i, (code, at, data)) in c.locators.iter().enumerate() {
                let space = (data.len() as u64).div_ceil(SECTOR).max(1) * SECTOR;
                // Data space in bytes, as Microsoft's tools write it (the spec says sectors;
                // readers accept both because a value of 512 or more is a byte count).
                header.locators[i] = Locator {
                    code: *code,
                    data_space: space as u32,
                    data_len: data.len() as u32,
                    data_offset: *at,
                };
                let mut padded = data.clone();
                padded.resize(space as usize, 0);
                self.file.write_all_at(&padded, *at).map_err(io_w)?;
            }
            for (b, bm) in &st.bitmaps {
                self.file.write_all_at(bm, st.bat[*b] as u64 * SECTOR).map_err(io_w)?;
            }
        }
        self.file.write_all_at(&header.encode(), HEADER_AT).map_err(io_w)?;
        let footer = self.footer.encode();
        self.file.write_all_at(&footer, 0).map_err(io_w)?;
        // Blocks never fully written stay holes; the footer goes right after the last block.
        self.file
            .set_len(st.next_free + FOOTER_LEN as u64)
            .map_err(io(&self.path, "set length"))?;
        self.file.write_all_at(&footer, st.next_free).map_err(io_w)?;
        self.file.sync_all().map_err(io(&self.path, "fsync"))
    }
}

disk_writer_by_inherent_methods!(VhdWriter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_windows_style() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            crate::layer::windows_relative(&p("/a/b"), &p("/a/b/base.vhd")),
            ".\\base.vhd"
        );
        assert_eq!(
            crate::layer::windows_relative(&p("/a/b"), &p("/a/c/base.vhd")),
            "..\\c\\base.vhd"
        );
        assert_eq!(
            crate::layer::windows_relative(&p("/a/b/c"), &p("/x.vhd")),
            "..\\..\\..\\x.vhd"
        );
    }
}
