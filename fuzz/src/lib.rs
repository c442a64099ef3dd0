//! Helpers shared by cairn's fuzz targets.
//!
//! Every target reads its first input byte as a *mode* that selects keys and
//! whether checksums are fixed up after the fuzzer's mutations: without the
//! fix-ups nearly every mutation stops at a checksum, so the code behind it
//! (decompression, decryption, body decoding, validation) would never see
//! hostile input. `README.md` lists the mode bits of each target.

use std::sync::LazyLock;

use cairn_format::crypto::Keys;

/// Plain (unencrypted) repository keys with a fixed hash key.
pub static PLAIN: LazyLock<Keys> = LazyLock::new(|| Keys::plain([0x5a; 32]));

/// Encrypting repository keys from a fixed master secret.
pub static ENCRYPTED: LazyLock<Keys> = LazyLock::new(|| {
    let mut master = [0u8; 64];
    for (i, b) in master.iter_mut().enumerate() {
        *b = i as u8;
    }
    Keys::from_master(&master).expect("AES key setup")
});

/// Plain keys when `encrypted` is false, else encrypting keys.
pub fn keys(encrypted: bool) -> &'static Keys {
    if encrypted { &ENCRYPTED } else { &PLAIN }
}

/// Splits an input into its mode byte and the rest.
pub fn split(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}

/// Makes an envelope's `body_len` match its length and recomputes its BLAKE3 trailer.
pub fn fix_envelope(b: &mut [u8]) {
    if b.len() >= 24 + 32 {
        let body = (b.len() - 56) as u64;
        b[16..24].copy_from_slice(&body.to_le_bytes());
    }
    if b.len() >= 32 {
        let n = b.len() - 32;
        let sum = blake3::hash(&b[..n]);
        b[n..].copy_from_slice(sum.as_bytes());
    }
}

/// Recomputes a block record's payload CRC (over the bytes present) and header CRC.
pub fn fix_record(b: &mut [u8]) {
    if b.len() < 64 {
        return;
    }
    let stored = u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize;
    let end = 64usize.saturating_add(stored).min(b.len());
    let crc = crc32c::crc32c(&b[64..end]);
    b[48..52].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes a data file header's CRC.
pub fn fix_datafile(b: &mut [u8]) {
    if b.len() >= 64 {
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Opens `data` as one layer of `format` and walks its whole allocation map
/// (bounded), reading a little of every run: no input may panic, loop
/// forever, or allocate absurdly.
pub fn exercise_layer(format: cairn_disk::Format, data: &[u8]) {
    exercise_layer_owned(format, data.to_vec());
}

/// [`exercise_layer`] on bytes the caller built (no copy: a sparse VHDX
/// expands to megabytes, and copying them would dominate every run).
pub fn exercise_layer_owned(format: cairn_disk::Format, data: Vec<u8>) {
    use cairn_disk::layer::Piece;
    let file = cairn_disk::io::ImageFile::from_bytes("fuzz.img".as_ref(), data);
    let Ok(layer) = cairn_disk::image::open_layer(file, Some(format)) else { return };
    let size = layer.virtual_size();
    let mut offset = 0u64;
    let mut buf = vec![0u8; 4096];
    let mut cluster = Vec::new();
    for _ in 0..4096 {
        if offset >= size {
            break;
        }
        let Ok(m) = layer.map(offset, size - offset) else { return };
        assert!(m.length >= 1 && m.length <= size - offset, "mapping length {} at {offset}", m.length);
        match m.piece {
            Piece::Data { host } => {
                let n = m.length.min(buf.len() as u64) as usize;
                let _ = layer.read_data(&mut buf[..n], host);
            }
            Piece::Compressed { host, len, .. } => {
                let _ = layer.read_compressed(host, len, &mut cluster);
            }
            Piece::Zero | Piece::Parent => {}
        }
        offset += m.length;
    }
}
