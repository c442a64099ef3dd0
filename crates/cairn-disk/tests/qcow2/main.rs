//! qcow2 reader and writer against real images made by qemu-img / qemu-io.
//!
//! Every image is compared byte for byte with what `qemu-img convert -O raw`
//! makes of it; chains are checked against `qemu-img map`; the writer's
//! output must pass `qemu-img check` and `qemu-img compare`.

#[path = "../common/mod.rs"]
mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_disk::extent::{Extent, normalize};
use cairn_disk::io::ImageFile;
use cairn_disk::layer::{Layer, Piece};
use cairn_disk::qcow2::Qcow2;
use cairn_disk::{DiskError, DiskSource, Format, Image, WriteOptions};
use common::{assert_reads_like, path_str, qemu_img, require, run};

/// A small deterministic pseudo-random generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// `qemu-img convert -O qcow2 -o OPTS src dst` (with `-c` when `compress`).
fn convert(src: &Path, dst: &Path, opts: &str, compress: bool) {
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    if compress {
        args.push("-c");
    }
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([path_str(src), path_str(dst)]);
    qemu_img(&args);
}

/// Runs qemu-io commands on `img` (format `fmt`).
fn qemu_io(img: &Path, fmt: &str, cmds: &[String]) {
    require("qemu-io");
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(img);
    run(&mut c);
}

/// Converts `img` to raw with qemu-img and checks cairn reads the same
/// bytes and size (`common::assert_reads_like`).
fn assert_same_as_qemu(img: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let raw = common::to_raw(img, dir.path());
    assert_reads_like(img, &raw);
}

/// The virtual size `qemu-img info` reports for the top image.
fn qemu_size(img: &Path) -> u64 {
    let out = qemu_img(&["info", "--output=json", "-U", path_str(img)]);
    let line = out
        .lines()
        .find(|l| l.starts_with("    \"virtual-size\": "))
        .expect("top-level virtual-size");
    line.trim()
        .trim_start_matches("\"virtual-size\": ")
        .trim_end_matches(',')
        .parse()
        .unwrap()
}

/// Opens one qcow2 file (no parents).
fn open_layer(p: &Path) -> cairn_disk::Result<Qcow2> {
    Qcow2::open(ImageFile::open(p)?)
}

fn detail(layer: &Qcow2, key: &str) -> String {
    layer
        .details()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no detail {key:?}"))
}

/// The ranges `qemu-img map` says the top file itself defines (depth 0, present).
fn qemu_top_extents(img: &Path) -> Vec<Extent> {
    let out = qemu_img(&["map", "--output=json", "-U", path_str(img)]);
    let num = |line: &str, key: &str| -> u64 {
        let k = format!("\"{key}\": ");
        let at = line.find(&k).unwrap_or_else(|| panic!("{key} in {line}")) + k.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("number after {key} in {line}"))
    };
    let mut v = Vec::new();
    for line in out.lines() {
        if line.contains("\"depth\": 0,") && line.contains("\"present\": true") {
            v.push(Extent {
                offset: num(line, "start"),
                length: num(line, "length"),
            });
        }
    }
    normalize(v)
}

fn clip(extents: &[Extent], end: u64) -> Vec<Extent> {
    normalize(
        extents
            .iter()
            .filter(|e| e.offset < end)
            .map(|e| Extent {
                offset: e.offset,
                length: e.end().min(end) - e.offset,
            })
            .collect(),
    )
}

fn covered(extents: &[Extent], off: u64, len: u64) -> bool {
    extents.iter().any(|e| e.offset <= off && off + len <= e.end())
}

fn err_text(r: cairn_disk::Result<impl std::fmt::Debug>) -> (String, DiskError) {
    let e = r.expect_err("expected an error");
    (e.to_string(), e)
}

mod chains;
mod fuzz_seeds;
mod independent_reader;
mod malformed;
mod reads;
mod writer;
