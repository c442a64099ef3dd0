//! `cairn host …` and `cairn vm …`.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};

use super::lookup::{arr, b, id_by_name, list, resolve_vm, s, s_or_dash, u, vm_full_name, yes_no};
use crate::args::{Global, HostCommand, HostKind, VmCommand};
use crate::client::Client;
use crate::output::{self, Table, bytes};

/// A host's location as people read it: an image folder's path; a qemu host's QMP socket or
/// folder of sockets, with its guest agent socket (the API keeps it as JSON).
fn location_text(host: &Value) -> String {
    let location = s(host, "location");
    if s(host, "kind") != "qemu" {
        return location.to_string();
    }
    match serde_json::from_str::<Value>(location) {
        Ok(l) => match l.get("qga").and_then(Value::as_str) {
            Some(qga) => format!("QMP {} (guest agent {qga})", s(&l, "qmp")),
            None => format!("QMP {}", s(&l, "qmp")),
        },
        Err(_) => location.to_string(),
    }
}

/// Prints the VMs of a `{host, vms}` answer.
fn print_scan(verb: &str, answer: &Value) {
    let host = answer.get("host").cloned().unwrap_or(Value::Null);
    let vms = arr(answer, "vms");
    println!(
        "{verb} host {} ({}, {}): {} VMs",
        s(&host, "name"),
        s(&host, "kind"),
        location_text(&host),
        vms.len()
    );
    if !vms.is_empty() {
        vm_table(vms).print();
    }
}

/// One row per disk of each VM.
fn vm_table(vms: &[Value]) -> Table {
    let mut t = Table::new(&["VM", "DISK", "FORMAT", ">SIZE", "PRESENT"]);
    for vm in vms {
        let disks = arr(vm, "disks");
        if disks.is_empty() {
            t.row(vec![
                vm_full_name(vm),
                "(no disks)".into(),
                String::new(),
                String::new(),
                yes_no(b(vm, "present")),
            ]);
        }
        for d in disks {
            t.row(vec![
                vm_full_name(vm),
                s(d, "name").to_string(),
                s(d, "format").to_string(),
                u(d, "capacity_bytes").map(bytes).unwrap_or_else(|| "-".into()),
                yes_no(b(vm, "present") && b(d, "present")),
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
            let mut body = match (kind, path, qmp) {
                (HostKind::ImageFolder, Some(path), _) => json!({"kind": "image-folder", "path": absolute(path)?}),
                (HostKind::Qemu, _, Some(qmp)) => json!({"kind": "qemu", "path": absolute(qmp)?}),
                (HostKind::ImageFolder, None, _) => anyhow::bail!("an image-folder host needs --path FOLDER"),
                (HostKind::Qemu, _, None) => anyhow::bail!("a qemu host needs --qmp SOCKET (or a folder of sockets)"),
            };
            if let Some(qga) = qga {
                body["qga"] = Value::from(absolute(qga)?);
            }
            if let Some(n) = name {
                body["name"] = Value::from(n.as_str());
            }
            let answer = client.post("/api/v1/hosts", &body)?;
            if g.json {
                output::json(&answer)?;
            } else {
                print_scan("added", &answer);
            }
        }
        HostCommand::List => {
            let all = client.get("/api/v1/hosts")?;
            if g.json {
                output::json(&all)?;
            } else {
                let mut t = Table::new(&["NAME", "KIND", "LOCATION", ">VMS", "ADDED"]);
                for h in list(&all) {
                    t.row(vec![
                        s(h, "name").to_string(),
                        s(h, "kind").to_string(),
                        location_text(h),
                        s_or_dash(h, "vms"),
                        output::time(s(h, "created_at")),
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
                print_scan("rescanned", &answer);
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
            } else if list(&all).is_empty() {
                println!("no VMs");
            } else {
                vm_table(list(&all)).print();
            }
        }
        VmCommand::Start { vm } | VmCommand::Stop { vm } | VmCommand::ForgetCheckpoints { vm } => {
            let all = client.get("/api/v1/vms")?;
            let found = resolve_vm(list(&all), vm)?;
            let id = found
                .get("id")
                .and_then(Value::as_i64)
                .ok_or_else(|| anyhow::anyhow!("the server's VM {vm:?} has no id"))?;
            let name = vm_full_name(found);
            let verb = match c {
                VmCommand::Start { .. } => "start",
                VmCommand::Stop { .. } => "stop",
                _ => "forget-checkpoints",
            };
            let answer = client.post(&format!("/api/v1/vms/{id}/{verb}"), &json!({}))?;
            if g.json {
                output::json(&answer)?;
            } else {
                print_vm_change(verb, &name, &answer);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `cairn vm start|stop|forget-checkpoints` did, for people.
fn print_vm_change(verb: &str, name: &str, answer: &Value) {
    match verb {
        "start" => println!(
            "started VM {name} (pid {}, QMP {}, serial log {})",
            s_or_dash(answer, "pid"),
            s(answer, "qmp"),
            s_or_dash(answer, "serial_log")
        ),
        "stop" => {
            println!("stopped VM {name}");
            if let Some(ir) = answer.get("forgot_instant_recovery").and_then(Value::as_str) {
                println!("(it was instant recovery {ir}, migrated to its production disks: that is forgotten too)");
            }
        }
        _ => {
            let removed = arr(answer, "removed");
            if removed.is_empty() {
                println!("VM {name} has no checkpoint bitmaps of cairn's");
            } else {
                let names: Vec<String> = removed
                    .iter()
                    .map(|r| format!("{} ({})", s(r, "bitmap"), s(r, "disk")))
                    .collect();
                println!(
                    "removed cairn's checkpoint bitmaps from VM {name}: {}",
                    names.join(", ")
                );
            }
            let jobs: Vec<&str> = arr(answer, "jobs").iter().filter_map(Value::as_str).collect();
            if !jobs.is_empty() {
                println!(
                    "jobs {} still back it up: their next backup of it reads every block",
                    jobs.join(", ")
                );
            }
        }
    }
}
