//! `cairn restore vm …` and `cairn instant-recovery …`: whole-VM restores and instant recovery
//! of VMs backed up from qemu hosts, run by the backup server.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use super::lookup::{arr, by_name, id_by_name, list, s, s_or_dash, u};
use crate::args::{Global, InstantCommand, RestoreVmArgs};
use crate::client::{Client, usage};
use crate::output::{self, Table, bytes};

/// Restores and migrations answer when done: they may take long.
const LONG: Duration = Duration::from_secs(7 * 24 * 3600);

/// The repository given, else the only one, else the one named `default`.
fn repository_id(client: &Client, name: Option<&str>) -> anyhow::Result<i64> {
    if let Some(n) = name {
        return id_by_name(client, "/api/v1/repositories", "repository", n);
    }
    let all = client.get("/api/v1/repositories")?;
    let repos = list(&all);
    let pick = if repos.len() == 1 {
        repos.first()
    } else {
        repos.iter().find(|r| s(r, "name") == "default")
    };
    pick.and_then(|r| r.get("id").and_then(Value::as_i64))
        .ok_or_else(|| usage!("the server has several repositories: name one with --repository"))
}

/// `HOST/VM` as the repository names it, from `HOST/VM` or a VM name unique in the repository.
fn backed_up_vm(client: &Client, repository: i64, vm: &str) -> anyhow::Result<String> {
    if vm.contains('/') {
        return Ok(vm.to_string());
    }
    let all = client.get(&format!("/api/v1/repositories/{repository}/points"))?;
    let names: Vec<String> = list(&all)
        .iter()
        .map(|c| s(c, "vm").to_string())
        .filter(|n| n.rsplit_once('/').is_some_and(|(_, name)| name == vm))
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(usage!("the repository holds no restore points of a VM named {vm:?}")),
        _ => Err(usage!(
            "VM {vm:?} has restore points from several hosts ({}): name it as HOST/VM",
            names.join(", ")
        )),
    }
}

/// `cairn restore vm VM …`.
pub fn restore_vm(g: &Global, a: &RestoreVmArgs) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    let rid = repository_id(&client, a.repository.as_deref())?;
    let vm = backed_up_vm(&client, rid, &a.vm)?;
    let mut body = json!({
        "repository_id": rid,
        "vm": vm,
        "point": a.point,
        "replace_original": a.replace_original,
    });
    if let Some(h) = &a.to_host {
        by_name(&client, "/api/v1/hosts", "host", h)?;
        body["to_host"] = Value::from(h.as_str());
    }
    if let Some(n) = &a.name {
        body["name"] = Value::from(n.as_str());
    }
    if let Some(f) = &a.folder {
        let f = std::path::absolute(f).with_context(|| format!("making {} an absolute path", f.display()))?;
        body["folder"] = Value::from(f.display().to_string());
    }
    if let Some(x) = &a.accel {
        body["accel"] = Value::from(x.as_str());
    }
    let answer = client.post_with_timeout("/api/v1/restores/vm", &body, LONG)?;
    if g.json {
        output::json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} VM {} from {vm} point {} in {:.1} s: running (pid {}), QMP {}",
        if answer.get("replaced").and_then(Value::as_bool).unwrap_or(false) {
            "replaced"
        } else {
            "restored"
        },
        s(&answer, "name"),
        s(&answer, "point"),
        answer.get("duration_secs").and_then(Value::as_f64).unwrap_or(0.0),
        s_or_dash(&answer, "pid"),
        s(&answer, "qmp"),
    );
    for d in arr(&answer, "disks") {
        println!("  disk {}", d.as_str().unwrap_or("-"));
    }
    println!("  serial log {}", s_or_dash(&answer, "serial_log"));
    let host = a
        .to_host
        .clone()
        .unwrap_or_else(|| vm.split_once('/').map_or("", |(h, _)| h).to_string());
    println!(
        "it is a VM of host {host}: stop or start it with `cairn vm stop|start {host}/{}`",
        s(&answer, "name")
    );
    Ok(ExitCode::SUCCESS)
}

fn print_instant(v: &Value) {
    let mut t = Table::new(&["NAME", "VM", "POINT", "STATE", ">WRITTEN", "QMP"]);
    for i in list(v) {
        t.row(vec![
            s(i, "name").to_string(),
            s(i, "vm").to_string(),
            s(i, "point").to_string(),
            s(i, "state").to_string(),
            u(i, "written_bytes").map_or_else(|| "-".into(), bytes),
            s(i, "qmp").to_string(),
        ]);
    }
    t.print();
}

/// `cairn instant-recovery …`.
pub fn instant(g: &Global, c: &InstantCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    let answer = match c {
        InstantCommand::Start {
            vm,
            repository,
            point,
            to_host,
            name,
            accel,
        } => {
            let rid = repository_id(&client, repository.as_deref())?;
            let vm = backed_up_vm(&client, rid, vm)?;
            if let Some(h) = to_host {
                by_name(&client, "/api/v1/hosts", "host", h)?;
            }
            let mut body = json!({"repository_id": rid, "vm": vm, "point": point});
            for (k, v) in [("to_host", to_host), ("name", name), ("accel", accel)] {
                if let Some(v) = v {
                    body[k] = Value::from(v.as_str());
                }
            }
            let answer = client.post_with_timeout("/api/v1/instant-recoveries", &body, LONG)?;
            if !g.json {
                println!(
                    "instant recovery {} of {vm} point {} is running (pid {}, QMP {}), started in {:.1} s",
                    s(&answer, "name"),
                    s(&answer, "point"),
                    s_or_dash(&answer, "pid"),
                    s(&answer, "qmp"),
                    answer.get("start_secs").and_then(Value::as_f64).unwrap_or(0.0)
                );
                println!(
                    "move it to production storage with: cairn instant-recovery migrate {} --to FILE.qcow2",
                    s(&answer, "name")
                );
            }
            answer
        }
        InstantCommand::List => {
            let all = client.get("/api/v1/instant-recoveries")?;
            if !g.json {
                print_instant(&all);
            }
            all
        }
        InstantCommand::Migrate { name, to } => {
            by_name(&client, "/api/v1/instant-recoveries", "instant recovery", name)?;
            let to: Vec<String> = to
                .iter()
                .map(|p| std::path::absolute(p).map(|p| p.display().to_string()))
                .collect::<Result<_, _>>()
                .context("making the target paths absolute")?;
            let answer = client.post_with_timeout(
                &format!("/api/v1/instant-recoveries/{name}/migrate"),
                &json!({"to": to}),
                LONG,
            )?;
            if !g.json {
                let host = s(&answer, "host");
                println!(
                    "VM {name} now runs from its production disks ({}); the exports of the backup have ended",
                    to.join(", ")
                );
                println!(
                    "it is a normal VM of host {host}: stop or start it with `cairn vm stop|start {host}/{name}` (its \
                     command line is saved); `cairn instant-recovery stop {name}` only forgets the instant recovery"
                );
            }
            answer
        }
        InstantCommand::Stop { name } => {
            let ir = by_name(&client, "/api/v1/instant-recoveries", "instant recovery", name)?;
            let answer = client.delete(&format!("/api/v1/instant-recoveries/{name}"))?;
            if !g.json {
                if s(&ir, "state") == "migrated" {
                    let host = s(&ir, "host");
                    println!(
                        "instant recovery {name} forgotten: it was migrated, so its VM runs on as VM {host}/{name} \
                         (stop it with `cairn vm stop {host}/{name}`)"
                    );
                } else {
                    println!("instant recovery {name} stopped: its VM was quit and its exports ended");
                }
            }
            answer
        }
    };
    if g.json {
        output::json(&answer)?;
    }
    Ok(ExitCode::SUCCESS)
}
