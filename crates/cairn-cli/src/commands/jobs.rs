//! `cairn job …`.

use std::collections::HashMap;
use std::process::ExitCode;

use serde_json::{Map, Value, json};

use super::lookup::{arr, b, by_name, i, id_by_name, list, resolve_vm, s, s_or_dash, vm_full_name, yes_no};
use super::sessions;
use crate::args::{Global, JobCommand, JobFlags};
use crate::client::{Client, usage};
use crate::output::{self, Table, bytes};

/// The fields of a job the API takes on create and update (cairn_configdb::JobSpec).
const SPEC_FIELDS: [&str; 18] = [
    "name",
    "vm_ids",
    "excluded_disk_ids",
    "repository_id",
    "block_size",
    "compression",
    "encryption",
    "method",
    "retention_points",
    "schedule",
    "backup_window",
    "retries",
    "retry_wait_seconds",
    "enabled",
    "consistency",
    "require_app_consistency",
    "pre_freeze_script",
    "post_thaw_script",
];

/// `none`, `manual`, `always` or empty: no schedule or window.
fn optional_text(t: &str) -> Value {
    match t.trim() {
        "" | "none" | "manual" | "always" => Value::Null,
        t => Value::from(t),
    }
}

/// Ids of the VMs named on the command line.
fn vm_ids(vms: &[Value], names: &[String]) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for n in names {
        let vm = resolve_vm(vms, n)?;
        let id = i(vm, "id").ok_or_else(|| anyhow::anyhow!("the server's VM {n:?} has no id"))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Ids of the disks named as `VM:DISK`, which must belong to VMs in `job_vms`.
fn disk_ids(vms: &[Value], specs: &[String], job_vms: &[i64]) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for spec in specs {
        let (vm_name, disk_name) = spec
            .rsplit_once(':')
            .ok_or_else(|| usage!("--exclude-disk {spec:?}: expected VM:DISKNAME"))?;
        let vm = resolve_vm(vms, vm_name)?;
        if !i(vm, "id").is_some_and(|id| job_vms.contains(&id)) {
            return Err(usage!(
                "--exclude-disk {spec:?}: VM {} is not backed up by this job",
                vm_full_name(vm)
            ));
        }
        let disks = arr(vm, "disks");
        let disk = disks
            .iter()
            .find(|d| s(d, "name") == disk_name)
            .or_else(|| disks.iter().find(|d| s(d, "disk_key") == disk_name))
            .ok_or_else(|| {
                let names: Vec<&str> = disks.iter().map(|d| s(d, "name")).collect();
                usage!(
                    "VM {} has no disk named {disk_name:?} (its disks: {})",
                    vm_full_name(vm),
                    names.join(", ")
                )
            })?;
        if let Some(id) = i(disk, "id")
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Applies the flags given to a job spec (a JSON object).
fn apply_flags(client: &Client, spec: &mut Map<String, Value>, f: &JobFlags, vms: &[Value]) -> anyhow::Result<()> {
    if !f.vms.is_empty() {
        let ids = vm_ids(vms, &f.vms)?;
        // Disks excluded before stay excluded only if their VM is still in the job.
        let kept: Vec<i64> = match spec.get("excluded_disk_ids").and_then(Value::as_array) {
            Some(old) => old
                .iter()
                .filter_map(Value::as_i64)
                .filter(|d| {
                    vms.iter().any(|vm| {
                        i(vm, "id").is_some_and(|v| ids.contains(&v))
                            && arr(vm, "disks").iter().any(|x| i(x, "id") == Some(*d))
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        spec.insert("vm_ids".into(), json!(ids));
        spec.insert("excluded_disk_ids".into(), json!(kept));
    }
    if !f.exclude_disks.is_empty() {
        let job_vms: Vec<i64> = spec
            .get("vm_ids")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        spec.insert(
            "excluded_disk_ids".into(),
            json!(disk_ids(vms, &f.exclude_disks, &job_vms)?),
        );
    }
    if let Some(r) = &f.repository {
        let id = id_by_name(client, "/api/v1/repositories", "repository", r)?;
        spec.insert("repository_id".into(), Value::from(id));
    }
    if let Some(t) = &f.schedule {
        spec.insert("schedule".into(), optional_text(t));
    }
    if let Some(t) = &f.window {
        spec.insert("backup_window".into(), optional_text(t));
    }
    if let Some(n) = f.retain {
        spec.insert("retention_points".into(), Value::from(n));
    }
    if let Some(n) = f.block_size {
        spec.insert("block_size".into(), Value::from(n));
    }
    if let Some(c) = &f.compression {
        spec.insert("compression".into(), Value::from(c.to_string()));
    }
    if let Some(m) = &f.method {
        spec.insert("method".into(), Value::from(m.as_str()));
    }
    if let Some(n) = f.retries {
        spec.insert("retries".into(), Value::from(n));
    }
    if let Some(n) = f.retry_wait {
        spec.insert("retry_wait_seconds".into(), Value::from(n));
    }
    if f.disabled {
        spec.insert("enabled".into(), Value::from(false));
    }
    if let Some(c) = &f.consistency {
        spec.insert("consistency".into(), Value::from(c.as_str()));
    }
    if let Some(r) = f.require_app_consistency {
        spec.insert("require_app_consistency".into(), Value::from(r));
    }
    if let Some(t) = &f.pre_freeze {
        spec.insert("pre_freeze_script".into(), optional_text(t));
    }
    if let Some(t) = &f.post_thaw {
        spec.insert("post_thaw_script".into(), optional_text(t));
    }
    Ok(())
}

/// `success 2026-11-23 22:00:04 (session 12)` or `-`.
fn last_result(job: &Value) -> String {
    match job.get("last_session") {
        Some(l) if l.is_object() => {
            let when = l
                .get("ended_at")
                .and_then(Value::as_str)
                .or_else(|| l.get("started_at").and_then(Value::as_str))
                .map(output::time)
                .unwrap_or_default();
            format!("{} {when} (session {})", s(l, "state"), s_or_dash(l, "id"))
        }
        _ => "-".to_string(),
    }
}

fn next_run(job: &Value) -> String {
    match job.get("next_run").and_then(Value::as_str) {
        Some(t) => output::time(t),
        None if !b(job, "enabled") => "disabled".to_string(),
        None => "-".to_string(),
    }
}

fn show(client: &Client, job: &Value) -> anyhow::Result<()> {
    let vms = client.get("/api/v1/vms")?;
    let vm_names: HashMap<i64, String> = list(&vms)
        .iter()
        .filter_map(|v| Some((i(v, "id")?, vm_full_name(v))))
        .collect();
    let disk_names: HashMap<i64, String> = list(&vms)
        .iter()
        .flat_map(|v| {
            arr(v, "disks")
                .iter()
                .filter_map(move |d| Some((i(d, "id")?, format!("{}:{}", vm_full_name(v), s(d, "name")))))
        })
        .collect();
    let repos = client.get("/api/v1/repositories")?;
    let repo_name = list(&repos)
        .iter()
        .find(|r| i(r, "id") == i(job, "repository_id"))
        .map(|r| s(r, "name").to_string())
        .unwrap_or_else(|| format!("#{}", s_or_dash(job, "repository_id")));
    let ids = |key: &str, names: &HashMap<i64, String>| -> String {
        let v: Vec<String> = arr(job, key)
            .iter()
            .filter_map(Value::as_i64)
            .map(|id| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}")))
            .collect();
        if v.is_empty() { "-".to_string() } else { v.join(", ") }
    };
    let rows = [
        (
            "job",
            format!(
                "{} (id {}, version {})",
                s(job, "name"),
                s_or_dash(job, "id"),
                s_or_dash(job, "version")
            ),
        ),
        ("enabled", yes_no(b(job, "enabled"))),
        ("VMs", ids("vm_ids", &vm_names)),
        ("excluded disks", ids("excluded_disk_ids", &disk_names)),
        ("repository", repo_name),
        (
            "schedule",
            job.get("schedule")
                .and_then(Value::as_str)
                .unwrap_or("manual only")
                .to_string(),
        ),
        (
            "backup window",
            job.get("backup_window")
                .and_then(Value::as_str)
                .unwrap_or("always")
                .to_string(),
        ),
        ("next run", next_run(job)),
        ("last result", last_result(job)),
        (
            "retention",
            format!("{} restore points", s_or_dash(job, "retention_points")),
        ),
        ("method", s_or_dash(job, "method")),
        (
            "block size",
            super::lookup::u(job, "block_size")
                .map(bytes)
                .unwrap_or_else(|| "-".into()),
        ),
        ("compression", s_or_dash(job, "compression")),
        (
            "encryption",
            job.get("encryption")
                .and_then(Value::as_str)
                .unwrap_or("as the repository")
                .to_string(),
        ),
        (
            "retries",
            format!(
                "{}, {} apart",
                s_or_dash(job, "retries"),
                super::lookup::f(job, "retry_wait_seconds")
                    .map(output::duration)
                    .unwrap_or_else(|| "-".into())
            ),
        ),
        (
            "consistency",
            format!(
                "{}{}",
                s_or_dash(job, "consistency"),
                if b(job, "require_app_consistency") {
                    " (application consistency required)"
                } else {
                    ""
                }
            ),
        ),
        (
            "guest scripts",
            match (
                job.get("pre_freeze_script").and_then(Value::as_str),
                job.get("post_thaw_script").and_then(Value::as_str),
            ) {
                (None, None) => "-".to_string(),
                (pre, post) => format!(
                    "before freeze: {}; after thaw: {}",
                    pre.unwrap_or("-"),
                    post.unwrap_or("-")
                ),
            },
        ),
        ("created", output::time(s(job, "created_at"))),
        ("updated", output::time(s(job, "updated_at"))),
    ];
    for (k, v) in rows {
        println!("{:<15} {v}", format!("{k}:"));
    }
    Ok(())
}

/// Runs `cairn job …`.
pub fn jobs(g: &Global, c: &JobCommand) -> anyhow::Result<ExitCode> {
    let client = Client::from_global(g)?;
    match c {
        JobCommand::Create { name, flags } => create(g, &client, name, flags)?,
        JobCommand::List => list_jobs(g, &client)?,
        JobCommand::Show { name } => {
            let job = by_name(&client, "/api/v1/jobs", "job", name)?;
            if g.json {
                output::json(&job)?;
            } else {
                show(&client, &job)?;
            }
        }
        JobCommand::Edit { name, flags } => edit(g, &client, name, flags)?,
        JobCommand::Remove { name } => {
            let id = id_by_name(&client, "/api/v1/jobs", "job", name)?;
            client.delete(&format!("/api/v1/jobs/{id}"))?;
            if g.json {
                output::json(&json!({"removed": name, "id": id}))?;
            } else {
                println!("removed job {name}");
            }
        }
        JobCommand::Enable { name } | JobCommand::Disable { name } => {
            let enable = matches!(c, JobCommand::Enable { .. });
            let id = id_by_name(&client, "/api/v1/jobs", "job", name)?;
            let verb = if enable { "enable" } else { "disable" };
            let job = client.post(&format!("/api/v1/jobs/{id}/{verb}"), &json!({}))?;
            if g.json {
                output::json(&job)?;
            } else {
                println!("job {name} {verb}d; next run: {}", next_run(&job));
            }
        }
        JobCommand::Run { name, wait } => return run(g, &client, name, *wait),
        JobCommand::Stop { name } => {
            let id = id_by_name(&client, "/api/v1/jobs", "job", name)?;
            let stopped = client.post(&format!("/api/v1/jobs/{id}/stop"), &json!({}))?;
            if g.json {
                output::json(&stopped)?;
            } else {
                println!("job {name}: stopping session {}", s_or_dash(&stopped, "session_id"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn job create`: a new job from the flags (into the default repository without
/// `--repository`).
fn create(g: &Global, client: &Client, name: &str, flags: &JobFlags) -> anyhow::Result<()> {
    if flags.vms.is_empty() {
        return Err(usage!("a job needs at least one --vm"));
    }
    let vms = client.get("/api/v1/vms")?;
    let mut spec = Map::new();
    spec.insert("name".into(), Value::from(name));
    spec.insert("enabled".into(), Value::from(true));
    let default_repository = match flags.repository {
        Some(_) => None,
        None => {
            let (id, repo) = default_repository(client)?;
            spec.insert("repository_id".into(), Value::from(id));
            Some(repo)
        }
    };
    apply_flags(client, &mut spec, flags, list(&vms))?;
    let job = client.post("/api/v1/jobs", &spec)?;
    if g.json {
        output::json(&job)?;
    } else {
        if let Some(repo) = default_repository {
            println!("no --repository given: the job backs up into the server's default repository {repo}");
        }
        println!(
            "created job {} ({} VMs, schedule: {}, next run: {})",
            s(&job, "name"),
            arr(&job, "vm_ids").len(),
            job.get("schedule").and_then(Value::as_str).unwrap_or("manual only"),
            next_run(&job)
        );
    }
    Ok(())
}

/// `cairn job list`: every job with its schedule, next run and last result.
fn list_jobs(g: &Global, client: &Client) -> anyhow::Result<()> {
    let all = client.get("/api/v1/jobs")?;
    if g.json {
        output::json(&all)?;
    } else if list(&all).is_empty() {
        println!("no jobs (create one with `cairn job create NAME --vm VM [--repository NAME]`)");
    } else {
        let mut t = Table::new(&["NAME", "ENABLED", "SCHEDULE", "NEXT RUN", "LAST RESULT"]);
        for j in list(&all) {
            t.row(vec![
                s(j, "name").to_string(),
                yes_no(b(j, "enabled")),
                j.get("schedule")
                    .and_then(Value::as_str)
                    .unwrap_or("manual")
                    .to_string(),
                next_run(j),
                last_result(j),
            ]);
        }
        t.print();
    }
    Ok(())
}

/// `cairn job edit`: changes only the settings given, based on the job's current version.
fn edit(g: &Global, client: &Client, name: &str, flags: &JobFlags) -> anyhow::Result<()> {
    let found = by_name(client, "/api/v1/jobs", "job", name)?;
    let id = job_id(&found, name)?;
    // The job as it is now, with the version the change is based on.
    let job = client.get(&format!("/api/v1/jobs/{id}"))?;
    let mut spec = Map::new();
    for key in SPEC_FIELDS {
        spec.insert(key.into(), job.get(key).cloned().unwrap_or(Value::Null));
    }
    let vms = client.get("/api/v1/vms")?;
    apply_flags(client, &mut spec, flags, list(&vms))?;
    spec.insert("version".into(), job.get("version").cloned().unwrap_or(Value::Null));
    let job = client.put(&format!("/api/v1/jobs/{id}"), &spec)?;
    if g.json {
        output::json(&job)?;
    } else {
        println!(
            "changed job {} (version {}); next run: {}",
            s(&job, "name"),
            s_or_dash(&job, "version"),
            next_run(&job)
        );
    }
    Ok(())
}

/// `cairn job run`: starts a session; with `--wait`, follows it and exits with its outcome.
fn run(g: &Global, client: &Client, name: &str, wait: bool) -> anyhow::Result<ExitCode> {
    let id = id_by_name(client, "/api/v1/jobs", "job", name)?;
    let started = client.post(&format!("/api/v1/jobs/{id}/run"), &json!({}))?;
    let session = i(&started, "session_id")
        .ok_or_else(|| anyhow::anyhow!("the server started job {name} but named no session"))?;
    if wait {
        if !g.json && !g.quiet {
            println!("job {name}: session {session} started");
        }
        return sessions::wait(g, client, session);
    }
    if g.json {
        output::json(&started)?;
    } else {
        println!("job {name}: session {session} started (follow it with `cairn session show {session}`)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The server's default repository (id, name), for a job created without `--repository`.
fn default_repository(client: &Client) -> anyhow::Result<(i64, String)> {
    let all = client.get("/api/v1/repositories")?;
    let repo = list(&all).iter().find(|r| b(r, "is_default")).ok_or_else(|| {
        usage!("no --repository given and the server has no default repository: name one (see `cairn repository list`)")
    })?;
    let id = i(repo, "id").ok_or_else(|| anyhow::anyhow!("the server's default repository has no id"))?;
    Ok((id, s(repo, "name").to_string()))
}

fn job_id(job: &Value, name: &str) -> anyhow::Result<i64> {
    i(job, "id").ok_or_else(|| anyhow::anyhow!("the server's job {name:?} has no id"))
}
