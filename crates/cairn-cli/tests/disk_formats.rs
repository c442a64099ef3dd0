//! `cairn backup` from qcow2/VHDX/VHD images and `cairn restore --format`:
//! a qcow2 overlay chain three deep whose children serve as CBT, the guard
//! that refuses child extents when the previous point was not read from the
//! child's parent, restores to every format checked by `qemu-img check` and
//! `qemu-img compare`, and `cairn disk info`.

mod e2e_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn qemu_img(args: &[&str]) {
    let q = require_tool("qemu-img", "qemu-utils");
    run_tool(Command::new(q).args(args));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 192 MiB raw disk with an ext4 file system holding /usr/share/doc.
fn ext4_disk(dir: &Path) -> PathBuf {
    let mkfs = require_tool("mkfs.ext4", "e2fsprogs");
    let p = dir.join("base.raw");
    std::fs::File::create(&p).unwrap().set_len(192 * MIB).unwrap();
    run_tool(
        Command::new(mkfs)
            .args(["-q", "-F", "-E", "root_owner=0:0", "-d", "/usr/share/doc"])
            .arg(&p),
    );
    p
}

/// Writes new files into the ext4 file system in `raw` with debugfs.
fn change_files(raw: &Path, seed: u64) {
    let debugfs = require_tool("debugfs", "e2fsprogs");
    let dir = tempfile::tempdir().unwrap();
    let mut script = String::new();
    for i in 0..3u64 {
        let f = dir.path().join(format!("f{i}"));
        std::fs::write(&f, random_bytes(seed * 10 + i, 300_000 + (i as usize) * 123_457)).unwrap();
        script.push_str(&format!("write {} seed{seed}-{i}\n", f.display()));
    }
    let sf = dir.path().join("script");
    std::fs::write(&sf, script).unwrap();
    run_tool(Command::new(debugfs).arg("-w").arg("-f").arg(&sf).arg(raw));
}

/// Writes the ranges where `new` differs from `old` into `overlay` through qemu-io.
fn write_diff_into(overlay: &Path, old: &Path, new: &Path) -> Vec<(u64, u64)> {
    let qemu_io = require_tool("qemu-io", "qemu-utils");
    let diff = changed_extents(old, new, 64 * 1024);
    assert!(!diff.is_empty(), "the file system change changed nothing");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(qemu_io);
    cmd.args(["-f", "qcow2"]);
    let data = std::fs::read(new).unwrap();
    for (i, (o, l)) in diff.iter().enumerate() {
        let f = dir.path().join(format!("c{i}"));
        std::fs::write(&f, &data[*o as usize..(*o + *l) as usize]).unwrap();
        cmd.arg("-c").arg(format!("write -q -s {} {o} {l}", f.display()));
    }
    run_tool(cmd.arg(overlay));
    diff
}

fn notes(v: &Value) -> Vec<String> {
    v["notes"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

#[test]
fn qcow2_overlays_three_deep_back_up_only_what_each_child_holds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = d.join("repo");
    init_repo(&repo);
    let base_raw = ext4_disk(d);
    let base = d.join("base.qcow2");
    qemu_img(&["convert", "-O", "qcow2", s(&base_raw), s(&base)]);

    let full = backup(&repo, "vm", &[], &[&base]);
    assert_eq!(session(&full), "full");
    let full_read = stat(&full, "read_bytes");
    assert!(full_read > 50 * MIB, "full read {full_read}");

    // Each checkpoint: freeze the top, put an overlay on it, change files, back up the overlay.
    let (mut top, mut top_raw) = (base.clone(), base_raw.clone());
    let mut expected = vec![(point_id(&full), base_raw.clone())];
    for k in 1..=3u64 {
        let overlay = d.join(format!("overlay{k}.qcow2"));
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", s(&top), "-F", "qcow2", s(&overlay)]);
        let new_raw = d.join(format!("state{k}.raw"));
        std::fs::copy(&top_raw, &new_raw).unwrap();
        change_files(&new_raw, k);
        let diff = write_diff_into(&overlay, &top_raw, &new_raw);

        let inc = backup(&repo, "vm", &[], &[&overlay]);
        assert_eq!(session(&inc), "incremental");
        assert!(notes(&inc).is_empty(), "unexpected notes {:?}", notes(&inc));
        // Only the blocks the child holds were read: at most the touched 1 MiB blocks
        // of the written ranges (qcow2 clusters are 64 KiB, inside them).
        let read = stat(&inc, "read_bytes");
        let bound = touched_blocks(&diff, MIB) * MIB;
        assert!(
            read > 0 && read <= bound,
            "overlay {k}: read {read}, child blocks {bound}"
        );
        assert!(read * 10 < full_read, "overlay {k}: read {read} of a {full_read} full");

        let out = d.join(format!("restored{k}.raw"));
        restore(&repo, "vm", "latest", 0, &out);
        qemu_img_identical(&new_raw, &out);
        expected.push((point_id(&inc), new_raw.clone()));
        top = overlay;
        top_raw = new_raw;
    }
    for (id, raw) in &expected {
        let out = d.join(format!("again-{id}.raw"));
        restore(&repo, "vm", id, 0, &out);
        qemu_img_identical(raw, &out);
    }

    // The same child again: the previous point was read from the child itself, not
    // from its parent, so its extents are not "what changed": every block is read.
    let again = backup(&repo, "vm", &[], &[&top]);
    assert_eq!(notes(&again).len(), 1, "{again}");
    assert!(stat(&again, "read_bytes") >= full_read, "{again}");
    assert_eq!(stat(&again, "new_blocks"), 0);

    // --merged always reads the whole merged view.
    let merged = backup(&repo, "vm", &["--merged"], &[&top]);
    assert!(notes(&merged).is_empty());
    assert!(stat(&merged, "read_bytes") >= full_read);
    assert_eq!(stat(&merged, "new_blocks"), 0);

    // disk info names the whole chain and the child's changes.
    let info = ok_json({
        let mut c = cairn(["disk", "info", "--json", "--changed"]);
        c.arg(&top);
        c
    });
    let layers = info["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4, "{info}");
    assert!(layers.iter().all(|l| l["format"] == "qcow2"));
    assert!(!info["changed"].as_array().unwrap().is_empty());
    assert_eq!(info["virtual_size"], 192 * MIB);
}

#[test]
fn restore_writes_every_format_that_qemu_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = d.join("repo");
    init_repo(&repo);
    let raw = ext4_disk(d);
    backup(&repo, "vm", &[], &[&raw]);
    let q = require_tool("qemu-img", "qemu-utils");
    for (format, qfmt) in [("raw", "raw"), ("qcow2", "qcow2"), ("vhdx", "vhdx"), ("vhd", "vpc")] {
        let out = d.join(format!("out.{format}"));
        let mut c = restore_cmd(&repo, "vm", "latest", 0, &out);
        c.args(["--json", "--format", format]);
        let r = ok_json(c);
        assert_eq!(r["format"], format);
        assert_eq!(r["file_mode"], "600", "{r}");
        // 192 MiB is whole sectors, but no exact CHS geometry: a VHD is a
        // little larger, so that every reader sees one size.
        let size = r["image_size"].as_u64().unwrap();
        if format == "vhd" {
            assert!(size > 192 * MIB && size - 192 * MIB < 16 * 255 * 512, "{r}");
            assert!(notes(&r)[0].contains("CHS geometry"), "{r}");
        } else {
            assert_eq!(size, 192 * MIB, "{r}");
            assert!(notes(&r).is_empty(), "{r}");
        }
        // qemu has no checker for VHD ("does not support checks"); libvhdi reads it instead.
        if format == "vhd" {
            let info = run_tool(Command::new(require_tool("vhdiinfo", "libvhdi-utils")).arg(&out));
            let text = String::from_utf8_lossy(&info.stdout).to_string();
            assert!(text.contains("Dynamic"), "{text}");
            assert!(text.contains(&format!("({size} bytes)")), "{text}");
        } else if format != "raw" {
            run_tool(Command::new(&q).args(["check", "-f", qfmt]).arg(&out));
        }
        run_tool(
            Command::new(&q)
                .args(["compare", "-f", "raw", "-F", qfmt])
                .arg(&raw)
                .arg(&out),
        );
        let info = ok_json({
            let mut c = cairn(["disk", "info", "--json"]);
            c.arg(&out);
            c
        });
        assert_eq!(info["layers"][0]["format"], format, "{info}");
        assert_eq!(info["virtual_size"], size, "{info}");
        // Sparse: the unallocated part of the disk was not written.
        assert!(
            allocated_bytes(&out) < 160 * MIB,
            "{format}: {} bytes",
            allocated_bytes(&out)
        );
    }

    // A VHDX with 4 KiB sectors: the sector size travels through a backup into the restore.
    let v4k = d.join("4k.vhdx");
    let mut c = restore_cmd(&repo, "vm", "latest", 0, &v4k);
    c.args([
        "--json",
        "--format",
        "vhdx",
        "--sector-size",
        "4096",
        "--image-block-size",
        "8M",
    ]);
    ok_json(c);
    let b = backup(&repo, "vm4k", &[], &[&v4k]);
    assert_eq!(b["point"]["disks"][0]["logical_sector"], 4096, "{b}");
    let again = d.join("again.vhdx");
    let mut c = restore_cmd(&repo, "vm4k", "latest", 0, &again);
    c.args(["--json", "--format", "vhdx"]);
    ok_json(c);
    let info = ok_json({
        let mut c = cairn(["disk", "info", "--json"]);
        c.arg(&again);
        c
    });
    assert_eq!(info["sector_sizes"]["logical"], 4096, "{info}");
    let back = d.join("back.raw");
    restore(&repo, "vm4k", "latest", 0, &back);
    qemu_img_identical(&raw, &back);
}

/// The virtual size `qemu-img info` gives an image, opened plainly as `qfmt`.
fn qemu_size(img: &Path, qfmt: &str) -> u64 {
    let q = require_tool("qemu-img", "qemu-utils");
    let out = run_tool(Command::new(q).args(["info", "--output=json", "-f", qfmt]).arg(img));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["virtual-size"]
        .as_u64()
        .unwrap_or_else(|| panic!("no virtual-size in {v}"))
}

#[test]
fn raw_disks_of_any_length_back_up_and_restore_to_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = d.join("repo");
    init_repo(&repo);
    // Not whole sectors, with data up to the last byte.
    let len = 5 * MIB + 1234;
    let disk = d.join("odd.raw");
    write_disk(
        &disk,
        len,
        &[(0, MIB, Fill::Random(1)), (4 * MIB, MIB + 1234, Fill::Text(2))],
    );
    backup(&repo, "odd", &[], &[&disk]);

    // Raw comes back byte for byte, at its own length.
    let out = d.join("back.raw");
    let r = restore(&repo, "odd", "latest", 0, &out);
    assert_eq!(r["image_size"], len, "{r}");
    assert_same_file(&disk, &out);

    // Other formats count in sectors: the size is rounded up (a VHD's to an
    // exact CHS geometry), the note says so, and qemu-img sees that size and
    // the disk's bytes followed by zeros.
    let q = require_tool("qemu-img", "qemu-utils");
    for (format, qfmt) in [("qcow2", "qcow2"), ("vhdx", "vhdx"), ("vhd", "vpc")] {
        let out = d.join(format!("odd.{format}"));
        let mut c = restore_cmd(&repo, "odd", "latest", 0, &out);
        c.args(["--format", format]);
        let o = ok(c);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("note:") && err.contains("rounded up"), "{format}: {err}");
        let size = qemu_size(&out, qfmt);
        if format == "vhd" {
            assert!(
                size >= len.div_ceil(512) * 512 && size - len < 16 * 255 * 512 + 512,
                "{size}"
            );
        } else {
            assert_eq!(size, len.div_ceil(512) * 512, "{format}");
        }
        if format != "vhd" {
            run_tool(Command::new(&q).args(["check", "-f", qfmt]).arg(&out));
        }
        let back = d.join(format!("odd-{format}.raw"));
        run_tool(
            Command::new(&q)
                .args(["convert", "-f", qfmt, "-O", "raw"])
                .arg(&out)
                .arg(&back),
        );
        let expected = d.join(format!("expected-{format}.raw"));
        std::fs::copy(&disk, &expected).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&expected)
            .unwrap()
            .set_len(size)
            .unwrap();
        assert_same_file(&expected, &back);
        // Backed up again from that image, it restores to the same bytes.
        let vm = format!("again-{format}");
        backup(&repo, &vm, &[], &[&out]);
        let again = d.join(format!("again-{format}.raw"));
        restore(&repo, &vm, "latest", 0, &again);
        assert_same_file(&expected, &again);
    }
}

#[test]
fn bad_images_are_named_with_the_field_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = d.join("repo");
    init_repo(&repo);
    let img = d.join("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "64M"]);
    // Truncate the image inside its L1 table.
    let len = std::fs::metadata(&img).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(len.min(0x30000) - 1).unwrap();
    let mut c = cairn(["backup", "--vm", "vm"]);
    c.arg("--repo").arg(&repo).arg(&img);
    let (_, err) = fails(c, 2);
    assert!(err.contains("disk.qcow2"), "{err}");
    // A missing backing file names the child and the parent.
    let child = d.join("child.qcow2");
    let parent = d.join("parent.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&parent), "64M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&parent),
        "-F",
        "qcow2",
        s(&child),
    ]);
    std::fs::remove_file(&parent).unwrap();
    let mut c = cairn(["backup", "--vm", "vm"]);
    c.arg("--repo").arg(&repo).arg(&child);
    let (_, err) = fails(c, 2);
    assert!(
        err.contains("child.qcow2") && err.contains("parent.qcow2") && err.contains("not found"),
        "{err}"
    );
    assert!(points_or_empty(&repo).is_empty());

    // A raw disk whose guest wrote a qcow2 magic into its first sector is
    // taken for qcow2 (and refused as a broken one) unless the format is given.
    let raw = d.join("guest.raw");
    let mut bytes = random_bytes(7, 4 << 20);
    bytes[..4].copy_from_slice(b"QFI\xfb");
    std::fs::write(&raw, &bytes).unwrap();
    let mut c = cairn(["backup", "--vm", "guest"]);
    c.arg("--repo").arg(&repo).arg(&raw);
    let (_, err) = fails(c, 2);
    assert!(err.contains("guest.raw"), "{err}");
    let b = backup(&repo, "guest", &["--source-format", "raw"], &[&raw]);
    assert_eq!(stat(&b, "read_bytes"), 4 << 20);
    let out = d.join("guest-restored.raw");
    restore(&repo, "guest", "latest", 0, &out);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
}

fn points_or_empty(repo: &Path) -> Vec<Value> {
    let v = ok_json({
        let mut c = cairn(["points", "--json"]);
        c.arg("--repo").arg(repo);
        c
    });
    v.as_array().cloned().unwrap_or_default()
}

/// Writes `chunks` into a new differencing child of `parent` (cairn's own
/// writer: qemu-img cannot make VHDX or VHD children) and into `expected_raw`.
fn make_child(format: &str, child: &Path, parent: &Path, expected_raw: &Path, chunks: &[(u64, Vec<u8>)]) {
    use cairn_disk::DiskWriter;
    use std::os::unix::fs::FileExt;
    let w: Box<dyn DiskWriter> = match format {
        "vhdx" => Box::new(
            cairn_disk::vhdx::VhdxWriter::create_child(child, parent, &cairn_disk::WriteOptions::default()).unwrap(),
        ),
        _ => Box::new(cairn_disk::vhd::VhdWriter::create_child(child, parent).unwrap()),
    };
    let raw = std::fs::OpenOptions::new().write(true).open(expected_raw).unwrap();
    for (off, data) in chunks {
        w.write_at(data, *off).unwrap();
        raw.write_all_at(data, *off).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn vhdx_and_vhd_checkpoint_children_are_their_own_cbt() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = d.join("repo");
    init_repo(&repo);
    let raw = ext4_disk(d);
    for (format, qfmt, opts) in [("vhdx", "vhdx", "subformat=dynamic"), ("vhd", "vpc", "force_size=on")] {
        let base = d.join(format!("base.{format}"));
        qemu_img(&["convert", "-O", qfmt, "-o", opts, s(&raw), s(&base)]);
        let full = backup(&repo, format, &[], &[&base]);
        let full_read = stat(&full, "read_bytes");
        let expected = d.join(format!("expected-{format}.raw"));
        std::fs::copy(&raw, &expected).unwrap();
        let mut parent = base;
        for k in 1..=2u64 {
            let child = d.join(format!("child{k}.{}", if format == "vhdx" { "avhdx" } else { "vhd" }));
            let chunks: Vec<(u64, Vec<u8>)> = (0..4u64)
                .map(|i| {
                    (
                        (k * 37 + i * 41) % 180 * MIB + i * 64 * 1024,
                        random_bytes(k * 100 + i, 192 * 1024),
                    )
                })
                .collect();
            make_child(format, &child, &parent, &expected, &chunks);
            let inc = backup(&repo, format, &[], &[&child]);
            assert!(notes(&inc).is_empty(), "{format} child {k}: {:?}", notes(&inc));
            let read = stat(&inc, "read_bytes");
            let extents: Vec<(u64, u64)> = chunks.iter().map(|(o, b)| (*o, b.len() as u64)).collect();
            assert!(
                read > 0 && read <= touched_blocks(&extents, MIB) * MIB,
                "{format} child {k}: read {read}"
            );
            assert!(read * 10 < full_read, "{format} child {k}: read {read} of {full_read}");
            let out = d.join(format!("restored-{format}-{k}.raw"));
            restore(&repo, format, "latest", 0, &out);
            qemu_img_identical(&expected, &out);
            parent = child;
        }
    }
}
