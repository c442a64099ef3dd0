//! End-to-end tests of the command line: JSON and human output of every
//! command, several disks per VM, and every block size with every codec.

mod e2e_common;

use std::path::{Path, PathBuf};

use e2e_common::*;
use serde_json::Value;

/// A ~20 MiB image mixing random data, compressible text, a hole, written
/// zeros and a short last block (its size is no multiple of any block size).
fn mixed_disk(path: &Path, seed: u64) -> u64 {
    let size = 20 * MIB + 3 * 4096 + 512;
    write_disk(
        path,
        size,
        &[
            (0, 4 * MIB, Fill::Random(seed)),
            // 4..8 MiB stays a hole.
            (8 * MIB, 4 * MIB, Fill::Text(seed)),
            (12 * MIB, MIB, Fill::Zeros),
            (13 * MIB, 3 * MIB, Fill::Random(seed + 1)),
            (16 * MIB, 4 * MIB, Fill::Text(seed + 2)),
            (20 * MIB, 3 * 4096 + 512, Fill::Random(seed + 3)),
        ],
    );
    size
}

fn arr<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("{what} is not an array: {v}"))
}

#[test]
fn json_output_of_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let disk = tmp.path().join("disk0.raw");
    mixed_disk(&disk, 1);

    // repo init
    let mut c = cairn(["repo", "init", "--json", "--encryption", "none"]);
    c.arg(&repo);
    let init = ok_json(c);
    assert_eq!(init["encryption"], "none");
    assert_eq!(init["path"].as_str().unwrap(), repo.to_str().unwrap());
    let rid = init["repository_id"].as_str().unwrap();
    assert!(
        rid.len() == 32 && rid.chars().all(|c| c.is_ascii_hexdigit()),
        "repository id {rid:?}"
    );

    // backup: three points, the later ones changing a little
    let b1 = backup(&repo, "web01", &[], &[&disk]);
    assert_eq!(b1["vm"], "web01");
    assert_eq!(session(&b1), "full");
    let p = &b1["point"];
    assert_eq!(p["kind"], "full");
    assert_eq!(p["index"].as_str().unwrap(), format!("{}.idx", point_id(&b1)));
    assert_eq!(p["disks"][0]["disk"], 0);
    assert_eq!(
        p["disks"][0]["virtual_size"].as_u64().unwrap(),
        std::fs::metadata(&disk).unwrap().len()
    );
    assert!(p["time"].as_str().unwrap().contains('T'));
    for f in [
        "read_bytes",
        "read_blocks",
        "zero_blocks",
        "unchanged_blocks",
        "dedup_blocks",
        "new_blocks",
        "new_bytes",
        "stored_bytes",
    ] {
        stat(&b1, f);
    }
    assert!(p["stats"]["duration_secs"].as_f64().unwrap() > 0.0);
    let busy = arr(&p["stats"]["busy"], "busy");
    let stages: Vec<&str> = busy.iter().map(|b| b[0].as_str().unwrap()).collect();
    assert_eq!(stages, ["source", "proxy", "network", "target"]);
    for b in busy {
        let pct = b[1].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&pct), "busy {b}");
    }
    assert!(
        stages.contains(&p["stats"]["bottleneck"].as_str().unwrap()),
        "bottleneck {}",
        p["stats"]["bottleneck"]
    );
    // 1 MiB blocks of the mixed disk: 4 random + 4 text + 1 zero + 3 random + 4 text + 1 short block.
    assert_eq!(stat(&b1, "read_blocks"), 17, "holes must not be read");
    assert_eq!(stat(&b1, "zero_blocks"), 1);
    assert_eq!(stat(&b1, "new_blocks"), 16);
    assert_eq!(stat(&b1, "read_bytes"), 16 * MIB + 3 * 4096 + 512);

    patch_disk(&disk, 9 * MIB + 7, 100 * KIB, Fill::Random(77));
    let b2 = backup(&repo, "web01", &[], &[&disk]);
    assert_eq!(session(&b2), "incremental");
    assert_eq!(b2["point"]["kind"], "incremental");
    assert_eq!(stat(&b2, "new_blocks"), 1);
    assert_eq!(stat(&b2, "unchanged_blocks"), 15);
    let v2 = tmp.path().join("v2.raw");
    std::fs::copy(&disk, &v2).unwrap();
    patch_disk(&disk, 2 * MIB, 2 * MIB, Fill::Random(78));
    let b3 = backup(&repo, "web01", &[], &[&disk]);
    assert_eq!(stat(&b3, "new_blocks"), 2);
    let ids = [point_id(&b1), point_id(&b2), point_id(&b3)];

    // points
    let mut c = cairn(["points", "--json"]);
    c.arg("--repo").arg(&repo);
    let pts = ok_json(c);
    let vms = arr(&pts, "points");
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0]["vm"], "web01");
    assert_eq!(vms[0]["block_size"], 1 << 20);
    assert_eq!(vms[0]["method"], "forever-forward");
    let listed: Vec<&str> = arr(&vms[0]["points"], "points")
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());

    // restore
    let out = tmp.path().join("out-p2.raw");
    let r = restore(&repo, "web01", &ids[1], 0, &out);
    assert_eq!(r["vm"], "web01");
    assert_eq!(r["point"].as_str().unwrap(), ids[1]);
    assert_eq!(r["disk"], 0);
    assert_eq!(
        r["virtual_size"].as_u64().unwrap(),
        std::fs::metadata(&v2).unwrap().len()
    );
    assert_eq!(r["blocks"], 16);
    assert_eq!(r["written_bytes"].as_u64().unwrap(), 15 * MIB + 3 * 4096 + 512);
    assert!(r["duration_secs"].as_f64().is_some());
    assert_same_file(&v2, &out);

    // verify
    let v = ok_json(verify_cmd(&repo));
    assert_eq!(v["ok"], true);
    let chains = arr(&v["chains"], "chains");
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0]["vm"], "web01");
    assert_eq!(chains[0]["ok"], true);
    assert!(arr(&chains[0]["problems"], "problems").is_empty());
    assert_eq!(chains[0]["records_checked"], 19, "16 + 1 + 2 distinct records");
    let health: Vec<(&str, bool)> = arr(&chains[0]["points"], "points")
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(health, ids.iter().map(|i| (i.as_str(), true)).collect::<Vec<_>>());

    // retain (forever forward): the two oldest go, the newest becomes the full
    let mut c = cairn(["retain", "--json", "--keep", "1"]);
    c.arg("--repo").arg(&repo);
    let ret = ok_json(c);
    let reports = arr(&ret, "retain");
    assert_eq!(reports.len(), 1);
    let rep = &reports[0];
    assert_eq!(rep["vm"], "web01");
    assert_eq!(rep["kept"], 1);
    assert_eq!(rep["removed"], serde_json::json!([ids[0], ids[1]]));
    assert_eq!(rep["merged_into_full"], serde_json::json!([ids[1], ids[2]]));
    assert_eq!(rep["files_deleted"], 2, "both increment files merged into the full");
    assert!(
        rep["reclaimed_bytes"].as_u64().unwrap() >= 2 * MIB,
        "three rewritten blocks are dead: {rep}"
    );
    assert!(rep["note"].is_null());
    let left = points(&repo, "web01");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"].as_str().unwrap(), ids[2]);
    assert_eq!(left[0]["kind"], "full");
    let out = tmp.path().join("out-latest.raw");
    restore(&repo, "web01", "latest", 0, &out);
    assert_same_file(&disk, &out);
    assert_eq!(ok_json(verify_cmd(&repo))["ok"], true);
}

#[test]
fn human_output_names_points() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_repo(&repo);
    let mut c = cairn(["points"]);
    c.arg("--repo").arg(&repo);
    assert!(ok_stdout(c).contains("no restore points"));

    let disk = tmp.path().join("d.raw");
    write_disk(&disk, 8 * MIB, &[(0, 3 * MIB, Fill::Random(5))]);
    let mut ids = Vec::new();
    for vm in ["alpha", "beta"] {
        let mut c = cairn(["backup", "--vm", vm]);
        c.arg("--repo").arg(&repo).arg(&disk);
        let text = ok_stdout(c);
        assert!(text.starts_with("restore point "), "{text}");
        assert!(text.contains(&format!(" of {vm} (full)")), "{text}");
        assert!(text.contains("bottleneck:"), "{text}");
        ids.push(text.split_whitespace().nth(2).unwrap().to_string());
    }
    patch_disk(&disk, 0, 4096, Fill::Random(6));
    let mut c = cairn(["backup", "--vm", "alpha"]);
    c.arg("--repo").arg(&repo).arg(&disk);
    let text = ok_stdout(c);
    assert!(text.contains("(incremental)") && text.contains("2 unchanged"), "{text}");
    ids.push(text.split_whitespace().nth(2).unwrap().to_string());

    let mut c = cairn(["points"]);
    c.arg("--repo").arg(&repo);
    let all = ok_stdout(c);
    assert!(all.contains("VM alpha (2 points, 1.0 MiB blocks)"), "{all}");
    assert!(all.contains("VM beta (1 points"), "{all}");
    for id in &ids {
        assert!(all.contains(id.as_str()), "points output lacks {id}:\n{all}");
    }
    let mut c = cairn(["points", "--vm", "beta"]);
    c.arg("--repo").arg(&repo);
    let beta = ok_stdout(c);
    assert!(
        beta.contains(&ids[1]) && !beta.contains(&ids[0]) && !beta.contains(&ids[2]),
        "{beta}"
    );

    let out = tmp.path().join("o.raw");
    let mut c = restore_cmd(&repo, "alpha", &ids[2][..4], 0, &out);
    c.arg("-q");
    let text = ok_stdout(c);
    assert!(
        text.contains(&format!("restored disk 0 of alpha point {}", ids[2])),
        "{text}"
    );
    assert_same_file(&disk, &out);

    let mut c = cairn(["verify"]);
    c.arg("--repo").arg(&repo);
    let text = ok_stdout(c);
    assert!(
        text.contains("VM alpha: ok (2 points") && text.contains("VM beta: ok (1 points"),
        "{text}"
    );

    let mut c = cairn(["retain", "--vm", "alpha", "--keep", "1"]);
    c.arg("--repo").arg(&repo);
    let text = ok_stdout(c);
    assert!(text.contains("VM alpha: kept 1 points, removed 1"), "{text}");
}

#[test]
fn two_disks_per_vm() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_repo(&repo);
    let d0 = tmp.path().join("system.raw");
    let d1 = tmp.path().join("data.raw");
    mixed_disk(&d0, 10);
    write_disk(
        &d1,
        7 * MIB + 4096,
        &[(MIB, 2 * MIB, Fill::Text(20)), (5 * MIB, MIB + 4096, Fill::Random(21))],
    );

    let b1 = backup(&repo, "db", &[], &[&d0, &d1]);
    let disks = arr(&b1["point"]["disks"], "disks");
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[1]["disk"], 1);
    assert_eq!(disks[1]["virtual_size"].as_u64().unwrap(), 7 * MIB + 4096);
    assert!(disks[1]["source"].as_str().unwrap().ends_with("data.raw"));
    let v0 = (tmp.path().join("v0-0.raw"), tmp.path().join("v0-1.raw"));
    std::fs::copy(&d0, &v0.0).unwrap();
    std::fs::copy(&d1, &v0.1).unwrap();

    // Only disk 1 changes.
    patch_disk(&d1, 6 * MIB, 4096, Fill::Random(22));
    let b2 = backup(&repo, "db", &[], &[&d0, &d1]);
    assert_eq!(stat(&b2, "new_blocks"), 1);

    for (point, (e0, e1)) in [(point_id(&b1), (&v0.0, &v0.1)), (point_id(&b2), (&d0, &d1))] {
        for (disk, expected) in [(0, e0), (1, e1)] {
            let out = tmp.path().join(format!("out-{point}-{disk}.raw"));
            let r = restore(&repo, "db", &point, disk, &out);
            assert_eq!(r["disk"], disk);
            assert_same_file(expected, &out);
        }
    }
    let out = tmp.path().join("out-2.raw");
    let (_, err) = fails(restore_cmd(&repo, "db", "latest", 2, &out), 2);
    assert!(err.contains("has no disk 2"), "{err}");
    assert!(!out.exists());
}

/// One full and one incremental per codec with `block_size`, each restored.
fn codecs_round_trip(block_size: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_repo(&repo);
    let bs = match block_size {
        "256K" => 256 * KIB,
        "512K" => 512 * KIB,
        "1M" => MIB,
        "4M" => 4 * MIB,
        _ => unreachable!(),
    };
    let (mut stored_none, mut stored_zstd1) = (None, None);
    for codec in ["none", "lz4", "zstd:1", "zstd:9"] {
        let vm = format!("vm-{block_size}-{}", codec.replace(':', ""));
        let disk = tmp.path().join(format!("{vm}.raw"));
        let size = mixed_disk(&disk, 100);
        let v0 = tmp.path().join(format!("{vm}-v0.raw"));
        std::fs::copy(&disk, &v0).unwrap();
        let args = ["--block-size", block_size, "--compression", codec];
        let b1 = backup(&repo, &vm, &args, &[&disk]);
        // Allocated data: 16 MiB + the tail; the 1 MiB of written zeros is a whole
        // block only for block sizes up to 1 MiB.
        let data_blocks = stat(&b1, "new_blocks") + stat(&b1, "dedup_blocks");
        assert_eq!(
            stat(&b1, "read_blocks"),
            data_blocks + stat(&b1, "zero_blocks"),
            "{codec} {block_size}"
        );
        assert_eq!(
            stat(&b1, "zero_blocks"),
            if bs <= MIB { MIB / bs } else { 0 },
            "{codec} {block_size}"
        );
        assert_eq!(b1["point"]["disks"][0]["blocks"].as_u64().unwrap(), data_blocks);
        let (new_bytes, stored) = (stat(&b1, "new_bytes"), stat(&b1, "stored_bytes"));
        if codec == "none" {
            assert!(
                stored >= new_bytes,
                "no compression stores everything: {stored} < {new_bytes}"
            );
            stored_none = Some(stored);
        } else {
            // 8 MiB of the data are text, which every codec shrinks to less than half.
            let none = stored_none.unwrap();
            assert!(
                stored + 4 * MIB < none,
                "{codec} with {block_size} blocks stored {stored} bytes, uncompressed {none}"
            );
        }
        if codec == "zstd:1" {
            stored_zstd1 = Some(stored);
        }
        if codec == "zstd:9" {
            assert!(
                stored <= stored_zstd1.unwrap(),
                "zstd:9 stored more than zstd:1 with {block_size} blocks"
            );
        }

        patch_disk(&disk, 9 * MIB + 7, 100 * KIB, Fill::Random(7));
        patch_disk(&disk, size - 1000, 1000, Fill::Text(8));
        let b2 = backup(&repo, &vm, &args, &[&disk]);
        assert_eq!(session(&b2), "incremental");
        let changed = touched_blocks(&[(9 * MIB + 7, 100 * KIB), (size - 1000, 1000)], bs);
        assert_eq!(stat(&b2, "new_blocks"), changed, "{codec} {block_size}");
        assert_eq!(
            stat(&b2, "unchanged_blocks") + changed,
            data_blocks,
            "{codec} {block_size}"
        );

        for (point, expected) in [(point_id(&b1), &v0), (point_id(&b2), &disk)] {
            let out = tmp.path().join(format!("{vm}-{point}.out"));
            restore(&repo, &vm, &point, 0, &out);
            assert_same_file(expected, &out);
            assert!(
                allocated_bytes(&out) <= 18 * MIB,
                "restore is not sparse: {} bytes",
                allocated_bytes(&out)
            );
            std::fs::remove_file(&out).unwrap();
        }
    }
    let v = ok_json(verify_cmd(&repo));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(arr(&v["chains"], "chains").len(), 4);
}

#[test]
fn block_size_256k_all_codecs() {
    codecs_round_trip("256K");
}

#[test]
fn block_size_512k_all_codecs() {
    codecs_round_trip("512K");
}

#[test]
fn block_size_1m_all_codecs() {
    codecs_round_trip("1M");
}

#[test]
fn block_size_4m_all_codecs() {
    codecs_round_trip("4M");
}

#[test]
fn bad_options_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_repo(&repo);
    let disk = tmp.path().join("d.raw");
    write_disk(&disk, 4 * MIB, &[(0, MIB, Fill::Random(1))]);
    let d: PathBuf = disk.clone();
    for (args, needle) in [
        (vec!["--compression", "zstd:25"], "zstd:25"),
        (vec!["--compression", "gzip"], "gzip"),
        (vec!["--method", "backwards"], "backwards"),
        (vec!["--full-kind", "partial"], "partial"),
        (vec!["--block-size", "128K"], "128K"),
    ] {
        let mut c = cairn(["backup", "--vm", "x"]);
        c.arg("--repo").arg(&repo).args(&args).arg(&d);
        let (_, err) = fails(c, 2);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A chain's block size is fixed.
    backup(&repo, "x", &["--block-size", "512K"], &[&disk]);
    let mut c = cairn(["backup", "--vm", "x", "--block-size", "1M"]);
    c.arg("--repo").arg(&repo).arg(&disk);
    let (_, err) = fails(c, 2);
    assert!(err.contains("block size is fixed per chain"), "{err}");
    // Bad --cbt specifications.
    for (spec, needle) in [
        ("0", "expected DISK=FILE"),
        ("3=/nonexistent", "there is no disk 3"),
        ("0=/nonexistent-cbt", "/nonexistent-cbt"),
    ] {
        let mut c = cairn(["backup", "--vm", "x", "--block-size", "512K", "--cbt", spec]);
        c.arg("--repo").arg(&repo).arg(&disk);
        let (_, err) = fails(c, 2);
        assert!(err.contains(needle), "--cbt {spec}: {err}");
    }
    let cbt = tmp.path().join("cbt.txt");
    std::fs::write(&cbt, "0 4096\n4194000 4096\n").unwrap();
    let mut c = cairn(["backup", "--vm", "x", "--block-size", "512K", "--cbt"]);
    c.arg(format!("0={}", cbt.display()))
        .arg("--repo")
        .arg(&repo)
        .arg(&disk);
    let (_, err) = fails(c, 2);
    assert!(err.contains("line 2") && err.contains("past the disk"), "{err}");
    let mut c = cairn(["retain", "--vm", "x", "--keep", "0"]);
    c.arg("--repo").arg(&repo);
    let (_, err) = fails(c, 2);
    assert!(err.contains("--keep must be at least 1"), "{err}");
    assert_eq!(points(&repo, "x").len(), 1, "failed commands must not add points");
}

/// Forever forward over many rounds of "back up, prune": merges stack file
/// aliases on aliases; every kept point must still restore exactly, with
/// and without changed-extent lists.
#[test]
fn forever_forward_retention_over_many_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_repo(&repo);
    let disk = tmp.path().join("d.raw");
    let size = 12 * MIB + 4096;
    write_disk(
        &disk,
        size,
        &[(0, 6 * MIB, Fill::Random(1)), (8 * MIB, 4 * MIB + 4096, Fill::Text(2))],
    );
    // (point id, copy of the disk it saw)
    let mut kept: Vec<(String, PathBuf)> = Vec::new();
    let mut rng = Rng::new(42);
    for round in 0..8u64 {
        let mut extents = Vec::new();
        if round > 0 {
            for k in 0..3 {
                let off = rng.below(size - 70_000);
                let len = 1 + rng.below(65_536);
                patch_disk(&disk, off, len, Fill::Random(round * 10 + k));
                extents.push((off, len));
            }
        }
        let cbt = tmp.path().join(format!("cbt-{round}.txt"));
        write_cbt_file(&cbt, &extents);
        let cbt_arg = format!("0={}", cbt.display());
        let args: Vec<&str> = if round % 2 == 1 {
            vec!["--block-size", "512K", "--cbt", &cbt_arg]
        } else {
            vec!["--block-size", "512K"]
        };
        let b = backup(&repo, "ff", &args, &[&disk]);
        if round % 2 == 1 {
            assert!(
                stat(&b, "read_blocks") <= touched_blocks(&extents, 512 * KIB),
                "{}",
                b["point"]["stats"]
            );
        }
        let copy = tmp.path().join(format!("v{round}.raw"));
        std::fs::copy(&disk, &copy).unwrap();
        kept.push((point_id(&b), copy));

        let keep = 2 + (round as usize % 2);
        let mut c = cairn(["retain", "--json", "--vm", "ff", "--keep", &keep.to_string()]);
        c.arg("--repo").arg(&repo);
        let rep = &ok_json(c)[0];
        let removed = kept.len().saturating_sub(keep);
        assert_eq!(
            rep["removed"].as_array().unwrap().len(),
            removed,
            "round {round}: {rep}"
        );
        for (_, copy) in kept.drain(..removed) {
            std::fs::remove_file(copy).unwrap();
        }
        let listed: Vec<String> = points(&repo, "ff")
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            listed,
            kept.iter().map(|k| k.0.clone()).collect::<Vec<_>>(),
            "round {round}"
        );
        for (id, expected) in &kept {
            let out = tmp.path().join(format!("out-{round}-{id}.raw"));
            restore(&repo, "ff", id, 0, &out);
            assert_same_file(expected, &out);
            std::fs::remove_file(&out).unwrap();
        }
        assert_eq!(ok_json(verify_cmd(&repo))["ok"], true, "round {round}");
    }
    // Space is given back: the chain holds little more than two disk versions.
    let chain = only_chain_dir(&repo);
    let used: u64 = all_files(&chain).iter().map(|f| allocated_bytes(f)).sum();
    assert!(
        used < 3 * size,
        "the chain keeps {used} bytes for 2-3 points of a {size}-byte disk"
    );
}

#[test]
fn empty_and_all_zero_disks() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_repo(&repo);
    let empty = tmp.path().join("empty.raw");
    std::fs::File::create(&empty).unwrap();
    let zeros = tmp.path().join("zeros.raw");
    write_disk(&zeros, 5 * MIB + 512, &[(MIB, 2 * MIB, Fill::Zeros)]);
    let hole = tmp.path().join("hole.raw");
    write_disk(&hole, 64 * MIB, &[]);
    let b = backup(&repo, "blank", &[], &[&empty, &zeros, &hole]);
    assert_eq!(stat(&b, "new_blocks"), 0);
    assert_eq!(stat(&b, "zero_blocks"), 2);
    assert_eq!(stat(&b, "read_blocks"), 2);
    for (disk, expected) in [(0, &empty), (1, &zeros), (2, &hole)] {
        let out = tmp.path().join(format!("out{disk}.raw"));
        restore(&repo, "blank", "latest", disk, &out);
        assert_same_file(expected, &out);
        assert_eq!(allocated_bytes(&out), 0, "all-zero restore must be all holes");
    }
    // Data appears on the blank disks, then goes away again.
    patch_disk(&zeros, 5 * MIB, 512, Fill::Random(3));
    let b = backup(&repo, "blank", &[], &[&empty, &zeros, &hole]);
    assert_eq!(stat(&b, "new_blocks"), 1);
    patch_disk(&zeros, 5 * MIB, 512, Fill::Zeros);
    backup(&repo, "blank", &[], &[&empty, &zeros, &hole]);
    let out = tmp.path().join("again.raw");
    restore(&repo, "blank", "latest", 1, &out);
    assert_same_file(&zeros, &out);
}

/// A disk that shrinks or grows between two CBT backups: the short last
/// block changes length even where the changed-extent list says nothing
/// changed, and every point must still restore.
#[test]
fn cbt_across_disk_resizes() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_repo(&repo);
    let disk = tmp.path().join("d.raw");
    write_disk(&disk, 3 * MIB + 4096, &[(0, 3 * MIB + 4096, Fill::Random(1))]);
    let args = ["--block-size", "256K"];
    let mut versions = vec![(
        point_id(&backup(&repo, "rs", &args, &[&disk])),
        tmp.path().join("v0.raw"),
    )];
    std::fs::copy(&disk, &versions[0].1).unwrap();

    let steps: [(u64, Vec<(u64, u64)>); 4] = [
        // Shrink inside the last block; nothing else written.
        (3 * MIB + 512, vec![]),
        // Grow; only the new area past the old end is written.
        (4 * MIB + 1000, vec![(3 * MIB + 100 * KIB, 4096), (4 * MIB, 1000)]),
        // Shrink by whole blocks and inside one.
        (2 * MIB + 300, vec![(10, 10)]),
        // Grow by whole blocks from a short block, with no writes at all.
        (3 * MIB + 300, vec![]),
    ];
    for (i, (size, writes)) in steps.iter().enumerate() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .unwrap()
            .set_len(*size)
            .unwrap();
        for (k, &(off, len)) in writes.iter().enumerate() {
            patch_disk(&disk, off, len, Fill::Random(100 + (i * 10 + k) as u64));
        }
        let cbt = tmp.path().join(format!("cbt{i}.txt"));
        write_cbt_file(&cbt, writes);
        let cbt_arg = format!("0={}", cbt.display());
        let b = backup(&repo, "rs", &["--block-size", "256K", "--cbt", &cbt_arg], &[&disk]);
        assert_eq!(b["point"]["disks"][0]["virtual_size"].as_u64().unwrap(), *size);
        let copy = tmp.path().join(format!("v{}.raw", i + 1));
        std::fs::copy(&disk, &copy).unwrap();
        versions.push((point_id(&b), copy));
    }
    assert_eq!(ok_json(verify_cmd(&repo))["ok"], true);
    for (id, expected) in &versions {
        let out = tmp.path().join(format!("out-{id}.raw"));
        restore(&repo, "rs", id, 0, &out);
        assert_same_file(expected, &out);
    }
}
