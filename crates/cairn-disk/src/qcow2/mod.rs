//! qcow2 images (QEMU copy-on-write, versions 2 and 3), read and written.
//!
//! Layout, following the sections of QEMU's `qcow2.txt` specification:
//!
//! * **Header**: the first cluster starts with a big-endian header (magic
//!   `QFI\xfb`, version, backing file name offset/size, `cluster_bits`,
//!   virtual size, encryption method, L1 table size/offset, refcount table,
//!   snapshot table; version 3 adds feature bitmaps, `refcount_order`, the
//!   header length and the compression type). **Header extensions** follow
//!   it (type, length, padded data) until an end marker: the backing file
//!   format, the feature name table and the external data file name are the
//!   ones cairn uses.
//! * **Cluster mapping**: guest offsets map through a two-level table. The
//!   L1 table (one entry per L2 table, kept in memory here) points to L2
//!   tables of one cluster each (read on demand through a small cache). An
//!   L2 entry describes one guest cluster: a host cluster offset (data), the
//!   "reads as zeros" flag (version 3), a compressed cluster (bit 62: host
//!   offset and sector count packed in the low bits), or nothing (the bytes
//!   come from the backing file). With **extended L2 entries** each entry is
//!   128 bits: the second half holds allocation and zero bitmaps for the 32
//!   subclusters of the cluster.
//! * **Refcounts** (a refcount table of refcount blocks) matter only to
//!   writers; **snapshots** are ignored: cairn reads the active L1 table.
//! * An **external data file** holds the guest clusters at the host offsets
//!   the L2 entries give, while the qcow2 file keeps only metadata.
//!
//! [`Qcow2`] is the reader ([`Layer`]); [`Qcow2Writer`] creates new version 3
//! images for restore.

mod header;
mod writer;

use std::sync::{Arc, Mutex};

pub use header::Compression;
use header::{
    AUTOCLEAR_BITMAPS, AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY,
    MAX_L1_BYTES,
};
pub use writer::Qcow2Writer;

use crate::io::ImageFile;
use crate::layer::{Format, Layer, Mapping, ParentRef, Piece, relative_to};
use crate::{DiskError, Result};

/// Bits 9..=55 of L1 and standard L2 entries: a host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bit 62: the cluster is compressed.
const COMPRESSED: u64 = 1 << 62;
/// L1/L2 entry bit 63: refcount is exactly one.
const COPIED: u64 = 1 << 63;
/// Standard L2 entry bit 0 (version 3): the cluster reads as zeros.
const ZERO: u64 = 1;
/// Upper bound on the bytes of L2 tables kept in the cache.
const CACHE_BYTES: u64 = 16 << 20;
/// Upper bound on the number of L2 tables kept in the cache.
const CACHE_TABLES: u64 = 32;

/// A qcow2 file opened for reading (one layer of a chain).
pub struct Qcow2 {
    file: ImageFile,
    /// The external data file, when the image has one.
    data: Option<ImageFile>,
    header: Header,
    parent: Option<ParentRef>,
    /// The active L1 table, only the entries the virtual size needs.
    l1: Box<[u64]>,
    /// Host byte range of the L1 table.
    l1_range: (u64, u64),
    /// Guest clusters per L2 table.
    l2_entries: u64,
    /// Recently used L2 tables, most recent last: (L1 index, entries).
    cache: Mutex<Vec<(u64, Arc<[u64]>)>>,
    cache_cap: usize,
}

impl std::fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2")
            .field("file", &self.file)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl Qcow2 {
    /// Opens a qcow2 file: validates the header and reads the L1 table. An
    /// external data file is opened too; backing files are left to
    /// [`crate::image::Image`].
    pub fn open(file: ImageFile) -> Result<Self> {
        let header = Header::read(&file)?;
        let path = file.path().to_path_buf();
        let bad = |field: &str, reason: String| DiskError::format(&path, field, reason);
        let cs = header.cluster_size();
        let ext = header.extended_l2();
        if ext && header.cluster_bits < 14 {
            return Err(bad(
                "extended L2",
                format!("extended L2 entries need clusters of at least 16 KiB, not {cs} bytes"),
            ));
        }
        let l2_entries = cs / if ext { 16 } else { 8 };
        let per_l1 = cs * l2_entries;
        let needed = header.size.div_ceil(per_l1);
        if needed > MAX_L1_BYTES / 8 {
            return Err(bad(
                "size",
                format!(
                    "a virtual size of {} bytes needs {needed} L1 entries with {cs}-byte clusters, more than the {} qemu allows",
                    header.size,
                    MAX_L1_BYTES / 8
                ),
            ));
        }
        let l1_size = header.l1_size as u64;
        if l1_size > MAX_L1_BYTES / 8 {
            return Err(bad(
                "l1_size",
                format!("{l1_size} entries is more than the {} qemu allows", MAX_L1_BYTES / 8),
            ));
        }
        if l1_size < needed {
            return Err(bad(
                "l1_size",
                format!(
                    "{l1_size} entries cover {} bytes but the virtual size is {}",
                    l1_size * per_l1,
                    header.size
                ),
            ));
        }
        let l1_offset = header.l1_offset;
        let l1_bytes = l1_size * 8;
        if l1_size > 0 {
            if !l1_offset.is_multiple_of(cs) || l1_offset < cs {
                return Err(bad(
                    "l1_table_offset",
                    format!("{l1_offset:#x} is not a cluster boundary after the header cluster"),
                ));
            }
            if l1_offset.checked_add(l1_bytes).is_none_or(|e| e > file.len()) {
                return Err(bad(
                    "l1_table_offset",
                    format!(
                        "the L1 table ({l1_size} entries at {l1_offset:#x}) reaches past the end of the file ({} bytes)",
                        file.len()
                    ),
                ));
            }
        }
        let raw = file.read_vec(l1_offset, needed * 8, "L1 table")?;
        let l1: Box<[u64]> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect();

        let data = match &header.data_file {
            Some(name) => {
                let p = relative_to(&path, name);
                Some(ImageFile::open(&p).map_err(|e| bad("external data file", format!("{name:?}: {e}")))?)
            }
            None => None,
        };
        let parent = match &header.backing {
            Some(name) => Some(ParentRef {
                name: name.clone(),
                candidates: vec![relative_to(&path, name)],
                format: match header.backing_format.as_deref() {
                    None => None,
                    Some(f) => Some(backing_format(&path, f)?),
                },
                linkage: Vec::new(),
            }),
            None => None,
        };
        let cache_cap = (CACHE_BYTES / cs).clamp(2, CACHE_TABLES) as usize;
        Ok(Qcow2 {
            file,
            data,
            parent,
            l1,
            l1_range: (l1_offset, l1_offset + l1_bytes),
            l2_entries,
            cache: Mutex::new(Vec::with_capacity(cache_cap)),
            cache_cap,
            header,
        })
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// The qcow2 version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// The compression used by compressed clusters.
    pub fn compression(&self) -> Compression {
        self.header.compression
    }

    /// The file holding guest data: the external data file or the image itself.
    fn data_file(&self) -> &ImageFile {
        self.data.as_ref().unwrap_or(&self.file)
    }

    /// The L2 table of L1 entry `l1i`, or `None` when the entry is unallocated.
    fn l2_table(&self, l1i: u64) -> Result<Option<Arc<[u64]>>> {
        let entry = self.l1.get(l1i as usize).copied().unwrap_or(0);
        let off = entry & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pos) = cache.iter().rposition(|(i, _)| *i == l1i) {
                let hit = cache.remove(pos);
                let table = hit.1.clone();
                cache.push(hit);
                return Ok(Some(table));
            }
        }
        let cs = self.cluster_size();
        let field = format!("L1 table entry {l1i}");
        let bad = |reason: String| DiskError::format(self.file.path(), &field, reason);
        if !off.is_multiple_of(cs) {
            return Err(bad(format!(
                "L2 table offset {off:#x} is not aligned to the {cs}-byte clusters"
            )));
        }
        if off < cs {
            return Err(bad(format!("L2 table offset {off:#x} lies in the header cluster")));
        }
        if off < self.l1_range.1 && self.l1_range.0 < off + cs {
            return Err(bad(format!("L2 table offset {off:#x} overlaps the L1 table")));
        }
        if off.checked_add(cs).is_none_or(|e| e > self.file.len()) {
            return Err(bad(format!(
                "L2 table at {off:#x} reaches past the end of the file ({} bytes)",
                self.file.len()
            )));
        }
        let raw = self.file.read_vec(off, cs, &field)?;
        let table: Arc<[u64]> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.cache_cap {
            cache.remove(0);
        }
        cache.push((l1i, table.clone()));
        Ok(Some(table))
    }

    /// How the guest byte `cur` is stored, given its L2 table: the piece and
    /// the number of bytes from `cur` to the end of the cluster (or subcluster).
    fn unit(&self, table: &[u64], l1i: u64, cur: u64) -> Result<(Piece, u64)> {
        let cb = self.header.cluster_bits;
        let cs = 1u64 << cb;
        let cluster = cur >> cb;
        let idx = cluster % self.l2_entries;
        let in_cluster = cur & (cs - 1);
        let guest_cluster = cluster << cb;
        let ext = self.header.extended_l2();
        let field = || format!("L2 table entry {idx} of L1 table entry {l1i} (guest offset {guest_cluster})");
        let bad = |reason: String| DiskError::format(self.file.path(), field(), reason);
        let entry = table[(idx * if ext { 2 } else { 1 }) as usize];

        if entry & COMPRESSED != 0 {
            if self.data.is_some() {
                return Err(bad("compressed cluster in an image with an external data file".into()));
            }
            let x = 62 - (cb - 8);
            let host = entry & ((1u64 << x) - 1);
            let sectors = (entry >> x) & ((1u64 << (cb - 8)) - 1);
            let len = (sectors + 1) * 512 - (host & 511);
            let flen = self.file.len();
            if host >= flen {
                return Err(bad(format!(
                    "compressed data at {host:#x} is past the end of the file ({flen} bytes)"
                )));
            }
            if host < cs {
                return Err(bad(format!("compressed data at {host:#x} lies in the header cluster")));
            }
            let piece = Piece::Compressed {
                host,
                len: len.min(flen - host),
                cluster: guest_cluster,
            };
            return Ok((piece, cs - in_cluster));
        }

        let host_cluster = entry & OFFSET_MASK;
        let allocated = host_cluster != 0 || (self.data.is_some() && entry & COPIED != 0);
        let (state, unit_len) = if ext {
            let bitmap = table[(idx * 2 + 1) as usize];
            let sc_bits = cb - 5;
            let sc = in_cluster >> sc_bits;
            let unit_len = (1u64 << sc_bits) - (in_cluster & ((1u64 << sc_bits) - 1));
            let alloc = (bitmap >> sc) & 1 != 0;
            let zero = (bitmap >> (32 + sc)) & 1 != 0;
            if alloc && zero {
                return Err(bad(format!("subcluster {sc} is marked both allocated and zero")));
            }
            if alloc && !allocated {
                return Err(bad(format!(
                    "subcluster {sc} is allocated but the cluster has no host offset"
                )));
            }
            let state = if alloc {
                State::Data
            } else if zero {
                State::Zero
            } else {
                State::Parent
            };
            (state, unit_len)
        } else if self.header.version >= 3 && entry & ZERO != 0 {
            (State::Zero, cs - in_cluster)
        } else if allocated {
            (State::Data, cs - in_cluster)
        } else {
            (State::Parent, cs - in_cluster)
        };
        let piece = match state {
            State::Zero => Piece::Zero,
            State::Parent => Piece::Parent,
            State::Data => {
                if !host_cluster.is_multiple_of(cs) {
                    return Err(bad(format!(
                        "host offset {host_cluster:#x} is not aligned to the {cs}-byte clusters"
                    )));
                }
                let df = self.data_file();
                if self.data.is_none() {
                    if host_cluster < cs {
                        return Err(bad(format!("host offset {host_cluster:#x} lies in the header cluster")));
                    }
                    if host_cluster < self.l1_range.1 && self.l1_range.0 < host_cluster + cs {
                        return Err(bad(format!("host offset {host_cluster:#x} overlaps the L1 table")));
                    }
                }
                // Every byte of this (sub)cluster the guest can see must be stored.
                let needed = (cur + unit_len).min(self.header.size) - guest_cluster;
                if host_cluster.checked_add(needed).is_none_or(|e| e > df.len()) {
                    let which = if self.data.is_some() {
                        "external data file"
                    } else {
                        "file"
                    };
                    return Err(bad(format!(
                        "host cluster {host_cluster:#x} is past the end of the {which} ({} bytes)",
                        df.len()
                    )));
                }
                Piece::Data {
                    host: host_cluster + in_cluster,
                }
            }
        };
        Ok((piece, unit_len))
    }
}

/// What a (sub)cluster holds.
#[derive(Clone, Copy)]
enum State {
    Data,
    Zero,
    Parent,
}

/// Maps a backing format name of the extension to a cairn format.
fn backing_format(path: &std::path::Path, name: &str) -> Result<Format> {
    Ok(match name {
        "raw" | "file" | "host_device" => Format::Raw,
        "qcow2" => Format::Qcow2,
        "vpc" => Format::Vhd,
        "vhdx" => Format::Vhdx,
        other => {
            return Err(DiskError::Unsupported {
                path: path.to_path_buf(),
                what: format!("backing file format {other:?}"),
            });
        }
    })
}

/// Adds `piece` of `len` bytes to the run in `acc`; returns false when the
/// run is complete (the piece could not be merged, or is compressed).
fn extend(acc: &mut Option<Mapping>, piece: Piece, len: u64) -> bool {
    match acc {
        None => {
            *acc = Some(Mapping { piece, length: len });
            !matches!(piece, Piece::Compressed { .. })
        }
        Some(m) => {
            let merge = match (m.piece, piece) {
                (Piece::Zero, Piece::Zero) | (Piece::Parent, Piece::Parent) => true,
                (Piece::Data { host: a }, Piece::Data { host: b }) => a + m.length == b,
                _ => false,
            };
            if merge {
                m.length += len;
            }
            merge
        }
    }
}

impl Layer for Qcow2 {
    fn file(&self) -> &ImageFile {
        &self.file
    }

    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn virtual_size(&self) -> u64 {
        self.header.size
    }

    fn parent(&self) -> Option<&ParentRef> {
        self.parent.as_ref()
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let size = self.header.size;
        if offset >= size || max_len == 0 {
            return Err(DiskError::format(
                self.file.path(),
                "allocation map",
                format!("asked to map {max_len} bytes at {offset}, outside the virtual size {size}"),
            ));
        }
        let end = offset.saturating_add(max_len).min(size);
        let cb = self.header.cluster_bits;
        let mut acc: Option<Mapping> = None;
        let mut cur = offset;
        while cur < end {
            let l1i = (cur >> cb) / self.l2_entries;
            let table_end = (((l1i + 1) * self.l2_entries) << cb).min(end);
            match self.l2_table(l1i)? {
                None => {
                    if !extend(&mut acc, Piece::Parent, table_end - cur) {
                        break;
                    }
                    cur = table_end;
                }
                Some(table) => {
                    while cur < table_end {
                        let (piece, len) = self.unit(&table, l1i, cur)?;
                        let len = len.min(table_end - cur);
                        if !extend(&mut acc, piece, len) {
                            return Ok(acc.unwrap_or(Mapping { piece, length: len }));
                        }
                        cur += len;
                    }
                }
            }
        }
        Ok(acc.unwrap_or(Mapping {
            piece: Piece::Parent,
            length: end - offset,
        }))
    }

    fn read_data(&self, buf: &mut [u8], host: u64) -> Result<()> {
        self.data_file().read_exact(buf, host, "data cluster")
    }

    fn read_compressed(&self, host: u64, len: u64, out: &mut Vec<u8>) -> Result<()> {
        let cs = self.cluster_size() as usize;
        let flen = self.file.len();
        let field = format!("compressed cluster at {host:#x}");
        if host >= flen {
            return Err(DiskError::format(
                self.file.path(),
                &field,
                format!("past the end of the file ({flen} bytes)"),
            ));
        }
        let input = self.file.read_vec(host, len.min(flen - host), &field)?;
        out.clear();
        out.resize(cs, 0);
        let produced = match self.header.compression {
            Compression::Zlib => {
                let mut z = flate2::Decompress::new(false);
                z.decompress(&input, out, flate2::FlushDecompress::Finish)
                    .map_err(|e| DiskError::format(self.file.path(), &field, format!("deflate: {e}")))?;
                z.total_out() as usize
            }
            Compression::Zstd => zstd_cluster(&input, out)
                .map_err(|e| DiskError::format(self.file.path(), &field, format!("zstd: {e}")))?,
        };
        if produced != cs {
            return Err(DiskError::format(
                self.file.path(),
                &field,
                format!("decompressed to {produced} bytes instead of the {cs}-byte cluster"),
            ));
        }
        Ok(())
    }

    fn details(&self) -> Vec<(String, String)> {
        let h = &self.header;
        let names = |bits: u64, kind: u8, known: &[(u64, &str)]| -> String {
            let mut v = Vec::new();
            for bit in 0..64u8 {
                if bits & (1u64 << bit) == 0 {
                    continue;
                }
                let name = known
                    .iter()
                    .find(|(b, _)| *b == 1u64 << bit)
                    .map(|(_, n)| n.to_string())
                    .or_else(|| h.feature_name(kind, bit).map(str::to_string))
                    .unwrap_or_else(|| format!("bit {bit}"));
                v.push(name);
            }
            if v.is_empty() { "none".into() } else { v.join(", ") }
        };
        let mut d = vec![
            ("version".to_string(), h.version.to_string()),
            ("compat".into(), if h.version >= 3 { "1.1" } else { "0.10" }.to_string()),
            ("cluster size".into(), h.cluster_size().to_string()),
            (
                "incompatible features".into(),
                names(
                    h.incompatible,
                    0,
                    &[
                        (INCOMPAT_DIRTY, "dirty"),
                        (INCOMPAT_CORRUPT, "corrupt"),
                        (header::INCOMPAT_DATA_FILE, "external data file"),
                        (header::INCOMPAT_COMPRESSION, "compression type"),
                        (header::INCOMPAT_EXTL2, "extended L2 entries"),
                    ],
                ),
            ),
            (
                "compatible features".into(),
                names(h.compatible, 1, &[(COMPAT_LAZY_REFCOUNTS, "lazy refcounts")]),
            ),
            (
                "autoclear features".into(),
                names(
                    h.autoclear,
                    2,
                    &[
                        (AUTOCLEAR_BITMAPS, "bitmaps"),
                        (AUTOCLEAR_DATA_FILE_RAW, "data file raw"),
                    ],
                ),
            ),
            (
                "compression type".into(),
                match h.compression {
                    Compression::Zlib => "zlib",
                    Compression::Zstd => "zstd",
                }
                .into(),
            ),
            ("extended L2".into(), if h.extended_l2() { "yes" } else { "no" }.into()),
            ("refcount bits".into(), (1u32 << h.refcount_order.min(6)).to_string()),
            (
                "data file".into(),
                match &self.data {
                    Some(f) => format!(
                        "{}{}",
                        f.path().display(),
                        if h.autoclear & AUTOCLEAR_DATA_FILE_RAW != 0 {
                            " (raw)"
                        } else {
                            ""
                        }
                    ),
                    None => "none".into(),
                },
            ),
            ("snapshots".into(), h.nb_snapshots.to_string()),
        ];
        if let Some(b) = &h.backing {
            d.push(("backing file".into(), b.clone()));
            d.push((
                "backing format".into(),
                h.backing_format.clone().unwrap_or_else(|| "(probed)".into()),
            ));
        }
        if h.incompatible & INCOMPAT_DIRTY != 0 {
            d.push((
                "dirty".into(),
                "yes: not closed cleanly; refcounts may be stale (reads are unaffected)".into(),
            ));
        }
        if h.incompatible & INCOMPAT_CORRUPT != 0 {
            d.push((
                "corrupt".into(),
                "yes: qemu marked this image corrupt; it was read anyway, check the data".into(),
            ));
        }
        d
    }
}

/// Decompresses zstd frames from `input` into all of `out`; returns the
/// number of bytes produced. Bytes after the cluster's data are ignored.
fn zstd_cluster(input: &[u8], out: &mut [u8]) -> std::io::Result<usize> {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let mut dec = Decoder::new()?;
    let mut inb = InBuffer::around(input);
    let mut outb = OutBuffer::around(out);
    while outb.pos() < outb.capacity() {
        let (last_in, last_out) = (inb.pos(), outb.pos());
        dec.run(&mut inb, &mut outb)?;
        if inb.pos() == last_in && outb.pos() == last_out {
            break;
        }
    }
    Ok(outb.pos())
}
