//! `cairn points --repository NAME` and `cairn restore --repository NAME`: restore points and
//! restores of a repository the backup server manages (the server reads the repository and
//! writes the restored image on its own machine).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Map, Value};

use super::lookup::{arr, hint, id_by_name, list, s, s_or_dash, u};
use crate::args::{Global, PointsArgs, RestoreArgs};
use crate::client::{Client, usage};
use crate::output::{self, Table, bytes};

/// A restore may take long: the server answers when the image is written.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The restore point listings of a server repository, `[{vm, points}]`, optionally of one VM
/// given as `HOST/VM` or as a VM name that is unique in the repository.
fn vm_points(client: &Client, repository_id: i64, vm: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let path = format!("/api/v1/repositories/{repository_id}/points");
    let all = client.get(&path)?;
    let chains = list(&all);
    let Some(wanted) = vm else {
        return Ok(chains.to_vec());
    };
    if let Some(c) = chains.iter().find(|c| s(c, "vm") == wanted) {
        return Ok(vec![c.clone()]);
    }
    let matching: Vec<&Value> = chains
        .iter()
        .filter(|c| s(c, "vm").rsplit_once('/').is_some_and(|(_, name)| name == wanted))
        .collect();
    match matching.len() {
        1 => Ok(vec![matching[0].clone()]),
        0 => {
            let names: Vec<&str> = chains.iter().map(|c| s(c, "vm")).collect();
            Err(usage!(
                "the repository holds no restore points of a VM named {wanted:?}{}",
                hint(wanted, &names)
            ))
        }
        _ => {
            let names: Vec<&str> = matching.iter().map(|c| s(c, "vm")).collect();
            Err(usage!(
                "VM {wanted:?} has restore points from several hosts ({}): name it as HOST/VM",
                names.join(", ")
            ))
        }
    }
}

pub fn points(g: &Global, a: &PointsArgs, repository: &str) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    let rid = id_by_name(&client, "/api/v1/repositories", "repository", repository)?;
    let chains = vm_points(&client, rid, a.vm.as_deref())?;
    if g.json {
        output::json(&chains)?;
        return Ok(ExitCode::SUCCESS);
    }
    if chains.is_empty() {
        println!("no restore points in repository {repository}");
    }
    for c in &chains {
        let pts = arr(c, "points");
        println!("VM {} ({} points)", s(c, "vm"), pts.len());
        let mut t = Table::new(&["ID", "TIME", "KIND", ">DISKS", ">SIZE", ">READ", ">STORED"]);
        for p in pts {
            let size: u64 = arr(p, "disks").iter().filter_map(|d| u(d, "virtual_size")).sum();
            let st = p.get("stats").cloned().unwrap_or(Value::Null);
            t.row(vec![
                s_or_dash(p, "id"),
                output::time(s(p, "time")),
                s(p, "kind").to_string(),
                arr(p, "disks").len().to_string(),
                bytes(size),
                u(&st, "read_bytes").map_or_else(|| "-".into(), bytes),
                u(&st, "stored_bytes").map_or_else(|| "-".into(), bytes),
            ]);
        }
        for line in t.render().lines() {
            println!("  {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn restore(g: &Global, a: &RestoreArgs, repository: &str) -> anyhow::Result<ExitCode> {
    if a.image_block_size.is_some() {
        return Err(usage!(
            "--image-block-size works only with a local --repo; the server writes its default block size"
        ));
    }
    let client = Client::from_global(g)?;
    let rid = id_by_name(&client, "/api/v1/repositories", "repository", repository)?;
    let (vm, to) = super::restore::required(a)?;
    let chains = vm_points(&client, rid, Some(vm))?;
    let chain = chains
        .first()
        .ok_or_else(|| usage!("no restore points of VM {} in repository {repository}", vm))?;
    let vm = s(chain, "vm").to_string();
    let point = if a.point == "latest" {
        Value::from("latest")
    } else {
        let pts = arr(chain, "points");
        let ids: Vec<String> = pts.iter().map(|p| s_or_dash(p, "id")).collect();
        let matching: Vec<&String> = ids.iter().filter(|id| id.starts_with(&a.point)).collect();
        match matching.as_slice() {
            [one] => pts
                .iter()
                .find(|p| s_or_dash(p, "id") == **one)
                .and_then(|p| p.get("id").cloned())
                .unwrap_or_else(|| Value::from(one.as_str())),
            [] => {
                return Err(usage!(
                    "VM {vm} has no restore point {:?} (see `cairn points --repository {repository} --vm {vm}`)",
                    a.point
                ));
            }
            _ => {
                return Err(usage!(
                    "restore point {:?} of VM {vm} is ambiguous: give more of its id",
                    a.point
                ));
            }
        }
    };
    let target = std::path::absolute(to).with_context(|| format!("making {} an absolute path", to.display()))?;
    let mut body = Map::new();
    body.insert("repository_id".into(), Value::from(rid));
    body.insert("vm".into(), Value::from(vm.as_str()));
    body.insert("point".into(), point);
    body.insert("disk".into(), Value::from(a.disk));
    body.insert("target_path".into(), Value::from(target.display().to_string()));
    body.insert("format".into(), Value::from(a.format.name()));
    if let Some(n) = a.sector_size {
        body.insert("sector_size".into(), Value::from(n));
    }
    if let Some(mode) = a.file_mode {
        body.insert("file_mode".into(), Value::from(format!("{mode:04o}")));
    }
    let spinner = if !g.json && !g.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let sp = indicatif::ProgressBar::new_spinner();
        sp.set_message(format!(
            "the server restores disk {} of {vm} to {}",
            a.disk,
            target.display()
        ));
        sp.enable_steady_tick(Duration::from_millis(200));
        sp
    } else {
        indicatif::ProgressBar::hidden()
    };
    let result = client.post_with_timeout("/api/v1/restores", &body, RESTORE_TIMEOUT);
    spinner.finish_and_clear();
    let stats = result?;
    if g.json {
        output::json(&stats)?;
    } else {
        println!(
            "restored disk {} of {} point {} to {} on the server ({}): {} virtual, {} written in {:.2} s",
            s_or_dash(&stats, "disk"),
            s(&stats, "vm"),
            s_or_dash(&stats, "point"),
            target.display(),
            s(&stats, "format"),
            u(&stats, "virtual_size").map_or_else(|| "-".into(), bytes),
            u(&stats, "written_bytes").map_or_else(|| "-".into(), bytes),
            super::lookup::f(&stats, "duration_secs").unwrap_or(0.0)
        );
    }
    Ok(ExitCode::SUCCESS)
}
