//! The VHDX log (MS-VHDX "Log"): finding the active sequence of log entries
//! and applying it, either in memory ([`replay_in_memory`], used by every
//! open) or to the file itself ([`replay_log_in_place`], only when asked).
//!
//! The log is a circular buffer of 4 KiB sectors. An *entry* starts with a
//! 64-byte header (`loge`: CRC-32C over the whole entry, entry length, the
//! offset of the sequence's *tail* entry, sequence number, descriptor count,
//! LogGuid, FlushedFileOffset, LastFileOffset), then its descriptors (32 bytes
//! each, the header taking the first two slots of the first sector): `desc`
//! descriptors name a 4 KiB file sector whose first 8 and last 4 bytes they
//! carry and whose middle 4084 bytes follow in a `data` sector (with the
//! sequence number split around it); `zero` descriptors name a range to zero.
//! The *active sequence* is the run of valid entries with consecutive
//! sequence numbers, each following the previous one in the buffer, whose
//! head (last entry) has the highest sequence number and whose tail is the
//! entry its head names; replaying applies its descriptors from tail to head.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::header::{HEADER_OFFSETS, Header, KIB, MIB, current_header};
use crate::io::bytes::{le32, le64};
use crate::io::{ImageFile, ReadAt};
use crate::{DiskError, Result};

const SECTOR: usize = 4096;
/// Logs longer than this are refused (Hyper-V and QEMU write 1 MiB logs).
const MAX_LOG: u64 = 256 * MIB;
/// Upper bound on the work spent looking for the active sequence.
const SEARCH_BUDGET: usize = 4_000_000;
/// Descriptors may not touch the file identifier and headers.
const FIRST_LOGGABLE: u64 = 192 * KIB;

/// One change a log entry makes to the file.
#[derive(Clone, Debug)]
pub(crate) enum Desc {
    /// Write these 4096 bytes at `offset`.
    Data { offset: u64, bytes: Arc<[u8]> },
    /// Zero `length` bytes at `offset`.
    Zero { offset: u64, length: u64 },
}

/// A valid log entry.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub seq: u64,
    /// Sector index of the sequence's tail entry.
    tail: usize,
    /// Length in sectors.
    sectors: usize,
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
    pub descs: Vec<Desc>,
}

/// Parses the entry starting at sector `i` of `log`; `None` if it is not a
/// valid entry. Descriptors are kept only when `with_descs`.
fn parse_entry(log: &[u8], i: usize, log_guid: &[u8; 16], with_descs: bool) -> Option<Entry> {
    let n = log.len() / SECTOR;
    let sector = |k: usize| {
        let s = (i + k) % n;
        &log[s * SECTOR..(s + 1) * SECTOR]
    };
    let h = sector(0);
    if &h[..4] != b"loge" || &h[32..48] != log_guid {
        return None;
    }
    let length = le32(h, 8) as usize;
    let tail = le32(h, 12) as usize;
    let seq = le64(h, 16);
    let count = le32(h, 24) as usize;
    if length == 0
        || !length.is_multiple_of(SECTOR)
        || length > log.len()
        || !tail.is_multiple_of(SECTOR)
        || tail >= log.len()
        || seq == 0
    {
        return None;
    }
    let sectors = length / SECTOR;
    let desc_sectors = (count + 2).div_ceil(SECTOR / 32);
    if desc_sectors > sectors {
        return None;
    }
    let mut crc = crc32c::crc32c(&h[..4]);
    crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc = crc32c::crc32c_append(crc, &h[8..]);
    for k in 1..sectors {
        crc = crc32c::crc32c_append(crc, sector(k));
    }
    if crc != le32(h, 4) {
        return None;
    }
    let mut descs = Vec::new();
    let mut data = desc_sectors;
    for j in 0..count {
        let at = 64 + j * 32;
        let d = &sector(at / SECTOR)[at % SECTOR..at % SECTOR + 32];
        let offset = le64(d, 16);
        if le64(d, 24) != seq || !offset.is_multiple_of(SECTOR as u64) {
            return None;
        }
        match &d[..4] {
            b"zero" => {
                let length = le64(d, 8);
                if !length.is_multiple_of(SECTOR as u64) {
                    return None;
                }
                if with_descs {
                    descs.push(Desc::Zero { offset, length });
                }
            }
            b"desc" => {
                if data >= sectors {
                    return None;
                }
                let s = sector(data);
                data += 1;
                let s_seq = (u64::from(le32(s, 4)) << 32) | u64::from(le32(s, SECTOR - 4));
                if &s[..4] != b"data" || s_seq != seq {
                    return None;
                }
                if with_descs {
                    let mut bytes = Vec::with_capacity(SECTOR);
                    bytes.extend_from_slice(&d[8..16]);
                    bytes.extend_from_slice(&s[8..SECTOR - 4]);
                    bytes.extend_from_slice(&d[4..8]);
                    descs.push(Desc::Data {
                        offset,
                        bytes: bytes.into(),
                    });
                }
            }
            _ => return None,
        }
    }
    Some(Entry {
        seq,
        tail: tail / SECTOR,
        sectors,
        flushed_file_offset: le64(h, 48),
        last_file_offset: le64(h, 56),
        descs,
    })
}

/// The active sequence of the log `header` describes, tail first; empty when
/// the log holds none (or the header's LogGuid is zero).
pub(crate) fn active_sequence(file: &ImageFile, header: &Header) -> Result<Vec<Entry>> {
    if header.log_guid == [0; 16] || header.log_length == 0 {
        return Ok(Vec::new());
    }
    let path = file.path();
    let len = u64::from(header.log_length);
    if len > MAX_LOG {
        return Err(DiskError::Unsupported {
            path: path.to_path_buf(),
            what: format!("a {len}-byte log (at most {MAX_LOG} bytes are replayed)"),
        });
    }
    let log = file.read_vec(header.log_offset, len, "log")?;
    let n = log.len() / SECTOR;
    let infos: Vec<Option<Entry>> = (0..n).map(|i| parse_entry(&log, i, &header.log_guid, false)).collect();
    let mut heads: Vec<usize> = (0..n).filter(|&i| infos[i].is_some()).collect();
    heads.sort_by_key(|&i| std::cmp::Reverse(infos[i].as_ref().map_or(0, |e| e.seq)));
    let mut budget = SEARCH_BUDGET;
    for head in heads {
        let Some(h) = &infos[head] else { continue };
        let Some(t) = &infos[h.tail] else { continue };
        if t.seq > h.seq || h.seq - t.seq >= n as u64 {
            continue;
        }
        // Walk from the tail to the head.
        let mut chain = vec![h.tail];
        let mut cur = h.tail;
        let mut used = t.sectors;
        let ok = loop {
            if cur == head {
                break true;
            }
            if budget == 0 {
                return Err(DiskError::format(path, "log", "too many candidate sequences to search"));
            }
            budget -= 1;
            let Some(c) = &infos[cur] else { break false };
            let next = (cur + c.sectors) % n;
            match &infos[next] {
                Some(e) if e.seq == c.seq + 1 && used + e.sectors <= n => {
                    used += e.sectors;
                    chain.push(next);
                    cur = next;
                }
                _ => break false,
            }
        };
        if !ok {
            continue;
        }
        let entries: Vec<Entry> = chain
            .into_iter()
            .filter_map(|i| parse_entry(&log, i, &header.log_guid, true))
            .collect();
        let head_entry = &entries[entries.len() - 1];
        if head_entry.flushed_file_offset > file.len() {
            return Err(DiskError::format(
                path,
                format!("log entry {}", head_entry.seq),
                format!(
                    "FlushedFileOffset {} is past the end of the file ({} bytes): the file was truncated",
                    head_entry.flushed_file_offset,
                    file.len()
                ),
            ));
        }
        let limit = file.len().max(head_entry.last_file_offset);
        if head_entry.last_file_offset > file.len().saturating_add(64 << 30) {
            return Err(DiskError::format(
                path,
                format!("log entry {}", head_entry.seq),
                format!(
                    "LastFileOffset {} is far beyond the end of the file ({} bytes)",
                    head_entry.last_file_offset,
                    file.len()
                ),
            ));
        }
        for e in &entries {
            for d in &e.descs {
                let (offset, length) = match d {
                    Desc::Data { offset, .. } => (*offset, SECTOR as u64),
                    Desc::Zero { offset, length } => (*offset, *length),
                };
                if offset < FIRST_LOGGABLE || offset.checked_add(length).is_none_or(|end| end > limit) {
                    return Err(DiskError::format(
                        path,
                        format!("log entry {}", e.seq),
                        format!(
                            "descriptor for bytes {offset}..{} is outside {FIRST_LOGGABLE}..{limit}",
                            offset.saturating_add(length)
                        ),
                    ));
                }
            }
        }
        return Ok(entries);
    }
    Ok(Vec::new())
}

/// A patch of the in-memory overlay.
#[derive(Clone, Debug)]
enum Patch {
    Zero,
    /// `bytes[skip..]` are the patch's first bytes.
    Data {
        bytes: Arc<[u8]>,
        skip: usize,
    },
}

/// A file seen with log entries applied: patched ranges over the real bytes,
/// and a length extended to the log's LastFileOffset.
struct Overlay {
    inner: Arc<dyn ReadAt>,
    inner_len: u64,
    len: u64,
    /// start → (end, patch); ranges do not overlap.
    patches: BTreeMap<u64, (u64, Patch)>,
}

impl Overlay {
    fn apply(&mut self, start: u64, end: u64, patch: Patch) {
        let hit: Vec<u64> = self
            .patches
            .range(..end)
            .rev()
            .take_while(|(_, (e, _))| *e > start)
            .map(|(s, _)| *s)
            .collect();
        for s in hit {
            let Some((e, p)) = self.patches.remove(&s) else {
                continue;
            };
            if s < start {
                self.patches.insert(s, (start, p.clone()));
            }
            if e > end {
                let right = match p {
                    Patch::Zero => Patch::Zero,
                    Patch::Data { bytes, skip } => Patch::Data {
                        bytes,
                        skip: skip + (end - s) as usize,
                    },
                };
                self.patches.insert(end, (e, right));
            }
        }
        self.patches.insert(start, (end, patch));
    }
}

impl ReadAt for Overlay {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len - offset) as usize;
        let buf = &mut buf[..n];
        let mut done = 0usize;
        while done < n {
            let at = offset + done as u64;
            if at >= self.inner_len {
                buf[done..].fill(0);
                break;
            }
            match self.inner.read_at(&mut buf[done..], at) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(k) => done += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let end = offset + n as u64;
        for (&s, (e, p)) in self.patches.range(..end).rev().take_while(|(_, (e, _))| *e > offset) {
            let from = s.max(offset);
            let to = (*e).min(end);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match p {
                Patch::Zero => dst.fill(0),
                Patch::Data { bytes, skip } => {
                    let at = skip + (from - s) as usize;
                    dst.copy_from_slice(&bytes[at..at + dst.len()]);
                }
            }
        }
        Ok(n)
    }

    fn len(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }
}

/// Returns `file` seen with its log replayed (unchanged when the log is
/// empty) and the number of entries replayed. Nothing is written.
pub(crate) fn replay_in_memory(file: ImageFile, header: &Header) -> Result<(ImageFile, usize)> {
    let entries = active_sequence(&file, header)?;
    let Some(head) = entries.last() else {
        return Ok((file, 0));
    };
    let mut overlay = Overlay {
        inner: file.inner().clone(),
        inner_len: file.len(),
        len: file.len().max(head.last_file_offset),
        patches: BTreeMap::new(),
    };
    for e in &entries {
        for d in &e.descs {
            match d {
                Desc::Data { offset, bytes } => overlay.apply(
                    *offset,
                    offset + SECTOR as u64,
                    Patch::Data {
                        bytes: bytes.clone(),
                        skip: 0,
                    },
                ),
                Desc::Zero { offset, length } if *length > 0 => overlay.apply(*offset, offset + length, Patch::Zero),
                Desc::Zero { .. } => {}
            }
        }
    }
    let n = entries.len();
    Ok((ImageFile::new(file.path(), Arc::new(overlay))?, n))
}

/// Replays a VHDX file's pending log into the file itself: applies the
/// active sequence's descriptors, extends the file to the log's
/// LastFileOffset, flushes, then writes a new header (sequence number + 1,
/// fresh FileWriteGuid, LogGuid zero) into the other header slot and flushes
/// again. The DataWriteGuid is kept, so differencing children stay linked.
/// Returns whether there were log entries to apply; a file whose LogGuid is
/// zero is left untouched.
pub fn replay_log_in_place(path: &Path) -> Result<bool> {
    let io = |op: &'static str| {
        move |source: std::io::Error| DiskError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    let f = Arc::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io("open for log replay"))?,
    );
    let img = ImageFile::new(path, f.clone())?;
    let (header, slot) = current_header(&img)?;
    if header.log_guid == [0; 16] {
        return Ok(false);
    }
    let entries = active_sequence(&img, &header)?;
    if let Some(head) = entries.last() {
        let zeros = vec![0u8; MIB as usize];
        for e in &entries {
            for d in &e.descs {
                match d {
                    Desc::Data { offset, bytes } => f.write_all_at(bytes, *offset).map_err(io("write log data"))?,
                    Desc::Zero { offset, length } => {
                        let mut done = 0u64;
                        while done < *length {
                            let k = (length - done).min(MIB);
                            f.write_all_at(&zeros[..k as usize], offset + done)
                                .map_err(io("write log zeros"))?;
                            done += k;
                        }
                    }
                }
            }
        }
        let len = f.metadata().map_err(io("size"))?.len();
        if len < head.last_file_offset {
            f.set_len(head.last_file_offset)
                .map_err(io("extend to LastFileOffset"))?;
        }
        f.sync_all().map_err(io("fsync"))?;
    }
    let new = Header {
        seq: header.seq.wrapping_add(1),
        file_write_guid: *uuid::Uuid::new_v4().as_bytes(),
        log_guid: [0; 16],
        ..header
    };
    f.write_all_at(&new.encode(), HEADER_OFFSETS[1 - slot])
        .map_err(io("write header"))?;
    f.sync_all().map_err(io("fsync"))?;
    Ok(!entries.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_patches_override_in_order() {
        let base: Vec<u8> = (0..64u8).collect();
        let mut o = Overlay {
            inner: Arc::new(base.clone()),
            inner_len: 64,
            len: 80,
            patches: BTreeMap::new(),
        };
        let data: Arc<[u8]> = vec![0xAA; 16].into();
        o.apply(8, 24, Patch::Data { bytes: data, skip: 0 });
        o.apply(12, 16, Patch::Zero);
        o.apply(60, 70, Patch::Zero);
        let mut buf = vec![0xFFu8; 100];
        let n = o.read_at(&mut buf, 0).unwrap();
        assert_eq!(n, 80);
        let mut want = base;
        want[8..24].fill(0xAA);
        want[12..16].fill(0);
        want[60..64].fill(0);
        want.resize(80, 0);
        assert_eq!(&buf[..80], &want[..]);
        let mut part = [0u8; 6];
        o.read_at(&mut part, 10).unwrap();
        assert_eq!(part, [0xAA, 0xAA, 0, 0, 0, 0]);
    }
}
