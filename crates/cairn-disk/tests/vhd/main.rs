//! VHD: images made by qemu-img (every `-o` option it has) read like qemu
//! reads them; differencing chains written with `VhdWriter::create_child`
//! read like libvhdi's vhdimount reads them; the writer's output passes
//! `qemu-img compare` and vhdimount; damaged files give errors that name the
//! file and the field.

#[path = "../common/mod.rs"]
mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_disk::extent::{Extent, normalize};
use cairn_disk::image::{Fill, OpenOptions, probe};
use cairn_disk::io::ImageFile;
use cairn_disk::layer::{Layer, Piece};
use cairn_disk::vhd::format::{DynHeader, Footer, bitmap_len};
use cairn_disk::vhd::{Vhd, VhdWriter, footer_at_end};
use cairn_disk::{DiskError, DiskSource, DiskWriter, Format, Image, WriteOptions, writer};
use common::vhdi::VhdiMount;
use common::{path_str, qemu_img, require, run};

// ---------------------------------------------------------------- helpers

/// The major version of the installed qemu-img.
fn qemu_major() -> u32 {
    let v = qemu_img(&["--version"]);
    v.split_whitespace()
        .nth(2)
        .and_then(|x| x.split('.').next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no version in {v:?}"))
}

/// How qemu-img is to open `img` as VHD: `-f vpc FILE`, or, for a creator that QEMU
/// before 10.0 sized by its CHS geometry although it is not Virtual PC or QEMU, when
/// that geometry and the current size disagree, with `force_size_calc=current_size` —
/// the rule QEMU 10.0, Hyper-V and cairn follow (see `Footer::virtual_size`). Files
/// cairn writes make the two agree, so every QEMU opens them plainly.
fn vpc_args(img: &Path) -> Vec<String> {
    let bytes = std::fs::read(img).unwrap();
    let footer = &bytes[bytes.len() - 512..];
    let creator = &footer[28..32];
    let current = u64::from_be_bytes(footer[48..56].try_into().unwrap());
    let chs = u64::from(u16::from_be_bytes([footer[56], footer[57]])) * u64::from(footer[58]) * u64::from(footer[59]);
    let old_rule_uses_chs = ![&b"win "[..], b"qem2", b"d2v ", b"CTXS", b"tap\0"].contains(&creator);
    let qemu_rule_uses_chs = [&b"vpc "[..], b"qemu"].contains(&creator);
    if qemu_major() < 10 && old_rule_uses_chs && !qemu_rule_uses_chs && chs * 512 != current {
        vec![
            "--image-opts".into(),
            format!(
                "driver=vpc,force_size_calc=current_size,file.driver=file,file.filename={}",
                path_str(img)
            ),
        ]
    } else {
        vec!["-f".into(), "vpc".into(), path_str(img).into()]
    }
}

/// `qemu-img convert -f vpc -O raw` (naming the format: qemu probes a fixed VHD as raw).
fn vpc_to_raw(img: &Path, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{}.qemu.raw", img.file_name().unwrap().to_string_lossy()));
    let _ = std::fs::remove_file(&out);
    let mut args: Vec<String> = vec!["convert".into(), "-U".into()];
    args.extend(vpc_args(img));
    args.extend(["-O".into(), "raw".into(), path_str(&out).into()]);
    qemu_img(&args.iter().map(String::as_str).collect::<Vec<_>>());
    out
}

/// `qemu-img compare` of a VHD (as [`vpc_args`] opens it) with a raw file.
fn compare_raw(img: &Path, raw: &Path, dir: &Path) -> String {
    let converted = vpc_to_raw(img, dir);
    let out = qemu_img(&["compare", "-f", "raw", "-F", "raw", path_str(&converted), path_str(raw)]);
    let _ = std::fs::remove_file(converted);
    out
}

/// Virtual size by `qemu-img info -f vpc` (the text form: in the JSON form the
/// child node's size comes first).
fn qemu_vpc_size(img: &Path) -> u64 {
    let mut args: Vec<String> = vec!["info".into(), "-U".into()];
    args.extend(vpc_args(img));
    let info = qemu_img(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let line = info
        .lines()
        .find(|l| l.starts_with("virtual size:"))
        .expect("virtual size line");
    let n = line.rsplit('(').next().and_then(|r| r.split(' ').next());
    n.and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line:?}"))
}

/// cairn reads `img` byte for byte as qemu does, with qemu's virtual size.
fn assert_same_as_qemu_vpc(img: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let raw = vpc_to_raw(img, dir.path());
    common::assert_reads_like(img, &raw);
    assert_eq!(
        Image::open(img).unwrap().virtual_size(),
        qemu_vpc_size(img),
        "{}: size vs qemu-img info",
        img.display()
    );
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    cairn_testkit::rng::xorshift_bytes_from(seed, len, 24)
}

fn footer_at(b: &[u8], at: usize) -> Footer {
    Footer::parse(&b[at..at + 512]).unwrap()
}

/// Rewrites both footers of a dynamic VHD (or the one of a fixed VHD) after `f` changes them.
fn patch_footers(path: &Path, f: impl Fn(&mut Footer)) {
    let mut b = std::fs::read(path).unwrap();
    let end = b.len() - 512;
    let mut footer = footer_at(&b, end);
    f(&mut footer);
    let enc = footer.encode();
    b[end..].copy_from_slice(&enc);
    if &b[0..8] == b"conectix" {
        b[..512].copy_from_slice(&enc);
    }
    std::fs::write(path, b).unwrap();
}

/// Rewrites the dynamic disk header after `f` changes it.
fn patch_header(path: &Path, f: impl Fn(&mut DynHeader)) {
    let mut b = std::fs::read(path).unwrap();
    let at = footer_at(&b, b.len() - 512).data_offset as usize;
    let mut h = DynHeader::parse(&b[at..at + 1024]).unwrap();
    f(&mut h);
    b[at..at + 1024].copy_from_slice(&h.encode());
    std::fs::write(path, b).unwrap();
}

fn write_bytes_at(path: &Path, at: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, at).unwrap();
}

/// Flips the lowest bit of the byte at `at`: always changes a byte-sum checksum
/// (overwriting bytes with fixed values leaves it unchanged when the sums match).
fn flip_bit_at(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 1], at).unwrap();
}

/// The error opening `path` (with its parents) as a VHD, as text; panics if
/// it opens. The error must name `path` (or, for parent problems, the child
/// in the chain whose parent is wrong: see `open_err_naming`).
fn open_err(path: &Path) -> String {
    open_err_naming(path, path)
}

fn open_err_naming(path: &Path, names: &Path) -> String {
    let opts = OpenOptions {
        format: Some(Format::Vhd),
        no_parents: false,
    };
    match Image::open_with(path, &opts) {
        Ok(_) => panic!("{} opened but should not", path.display()),
        Err(e) => {
            let s = e.to_string();
            assert!(
                s.contains(path_str(names)),
                "error does not name {}: {s}",
                names.display()
            );
            s
        }
    }
}

/// Compares the disk vhdimount shows for `img` with the file `expected`.
fn assert_vhdimount_reads(img: &Path, expected: &Path) {
    let m = VhdiMount::new(img);
    let got = std::fs::read(m.top()).unwrap();
    let want = std::fs::read(expected).unwrap();
    assert_eq!(got.len(), want.len(), "{}: vhdimount size", img.display());
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!("{}: vhdimount byte {i} differs from the expected bytes", img.display());
    }
}

/// A small dynamic VHD made by qemu-img (4 MiB data written at a few places) in `dir`.
fn small_dynamic(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    qemu_img(&["create", "-q", "-f", "vpc", "-o", "force_size=on", path_str(&p), "16M"]);
    common::write_chunks(
        &p,
        "vpc",
        &[
            (0, bytes(1, 65536)),
            (5 << 20, bytes(2, 1 << 20)),
            (14 << 20, bytes(3, 4096)),
        ],
    );
    p
}

mod bad_input;
mod chains;
mod fuzz_seeds;
mod qemu_made;
mod writes;
