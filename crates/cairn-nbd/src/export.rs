//! What the server exports: the [`ExportBackend`] trait and [`SourceExport`].

use std::io;
use std::sync::Arc;

use cairn_disk::{DiskError, DiskSource, Extent};

use crate::proto::{STATE_HOLE, STATE_ZERO};
use crate::{Result, StatusExtent};

/// The storage behind one export of [`NbdServer`](crate::NbdServer).
///
/// Calls come from several connection threads at once. The server checks
/// every range against [`size`](Self::size) before calling, so
/// implementations see only in-range requests.
pub trait ExportBackend: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// `base:allocation` extents of `[offset, offset + length)`: flags 0 for
    /// data, [`STATE_HOLE`]` | `[`STATE_ZERO`] for ranges that read as zeros.
    /// The server sends zero ranges of reads as hole chunks. The default says
    /// everything is data.
    fn block_status(&self, offset: u64, length: u64) -> io::Result<Vec<StatusExtent>> {
        Ok(vec![StatusExtent {
            offset,
            length,
            flags: 0,
        }])
    }

    /// True when the export accepts writes.
    fn writable(&self) -> bool {
        false
    }

    /// Writes `data` at `offset`; the default refuses (`PermissionDenied`, sent as `EPERM`).
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let _ = (data, offset);
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the export is read-only",
        ))
    }

    /// Makes `[offset, offset + length)` read as zeros; the default writes
    /// zero buffers through [`write_at`](Self::write_at).
    fn write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(length) as usize];
        let mut pos = offset;
        let end = offset + length;
        while pos < end {
            let n = (end - pos).min(CHUNK) as usize;
            self.write_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Makes completed writes durable.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A read-only export of any [`DiskSource`] (an image, a restore point):
/// reads go to the source, block status comes from its allocation map
/// (read once, when the export is made), so unallocated ranges are sent as
/// holes.
pub struct SourceExport {
    source: Arc<dyn DiskSource>,
    size: u64,
    allocation: Vec<Extent>,
}

impl SourceExport {
    /// Wraps `source`, reading its allocation map.
    pub fn new(source: Arc<dyn DiskSource>) -> Result<Self> {
        let allocation = cairn_disk::extent::normalize(source.allocation()?);
        Ok(SourceExport {
            size: source.virtual_size(),
            source,
            allocation,
        })
    }
}

impl ExportBackend for SourceExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.source.read_at(buf, offset).map_err(disk_to_io)
    }

    fn block_status(&self, offset: u64, length: u64) -> io::Result<Vec<StatusExtent>> {
        let mut out = Vec::new();
        allocation_status(&self.allocation, offset, length, &mut out);
        Ok(out)
    }
}

/// Appends the extents of `[offset, offset + length)` as `allocation` (sorted,
/// disjoint) sees them: flags 0 inside it, hole|zero outside.
pub(crate) fn allocation_status(allocation: &[Extent], offset: u64, length: u64, out: &mut Vec<StatusExtent>) {
    let end = offset + length;
    let mut pos = offset;
    let mut i = allocation.partition_point(|e| e.end() <= offset);
    while pos < end {
        let (next, flags) = match allocation.get(i) {
            Some(e) if e.offset <= pos => {
                i += 1;
                (e.end().min(end), 0)
            }
            Some(e) => (e.offset.min(end), STATE_HOLE | STATE_ZERO),
            None => (end, STATE_HOLE | STATE_ZERO),
        };
        push_status(out, pos, next - pos, flags);
        pos = next;
    }
}

/// Appends an extent, merging it into the last one when they touch and agree.
pub(crate) fn push_status(out: &mut Vec<StatusExtent>, offset: u64, length: u64, flags: u32) {
    if length == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.flags == flags && last.end() == offset => last.length += length,
        _ => out.push(StatusExtent { offset, length, flags }),
    }
}

/// A disk error as an I/O error, keeping the kind of an underlying I/O error.
pub(crate) fn disk_to_io(e: DiskError) -> io::Error {
    let kind = match &e {
        DiskError::Io { source, .. } => source.kind(),
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(offset: u64, length: u64) -> Extent {
        Extent { offset, length }
    }

    #[test]
    fn allocation_status_covers_the_range() {
        let alloc = [e(10, 10), e(30, 5)];
        let mut out = Vec::new();
        allocation_status(&alloc, 0, 40, &mut out);
        let hz = STATE_HOLE | STATE_ZERO;
        let got: Vec<(u64, u64, u32)> = out.iter().map(|s| (s.offset, s.length, s.flags)).collect();
        assert_eq!(
            got,
            vec![(0, 10, hz), (10, 10, 0), (20, 10, hz), (30, 5, 0), (35, 5, hz)]
        );
        out.clear();
        allocation_status(&alloc, 15, 17, &mut out);
        let got: Vec<(u64, u64, u32)> = out.iter().map(|s| (s.offset, s.length, s.flags)).collect();
        assert_eq!(got, vec![(15, 5, 0), (20, 10, hz), (30, 2, 0)]);
    }
}
