//! On-disk structures of the VHD format: the hard disk footer, the dynamic
//! disk header with its parent locators, checksums, CHS geometry and the
//! rule that turns a footer into a virtual size.
//!
//! Everything is big-endian. Offsets are those of the "Hard Disk Footer
//! Format" and "Dynamic Disk Header Format" sections of Microsoft's Virtual
//! Hard Disk Image Format Specification.

use crate::io::bytes::{be16, be32, be64};

/// Bytes in a sector; VHD has no other sector size.
pub const SECTOR: u64 = 512;
/// Length of the hard disk footer (and of its copy at offset 0).
pub const FOOTER_LEN: usize = 512;
/// Length of the dynamic disk header.
pub const HEADER_LEN: usize = 1024;
/// BAT entry of a block that is not stored in the file.
pub const UNALLOCATED: u32 = 0xFFFF_FFFF;
/// The block size every known VHD implementation uses (2 MiB).
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// Largest block size cairn accepts (as for VHDX); no VHD tool writes more than 2 MiB.
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Largest virtual size, as QEMU allows it (65535 × 255 × 255 sectors, about 2 TiB).
pub const MAX_SIZE: u64 = 65535 * 255 * 255 * SECTOR;
/// The CHS geometry product the spec's algorithm saturates at (65535 × 16 × 255).
pub const MAX_GEOMETRY_SECTORS: u64 = 65535 * 16 * 255;
/// VHD timestamps count seconds from 2000-01-01 00:00:00 UTC; this is that instant in Unix time.
pub const EPOCH_2000: u64 = 946_684_800;

/// Fixed disk: the data, then the footer.
pub const TYPE_FIXED: u32 = 2;
/// Dynamic disk: footer copy, dynamic disk header, BAT, blocks, footer.
pub const TYPE_DYNAMIC: u32 = 3;
/// Differencing disk: a dynamic disk whose unset sectors come from a parent.
pub const TYPE_DIFFERENCING: u32 = 4;

/// Parent locator platform codes.
pub mod platform {
    /// Relative Windows path, UTF-16LE.
    pub const W2RU: u32 = u32::from_be_bytes(*b"W2ru");
    /// Absolute Windows path, UTF-16LE.
    pub const W2KU: u32 = u32::from_be_bytes(*b"W2ku");
    /// Relative Windows path, ANSI (deprecated).
    pub const WI2R: u32 = u32::from_be_bytes(*b"Wi2r");
    /// Absolute Windows path, ANSI (deprecated).
    pub const WI2K: u32 = u32::from_be_bytes(*b"Wi2k");
    /// macOS file URL, UTF-8.
    pub const MACX: u32 = u32::from_be_bytes(*b"MacX");
}

/// One's complement of the byte sum of `b`, skipping the 4-byte checksum field at `field`.
pub fn checksum(b: &[u8], field: usize) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |acc, (_, &x)| acc.wrapping_add(x as u32));
    !sum
}

/// The hard disk footer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Feature flags (bit 1 is reserved and always set).
    pub features: u32,
    /// File format version (0x00010000).
    pub version: u32,
    /// Offset of the dynamic disk header (all ones for fixed disks).
    pub data_offset: u64,
    /// Creation time, seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    /// Four-character code of the application that created the file.
    pub creator_app: [u8; 4],
    /// Creator version, major in the high 16 bits.
    pub creator_version: u32,
    /// Creator host OS code ("Wi2k", "Mac ").
    pub creator_os: [u8; 4],
    /// Size at creation.
    pub original_size: u64,
    /// Current size of the disk in bytes.
    pub current_size: u64,
    /// Cylinders of the CHS geometry.
    pub cylinders: u16,
    /// Heads of the CHS geometry.
    pub heads: u8,
    /// Sectors per track of the CHS geometry.
    pub sectors_per_track: u8,
    /// 2 fixed, 3 dynamic, 4 differencing.
    pub disk_type: u32,
    /// Identifies the file; a child's header names its parent by it.
    pub unique_id: [u8; 16],
    /// Whether the VM was in a saved state.
    pub saved_state: u8,
}

impl Footer {
    /// Parses a footer, checking the cookie and the checksum; `Err` holds the reason.
    pub fn parse(b: &[u8]) -> Result<Footer, String> {
        if b.len() < FOOTER_LEN {
            return Err(format!("{} bytes, a footer has {FOOTER_LEN}", b.len()));
        }
        if &b[0..8] != b"conectix" {
            return Err(format!(
                "cookie is {:?}, expected \"conectix\"",
                String::from_utf8_lossy(&b[0..8])
            ));
        }
        let stored = be32(b, 64);
        let computed = checksum(&b[..FOOTER_LEN], 64);
        if stored != computed {
            return Err(format!("checksum is {stored:#010x}, the bytes sum to {computed:#010x}"));
        }
        let mut unique_id = [0u8; 16];
        unique_id.copy_from_slice(&b[68..84]);
        Ok(Footer {
            features: be32(b, 8),
            version: be32(b, 12),
            data_offset: be64(b, 16),
            timestamp: be32(b, 24),
            creator_app: [b[28], b[29], b[30], b[31]],
            creator_version: be32(b, 32),
            creator_os: [b[36], b[37], b[38], b[39]],
            original_size: be64(b, 40),
            current_size: be64(b, 48),
            cylinders: be16(b, 56),
            heads: b[58],
            sectors_per_track: b[59],
            disk_type: be32(b, 60),
            unique_id,
            saved_state: b[84],
        })
    }

    /// The 512 bytes of this footer, checksum included.
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[0..8].copy_from_slice(b"conectix");
        b[8..12].copy_from_slice(&self.features.to_be_bytes());
        b[12..16].copy_from_slice(&self.version.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_os);
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..58].copy_from_slice(&self.cylinders.to_be_bytes());
        b[58] = self.heads;
        b[59] = self.sectors_per_track;
        b[60..64].copy_from_slice(&self.disk_type.to_be_bytes());
        b[68..84].copy_from_slice(&self.unique_id);
        b[84] = self.saved_state;
        let sum = checksum(&b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Cylinders × heads × sectors per track.
    pub fn geometry_sectors(&self) -> u64 {
        self.cylinders as u64 * self.heads as u64 * self.sectors_per_track as u64
    }

    /// Whether the virtual size comes from the CHS geometry rather than the
    /// current size field; see [`Footer::virtual_size`].
    pub fn size_from_geometry(&self) -> bool {
        (&self.creator_app == b"vpc " || &self.creator_app == b"qemu")
            && self.geometry_sectors() != MAX_GEOMETRY_SECTORS
    }

    /// The size a guest sees, by QEMU's rule (block/vpc.c, as of QEMU 10.0):
    /// files written by Virtual PC ("vpc ") and by QEMU without `force_size`
    /// ("qemu") are as large as their CHS geometry says, because Virtual PC
    /// exposes the disk through an ATA controller that only knows the
    /// geometry; every other creator (Hyper-V "win ", QEMU with `force_size`
    /// "qem2", Disk2vhd, XenServer, Azure, cairn...) is as large as the
    /// current size field says, as is any file whose geometry is the maximum
    /// (65535/16/255, which cannot describe larger disks). The result is
    /// rounded down to whole sectors, as QEMU does.
    pub fn virtual_size(&self) -> u64 {
        if self.size_from_geometry() {
            self.geometry_sectors() * SECTOR
        } else {
            self.current_size / SECTOR * SECTOR
        }
    }
}

/// The spec's CHS geometry ("CHS Calculation" appendix) for `size` bytes:
/// (cylinders, heads, sectors per track), rounded down, saturating at 65535/16/255.
pub fn geometry_for(size: u64) -> (u16, u8, u8) {
    let total = (size / SECTOR).min(MAX_GEOMETRY_SECTORS);
    let (spt, heads, cyl_times_heads);
    if total >= 65535 * 16 * 63 {
        spt = 255u64;
        heads = 16u64;
        cyl_times_heads = total / spt;
    } else {
        let mut s = 17u64;
        let mut cth = total / s;
        let mut h = cth.div_ceil(1024).max(4);
        if cth >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            cth = total / s;
        }
        if cth >= h * 1024 {
            s = 63;
            h = 16;
            cth = total / s;
        }
        spt = s;
        heads = h;
        cyl_times_heads = cth;
    }
    ((cyl_times_heads / heads) as u16, heads as u8, spt as u8)
}

/// The size and geometry of a new VHD that holds `size` bytes and that every
/// reader sees at the same size: `size` rounded up to whole sectors and then
/// to the next size the spec's CHS geometry describes exactly, so that
/// geometry × 512 equals the current size. QEMU before 10.0 takes the size of
/// files from unknown creators from the geometry, QEMU 10 and Hyper-V from
/// the current size, Virtual PC from the geometry: with the two equal they
/// all agree. (qemu-img and Hyper-V round a new VHD's size up the same way.)
/// From the largest geometry on (about 127 GiB), the geometry is 65535/16/255
/// and every reader takes the current size, which is then `size` in sectors.
pub fn chs_size(size: u64) -> (u64, (u16, u8, u8)) {
    let total = size.div_ceil(SECTOR);
    if total >= MAX_GEOMETRY_SECTORS {
        return (total * SECTOR, (65535, 16, 255));
    }
    // The geometry of a size is rounded down; the first size at or above
    // `total` whose geometry reaches `total` is exactly describable. It is
    // at most one cylinder (16 × 255 sectors) away, and the largest geometry
    // ends the search in any case.
    let mut s = total;
    loop {
        let g = geometry_for(s * SECTOR);
        let sectors = u64::from(g.0) * u64::from(g.1) * u64::from(g.2);
        if sectors >= total {
            return (sectors * SECTOR, g);
        }
        s += 1;
    }
}

/// One parent locator entry of the dynamic disk header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Locator {
    /// Platform code (0: unused entry).
    pub code: u32,
    /// Space reserved for the data (sectors per the spec; Microsoft's tools store bytes).
    pub data_space: u32,
    /// Length of the locator data in bytes.
    pub data_len: u32,
    /// Offset of the locator data in the file.
    pub data_offset: u64,
}

/// The dynamic disk header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynHeader {
    /// Offset of the BAT.
    pub table_offset: u64,
    /// Header version (0x00010000).
    pub version: u32,
    /// Number of BAT entries.
    pub max_table_entries: u32,
    /// Bytes of disk data per block (not counting its sector bitmap).
    pub block_size: u32,
    /// Unique id of the parent (differencing disks).
    pub parent_id: [u8; 16],
    /// Modification time of the parent, seconds since 2000-01-01 UTC.
    pub parent_timestamp: u32,
    /// File name of the parent, UTF-16BE in the file.
    pub parent_name: String,
    /// The eight parent locator entries.
    pub locators: [Locator; 8],
}

impl DynHeader {
    /// Parses a header, checking the cookie and the checksum; `Err` holds the reason.
    pub fn parse(b: &[u8]) -> Result<DynHeader, String> {
        if b.len() < HEADER_LEN {
            return Err(format!("{} bytes, the header has {HEADER_LEN}", b.len()));
        }
        if &b[0..8] != b"cxsparse" {
            return Err(format!(
                "cookie is {:?}, expected \"cxsparse\"",
                String::from_utf8_lossy(&b[0..8])
            ));
        }
        let stored = be32(b, 36);
        let computed = checksum(&b[..HEADER_LEN], 36);
        if stored != computed {
            return Err(format!("checksum is {stored:#010x}, the bytes sum to {computed:#010x}"));
        }
        let mut parent_id = [0u8; 16];
        parent_id.copy_from_slice(&b[40..56]);
        let units: Vec<u16> = b[64..576]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let mut locators = [Locator::default(); 8];
        for (i, l) in locators.iter_mut().enumerate() {
            let at = 576 + 24 * i;
            *l = Locator {
                code: be32(b, at),
                data_space: be32(b, at + 4),
                data_len: be32(b, at + 8),
                data_offset: be64(b, at + 16),
            };
        }
        Ok(DynHeader {
            table_offset: be64(b, 16),
            version: be32(b, 24),
            max_table_entries: be32(b, 28),
            block_size: be32(b, 32),
            parent_id,
            parent_timestamp: be32(b, 56),
            parent_name: String::from_utf16_lossy(&units),
            locators,
        })
    }

    /// The 1024 bytes of this header, checksum included (parent name
    /// truncated to the 256 UTF-16 units the field holds).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(b"cxsparse");
        b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        b[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.version.to_be_bytes());
        b[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        b[40..56].copy_from_slice(&self.parent_id);
        b[56..60].copy_from_slice(&self.parent_timestamp.to_be_bytes());
        for (i, u) in self.parent_name.encode_utf16().take(256).enumerate() {
            b[64 + 2 * i..66 + 2 * i].copy_from_slice(&u.to_be_bytes());
        }
        for (i, l) in self.locators.iter().enumerate() {
            let at = 576 + 24 * i;
            b[at..at + 4].copy_from_slice(&l.code.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&l.data_space.to_be_bytes());
            b[at + 8..at + 12].copy_from_slice(&l.data_len.to_be_bytes());
            b[at + 16..at + 24].copy_from_slice(&l.data_offset.to_be_bytes());
        }
        let sum = checksum(&b, 36);
        b[36..40].copy_from_slice(&sum.to_be_bytes());
        b
    }
}

/// Bytes of the sector bitmap in front of each block: one bit per sector,
/// padded to whole sectors.
pub fn bitmap_len(block_size: u32) -> u64 {
    (block_size as u64 / SECTOR).div_ceil(8).div_ceil(SECTOR) * SECTOR
}

/// A unique id as a hyphenated lowercase UUID string (the bytes in file order).
pub fn id_string(id: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*id).hyphenated().to_string()
}

/// A four-character code for messages, with NULs and spaces trimmed.
pub fn code_string(code: &[u8]) -> String {
    String::from_utf8_lossy(code)
        .trim_end_matches(['\0', ' '])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_the_spec_and_qemu() {
        // qemu-img create -f vpc ... 100000000 chose 958/12/17 (checked with qemu-img 10.0).
        assert_eq!(geometry_for(100_061_184), (958, 12, 17));
        // Saturates at the largest geometry.
        assert_eq!(geometry_for(MAX_SIZE), (65535, 16, 255));
        // Sizes whose geometry describes them exactly stay as they are.
        assert_eq!(chs_size(0).0, 0);
        for (c, h, s) in [(1024u64, 16u64, 63u64), (65535, 16, 255), (2, 4, 17)] {
            assert_eq!(chs_size(c * h * s * SECTOR).0, c * h * s * SECTOR);
        }
        for size in [0u64, 512, 1 << 20, 96 << 20, 5 << 30, 127 << 30, 200 << 30] {
            let (c, h, s) = geometry_for(size);
            assert!(c as u64 * h as u64 * s as u64 * SECTOR <= size, "{size}");
            assert!(h <= 16 && s >= 1);
        }
    }

    #[test]
    fn chs_size_is_exact_and_close() {
        // Sizes around every switch of the spec's algorithm, and a spread.
        let mut sizes: Vec<u64> = vec![1, 511, 513, 1_000_005, 10_485_761, 5 << 30, (127 << 30) + 1];
        for t in [65535 * 16 * 63u64, 1024 * 16 * 31, 1024 * 16 * 17, MAX_GEOMETRY_SECTORS] {
            sizes.extend([(t - 1) * SECTOR, t * SECTOR, t * SECTOR + 1, (t + 1) * SECTOR]);
        }
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            sizes.push(x % (MAX_GEOMETRY_SECTORS * SECTOR));
        }
        for size in sizes {
            let (len, (c, h, s)) = chs_size(size);
            let sectors = u64::from(c) * u64::from(h) * u64::from(s);
            assert!(len >= size && len % SECTOR == 0, "{size} → {len}");
            assert!(
                len - size < 16 * 255 * SECTOR + SECTOR,
                "{size} → {len}: more than a cylinder"
            );
            if len < MAX_GEOMETRY_SECTORS * SECTOR {
                assert_eq!(
                    sectors * SECTOR,
                    len,
                    "{size}: geometry {c}/{h}/{s} does not describe {len}"
                );
            } else {
                assert_eq!((c, h, s), (65535, 16, 255), "{size}");
            }
        }
    }

    #[test]
    fn footer_and_header_round_trip() {
        let f = Footer {
            features: 2,
            version: 0x10000,
            data_offset: 512,
            timestamp: 7,
            creator_app: *b"crn ",
            creator_version: 0x10002,
            creator_os: *b"Wi2k",
            original_size: 1 << 30,
            current_size: 1 << 30,
            cylinders: 2080,
            heads: 16,
            sectors_per_track: 63,
            disk_type: TYPE_DYNAMIC,
            unique_id: [9; 16],
            saved_state: 0,
        };
        let b = f.encode();
        assert_eq!(Footer::parse(&b).unwrap(), f);
        let mut bad = b;
        bad[100] ^= 1;
        assert!(Footer::parse(&bad).unwrap_err().contains("checksum"));
        let mut h = DynHeader {
            table_offset: 1536,
            version: 0x10000,
            max_table_entries: 512,
            block_size: DEFAULT_BLOCK_SIZE,
            parent_id: [3; 16],
            parent_timestamp: 5,
            parent_name: "bäse.vhd".into(),
            locators: [Locator::default(); 8],
        };
        h.locators[1] = Locator {
            code: platform::W2RU,
            data_space: 512,
            data_len: 20,
            data_offset: 4096,
        };
        let b = h.encode();
        assert_eq!(DynHeader::parse(&b).unwrap(), h);
        assert_eq!(bitmap_len(DEFAULT_BLOCK_SIZE), 512);
        assert_eq!(bitmap_len(512), 512);
        assert_eq!(bitmap_len(8 << 20), 2048);
    }
}
