//! `cairn restore vm …` and `cairn instant-recovery …`: whole-VM restores and instant recovery
//! of VMs backed up from qemu hosts, run by the backup server.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cairn_api::instant::{InstantInfo, InstantRequest, InstantState};
use cairn_api::repositories::{RepositoryDto, VmPoints};
use cairn_api::restore::{VmRestoreRequest, VmRestoreResult};
use serde_json::{Value, json};

use super::lookup::{by_name, id_by_name};
use crate::args::{Global, InstantCommand, RestoreVmArgs};
use crate::client::{Client, typed_for, usage};
use crate::output::{self, Table, bytes};

/// Restores and migrations answer when done: they may take long.
const LONG: Duration = Duration::from_secs(7 * 24 * 3600);
/// The command `restore_vm` runs for.
const RESTORE_VM: &str = "restore vm";

/// The repository given, else the only one, else the one named `default`.
fn repository_id(client: &Client, command: &str, name: Option<&str>) -> anyhow::Result<i64> {
    if let Some(n) = name {
        return id_by_name(client, "/api/v1/repositories", "repository", n);
    }
    let repos: Vec<RepositoryDto> = typed_for(command, client.get("/api/v1/repositories")?)?;
    let pick = if repos.len() == 1 {
        repos.first()
    } else {
        repos.iter().find(|r| r.name == "default")
    };
    pick.map(|r| r.id)
        .ok_or_else(|| usage!("the server has several repositories: name one with --repository"))
}

/// `HOST/VM` as the repository names it, from `HOST/VM` or a VM name unique in the repository.
fn backed_up_vm(client: &Client, command: &str, repository: i64, vm: &str) -> anyhow::Result<String> {
    if vm.contains('/') {
        return Ok(vm.to_string());
    }
    let all: Vec<VmPoints> = typed_for(
        command,
        client.get(&format!("/api/v1/repositories/{repository}/points"))?,
    )?;
    let names: Vec<String> = all
        .into_iter()
        .map(|c| c.vm)
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
    let rid = repository_id(&client, RESTORE_VM, a.repository.as_deref())?;
    let vm = backed_up_vm(&client, RESTORE_VM, rid, &a.vm)?;
    if let Some(h) = &a.to_host {
        by_name(&client, "/api/v1/hosts", "host", h)?;
    }
    let folder = match &a.folder {
        Some(f) => Some(
            std::path::absolute(f)
                .with_context(|| format!("making {} an absolute path", f.display()))?
                .display()
                .to_string(),
        ),
        None => None,
    };
    let body = VmRestoreRequest {
        repository_id: rid,
        vm: vm.clone(),
        point: a.point.clone(),
        to_host: a.to_host.clone(),
        name: a.name.clone(),
        replace_original: a.replace_original,
        folder,
        accel: a.accel.clone(),
    };
    let answer = client.post_with_timeout("/api/v1/restores/vm", &body, LONG)?;
    if g.json {
        output::json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    let answer: VmRestoreResult = typed_for(RESTORE_VM, answer)?;
    println!(
        "{} VM {} from {vm} point {} in {:.1} s: running (pid {}), QMP {}",
        if answer.replaced { "replaced" } else { "restored" },
        answer.name,
        answer.point,
        answer.duration_secs,
        pid_text(answer.pid),
        answer.qmp,
    );
    for d in &answer.disks {
        println!("  disk {d}");
    }
    println!(
        "  serial log {}",
        if answer.serial_log.is_empty() {
            "-"
        } else {
            &answer.serial_log
        }
    );
    let host = a
        .to_host
        .clone()
        .unwrap_or_else(|| vm.split_once('/').map_or("", |(h, _)| h).to_string());
    println!(
        "it is a VM of host {host}: stop or start it with `cairn vm stop|start {host}/{}`",
        answer.name
    );
    Ok(ExitCode::SUCCESS)
}

/// A process id, or `-`.
fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "-".to_string(), |p| p.to_string())
}

fn print_instant(all: &[InstantInfo]) {
    let mut t = Table::new(&["NAME", "VM", "POINT", "STATE", ">WRITTEN", "QMP"]);
    for i in all {
        t.row(vec![
            i.name.clone(),
            i.vm.clone(),
            i.point.clone(),
            state_text(i.state),
            bytes(i.written_bytes),
            i.qmp.clone(),
        ]);
    }
    t.print();
}

/// `running`, `migrating` or `migrated`, as the API spells it.
fn state_text(state: InstantState) -> String {
    match serde_json::to_value(state) {
        Ok(Value::String(s)) => s,
        _ => format!("{state:?}"),
    }
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
            let command = "instant-recovery start";
            let rid = repository_id(&client, command, repository.as_deref())?;
            let vm = backed_up_vm(&client, command, rid, vm)?;
            if let Some(h) = to_host {
                by_name(&client, "/api/v1/hosts", "host", h)?;
            }
            let body = InstantRequest {
                repository_id: rid,
                vm: vm.clone(),
                point: point.clone(),
                to_host: to_host.clone(),
                name: name.clone(),
                accel: accel.clone(),
            };
            let answer = client.post_with_timeout("/api/v1/instant-recoveries", &body, LONG)?;
            if !g.json {
                let ir: InstantInfo = typed_for(command, answer.clone())?;
                println!(
                    "instant recovery {} of {vm} point {} is running (pid {}, QMP {}), started in {:.1} s",
                    ir.name,
                    ir.point,
                    pid_text(ir.pid),
                    ir.qmp,
                    ir.start_secs
                );
                println!(
                    "move it to production storage with: cairn instant-recovery migrate {} --to FILE.qcow2",
                    ir.name
                );
            }
            answer
        }
        InstantCommand::List => {
            let all = client.get("/api/v1/instant-recoveries")?;
            if !g.json {
                print_instant(&typed_for::<Vec<InstantInfo>>("instant-recovery list", all.clone())?);
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
                let host = typed_for::<InstantInfo>("instant-recovery migrate", answer.clone())?.host;
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
            let ir: InstantInfo = typed_for(
                "instant-recovery stop",
                by_name(&client, "/api/v1/instant-recoveries", "instant recovery", name)?,
            )?;
            let answer = client.delete(&format!("/api/v1/instant-recoveries/{name}"))?;
            if !g.json {
                if ir.state == InstantState::Migrated {
                    let host = &ir.host;
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
