//! VHDX: images made by qemu-img with every option it offers, cairn's writer
//! (checked with qemu-img and libvhdi's vhdimount), differencing chains,
//! log replay (compared with QEMU's own replay), damaged headers and
//! malformed files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_disk::image::Image;
use cairn_disk::io::ImageFile;
use cairn_disk::layer::{Format, Layer};
use cairn_disk::vhdx::{Vhdx, VhdxWriter, replay_log_in_place};
use cairn_disk::{DiskError, DiskSource, WriteOptions, writer};
use common::vhdi::VhdiMount;
use common::{path_str, qemu_img, require, run};

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------- helpers

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// On-disk bytes of a GUID given in text order.
fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[..4].copy_from_slice(&d1.to_le_bytes());
    g[4..6].copy_from_slice(&d2.to_le_bytes());
    g[6..8].copy_from_slice(&d3.to_le_bytes());
    g[8..].copy_from_slice(&d4);
    g
}
fn meta_disk_size() -> [u8; 16] {
    guid(
        0x2FA54224,
        0xCD1B,
        0x4876,
        [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
    )
}
fn meta_file_params() -> [u8; 16] {
    guid(
        0xCAA16737,
        0xFA36,
        0x4D43,
        [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
    )
}

fn read_file(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Recomputes the CRC-32C of the 4-byte checksum field at `at` over `len` bytes at `start`.
fn fix_crc(b: &mut [u8], start: usize, len: usize) {
    b[start + 4..start + 8].fill(0);
    let c = crc32c::crc32c(&b[start..start + len]);
    b[start + 4..start + 8].copy_from_slice(&c.to_le_bytes());
}

/// Index (0/1) and offset of the current header.
fn current_header(b: &[u8]) -> (usize, usize) {
    let s1 = le64(b, 64 * 1024 + 8);
    let s2 = le64(b, 128 * 1024 + 8);
    if s2 > s1 { (1, 128 * 1024) } else { (0, 64 * 1024) }
}

/// (offset, length) of the region with `id` in region table 1.
fn region(b: &[u8], bat: bool) -> (u64, u64) {
    let id = if bat {
        guid(
            0x2DC27766,
            0xF623,
            0x4200,
            [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
        )
    } else {
        guid(
            0x8B7CA206,
            0x4790,
            0x4B9A,
            [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
        )
    };
    let t = 192 * 1024;
    for i in 0..le32(b, t + 8) as usize {
        let e = t + 16 + i * 32;
        if b[e..e + 16] == id {
            return (le64(b, e + 16), u64::from(le32(b, e + 24)));
        }
    }
    panic!("region not found")
}

/// File offset of the metadata item `id`.
fn meta_item(b: &[u8], id: [u8; 16]) -> usize {
    let (m, _) = region(b, false);
    let m = m as usize;
    for i in 0..u16::from_le_bytes([b[m + 10], b[m + 11]]) as usize {
        let e = m + 32 + i * 32;
        if b[e..e + 16] == id {
            return m + le32(b, e + 16) as usize;
        }
    }
    panic!("metadata item not found")
}

/// Writes the region tables back with fresh checksums after changing table 1.
fn rewrite_region_tables(b: &mut [u8]) {
    fix_crc(b, 192 * 1024, 64 * 1024);
    let t: Vec<u8> = b[192 * 1024..256 * 1024].to_vec();
    b[256 * 1024..320 * 1024].copy_from_slice(&t);
}

fn open_bytes(name: &str, b: Vec<u8>) -> cairn_disk::Result<Vhdx> {
    Vhdx::open(ImageFile::from_bytes(Path::new(name), b))
}

fn err_text<T>(r: cairn_disk::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Converts `img` with qemu-img and compares cairn's reads with it.
fn same_as_qemu(img: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let raw = common::to_raw(img, dir.path());
    common::assert_reads_like(img, &raw);
}

/// Compares every byte cairn reads from `img` with `expected` (bytes past its end read as zero).
fn assert_image_bytes(img: &Path, expected: &[u8]) {
    let image = Image::open(img).unwrap_or_else(|e| panic!("{}: {e}", img.display()));
    let size = image.virtual_size() as usize;
    assert!(size >= expected.len());
    let mut got = vec![0u8; size];
    for (i, chunk) in got.chunks_mut(4 * MIB as usize).enumerate() {
        image.read_at(chunk, i as u64 * 4 * MIB).unwrap();
    }
    let mut want = expected.to_vec();
    want.resize(size, 0);
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "{}: byte {i} differs: cairn {:#04x}, expected {:#04x}",
            img.display(),
            got[i],
            want[i]
        );
    }
}

fn mounted_bytes(img: &Path) -> Vec<u8> {
    let m = VhdiMount::new(img);
    read_file(&m.top())
}

// ---------------------------------------------------------------- qemu-img images

#[test]
fn qemu_images_with_every_option_read_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = [("ext4", common::ext4_fixture()), ("ntfs", common::ntfs_fixture())];
    let variants: &[(&str, &str)] = &[
        (
            "dyn-1m-zero-off",
            "subformat=dynamic,block_size=1M,block_state_zero=off",
        ),
        ("dyn-8m", "subformat=dynamic,block_size=8M"),
        ("dyn-32m-log4m", "subformat=dynamic,block_size=32M,log_size=4M"),
        ("dyn-256m", "subformat=dynamic,block_size=256M,block_state_zero=on"),
        ("fixed-1m", "subformat=fixed,block_size=1M,block_state_zero=off"),
        ("fixed-8m-zero-on", "subformat=fixed,block_size=8M,block_state_zero=on"),
    ];
    for (fname, fixture) in &fixtures {
        for (vname, opts) in variants {
            let img = dir.path().join(format!("{fname}-{vname}.vhdx"));
            qemu_img(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "vhdx",
                "-o",
                opts,
                path_str(fixture),
                path_str(&img),
            ]);
            same_as_qemu(&img);
            let v = Vhdx::open(ImageFile::open(&img).unwrap()).unwrap();
            let details: std::collections::HashMap<_, _> = v.details().into_iter().collect();
            let want = if opts.contains("fixed") { "fixed" } else { "dynamic" };
            assert_eq!(details["subformat"], want, "{vname}");
            assert_eq!(details["log"], "empty");
            assert_eq!(v.sector_sizes().logical, 512);
        }
    }
    // A fixed image's data is one long run: consecutive blocks are contiguous in the file.
    let img = dir.path().join("ext4-fixed-1m.vhdx");
    let v = Vhdx::open(ImageFile::open(&img).unwrap()).unwrap();
    let m = v.map(0, v.virtual_size()).unwrap();
    assert_eq!(m.length, v.virtual_size(), "{m:?}");
}

// ---------------------------------------------------------------- writer

fn shuffled_restore(img: &Path, size: u64, logical: u32, block: Option<u32>) -> Vec<u8> {
    let src = read_file(&common::ext4_fixture());
    let opts = WriteOptions {
        logical_sector: logical,
        physical_sector: 4096,
        block_size: block,
    };
    let w = writer::create(Format::Vhdx, img, size, &opts).unwrap();
    let mut src = src;
    src.resize(size as usize, 0);
    // Shuffled 1 MiB pieces (the last one shorter), split between two threads.
    let mut pieces: Vec<u64> = (0..size.div_ceil(MIB)).collect();
    let mut x = 0x9E3779B97F4A7C15u64;
    for i in (1..pieces.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pieces.swap(i, (x % (i as u64 + 1)) as usize);
    }
    std::thread::scope(|s| {
        for t in 0..2 {
            let (w, src, pieces) = (&w, &src, &pieces);
            s.spawn(move || {
                for &p in pieces.iter().skip(t).step_by(2) {
                    let off = p * MIB;
                    let end = (off + MIB).min(size);
                    w.write_at(&src[off as usize..end as usize], off).unwrap();
                }
            });
        }
    });
    w.finish().unwrap();
    src
}

#[test]
fn writer_restores_ext4_from_two_threads_512() {
    require("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("restored.vhdx");
    let size = (96 * MIB) + 7 * 512; // not a multiple of the block size
    let src = shuffled_restore(&img, size, 512, None);
    qemu_img(&["check", path_str(&img)]);
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, &src).unwrap();
    qemu_img(&["compare", "-f", "vhdx", "-F", "raw", path_str(&img), path_str(&raw)]);
    common::assert_reads_like(&img, &raw);
    // Zero blocks were skipped: the file is smaller than the disk's data would need at 32 MiB blocks.
    let v = Vhdx::open(ImageFile::open(&img).unwrap()).unwrap();
    assert_eq!(v.block_size(), 32 * MIB);
    assert_eq!(v.virtual_size(), size);
    // Small blocks: the ext4 fixture has all-zero 1 MiB blocks, which stay unallocated.
    let img2 = dir.path().join("restored-1m.vhdx");
    shuffled_restore(&img2, size, 512, Some(MIB as u32));
    qemu_img(&["check", path_str(&img2)]);
    qemu_img(&["compare", "-f", "vhdx", "-F", "raw", path_str(&img2), path_str(&raw)]);
    let file_len = std::fs::metadata(&img2).unwrap().len();
    let nonzero = src.chunks(MIB as usize).filter(|c| c.iter().any(|&b| b != 0)).count() as u64;
    assert!(
        file_len <= (nonzero + 4) * MIB,
        "{file_len} bytes for {nonzero} data blocks"
    );
    // vhdimount (libvhdi) agrees.
    assert_eq!(mounted_bytes(&img2), src);
}

#[test]
fn writer_takes_disks_of_any_length() {
    require("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    // A raw source of any length: the last write ends inside a sector. The
    // image is that length rounded up to the logical sector; the rest of
    // the last sector reads as zeros.
    for (size, logical) in [(1_000_005u64, 512u32), (9 * MIB + 1000, 512), (9 * MIB + 1000, 4096)] {
        let img = dir.path().join(format!("any-{size}-{logical}.vhdx"));
        let mut src = shuffled_restore(&img, size, logical, Some(MIB as u32));
        let opts = WriteOptions {
            logical_sector: logical,
            ..WriteOptions::default()
        };
        let rounded = writer::image_size(Format::Vhdx, size, &opts);
        assert_eq!(rounded, size.div_ceil(u64::from(logical)) * u64::from(logical));
        src.resize(rounded as usize, 0);
        let raw = dir.path().join(format!("any-{size}-{logical}.raw"));
        std::fs::write(&raw, &src).unwrap();
        if logical == 512 {
            qemu_img(&["check", path_str(&img)]);
            let info = qemu_img(&["info", "--output=json", path_str(&img)]);
            assert!(info.contains(&format!("\"virtual-size\": {rounded}")), "{info}");
            qemu_img(&["compare", "-f", "vhdx", "-F", "raw", path_str(&img), path_str(&raw)]);
        } else {
            // QEMU opens no VHDX with 4 KiB logical sectors; libvhdi does.
            require("vhdiinfo");
            let info = run(Command::new("vhdiinfo").arg(&img));
            assert!(info.contains(&format!("({rounded} bytes)")), "{info}");
            assert_eq!(mounted_bytes(&img), src);
        }
        common::assert_reads_like(&img, &raw);
    }
}

#[test]
fn writer_4096_byte_sectors_read_by_vhdimount() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("restored-4k.vhdx");
    let size = 96 * MIB + 3 * 4096;
    let src = shuffled_restore(&img, size, 4096, Some(8 * MIB as u32));
    require("vhdiinfo");
    let info = run(Command::new("vhdiinfo").arg(&img));
    assert!(info.contains("Bytes per sector\t: 4096"), "{info}");
    assert!(info.contains(&format!("({size} bytes)")), "{info}");
    assert_eq!(mounted_bytes(&img), src);
    assert_image_bytes(&img, &src);
    let v = Vhdx::open(ImageFile::open(&img).unwrap()).unwrap();
    assert_eq!(v.sector_sizes().logical, 4096);
    assert_eq!(v.sector_sizes().physical, 4096);
    // Sizes round up to the logical sector.
    let odd = dir.path().join("odd.vhdx");
    let w = VhdxWriter::create(
        &odd,
        5 * MIB + 1,
        &WriteOptions {
            logical_sector: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(w.virtual_size(), 5 * MIB + 4096);
    w.finish().unwrap();
    assert!(
        VhdxWriter::create(&odd, MIB, &WriteOptions::default()).is_err(),
        "must not overwrite"
    );
    let bad = WriteOptions {
        block_size: Some(3 * MIB as u32),
        ..Default::default()
    };
    assert!(VhdxWriter::create(&dir.path().join("b.vhdx"), MIB, &bad).is_err());
}

// ---------------------------------------------------------------- differencing

/// Writes `(offset, bytes)` into a new child of `parent` and into `expected`.
fn make_child(parent: &Path, child: &Path, writes: &[(u64, Vec<u8>)], expected: &mut [u8]) {
    let w = VhdxWriter::create_child(child, parent, &WriteOptions::default()).unwrap();
    for (off, data) in writes {
        w.write_at(data, *off).unwrap();
        expected[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
    w.finish().unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn differencing_chain_three_deep() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhdx");
    let fixture = common::ext4_fixture();
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vhdx",
        "-o",
        "block_size=1M",
        path_str(&fixture),
        path_str(&base),
    ]);
    let mut expected = read_file(&fixture);
    // vhdimount looks for parents in the child's folder: keep the chain in one.
    let c1 = dir.path().join("c1.avhdx");
    let c2 = dir.path().join("c2.avhdx");
    let c3 = dir.path().join("c3.avhdx");
    make_child(
        &base,
        &c1,
        &[
            (5 * MIB, pattern(MIB as usize, 1)), // a whole block
            (MIB + 3 * 512, pattern(4096, 2)),   // part of a block
            (7 * MIB - 2048, pattern(8192, 3)),  // across a block boundary
            (20 * MIB, vec![0u8; 64 * 1024]),    // zeros hiding parent data
            (96 * MIB - 1024, pattern(1024, 4)), // the disk's last sectors
        ],
        &mut expected,
    );
    make_child(
        &c1,
        &c2,
        &[(MIB + 512, pattern(512, 5)), (30 * MIB, pattern(3 * MIB as usize, 6))],
        &mut expected,
    );
    let c3_writes = vec![
        (5 * MIB + 4096, pattern(4096, 7)),
        (40 * MIB + 512 * 9, pattern(512 * 3, 8)),
    ];
    make_child(&c2, &c3, &c3_writes, &mut expected);

    assert_image_bytes(&c3, &expected);
    assert_eq!(mounted_bytes(&c3), expected, "vhdimount's view of the chain");
    let img = Image::open(&c3).unwrap();
    assert_eq!(img.layers().len(), 4);
    let changed = img.changed_extents().unwrap().unwrap();
    let got: Vec<(u64, u64)> = changed.iter().map(|e| (e.offset, e.length)).collect();
    assert_eq!(got, vec![(5 * MIB + 4096, 4096), (40 * MIB + 512 * 9, 512 * 3)]);
    let c1_changed = Image::open(&c1).unwrap().changed_extents().unwrap().unwrap();
    let got: Vec<(u64, u64)> = c1_changed.iter().map(|e| (e.offset, e.length)).collect();
    assert_eq!(
        got,
        vec![
            (MIB + 3 * 512, 4096),
            (5 * MIB, MIB),
            (7 * MIB - 2048, 8192),
            (20 * MIB, 64 * 1024),
            (96 * MIB - 1024, 1024)
        ]
    );
    let top = Vhdx::open(ImageFile::open(&c3).unwrap()).unwrap();
    let p = top.parent().unwrap();
    assert_eq!(
        p.linkage[0],
        Vhdx::open(ImageFile::open(&c2).unwrap()).unwrap().linkage_id().unwrap()
    );
    assert_eq!(top.content_id(), top.linkage_id());
    let d: std::collections::HashMap<_, _> = top.details().into_iter().collect();
    assert_eq!(d["subformat"], "differencing");
    let c1_view = {
        let mut e = vec![0u8; expected.len()];
        Image::open(&c1).unwrap().read_at(&mut e, 0).unwrap();
        e
    };

    // A child in another folder names its parent "..\c1.avhdx".
    let sub = dir.path().join("snaps");
    std::fs::create_dir(&sub).unwrap();
    let side = sub.join("side.avhdx");
    let mut side_view = c1_view.clone();
    make_child(&c1, &side, &[(9 * MIB + 512, pattern(2048, 13))], &mut side_view);
    let sv = Vhdx::open(ImageFile::open(&side).unwrap()).unwrap();
    let rel = sv.parent_locator().iter().find(|(k, _)| k == "relative_path").unwrap();
    assert_eq!(rel.1, "..\\c1.avhdx");
    assert_image_bytes(&side, &side_view);

    // The chain moved to another folder: the relative path no longer leads
    // anywhere, the absolute path's file name next to the child does.
    let other = tempfile::tempdir().unwrap();
    let moved = other.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    std::fs::copy(&side, moved.join("side.avhdx")).unwrap();
    for f in ["base.vhdx", "c1.avhdx"] {
        std::fs::copy(dir.path().join(f), moved.join(f)).unwrap();
    }
    assert_image_bytes(&moved.join("side.avhdx"), &side_view);

    // Missing parent.
    std::fs::remove_file(moved.join("base.vhdx")).unwrap();
    let e = Image::open(&moved.join("side.avhdx")).unwrap_err();
    assert!(
        matches!(e, DiskError::Parent { .. }) && e.to_string().contains("not found"),
        "{e}"
    );

    // A parent whose DataWriteGuid changed (it was written to after the child was made).
    let mut b = read_file(&c1);
    let (_, h) = current_header(&b);
    b[h + 32] ^= 0xFF;
    fix_crc(&mut b, h, 4096);
    std::fs::write(&c1, &b).unwrap();
    let e = Image::open(&c2).unwrap_err();
    assert!(e.to_string().contains("the parent changed"), "{e}");
}

// ---------------------------------------------------------------- log replay

/// Appends a log sequence to a copy of `src`: entry 1 points block `block`'s
/// BAT entry at a new block past the end of the file, entry 2 fills that new
/// block (first 4 KiB `marker`, the rest zeroed by a zero descriptor). Only
/// the log and the header's LogGuid change; returns the bytes the block reads
/// as after replay.
fn add_log(img: &Path, block: u64, marker: &[u8]) -> Vec<u8> {
    let mut b = read_file(img);
    let (_, h) = current_header(&b);
    let log_guid = *uuid::Uuid::new_v4().as_bytes();
    b[h + 48..h + 64].copy_from_slice(&log_guid);
    fix_crc(&mut b, h, 4096);
    let log_off = le64(&b, h + 72) as usize;
    let (bat, _) = region(&b, true);
    let len = b.len() as u64;
    assert_eq!(len % MIB, 0);
    // Chunk ratio for 512-byte sectors and 1 MiB blocks: 4096 (entry = block for small disks).
    let entry_off = bat + block * 8;
    let bat_sector = entry_off / 4096 * 4096;
    let mut sector = b[bat_sector as usize..bat_sector as usize + 4096].to_vec();
    let new = 6u64 | ((len / MIB) << 20);
    sector[(entry_off - bat_sector) as usize..][..8].copy_from_slice(&new.to_le_bytes());
    let mut data = vec![0u8; 4096];
    data[..marker.len()].copy_from_slice(marker);
    let seq = 0x1_0000_0007u64;
    let e1 = log_entry(&log_guid, seq, 0, len, len + MIB, &[Desc::Data(bat_sector, sector)]);
    let e2 = log_entry(
        &log_guid,
        seq + 1,
        0,
        len,
        len + MIB,
        &[Desc::Data(len, data.clone()), Desc::Zero(len + 4096, MIB - 4096)],
    );
    let mut at = log_off;
    for e in [e1, e2] {
        b[at..at + e.len()].copy_from_slice(&e);
        at += e.len();
    }
    std::fs::write(img, &b).unwrap();
    let mut block_bytes = data;
    block_bytes.resize(MIB as usize, 0);
    block_bytes
}

enum Desc {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

fn log_entry(guid: &[u8; 16], seq: u64, tail: u32, flushed: u64, last: u64, descs: &[Desc]) -> Vec<u8> {
    let data_count = descs.iter().filter(|d| matches!(d, Desc::Data(..))).count();
    let desc_sectors = (descs.len() + 2).div_ceil(128);
    let mut e = vec![0u8; (desc_sectors + data_count) * 4096];
    let n = e.len();
    e[..4].copy_from_slice(b"loge");
    e[8..12].copy_from_slice(&(n as u32).to_le_bytes());
    e[12..16].copy_from_slice(&tail.to_le_bytes());
    e[16..24].copy_from_slice(&seq.to_le_bytes());
    e[24..28].copy_from_slice(&(descs.len() as u32).to_le_bytes());
    e[32..48].copy_from_slice(guid);
    e[48..56].copy_from_slice(&flushed.to_le_bytes());
    e[56..64].copy_from_slice(&last.to_le_bytes());
    let mut data_at = desc_sectors * 4096;
    for (i, d) in descs.iter().enumerate() {
        let at = 64 + i * 32;
        match d {
            Desc::Data(off, bytes) => {
                e[at..at + 4].copy_from_slice(b"desc");
                e[at + 4..at + 8].copy_from_slice(&bytes[4092..4096]);
                e[at + 8..at + 16].copy_from_slice(&bytes[..8]);
                e[at + 16..at + 24].copy_from_slice(&off.to_le_bytes());
                e[data_at..data_at + 4].copy_from_slice(b"data");
                e[data_at + 4..data_at + 8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
                e[data_at + 8..data_at + 4092].copy_from_slice(&bytes[8..4092]);
                e[data_at + 4092..data_at + 4096].copy_from_slice(&(seq as u32).to_le_bytes());
                data_at += 4096;
            }
            Desc::Zero(off, len) => {
                e[at..at + 4].copy_from_slice(b"zero");
                e[at + 8..at + 16].copy_from_slice(&len.to_le_bytes());
                e[at + 16..at + 24].copy_from_slice(&off.to_le_bytes());
            }
        }
        e[at + 24..at + 32].copy_from_slice(&seq.to_le_bytes());
    }
    fix_crc(&mut e, 0, n);
    e
}

#[test]
fn pending_log_is_replayed_in_memory_like_qemu() {
    require("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("dirty.vhdx");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        "block_size=1M,block_state_zero=off",
        path_str(&img),
        "16M",
    ]);
    common::write_chunks(
        &img,
        "vhdx",
        &[(2 * MIB, pattern(MIB as usize, 9)), (5 * MIB, pattern(4096, 10))],
    );
    let clean_raw = common::to_raw(&img, dir.path());
    let marker = b"replayed from the log".to_vec();
    let block_bytes = add_log(&img, 2, &marker);
    let before = read_file(&img);

    let mut expected = read_file(&clean_raw);
    expected[2 * MIB as usize..3 * MIB as usize].copy_from_slice(&block_bytes);
    assert_image_bytes(&img, &expected);
    assert_eq!(read_file(&img), before, "opening must not change the file");
    let v = Vhdx::open(ImageFile::open(&img).unwrap()).unwrap();
    assert_eq!(v.replayed_log_entries(), 2);
    let d: std::collections::HashMap<_, _> = v.details().into_iter().collect();
    assert!(d["log"].contains("2 entries replayed"), "{}", d["log"]);

    // QEMU replays a copy when it opens it read-write; its view equals cairn's.
    let qcopy = dir.path().join("qemu-replayed.vhdx");
    std::fs::copy(&img, &qcopy).unwrap();
    run(Command::new("qemu-io")
        .args(["-f", "vhdx", "-c", "read 0 512"])
        .arg(&qcopy));
    let qraw = common::to_raw(&qcopy, dir.path());
    assert_eq!(read_file(&qraw), expected);
    common::assert_reads_like(&img, &qraw);

    // Written back only when asked.
    let copy = dir.path().join("replayed.vhdx");
    std::fs::copy(&img, &copy).unwrap();
    assert!(replay_log_in_place(&copy).unwrap());
    qemu_img(&["check", path_str(&copy)]);
    same_as_qemu(&copy);
    assert_image_bytes(&copy, &expected);
    let v2 = Vhdx::open(ImageFile::open(&copy).unwrap()).unwrap();
    assert_eq!(v2.replayed_log_entries(), 0);
    assert_eq!(v2.linkage_id(), v.linkage_id(), "DataWriteGuid is kept");
    assert!(!replay_log_in_place(&copy).unwrap(), "nothing left to replay");

    // A damaged second entry: only the first is replayed (the block points at zeros).
    let (_, h) = current_header(&before);
    let log_off = le64(&before, h + 72) as usize;
    let mut b = before.clone();
    b[log_off + 8192 + 100] ^= 1;
    let v3 = open_bytes("damaged-log.vhdx", b).unwrap();
    assert_eq!(v3.replayed_log_entries(), 1);
    let mut zeroed = expected.clone();
    zeroed[2 * MIB as usize..3 * MIB as usize].fill(0);
    let mut got = vec![1u8; zeroed.len()];
    Image::from_layers(vec![Box::new(v3)]).read_at(&mut got, 0).unwrap();
    assert!(got == zeroed, "only the BAT change of entry 1 applies");
    // A damaged first entry: the second one's tail is gone, nothing is replayed.
    let mut b = before.clone();
    b[log_off + 4096 + 100] ^= 1;
    assert_eq!(open_bytes("damaged-log1.vhdx", b).unwrap().replayed_log_entries(), 0);
    // A truncated file (shorter than FlushedFileOffset) is refused.
    let t = open_bytes("short.vhdx", before[..before.len() - MIB as usize].to_vec());
    assert!(err_text(t).contains("FlushedFileOffset"));
}

// ---------------------------------------------------------------- damage and bad input

fn small_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let img = dir.join("small.vhdx");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        "block_size=1M,block_state_zero=off",
        path_str(&img),
        "8M",
    ]);
    common::write_chunks(
        &img,
        "vhdx",
        &[(MIB, pattern(MIB as usize, 11)), (3 * MIB, pattern(65536, 12))],
    );
    let b = read_file(&img);
    (img, b)
}

#[test]
fn damaged_headers_fall_back_or_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (img, b) = small_image(dir.path());
    let raw = common::to_raw(&img, dir.path());
    let (slot, h) = current_header(&b);
    let mut one = b.clone();
    one[h + 200] ^= 0x40;
    let path = dir.path().join("one-bad-header.vhdx");
    std::fs::write(&path, &one).unwrap();
    common::assert_reads_like(&path, &raw);
    let v = Vhdx::open(ImageFile::open(&path).unwrap()).unwrap();
    let d: std::collections::HashMap<_, _> = v.details().into_iter().collect();
    assert!(d["header"].starts_with(&format!("{}", 2 - slot)), "{}", d["header"]);
    let mut both = one.clone();
    let other = if h == 64 * 1024 { 128 * 1024 } else { 64 * 1024 };
    both[other + 4] ^= 1;
    let e = err_text(open_bytes("both.vhdx", both));
    assert!(
        e.contains("header 1") && e.contains("header 2") && e.contains("checksum"),
        "{e}"
    );
    // Region table 1 damaged: table 2 is used.
    let mut rt = b.clone();
    rt[192 * 1024 + 20] ^= 1;
    open_bytes("rt.vhdx", rt.clone()).unwrap();
    rt[256 * 1024 + 20] ^= 1;
    assert!(err_text(open_bytes("rt2.vhdx", rt)).contains("region tables"));
}

#[test]
fn malformed_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_, b) = small_image(dir.path());
    let expect = |name: &str, bytes: Vec<u8>, want: &str| {
        let e = err_text(open_bytes(name, bytes));
        assert!(e.contains(want), "{name}: {e}");
    };
    // Truncated in the headers, in the metadata, in the data.
    expect(
        "t1",
        b[..100 * 1024].to_vec(),
        "region table 2: 65536 bytes at offset 262144 reach past the end",
    );
    expect("t0", b[..60 * 1024].to_vec(), "header 2 at 131072");
    expect("t2", b[..(2 * MIB as usize + 4096)].to_vec(), "past the end");
    let (bat, _) = region(&b, true);
    let mut last_block = 0;
    for i in 0..8 {
        let v = le64(&b, bat as usize + i * 8);
        if v & 7 == 6 {
            last_block = last_block.max((v >> 20) * MIB);
        }
    }
    expect("t3", b[..last_block as usize + 4096].to_vec(), "BAT entry");
    // BAT entry beyond the end of the file.
    let mut x = b.clone();
    let e = bat as usize + 8;
    x[e..e + 8].copy_from_slice(&(6u64 | (4000u64 << 20)).to_le_bytes());
    expect("bat-far", x, "BAT entry 1");
    // BAT entry pointing into the metadata region.
    let mut x = b.clone();
    let (meta, _) = region(&b, false);
    x[e..e + 8].copy_from_slice(&(6u64 | ((meta / MIB) << 20)).to_le_bytes());
    expect("bat-meta", x, "overlaps the metadata region");
    // Two BAT entries sharing a block.
    let mut x = b.clone();
    let first = (0..8)
        .map(|i| le64(&b, bat as usize + i * 8))
        .find(|v| v & 7 == 6)
        .unwrap();
    x[bat as usize + 5 * 8..bat as usize + 6 * 8].copy_from_slice(&first.to_le_bytes());
    expect("bat-shared", x, "BAT entry 5: its block at file offset");
    // Unknown BAT state.
    let mut x = b.clone();
    x[e] = (x[e] & !7) | 4;
    expect("bat-state", x, "invalid payload block state 4");
    // Overlapping regions.
    let mut x = b.clone();
    let t = 192 * 1024;
    for i in 0..le32(&x, t + 8) as usize {
        let at = t + 16 + i * 32 + 16;
        x[at..at + 8].copy_from_slice(&bat.to_le_bytes());
    }
    rewrite_region_tables(&mut x);
    expect("overlap", x, "overlap");
    // Absurd virtual size and block size.
    let mut x = b.clone();
    let at = meta_item(&x, meta_disk_size());
    x[at..at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    expect("size", x, "virtual disk size");
    let mut x = b.clone();
    let at = meta_item(&x, meta_file_params());
    x[at..at + 4].copy_from_slice(&(3 * MIB as u32).to_le_bytes());
    expect("block", x, "block size");
    let mut x = b.clone();
    x[at..at + 4].copy_from_slice(&(512 * MIB as u32).to_le_bytes());
    expect("block2", x, "block size");
    // A BAT too short for the disk.
    let mut x = b.clone();
    let at = meta_item(&x, meta_disk_size());
    x[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    expect("bat-short", x, "BAT region");
    // Not a VHDX at all.
    expect("empty", Vec::new(), "file type identifier");
    expect("zeros", vec![0u8; 4 * MIB as usize], "file type identifier");
}
