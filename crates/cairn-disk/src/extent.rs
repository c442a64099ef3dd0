//! Byte extents and the operations the data path needs on lists of them.

use crate::{DiskError, Result};

/// A byte range `[offset, offset + length)` of a virtual disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Sorts extents and merges overlapping or touching ones; drops empty ones.
pub fn normalize(mut extents: Vec<Extent>) -> Vec<Extent> {
    extents.retain(|e| e.length > 0);
    extents.sort_by_key(|e| e.offset);
    let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
    for e in extents {
        match out.last_mut() {
            Some(last) if e.offset <= last.end() => {
                let end = last.end().max(e.end());
                last.length = end - last.offset;
            }
            _ => out.push(e),
        }
    }
    out
}

/// The sorted, distinct block numbers that normalized `extents` touch.
pub fn touched_blocks(extents: &[Extent], block_size: u64) -> impl Iterator<Item = u64> + '_ {
    let mut next = 0u64;
    extents.iter().flat_map(move |e| {
        let first = (e.offset / block_size).max(next);
        let last = e.end().div_ceil(block_size);
        next = next.max(last);
        first..last
    })
}

/// Parses a changed-extents list: one `OFFSET LENGTH` pair (decimal bytes) per
/// line; blank lines and `#` comments are ignored. Extents must lie inside a
/// disk of `disk_size` bytes.
pub fn parse_list(text: &str, origin: &str, disk_size: u64) -> Result<Vec<Extent>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |reason: String| DiskError::BadExtents {
            origin: origin.to_string(),
            line: i + 1,
            reason,
        };
        let mut parts = line.split_whitespace();
        let (Some(o), Some(l), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err(format!("expected `OFFSET LENGTH`, got {line:?}")));
        };
        let offset: u64 = o.parse().map_err(|e| err(format!("offset {o:?}: {e}")))?;
        let length: u64 = l.parse().map_err(|e| err(format!("length {l:?}: {e}")))?;
        let end = offset
            .checked_add(length)
            .ok_or_else(|| err("extent overflows".into()))?;
        if end > disk_size {
            return Err(err(format!("extent ends at {end}, past the disk's {disk_size} bytes")));
        }
        out.push(Extent { offset, length });
    }
    Ok(normalize(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(offset: u64, length: u64) -> Extent {
        Extent { offset, length }
    }

    #[test]
    fn normalize_merges_touching_and_overlapping() {
        assert_eq!(
            normalize(vec![e(10, 5), e(0, 10), e(20, 0), e(30, 5), e(32, 10)]),
            vec![e(0, 15), e(30, 12)]
        );
    }

    #[test]
    fn parse_list_errors_name_the_line() {
        assert_eq!(
            parse_list("# c\n0 10\n\n100 5\n", "x", 1000).unwrap(),
            vec![e(0, 10), e(100, 5)]
        );
        let err = parse_list("0 10\nfoo\n", "cbt.txt", 1000).unwrap_err().to_string();
        assert!(err.contains("cbt.txt") && err.contains("line 2"), "{err}");
        assert!(parse_list("990 20\n", "x", 1000).is_err());
        assert!(parse_list("18446744073709551615 2\n", "x", u64::MAX).is_err());
    }

    proptest! {
        #[test]
        fn touched_blocks_match_a_bitmap(raw in prop::collection::vec((0u64..10_000, 0u64..3_000), 0..20), bs in 1u64..2_000) {
            let exts: Vec<Extent> = raw.iter().map(|&(o, l)| e(o, l)).collect();
            let mut expected = std::collections::BTreeSet::new();
            for x in &exts {
                for byte in x.offset..x.end() { expected.insert(byte / bs); }
            }
            let norm = normalize(exts);
            for w in norm.windows(2) { prop_assert!(w[0].end() < w[1].offset); }
            let got: Vec<u64> = touched_blocks(&norm, bs).collect();
            prop_assert_eq!(got, expected.into_iter().collect::<Vec<_>>());
        }
    }
}
