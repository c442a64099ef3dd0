//! The VHDX header section: the file type identifier, the two headers and
//! the GUID helpers every other part of the format uses.
//!
//! The header section is the file's first MiB: the identifier (`vhdxfile`) at
//! 0 and two copies of the header at 64 KiB and 128 KiB, each protected by a
//! CRC-32C. Two copies let a writer update one while the other stays valid;
//! the valid copy with the higher sequence number is the current one.

use crate::io::ImageFile;
use crate::io::bytes::{le16, le32, le64};
use crate::{DiskError, Result};

pub(crate) const KIB: u64 = 1024;
pub(crate) const MIB: u64 = 1024 * 1024;
/// Offsets of the two header copies.
pub(crate) const HEADER_OFFSETS: [u64; 2] = [64 * KIB, 128 * KIB];
/// Bytes of a header covered by its checksum.
pub(crate) const HEADER_LEN: usize = 4096;

/// A GUID in its on-disk byte order from its textual form
/// `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` (the first three fields are stored
/// little-endian). Meant for constants: a malformed text fails the build.
pub(crate) const fn guid(text: &str) -> [u8; 16] {
    /// Where each stored byte's two digits start in the text.
    const AT: [usize; 16] = [6, 4, 2, 0, 11, 9, 16, 14, 19, 21, 24, 26, 28, 30, 32, 34];
    let t = text.as_bytes();
    assert!(
        t.len() == 36 && t[8] == b'-' && t[13] == b'-' && t[18] == b'-' && t[23] == b'-',
        "a GUID is written XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX"
    );
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = (hex_digit(t[AT[i]]) << 4) | hex_digit(t[AT[i] + 1]);
        i += 1;
    }
    out
}

/// The value of one hexadecimal digit of a GUID's text.
const fn hex_digit(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("a GUID's text holds only hexadecimal digits and dashes"),
    }
}

/// Formats on-disk GUID bytes the way parent locators write them:
/// `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}` (lower case, as QEMU and libvhdi
/// write them; libvhdi rejects upper-case hex, and comparisons ignore case).
pub fn format_guid(b: &[u8; 16]) -> String {
    format!(
        "{{{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}}}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// One parsed header.
#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub seq: u64,
    pub file_write_guid: [u8; 16],
    pub data_write_guid: [u8; 16],
    pub log_guid: [u8; 16],
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

/// The GUID stored at byte `at` of `b`.
pub(crate) fn guid_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    g
}

/// CRC-32C of `data` with the 4-byte checksum field at `at` taken as zero.
pub(crate) fn crc_with_hole(data: &[u8], at: usize) -> u32 {
    let c = crc32c::crc32c(&data[..at]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &data[at + 4..])
}

impl Header {
    /// Parses and checks a 4 KiB header.
    pub(crate) fn parse(b: &[u8]) -> std::result::Result<Header, String> {
        if &b[..4] != b"head" {
            return Err("no \"head\" signature".into());
        }
        let stored = le32(b, 4);
        let crc = crc_with_hole(&b[..HEADER_LEN], 4);
        if stored != crc {
            return Err(format!(
                "checksum {stored:#010x} does not match the contents ({crc:#010x})"
            ));
        }
        Ok(Header {
            seq: le64(b, 8),
            file_write_guid: guid_at(b, 16),
            data_write_guid: guid_at(b, 32),
            log_guid: guid_at(b, 48),
            log_version: le16(b, 64),
            version: le16(b, 66),
            log_length: le32(b, 68),
            log_offset: le64(b, 72),
        })
    }

    /// Serialises the header into a 4 KiB buffer with its checksum.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[..4].copy_from_slice(b"head");
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..32].copy_from_slice(&self.file_write_guid);
        b[32..48].copy_from_slice(&self.data_write_guid);
        b[48..64].copy_from_slice(&self.log_guid);
        b[64..66].copy_from_slice(&self.log_version.to_le_bytes());
        b[66..68].copy_from_slice(&self.version.to_le_bytes());
        b[68..72].copy_from_slice(&self.log_length.to_le_bytes());
        b[72..80].copy_from_slice(&self.log_offset.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// The reason of a format error without the path (for messages that combine several).
pub(crate) fn reason(e: DiskError) -> String {
    match e {
        DiskError::Format { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// Reads both headers and returns the current one with its slot (0 or 1).
pub(crate) fn current_header(file: &ImageFile) -> Result<(Header, usize)> {
    check_file_identifier(file)?;
    let mut found: Vec<(Header, usize)> = Vec::new();
    let mut errors = Vec::new();
    for (slot, &off) in HEADER_OFFSETS.iter().enumerate() {
        let parsed = file
            .read_vec(off, HEADER_LEN as u64, &format!("header {}", slot + 1))
            .map_err(reason)
            .and_then(|b| Header::parse(&b));
        match parsed {
            Ok(h) => found.push((h, slot)),
            Err(e) => errors.push(format!("header {} at {off}: {e}", slot + 1)),
        }
    }
    let Some(best) = found.into_iter().max_by_key(|(h, slot)| (h.seq, *slot)) else {
        return Err(DiskError::format(
            file.path(),
            "headers",
            format!("both headers are damaged: {}", errors.join("; ")),
        ));
    };
    let h = &best.0;
    let field = format!("header {}", best.1 + 1);
    if h.version != 1 {
        return Err(DiskError::Unsupported {
            path: file.path().to_path_buf(),
            what: format!("VHDX version {} ({field})", h.version),
        });
    }
    if h.log_version != 0 {
        return Err(DiskError::Unsupported {
            path: file.path().to_path_buf(),
            what: format!("VHDX log version {} ({field})", h.log_version),
        });
    }
    if h.log_offset % MIB != 0 || u64::from(h.log_length) % MIB != 0 || (h.log_length > 0 && h.log_offset < MIB) {
        return Err(DiskError::format(
            file.path(),
            format!("{field} log location"),
            format!(
                "log at {} with length {}: both must be multiples of 1 MiB, past the header section",
                h.log_offset, h.log_length
            ),
        ));
    }
    Ok(best)
}

/// Checks the `vhdxfile` signature at the start of the file.
fn check_file_identifier(file: &ImageFile) -> Result<()> {
    let mut sig = [0u8; 8];
    file.read_exact(&mut sig, 0, "file type identifier")?;
    if &sig != b"vhdxfile" {
        return Err(DiskError::format(
            file.path(),
            "file type identifier",
            "no \"vhdxfile\" signature",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{format_guid, guid};

    #[test]
    fn guid_text_gives_the_on_disk_bytes() {
        let g = guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
        let stored = [
            0x37, 0x67, 0xA1, 0xCA, 0x36, 0xFA, 0x43, 0x4D, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B,
        ];
        assert_eq!(g, stored);
        assert_eq!(format_guid(&g), "{caa16737-fa36-4d43-b3b6-33f0aa44e76b}");
    }
}
