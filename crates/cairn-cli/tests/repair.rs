//! End-to-end tests of a chain that lost a data file: the restore points
//! that do not need it keep working (list, restore, verify), `cairn verify`
//! names exactly the ones that are lost, writers refuse to build on the
//! damage, and `cairn repo repair` removes the lost points (never another),
//! after which backups and retention carry on. Forever-forward chains with
//! merged files and forward chains with synthetic fulls alike.

mod e2e_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e_common::*;
use serde_json::Value;

const BS: u64 = 256 * KIB;
/// 256 KiB blocks, stored uncompressed, so records can be found by position.
const ARGS: [&str; 4] = ["--block-size", "256K", "--compression", "none"];

/// A repository and a disk of 8 blocks, with a copy of the disk at each point.
struct Chain {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    repo: PathBuf,
    disk: PathBuf,
    /// (point id, copy of the disk at that point), oldest first.
    points: Vec<(String, PathBuf)>,
}

impl Chain {
    fn new() -> Chain {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let repo = dir.join("repo");
        init_repo(&repo);
        let disk = dir.join("disk.raw");
        write_disk(&disk, 8 * BS, &[(0, 8 * BS, Fill::Random(1))]);
        Chain {
            _tmp: tmp,
            dir,
            repo,
            disk,
            points: Vec::new(),
        }
    }

    /// Rewrites the blocks `blocks` with new random bytes.
    fn change(&self, blocks: &[u64], seed: u64) {
        for &b in blocks {
            patch_disk(&self.disk, b * BS, BS, Fill::Random(seed * 100 + b));
        }
    }

    /// Backs up the disk; returns the JSON and remembers the point.
    fn backup(&mut self, extra: &[&str]) -> Value {
        let mut args: Vec<&str> = ARGS.to_vec();
        args.extend_from_slice(extra);
        let b = backup(&self.repo, "vm", &args, &[&self.disk]);
        let id = point_id(&b);
        let copy = self.dir.join(format!("at-{id}.raw"));
        std::fs::copy(&self.disk, &copy).unwrap();
        self.points.push((id, copy));
        b
    }

    fn id(&self, i: usize) -> String {
        self.points[i].0.clone()
    }

    fn chain_dir(&self) -> PathBuf {
        only_chain_dir(&self.repo)
    }

    /// Restores `id` and compares it with the disk as it was.
    #[track_caller]
    fn restores_intact(&self, id: &str) {
        let expected = &self.points.iter().find(|p| p.0 == id).unwrap().1;
        let out = self.dir.join(format!("restored-{id}.raw"));
        let _ = std::fs::remove_file(&out);
        restore(&self.repo, "vm", id, 0, &out);
        assert_same_file(expected, &out);
        std::fs::remove_file(&out).unwrap();
    }

    fn listed(&self) -> Vec<String> {
        points(&self.repo, "vm")
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn repair(&self, dry_run: bool) -> Value {
        let mut c = cairn(["repo", "repair", "--json"]);
        c.arg("--repo").arg(&self.repo);
        if dry_run {
            c.arg("--dry-run");
        }
        ok_json(c)
    }

    fn retain_cmd(&self, keep: usize) -> Command {
        let mut c = cairn(["retain", "--json", "--vm", "vm", "--keep", &keep.to_string()]);
        c.arg("--repo").arg(&self.repo);
        c
    }
}

/// The ids of the points a `verify --json` report calls lost, and of those it calls ok.
fn lost_and_ok(report: &Value) -> (Vec<String>, Vec<String>) {
    let mut lost = Vec::new();
    let mut ok = Vec::new();
    for p in report["chains"][0]["points"].as_array().unwrap() {
        let id = p["id"].as_str().unwrap().to_string();
        if p["lost"] == true {
            lost.push(id);
        } else {
            assert_eq!(p["ok"], true, "neither lost nor ok: {p}");
            ok.push(id);
        }
    }
    (lost, ok)
}

fn removed_ids(repair: &Value) -> Vec<String> {
    repair["chains"][0]["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_missing_increment_loses_only_the_points_that_need_it() {
    let mut c = Chain::new();
    c.backup(&[]);
    c.change(&[2], 2);
    c.backup(&[]); // p1: block 2 in 00000002.inc
    c.change(&[2, 5], 3);
    c.backup(&[]); // p2: rewrote block 2, so it does not need 00000002.inc
    c.change(&[6], 4);
    c.backup(&[]); // p3
    let gone = c.chain_dir().join("00000002.inc");
    std::fs::remove_file(&gone).unwrap();

    // Verify names p1 alone, and why.
    let report = json_with_code(verify_cmd(&c.repo), 1);
    let (lost, intact) = lost_and_ok(&report);
    assert_eq!(lost, [c.id(1)]);
    assert_eq!(intact, [c.id(0), c.id(2), c.id(3)]);
    let p1 = &report["chains"][0]["points"][1];
    assert!(
        p1["problems"][0].as_str().unwrap().contains("00000002.inc")
            && p1["problems"][0].as_str().unwrap().contains("missing"),
        "{p1}"
    );
    let mut h = cairn(["verify"]);
    h.arg("--repo").arg(&c.repo);
    let (out, _) = fails(h, 1);
    assert!(
        out.contains(&format!("restore point {} (", c.id(1)))
            && out.contains("LOST")
            && out.contains("cairn repo repair"),
        "{out}"
    );
    // Listing and the other points' restores work; p1's restore names the file.
    assert_eq!(c.listed().len(), 4);
    for i in [0, 2, 3] {
        c.restores_intact(&c.id(i));
    }
    let out = c.dir.join("p1.raw");
    let (_, err) = fails(restore_cmd(&c.repo, "vm", &c.id(1), 0, &out), 2);
    assert!(err.contains("00000002.inc") && err.contains("missing"), "{err}");
    assert!(!out.exists());

    // Writers refuse to build on the damage, and say what to do.
    let mut b = cairn(["backup", "--vm", "vm"]);
    b.arg("--repo").arg(&c.repo).args(ARGS).arg(&c.disk);
    let (_, err) = fails(b, 2);
    assert!(
        err.contains("00000002.inc") && err.contains(&c.id(1)) && err.contains("cairn repo repair"),
        "{err}"
    );
    let (_, err) = fails(c.retain_cmd(2), 2);
    assert!(
        err.contains("00000002.inc") && err.contains("cairn repo repair"),
        "{err}"
    );

    // A dry run changes nothing.
    let meta = c.chain_dir().join("chain.meta");
    let before = std::fs::read(&meta).unwrap();
    let dry = c.repair(true);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(removed_ids(&dry), [c.id(1)]);
    assert_eq!(dry["chains"][0]["changed"], false);
    assert_eq!(std::fs::read(&meta).unwrap(), before);

    // The repair removes p1 alone; the rest is a healthy chain again.
    let r = c.repair(false);
    assert_eq!(removed_ids(&r), [c.id(1)]);
    assert_eq!(r["chains"][0]["files_dropped"], serde_json::json!(["00000002.inc"]));
    assert_eq!(r["chains"][0]["kept"], 3);
    assert_eq!(ok_json(verify_cmd(&c.repo))["ok"], true);
    assert_eq!(c.listed(), [c.id(0), c.id(2), c.id(3)]);
    for i in [0, 2, 3] {
        c.restores_intact(&c.id(i));
    }
    // A second repair finds nothing to do.
    assert!(removed_ids(&c.repair(false)).is_empty());

    // Backups and retention carry on.
    c.change(&[0, 7], 5);
    let b = c.backup(&[]);
    assert_eq!(session(&b), "incremental");
    assert_eq!(stat(&b, "new_blocks"), 2);
    ok(c.retain_cmd(2));
    assert_eq!(c.listed(), [c.id(3), c.id(4)]);
    assert_eq!(ok_json(verify_cmd(&c.repo))["ok"], true);
    c.restores_intact(&c.id(3));
    c.restores_intact(&c.id(4));
}

#[test]
fn when_the_newest_point_is_removed_changed_extents_are_not_trusted() {
    let mut c = Chain::new();
    c.backup(&[]);
    c.change(&[3], 2);
    c.backup(&[]); // newest point: block 3 in 00000002.inc
    std::fs::remove_file(c.chain_dir().join("00000002.inc")).unwrap();
    let r = c.repair(false);
    assert_eq!(removed_ids(&r), [c.id(1)]);
    assert_eq!(c.listed(), [c.id(0)]);

    // A CBT list tracked since the removed point names block 6 alone; block 3
    // changed too since the point the next backup builds on.
    c.change(&[6], 3);
    let cbt = c.dir.join("cbt.txt");
    write_cbt_file(&cbt, &[(6 * BS, BS)]);
    let cbt_arg = format!("0={}", cbt.display());
    let b = c.backup(&["--cbt", &cbt_arg]);
    assert_eq!(session(&b), "incremental");
    let notes = b["notes"].to_string();
    assert!(notes.contains("removed by a repair"), "{b}");
    assert_eq!(
        stat(&b, "new_blocks"),
        2,
        "blocks 3 and 6 are both new since the point it builds on"
    );
    c.restores_intact(&c.id(2));
    // From here on CBT is trusted again.
    c.change(&[1], 4);
    write_cbt_file(&cbt, &[(BS, BS)]);
    let b = c.backup(&["--cbt", &cbt_arg]);
    assert!(!b["notes"].to_string().contains("repair"), "{b}");
    assert_eq!(stat(&b, "read_blocks"), 1);
    c.restores_intact(&c.id(3));
}

#[test]
fn forward_chain_with_synthetic_fulls_keeps_the_independent_segment() {
    let mut c = Chain::new();
    let fwd = ["--method", "forward", "--full-every", "2", "--full-kind", "synthetic"];
    let mut sessions = Vec::new();
    for i in 0..6u64 {
        c.change(&[i % 8], 10 + i);
        sessions.push(session(&c.backup(&fwd)));
    }
    assert_eq!(
        sessions,
        [
            "full",
            "incremental",
            "synthetic-full",
            "incremental",
            "synthetic-full",
            "incremental"
        ]
    );
    // The second segment's full file: its points are lost; the third segment
    // was cloned into its own file and needs nothing older.
    std::fs::remove_file(c.chain_dir().join("00000003.full")).unwrap();
    let report = json_with_code(verify_cmd(&c.repo), 1);
    let (lost, intact) = lost_and_ok(&report);
    assert_eq!(lost, [c.id(2), c.id(3)]);
    assert_eq!(intact, [c.id(0), c.id(1), c.id(4), c.id(5)]);

    let r = c.repair(false);
    assert_eq!(removed_ids(&r), [c.id(2), c.id(3)]);
    assert_eq!(c.listed(), [c.id(0), c.id(1), c.id(4), c.id(5)]);
    let kinds: Vec<String> = points(&c.repo, "vm")
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["full", "incremental", "full", "incremental"]);
    assert_eq!(ok_json(verify_cmd(&c.repo))["ok"], true);
    for i in [0, 1, 4, 5] {
        c.restores_intact(&c.id(i));
    }
    // The next backup starts a new segment; forward retention drops whole segments.
    c.change(&[7], 30);
    assert_eq!(session(&c.backup(&fwd)), "synthetic-full");
    ok(c.retain_cmd(3));
    assert_eq!(c.listed(), [c.id(4), c.id(5), c.id(6)]);
    assert_eq!(ok_json(verify_cmd(&c.repo))["ok"], true);
    for i in 4..7 {
        c.restores_intact(&c.id(i));
    }
}

#[test]
fn a_lost_full_file_after_merges_empties_the_chain_and_the_next_backup_is_a_full() {
    let mut c = Chain::new();
    c.backup(&[]);
    c.change(&[1], 2);
    c.backup(&[]);
    c.change(&[4], 3);
    c.backup(&[]);
    // Retention merges the second point's file into the full file.
    let r = ok_json(c.retain_cmd(2));
    assert_eq!(r[0]["merged_into_full"].as_array().unwrap().len(), 1, "{r}");
    assert!(!c.chain_dir().join("00000002.inc").exists());
    // Every remaining point has blocks in the full file.
    std::fs::remove_file(c.chain_dir().join("00000001.full")).unwrap();
    let report = json_with_code(verify_cmd(&c.repo), 1);
    let (lost, intact) = lost_and_ok(&report);
    assert_eq!(lost, [c.id(1), c.id(2)]);
    assert!(intact.is_empty());

    let r = c.repair(false);
    assert_eq!(removed_ids(&r), [c.id(1), c.id(2)]);
    assert_eq!(r["chains"][0]["kept"], 0);
    assert!(c.listed().is_empty());
    let v = ok_json(verify_cmd(&c.repo));
    assert_eq!(v["ok"], true, "{v}");
    let files: Vec<String> = all_files(&c.chain_dir())
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".inc") || n.ends_with(".full") || n.ends_with(".idx"))
        .collect();
    assert!(files.is_empty(), "nothing of the lost points is left: {files:?}");

    let b = c.backup(&[]);
    assert_eq!(session(&b), "full");
    assert_eq!(stat(&b, "new_blocks"), 8);
    c.restores_intact(&c.id(3));
    assert_eq!(ok_json(verify_cmd(&c.repo))["ok"], true);
}

#[test]
fn a_short_full_file_keeps_the_point_that_rewrote_its_lost_blocks() {
    let mut c = Chain::new();
    // One worker: records land in block order, 4 KiB header then 256 KiB + 4 KiB each.
    c.backup(&["--threads", "1"]);
    c.change(&[4, 5, 6, 7], 2);
    c.backup(&["--threads", "1"]);
    let full = c.chain_dir().join("00000001.full");
    let recs = records(&full);
    assert_eq!(recs.len(), 8);
    let cut = recs[4].offset + 1000;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&full)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let report = json_with_code(verify_cmd(&c.repo), 1);
    let (lost, intact) = lost_and_ok(&report);
    assert_eq!(lost, [c.id(0)]);
    assert_eq!(intact, [c.id(1)]);
    let r = c.repair(false);
    assert_eq!(removed_ids(&r), [c.id(0)]);
    assert_eq!(r["chains"][0]["became_full"], serde_json::json!([c.id(1)]));
    let fixed = r["chains"][0]["lengths_fixed"][0].as_str().unwrap();
    assert!(fixed.starts_with("00000001.full"), "{fixed}");
    assert_eq!(points(&c.repo, "vm")[0]["kind"], "full");
    assert_eq!(ok_json(verify_cmd(&c.repo))["ok"], true);
    c.restores_intact(&c.id(1));
    c.change(&[0], 3);
    assert_eq!(session(&c.backup(&[])), "incremental");
    ok(c.retain_cmd(1));
    assert_eq!(ok_json(verify_cmd(&c.repo))["ok"], true);
    c.restores_intact(&c.id(2));
}

/// `cairn repo repair` names a VM that is not there, and a folder that is
/// no repository.
#[test]
fn repair_errors_name_what_is_wrong() {
    let c = Chain::new();
    let mut r = cairn(["repo", "repair", "--vm", "nobody"]);
    r.arg("--repo").arg(&c.repo);
    let (_, err) = fails(r, 2);
    assert!(err.contains("nobody"), "{err}");
    let not_repo: &Path = &c.dir.join("elsewhere");
    std::fs::create_dir(not_repo).unwrap();
    let mut r = cairn(["repo", "repair"]);
    r.arg("--repo").arg(not_repo);
    let (_, err) = fails(r, 2);
    assert!(err.contains("not a cairn repository"), "{err}");
}
