//! Disk images as a guest sees them: a stack of layers (a differencing child
//! on top, its parents below), opened by content, read as one disk.
//!
//! ```no_run
//! use cairn_disk::DiskSource;
//! use cairn_disk::image::Image;
//! let img = Image::open("vm.avhdx".as_ref()).unwrap();
//! println!("{} bytes, {} layers", img.virtual_size(), img.layers().len());
//! if let Some(changed) = img.changed_extents().unwrap() {
//!     println!("the child changed {} extents", changed.len());
//! }
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::extent::Extent;
use crate::io::ImageFile;
use crate::layer::{Format, Layer, Piece, SectorSizes};
use crate::{DiskError, DiskSource, Result, qcow2, raw, vhd, vhdx};

/// At most this many layers in a chain; deeper chains are refused.
pub const MAX_DEPTH: usize = 256;

/// How the bytes of an extent of the merged disk are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    /// Stored in a layer (uncompressed or compressed).
    Data,
    /// A layer declares the range zero.
    Zero,
    /// No layer defines the range; it reads as zeros.
    Unallocated,
}

/// One extent of an allocation map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapEntry {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
    /// How the bytes are stored.
    pub fill: Fill,
    /// Index of the layer that defines the bytes (0 = top), if any.
    pub layer: Option<usize>,
}

/// How to open an image.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Format of the top file; `None` probes the content.
    pub format: Option<Format>,
    /// Open only the top file, not its parents (reads of parent data then fail).
    pub no_parents: bool,
}

/// Detects the format of `file` from its content.
pub fn probe(file: &ImageFile) -> Result<Format> {
    let mut head = [0u8; 8];
    let n = file.len().min(8) as usize;
    file.read_exact(&mut head[..n], 0, "format magic")?;
    if head[..n].starts_with(b"QFI\xfb") && n >= 4 {
        return Ok(Format::Qcow2);
    }
    if n == 8 && &head == b"vhdxfile" {
        return Ok(Format::Vhdx);
    }
    if n == 8 && &head == b"conectix" {
        return Ok(Format::Vhd);
    }
    if file.len() >= 512 && vhd::footer_at_end(file)? {
        return Ok(Format::Vhd);
    }
    Ok(Format::Raw)
}

/// Opens one file as a layer of `format`, or of the probed format.
pub fn open_layer(file: ImageFile, format: Option<Format>) -> Result<Box<dyn Layer>> {
    let format = match format {
        Some(f) => f,
        None => probe(&file)?,
    };
    Ok(match format {
        Format::Raw => Box::new(raw::RawLayer::new(file)?),
        Format::Qcow2 => Box::new(qcow2::Qcow2::open(file)?),
        Format::Vhdx => Box::new(vhdx::Vhdx::open(file)?),
        Format::Vhd => Box::new(vhd::Vhd::open(file)?),
    })
}

/// A disk image: layers from the file given (index 0) down to the base.
pub struct Image {
    layers: Vec<Box<dyn Layer>>,
    /// Last decompressed cluster: (layer, host offset, bytes).
    cluster_cache: Mutex<Option<(usize, u64, Vec<u8>)>>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let paths: Vec<_> = self.layers.iter().map(|l| l.file().path().to_path_buf()).collect();
        f.debug_struct("Image").field("layers", &paths).finish()
    }
}

impl Image {
    /// Opens `path` by content, with its parents.
    pub fn open(path: &Path) -> Result<Image> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// Opens `path` as `opts` say.
    pub fn open_with(path: &Path, opts: &OpenOptions) -> Result<Image> {
        let top = open_layer(ImageFile::open(path)?, opts.format)?;
        let mut layers = vec![top];
        if !opts.no_parents {
            let mut seen: HashSet<PathBuf> = HashSet::new();
            seen.insert(canonical(path));
            while let Some(parent) = layers.last().and_then(|l| l.parent()).cloned() {
                let child = layers.last().map(|l| l.file().path().to_path_buf()).unwrap_or_default();
                let perr = |reason: String| DiskError::Parent {
                    child: child.clone(),
                    parent: parent.name.clone(),
                    reason,
                };
                if layers.len() >= MAX_DEPTH {
                    return Err(perr(format!("the chain is more than {MAX_DEPTH} files deep")));
                }
                let Some(found) = parent.candidates.iter().find(|c| c.exists()) else {
                    let tried: Vec<String> = parent.candidates.iter().map(|c| c.display().to_string()).collect();
                    return Err(perr(format!("not found (looked for {})", tried.join(", "))));
                };
                if !seen.insert(canonical(found)) {
                    return Err(perr(format!("{} is already in the chain (a loop)", found.display())));
                }
                let layer = open_layer(ImageFile::open(found)?, parent.format)?;
                if !parent.linkage.is_empty() {
                    let id = layer.linkage_id().unwrap_or_default();
                    if !parent.linkage.iter().any(|l| l.eq_ignore_ascii_case(&id)) {
                        return Err(perr(format!(
                            "{} has id {id:?} but the child expects {}: the parent changed after the child was made",
                            found.display(),
                            parent.linkage.join(" or ")
                        )));
                    }
                }
                layers.push(layer);
            }
        }
        Ok(Image::from_layers(layers))
    }

    /// Builds an image from layers already open (index 0 on top).
    pub fn from_layers(layers: Vec<Box<dyn Layer>>) -> Image {
        Image {
            layers,
            cluster_cache: Mutex::new(None),
        }
    }

    /// The layers, top first.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// The file that was opened.
    pub fn top(&self) -> &dyn Layer {
        self.layers[0].as_ref()
    }

    /// Whether the top file is a differencing child of another file.
    pub fn is_differencing(&self) -> bool {
        self.layers.len() > 1
    }

    /// Sector sizes of the top file.
    pub fn sector_sizes(&self) -> SectorSizes {
        self.top().sector_sizes()
    }

    /// Calls `out(offset, length, level, piece)` for every run of
    /// `[offset, end)` of the merged disk, in order; `piece` is never
    /// [`Piece::Parent`]: bytes no layer defines come as `(None, Zero)`.
    fn resolve(
        &self,
        level: usize,
        offset: u64,
        end: u64,
        out: &mut dyn FnMut(u64, u64, Option<usize>, Piece) -> Result<()>,
    ) -> Result<()> {
        let reached = walk(
            self.layers[level].as_ref(),
            offset,
            end,
            &mut |o, len, piece| match piece {
                Piece::Parent if level + 1 < self.layers.len() => self.resolve(level + 1, o, o + len, &mut *out),
                Piece::Parent => out(o, len, None, Piece::Zero),
                p => out(o, len, Some(level), p),
            },
        )?;
        if reached < end {
            out(reached, end - reached, None, Piece::Zero)?;
        }
        Ok(())
    }

    /// The allocation map of the merged disk: consecutive extents covering
    /// the whole virtual size, touching runs of the same kind merged.
    pub fn map(&self) -> Result<Vec<MapEntry>> {
        let mut entries: Vec<MapEntry> = Vec::new();
        self.resolve(0, 0, self.virtual_size(), &mut |offset, length, level, piece| {
            let fill = match (level, piece) {
                (None, _) => Fill::Unallocated,
                (Some(_), Piece::Zero) => Fill::Zero,
                _ => Fill::Data,
            };
            match entries.last_mut() {
                Some(last) if last.fill == fill && last.layer == level && last.offset + last.length == offset => {
                    last.length += length
                }
                _ => entries.push(MapEntry {
                    offset,
                    length,
                    fill,
                    layer: level,
                }),
            }
            Ok(())
        })?;
        Ok(entries)
    }

    /// For a differencing child: the extents it defines itself (data or
    /// zero), i.e. what changed since its parent was frozen. `None` for an
    /// image without a parent.
    pub fn changed_extents(&self) -> Result<Option<Vec<Extent>>> {
        if !self.is_differencing() {
            return Ok(None);
        }
        let size = self.top().virtual_size();
        let mut out: Vec<Extent> = Vec::new();
        walk(self.top(), 0, size, &mut |offset, len, piece| {
            if piece != Piece::Parent {
                match out.last_mut() {
                    Some(last) if last.end() == offset => last.length += len,
                    _ => out.push(Extent { offset, length: len }),
                }
            }
            Ok(())
        })?;
        // A child larger than its parent changed the bytes past the parent's end too.
        let parent_size = self.layers[1].virtual_size();
        if size > parent_size {
            out.push(Extent {
                offset: parent_size,
                length: size - parent_size,
            });
            out = crate::extent::normalize(out);
        }
        Ok(Some(out))
    }

    /// An identity of the top file that changes when its data changes.
    pub fn identity(&self) -> String {
        layer_identity(self.top())
    }

    /// The identity of the top file's parent, if it has one.
    pub fn parent_identity(&self) -> Option<String> {
        self.layers.get(1).map(|l| layer_identity(l.as_ref()))
    }

    fn read_piece(&self, buf: &mut [u8], offset: u64, level: Option<usize>, piece: Piece) -> Result<()> {
        match (level, piece) {
            (Some(l), Piece::Data { host }) => self.layers[l].read_data(buf, host),
            (Some(l), Piece::Compressed { host, len, cluster }) => {
                let mut cache = self.cluster_cache.lock().unwrap_or_else(|e| e.into_inner());
                if !matches!(&*cache, Some((cl, ch, _)) if *cl == l && *ch == host) {
                    let mut out = cache.take().map(|c| c.2).unwrap_or_default();
                    self.layers[l].read_compressed(host, len, &mut out)?;
                    *cache = Some((l, host, out));
                }
                let bytes = cache.as_ref().map(|c| &c.2[..]).unwrap_or(&[]);
                let start = (offset - cluster) as usize;
                let Some(src) = bytes.get(start..start + buf.len()) else {
                    return Err(DiskError::format(
                        self.layers[l].file().path(),
                        "compressed cluster",
                        format!(
                            "cluster at guest offset {cluster} decompressed to only {} bytes",
                            bytes.len()
                        ),
                    ));
                };
                buf.copy_from_slice(src);
                Ok(())
            }
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }
}

/// Calls `f(offset, length, piece)` for the runs of one layer over
/// `[offset, end)`, clipped to the layer's size; returns where it stopped
/// (`end`, or the layer's size if smaller).
fn walk(layer: &dyn Layer, mut offset: u64, end: u64, f: &mut dyn FnMut(u64, u64, Piece) -> Result<()>) -> Result<u64> {
    let end = end.min(layer.virtual_size());
    while offset < end {
        let m = layer.map(offset, end - offset)?;
        if m.length == 0 {
            return Err(DiskError::format(
                layer.file().path(),
                "allocation map",
                format!("empty mapping at guest offset {offset}"),
            ));
        }
        let len = m.length.min(end - offset);
        f(offset, len, m.piece)?;
        offset += len;
    }
    Ok(offset.max(end))
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn layer_identity(layer: &dyn Layer) -> String {
    if let Some(id) = layer.content_id() {
        return format!("{}:{id}", layer.format());
    }
    let path = layer.file().path();
    let meta = std::fs::metadata(path).ok();
    let len = meta.as_ref().map_or(0, |m| m.len());
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{}:{}:{len}:{mtime}", layer.format(), canonical(path).display())
}

impl DiskSource for Image {
    fn describe(&self) -> String {
        self.top().file().path().display().to_string()
    }

    fn virtual_size(&self) -> u64 {
        self.top().virtual_size()
    }

    fn allocation(&self) -> Result<Vec<Extent>> {
        Ok(self
            .map()?
            .into_iter()
            .filter(|e| e.fill == Fill::Data)
            .map(|e| Extent {
                offset: e.offset,
                length: e.length,
            })
            .collect())
    }

    fn sector_sizes(&self) -> SectorSizes {
        self.top().sector_sizes()
    }

    fn identity(&self) -> Option<String> {
        Some(layer_identity(self.top()))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        // Gather runs, merging stored runs that are contiguous in the same file,
        // so a 1 MiB read of contiguous clusters is one read call.
        let mut runs: Vec<(u64, u64, Option<usize>, Piece)> = Vec::new();
        self.resolve(0, offset, end, &mut |o, len, level, piece| {
            if let Some(last) = runs.last_mut()
                && last.2 == level
                && last.0 + last.1 == o
            {
                match (&last.3, &piece) {
                    (Piece::Data { host: h }, Piece::Data { host }) if h + last.1 == *host => {
                        last.1 += len;
                        return Ok(());
                    }
                    (Piece::Zero, Piece::Zero) => {
                        last.1 += len;
                        return Ok(());
                    }
                    _ => {}
                }
            }
            runs.push((o, len, level, piece));
            Ok(())
        })?;
        for (o, len, level, piece) in runs {
            let at = (o - offset) as usize;
            self.read_piece(&mut buf[at..at + len as usize], o, level, piece)?;
        }
        Ok(())
    }
}
