//! Scans folders of real images made by `qemu-img`.

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_disk::Format;
use cairn_inventory::{Disk, Inventory, Vm, scan};

/// Runs `qemu-img args...` in `dir`; panics with an install hint if it is missing.
fn qemu_img(dir: &Path, args: &[&str]) {
    let out = Command::new("qemu-img").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("cannot run qemu-img ({e}): install it (Debian/Ubuntu: apt-get install qemu-utils; Fedora: dnf install qemu-img)")
    });
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn create(dir: &Path, format: &str, name: &str, size: &str) {
    qemu_img(dir, &["create", "-q", "-f", format, name, size]);
}

fn overlay(dir: &Path, name: &str, base: &str) {
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", name]);
}

/// Builds the test folder:
///
/// ```text
/// alpha/  base.qcow2 <- snap1.qcow2 <- snap2.qcow2, data.qcow2, notes.txt, .hidden.qcow2, tiny.img
/// beta/   disk.vhdx, old.vhd, plain.img, broken.qcow2 (truncated), odd.raw (size 1000)
/// gamma/  base.qcow2 <- a.qcow2, base.qcow2 <- b.qcow2 (a branch)
/// empty/
/// solo.raw, tmpl.qcow2 <- tmpl-top.qcow2, beta.img (name taken by a folder), readme.md
/// ```
fn build(root: &Path) {
    let alpha = root.join("alpha");
    let beta = root.join("beta");
    let gamma = root.join("gamma");
    for d in [&alpha, &beta, &gamma, &root.join("empty")] {
        std::fs::create_dir(d).expect("mkdir");
    }
    create(&alpha, "qcow2", "base.qcow2", "1M");
    overlay(&alpha, "snap1.qcow2", "base.qcow2");
    overlay(&alpha, "snap2.qcow2", "snap1.qcow2");
    create(&alpha, "qcow2", "data.qcow2", "2M");
    create(&alpha, "qcow2", ".hidden.qcow2", "1M");
    std::fs::write(alpha.join("notes.txt"), "not a disk\n".repeat(100)).expect("write");
    std::fs::write(alpha.join("tiny.img"), [0u8; 100]).expect("write");

    create(&beta, "vhdx", "disk.vhdx", "4M");
    qemu_img(
        &beta,
        &["create", "-q", "-f", "vpc", "-o", "force_size=on", "old.vhd", "3M"],
    );
    create(&beta, "raw", "plain.img", "1M");
    create(&beta, "qcow2", "broken.qcow2", "1M");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(beta.join("broken.qcow2"))
        .expect("open");
    f.set_len(65536).expect("truncate");
    std::fs::write(beta.join("odd.raw"), [0u8; 1000]).expect("write");

    create(&gamma, "qcow2", "base.qcow2", "1M");
    overlay(&gamma, "a.qcow2", "base.qcow2");
    overlay(&gamma, "b.qcow2", "base.qcow2");

    create(root, "raw", "solo.raw", "1M");
    create(root, "qcow2", "tmpl.qcow2", "5M");
    overlay(root, "tmpl-top.qcow2", "tmpl.qcow2");
    create(root, "raw", "beta.img", "512");
    std::fs::write(root.join("readme.md"), "# images\n".repeat(100)).expect("write");
}

fn vm<'a>(inv: &'a Inventory, name: &str) -> &'a Vm {
    inv.vms
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no VM {name} in {inv:#?}"))
}

/// A chain as (path, format) pairs, top first.
type Chain = Vec<(PathBuf, Format)>;

fn chain(d: &Disk) -> Chain {
    d.chain.iter().map(|c| (c.path.clone(), c.format)).collect()
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

#[test]
fn scan_finds_vms_disks_and_chains() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    let inv = scan(dir.path()).expect("scan");

    let names: Vec<&str> = inv.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "beta.img", "empty", "gamma", "solo", "tmpl"]);
    assert!(inv.problems.is_empty(), "{:?}", inv.problems);

    // A qcow2 chain: one disk, the top, with its chain; plus a separate disk.
    let alpha = vm(&inv, "alpha");
    assert!(alpha.problems.is_empty(), "{:?}", alpha.problems);
    assert_eq!(alpha.disks.len(), 2, "{alpha:#?}");
    let d0 = &alpha.disks[0];
    assert_eq!((d0.index, d0.key.as_str()), (0, "alpha/base.qcow2#0"));
    assert_eq!(d0.path, p("alpha/snap2.qcow2"));
    assert_eq!(d0.format, Format::Qcow2);
    assert_eq!(d0.virtual_size, 1 << 20);
    assert_eq!((d0.logical_sector_size, d0.physical_sector_size), (512, 512));
    assert_eq!(
        chain(d0),
        [
            (p("alpha/snap2.qcow2"), Format::Qcow2),
            (p("alpha/snap1.qcow2"), Format::Qcow2),
            (p("alpha/base.qcow2"), Format::Qcow2),
        ]
    );
    assert_eq!(d0.problem, None);
    let d1 = &alpha.disks[1];
    assert_eq!((d1.index, d1.key.as_str()), (1, "alpha/data.qcow2#0"));
    assert_eq!(d1.path, p("alpha/data.qcow2"));
    assert_eq!(d1.virtual_size, 2 << 20);
    assert_eq!(chain(d1), [(p("alpha/data.qcow2"), Format::Qcow2)]);

    // VHDX, VHD, raw and a broken qcow2 that is listed with its problem.
    let beta = vm(&inv, "beta");
    let tops: Vec<(PathBuf, Format, u64)> = beta
        .disks
        .iter()
        .map(|d| (d.path.clone(), d.format, d.virtual_size))
        .collect();
    assert_eq!(
        tops,
        [
            (p("beta/broken.qcow2"), Format::Qcow2, 0),
            (p("beta/disk.vhdx"), Format::Vhdx, 4 << 20),
            (p("beta/old.vhd"), Format::Vhd, 3 << 20),
            (p("beta/plain.img"), Format::Raw, 1 << 20),
        ]
    );
    let broken = beta.disks[0].problem.as_deref().expect("broken image has a problem");
    assert!(broken.contains("broken.qcow2"), "{broken}");
    assert!(beta.disks[1..].iter().all(|d| d.problem.is_none()), "{beta:#?}");
    assert_eq!(beta.problems.len(), 1, "{:?}", beta.problems);
    assert!(beta.problems[0].contains("odd.raw") && beta.problems[0].contains("multiple of 512"));
    let vhdx = &beta.disks[1];
    assert_eq!(vhdx.logical_sector_size, 512);
    assert!(vhdx.physical_sector_size == 512 || vhdx.physical_sector_size == 4096);

    // A branch: two disks on one base, told apart by position.
    let gamma = vm(&inv, "gamma");
    let g: Vec<(&str, PathBuf, Chain)> = gamma
        .disks
        .iter()
        .map(|d| (d.key.as_str(), d.path.clone(), chain(d)))
        .collect();
    let base = (p("gamma/base.qcow2"), Format::Qcow2);
    assert_eq!(
        g,
        [
            (
                "gamma/base.qcow2#0",
                p("gamma/a.qcow2"),
                vec![(p("gamma/a.qcow2"), Format::Qcow2), base.clone()]
            ),
            (
                "gamma/base.qcow2#1",
                p("gamma/b.qcow2"),
                vec![(p("gamma/b.qcow2"), Format::Qcow2), base]
            ),
        ]
    );

    assert!(vm(&inv, "empty").disks.is_empty());

    // Root-level files: one VM per chain, named after its base; a taken name uses the file name.
    let solo = vm(&inv, "solo");
    assert_eq!(solo.path, p("solo.raw"));
    assert_eq!(solo.disks.len(), 1);
    assert_eq!(
        (solo.disks[0].key.as_str(), solo.disks[0].format),
        ("solo.raw#0", Format::Raw)
    );
    let tmpl = vm(&inv, "tmpl");
    assert_eq!(tmpl.disks.len(), 1);
    assert_eq!(tmpl.disks[0].path, p("tmpl-top.qcow2"));
    assert_eq!(tmpl.disks[0].key, "tmpl.qcow2#0");
    assert_eq!(tmpl.disks[0].virtual_size, 5 << 20);
    assert_eq!(tmpl.disks[0].chain.len(), 2);
    assert_eq!(vm(&inv, "beta.img").disks[0].path, p("beta.img"));
}

#[test]
fn rescan_is_identical_and_keys_survive_a_new_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    let first = scan(dir.path()).expect("scan");
    let second = scan(dir.path()).expect("rescan");
    assert_eq!(first, second);

    // The result survives JSON.
    let json = serde_json::to_string(&first).expect("serialize");
    let back: Inventory = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, first);

    // A new snapshot moves the top but keeps the key.
    overlay(&dir.path().join("alpha"), "snap3.qcow2", "snap2.qcow2");
    let third = scan(dir.path()).expect("scan after snapshot");
    let before = &vm(&first, "alpha").disks[0];
    let after = &vm(&third, "alpha").disks[0];
    assert_eq!(after.key, before.key);
    assert_eq!(after.path, p("alpha/snap3.qcow2"));
    assert_eq!(after.chain.len(), 4);
}

#[test]
fn broken_chain_is_reported_and_others_still_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vm_dir = dir.path().join("vm");
    std::fs::create_dir(&vm_dir).expect("mkdir");
    create(&vm_dir, "qcow2", "base.qcow2", "1M");
    overlay(&vm_dir, "top.qcow2", "base.qcow2");
    create(&vm_dir, "qcow2", "other.qcow2", "1M");
    std::fs::remove_file(vm_dir.join("base.qcow2")).expect("rm");

    let inv = scan(dir.path()).expect("scan");
    let v = vm(&inv, "vm");
    assert_eq!(v.disks.len(), 2, "{v:#?}");
    let top = v
        .disks
        .iter()
        .find(|d| d.path == p("vm/top.qcow2"))
        .expect("top listed");
    let problem = top.problem.as_deref().expect("missing parent reported");
    assert!(
        problem.contains("top.qcow2") && problem.contains("base.qcow2"),
        "{problem}"
    );
    assert_eq!(top.chain.len(), 1);
    let other = v
        .disks
        .iter()
        .find(|d| d.path == p("vm/other.qcow2"))
        .expect("other listed");
    assert_eq!(other.problem, None);
}

#[test]
fn missing_root_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = scan(&dir.path().join("nope")).expect_err("missing root");
    assert!(err.to_string().contains("nope"), "{err}");
    std::fs::write(dir.path().join("file"), b"x").expect("write");
    assert!(scan(&dir.path().join("file")).is_err());
}
