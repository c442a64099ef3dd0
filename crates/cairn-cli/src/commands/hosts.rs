//! `cairn host …` and `cairn vm …`.

use std::process::ExitCode;

use anyhow::Context;
use cairn_api::inventory::{AddHost, HostDto, HostWithVms, VmDto};
use cairn_api::vm::{ForgottenCheckpoints, VmPowerResult};
use cairn_server::live::QemuLocation;
use serde_json::{Value, json};

use super::lookup::{find_vm, id_by_name, vm_full_name, yes_no};
use crate::args::{Global, HostCommand, HostKind, VmCommand};
use crate::client::{Client, typed_for};
use crate::output::{self, Table, bytes};

/// A host's location as people read it: an image folder's path; a qemu host's QMP socket or
/// folder of sockets, with its guest agent socket (the API keeps it as JSON).
fn location_text(host: &HostDto) -> String {
    if host.kind != "qemu" {
        return host.location.clone();
    }
    match serde_json::from_str::<QemuLocation>(&host.location) {
        Ok(l) => match l.qga {
            Some(qga) => format!("QMP {} (guest agent {})", l.qmp.display(), qga.display()),
            None => format!("QMP {}", l.qmp.display()),
        },
        Err(_) => host.location.clone(),
    }
}

/// Prints the VMs of a `{host, vms}` answer of `cairn COMMAND`.
fn print_scan(command: &str, verb: &str, answer: Value) -> anyhow::Result<()> {
    let answer: HostWithVms = typed_for(command, answer)?;
    let host = &answer.host;
    println!(
        "{verb} host {} ({}, {}): {} VMs",
        host.name,
        host.kind,
        location_text(host),
        answer.vms.len()
    );
    if !answer.vms.is_empty() {
        vm_table(&answer.vms).print();
    }
    Ok(())
}

/// One row per disk of each VM.
fn vm_table(vms: &[VmDto]) -> Table {
    let mut t = Table::new(&["VM", "DISK", "FORMAT", ">SIZE", "PRESENT"]);
    for vm in vms {
        if vm.disks.is_empty() {
            t.row(vec![
                vm_full_name(vm),
                "(no disks)".into(),
                String::new(),
                String::new(),
                yes_no(vm.present),
            ]);
        }
        for d in &vm.disks {
            t.row(vec![
                vm_full_name(vm),
                d.name.clone(),
                d.format.clone(),
                bytes(u64::try_from(d.capacity_bytes).unwrap_or(0)),
                yes_no(vm.present && d.present),
            ]);
        }
    }
    t
}

pub fn hosts(g: &Global, c: &HostCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    match c {
        HostCommand::Add {
            kind,
            path,
            qmp,
            qga,
            name,
        } => {
            let absolute = |p: &std::path::Path| -> anyhow::Result<String> {
                Ok(std::path::absolute(p)
                    .with_context(|| format!("making {} an absolute path", p.display()))?
                    .display()
                    .to_string())
            };
            let (kind, path) = match (kind, path, qmp) {
                (HostKind::ImageFolder, Some(path), _) => ("image-folder", absolute(path)?),
                (HostKind::Qemu, _, Some(qmp)) => ("qemu", absolute(qmp)?),
                (HostKind::ImageFolder, None, _) => anyhow::bail!("an image-folder host needs --path FOLDER"),
                (HostKind::Qemu, _, None) => anyhow::bail!("a qemu host needs --qmp SOCKET (or a folder of sockets)"),
            };
            let body = AddHost {
                kind: kind.to_string(),
                path,
                qga: qga.as_deref().map(absolute).transpose()?,
                name: name.clone(),
            };
            let answer = client.post("/api/v1/hosts", &body)?;
            if g.json {
                output::json(&answer)?;
            } else {
                print_scan("host add", "added", answer)?;
            }
        }
        HostCommand::List => {
            let all = client.get("/api/v1/hosts")?;
            if g.json {
                output::json(&all)?;
            } else {
                let mut t = Table::new(&["NAME", "KIND", "LOCATION", ">VMS", "ADDED"]);
                for h in typed_for::<Vec<HostDto>>("host list", all)? {
                    t.row(vec![
                        h.name.clone(),
                        h.kind.clone(),
                        location_text(&h),
                        h.vms.to_string(),
                        output::time(&h.created_at.to_string()),
                    ]);
                }
                if t.is_empty() {
                    println!("no hosts (add one with `cairn host add image-folder --path DIR`)");
                } else {
                    t.print();
                }
            }
        }
        HostCommand::Rescan { name } => {
            let id = id_by_name(&client, "/api/v1/hosts", "host", name)?;
            let answer = client.post(&format!("/api/v1/hosts/{id}/rescan"), &json!({}))?;
            if g.json {
                output::json(&answer)?;
            } else {
                print_scan("host rescan", "rescanned", answer)?;
            }
        }
        HostCommand::Remove { name } => {
            let id = id_by_name(&client, "/api/v1/hosts", "host", name)?;
            client.delete(&format!("/api/v1/hosts/{id}"))?;
            if g.json {
                output::json(&json!({"removed": name, "id": id}))?;
            } else {
                println!("removed host {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn vms(g: &Global, c: &VmCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    match c {
        VmCommand::List { host } => {
            let all = match host {
                Some(name) => {
                    let id = id_by_name(&client, "/api/v1/hosts", "host", name)?;
                    client.get_query("/api/v1/vms", &[("host", id.to_string())])?
                }
                None => client.get("/api/v1/vms")?,
            };
            if g.json {
                output::json(&all)?;
            } else {
                let all: Vec<VmDto> = typed_for("vm list", all)?;
                if all.is_empty() {
                    println!("no VMs");
                } else {
                    vm_table(&all).print();
                }
            }
        }
        VmCommand::Start { vm } | VmCommand::Stop { vm } | VmCommand::ForgetCheckpoints { vm } => {
            let verb = match c {
                VmCommand::Start { .. } => "start",
                VmCommand::Stop { .. } => "stop",
                _ => "forget-checkpoints",
            };
            let all: Vec<VmDto> = typed_for(&format!("vm {verb}"), client.get("/api/v1/vms")?)?;
            let found = find_vm(&all, vm)?;
            let (id, name) = (found.id, vm_full_name(found));
            let answer = client.post(&format!("/api/v1/vms/{id}/{verb}"), &json!({}))?;
            if g.json {
                output::json(&answer)?;
            } else {
                print_vm_change(verb, &name, answer)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `cairn vm start|stop|forget-checkpoints` did, for people.
fn print_vm_change(verb: &str, name: &str, answer: Value) -> anyhow::Result<()> {
    let command = format!("vm {verb}");
    match verb {
        "start" => {
            let r: VmPowerResult = typed_for(&command, answer)?;
            println!(
                "started VM {name} (pid {}, QMP {}, serial log {})",
                r.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
                r.qmp,
                r.serial_log
                    .filter(|l| !l.is_empty())
                    .unwrap_or_else(|| "-".to_string())
            );
        }
        "stop" => {
            let r: VmPowerResult = typed_for(&command, answer)?;
            println!("stopped VM {name}");
            if let Some(ir) = r.forgot_instant_recovery {
                println!("(it was instant recovery {ir}, migrated to its production disks: that is forgotten too)");
            }
        }
        _ => {
            let r: ForgottenCheckpoints = typed_for(&command, answer)?;
            if r.removed.is_empty() {
                println!("VM {name} has no checkpoint bitmaps of cairn's");
            } else {
                let names: Vec<String> = r.removed.iter().map(|x| format!("{} ({})", x.bitmap, x.disk)).collect();
                println!(
                    "removed cairn's checkpoint bitmaps from VM {name}: {}",
                    names.join(", ")
                );
            }
            if !r.jobs.is_empty() {
                println!(
                    "jobs {} still back it up: their next backup of it reads every block",
                    r.jobs.join(", ")
                );
            }
        }
    }
    Ok(())
}
