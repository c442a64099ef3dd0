//! `cairn job …`.

use std::collections::HashMap;
use std::process::ExitCode;

use cairn_api::inventory::VmDto;
use cairn_api::jobs::{JobDto, JobInput, JobUpdate, SessionStarted};
use cairn_api::repositories::RepositoryDto;
use serde_json::json;

use super::lookup::{by_name, find_vm, id_by_name, vm_full_name, yes_no};
use super::sessions;
use crate::args::{Global, JobCommand, JobFlags};
use crate::client::{Client, typed_for, usage};
use crate::output::{self, Table, bytes};

const JOBS: &str = "/api/v1/jobs";
const VMS: &str = "/api/v1/vms";
const REPOSITORIES: &str = "/api/v1/repositories";

/// `none`, `manual`, `always` or empty: no schedule or window.
fn optional_text(t: &str) -> Option<String> {
    match t.trim() {
        "" | "none" | "manual" | "always" => None,
        t => Some(t.to_string()),
    }
}

/// Ids of the VMs named on the command line.
fn vm_ids(vms: &[VmDto], names: &[String]) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for n in names {
        let id = find_vm(vms, n)?.id;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Ids of the disks named as `VM:DISK`, which must belong to VMs in `job_vms`.
fn disk_ids(vms: &[VmDto], specs: &[String], job_vms: &[i64]) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for spec in specs {
        let (vm_name, disk_name) = spec
            .rsplit_once(':')
            .ok_or_else(|| usage!("--exclude-disk {spec:?}: expected VM:DISKNAME"))?;
        let vm = find_vm(vms, vm_name)?;
        if !job_vms.contains(&vm.id) {
            return Err(usage!(
                "--exclude-disk {spec:?}: VM {} is not backed up by this job",
                vm_full_name(vm)
            ));
        }
        let disk = vm
            .disks
            .iter()
            .find(|d| d.name == disk_name)
            .or_else(|| vm.disks.iter().find(|d| d.disk_key == disk_name))
            .ok_or_else(|| {
                let names: Vec<&str> = vm.disks.iter().map(|d| d.name.as_str()).collect();
                usage!(
                    "VM {} has no disk named {disk_name:?} (its disks: {})",
                    vm_full_name(vm),
                    names.join(", ")
                )
            })?;
        if !ids.contains(&disk.id) {
            ids.push(disk.id);
        }
    }
    Ok(ids)
}

/// A job's settings as read, to send back changed.
fn input_of(job: &JobDto) -> JobInput {
    JobInput {
        name: job.name.clone(),
        vm_ids: job.vm_ids.clone(),
        excluded_disk_ids: job.excluded_disk_ids.clone(),
        repository_id: job.repository_id,
        block_size: Some(i64::from(job.block_size)),
        compression: Some(job.compression.to_string()),
        encryption: job.encryption.clone(),
        method: Some(job.method.to_string()),
        retention_points: Some(i64::from(job.retention_points)),
        schedule: job.schedule.clone(),
        backup_window: job.backup_window.clone(),
        retries: Some(job.retries),
        retry_wait_seconds: Some(job.retry_wait_seconds),
        enabled: Some(job.enabled),
        consistency: Some(job.consistency.to_string()),
        require_app_consistency: Some(job.require_app_consistency),
        pre_freeze_script: job.pre_freeze_script.clone(),
        post_thaw_script: job.post_thaw_script.clone(),
    }
}

/// Applies the flags given to a job's settings.
fn apply_flags(client: &Client, spec: &mut JobInput, f: &JobFlags, vms: &[VmDto]) -> anyhow::Result<()> {
    if !f.vms.is_empty() {
        let ids = vm_ids(vms, &f.vms)?;
        // Disks excluded before stay excluded only if their VM is still in the job.
        spec.excluded_disk_ids.retain(|d| {
            vms.iter()
                .any(|vm| ids.contains(&vm.id) && vm.disks.iter().any(|x| x.id == *d))
        });
        spec.vm_ids = ids;
    }
    if !f.exclude_disks.is_empty() {
        spec.excluded_disk_ids = disk_ids(vms, &f.exclude_disks, &spec.vm_ids)?;
    }
    if let Some(r) = &f.repository {
        spec.repository_id = id_by_name(client, REPOSITORIES, "repository", r)?;
    }
    if let Some(t) = &f.schedule {
        spec.schedule = optional_text(t);
    }
    if let Some(t) = &f.window {
        spec.backup_window = optional_text(t);
    }
    if let Some(n) = f.retain {
        spec.retention_points = Some(i64::from(n));
    }
    if let Some(n) = f.block_size {
        spec.block_size = Some(i64::from(n));
    }
    if let Some(c) = &f.compression {
        spec.compression = Some(c.to_string());
    }
    if let Some(m) = &f.method {
        spec.method = Some(m.clone());
    }
    if let Some(n) = f.retries {
        spec.retries = Some(i64::from(n));
    }
    if let Some(n) = f.retry_wait {
        // Beyond any wait the server accepts; it refuses it either way.
        spec.retry_wait_seconds = Some(i64::try_from(n).unwrap_or(i64::MAX));
    }
    if f.disabled {
        spec.enabled = Some(false);
    }
    if let Some(c) = &f.consistency {
        spec.consistency = Some(c.clone());
    }
    if let Some(r) = f.require_app_consistency {
        spec.require_app_consistency = Some(r);
    }
    if let Some(t) = &f.pre_freeze {
        spec.pre_freeze_script = optional_text(t);
    }
    if let Some(t) = &f.post_thaw {
        spec.post_thaw_script = optional_text(t);
    }
    Ok(())
}

/// `success 2026-11-23 22:00:04 (session 12)` or `-`.
fn last_result(job: &JobDto) -> String {
    match &job.last_session {
        Some(l) => {
            let when = output::time(&l.ended_at.unwrap_or(l.started_at).to_string());
            format!("{} {when} (session {})", l.state, l.id)
        }
        None => "-".to_string(),
    }
}

fn next_run(job: &JobDto) -> String {
    match job.next_run {
        Some(t) => output::time(&t.to_string()),
        None if !job.enabled => "disabled".to_string(),
        None => "-".to_string(),
    }
}

/// `text`, or `-` when empty.
fn or_dash(text: String) -> String {
    if text.is_empty() { "-".to_string() } else { text }
}

fn show(client: &Client, job: &JobDto) -> anyhow::Result<()> {
    let vms: Vec<VmDto> = typed_for("job show", client.get(VMS)?)?;
    let vm_names: HashMap<i64, String> = vms.iter().map(|v| (v.id, vm_full_name(v))).collect();
    let disk_names: HashMap<i64, String> = vms
        .iter()
        .flat_map(|v| {
            v.disks
                .iter()
                .map(move |d| (d.id, format!("{}:{}", vm_full_name(v), d.name)))
        })
        .collect();
    let repos: Vec<RepositoryDto> = typed_for("job show", client.get(REPOSITORIES)?)?;
    let repo_name = repos
        .iter()
        .find(|r| r.id == job.repository_id)
        .map(|r| r.name.clone())
        .unwrap_or_else(|| format!("#{}", job.repository_id));
    let ids = |ids: &[i64], names: &HashMap<i64, String>| -> String {
        let v: Vec<String> = ids
            .iter()
            .map(|id| names.get(id).cloned().unwrap_or_else(|| format!("#{id}")))
            .collect();
        if v.is_empty() { "-".to_string() } else { v.join(", ") }
    };
    let rows = [
        ("job", format!("{} (id {}, version {})", job.name, job.id, job.version)),
        ("enabled", yes_no(job.enabled)),
        ("VMs", ids(&job.vm_ids, &vm_names)),
        ("excluded disks", ids(&job.excluded_disk_ids, &disk_names)),
        ("repository", repo_name),
        ("schedule", job.schedule.as_deref().unwrap_or("manual only").to_string()),
        (
            "backup window",
            job.backup_window.as_deref().unwrap_or("always").to_string(),
        ),
        ("next run", next_run(job)),
        ("last result", last_result(job)),
        ("retention", format!("{} restore points", job.retention_points.points())),
        ("method", or_dash(job.method.to_string())),
        ("block size", bytes(u64::from(job.block_size.bytes()))),
        ("compression", or_dash(job.compression.to_string())),
        (
            "encryption",
            job.encryption.as_deref().unwrap_or("as the repository").to_string(),
        ),
        (
            "retries",
            format!(
                "{}, {} apart",
                job.retries,
                output::duration(job.retry_wait_seconds as f64)
            ),
        ),
        (
            "consistency",
            format!(
                "{}{}",
                or_dash(job.consistency.to_string()),
                if job.require_app_consistency {
                    " (application consistency required)"
                } else {
                    ""
                }
            ),
        ),
        (
            "guest scripts",
            match (job.pre_freeze_script.as_deref(), job.post_thaw_script.as_deref()) {
                (None, None) => "-".to_string(),
                (pre, post) => format!(
                    "before freeze: {}; after thaw: {}",
                    pre.unwrap_or("-"),
                    post.unwrap_or("-")
                ),
            },
        ),
        ("created", output::time(&job.created_at.to_string())),
        ("updated", output::time(&job.updated_at.to_string())),
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
            let job = by_name(&client, JOBS, "job", name)?;
            if g.json {
                output::json(&job)?;
            } else {
                show(&client, &typed_for("job show", job)?)?;
            }
        }
        JobCommand::Edit { name, flags } => edit(g, &client, name, flags)?,
        JobCommand::Remove { name } => {
            let id = id_by_name(&client, JOBS, "job", name)?;
            client.delete(&format!("{JOBS}/{id}"))?;
            if g.json {
                output::json(&json!({"removed": name, "id": id}))?;
            } else {
                println!("removed job {name}");
            }
        }
        JobCommand::Enable { name } | JobCommand::Disable { name } => {
            let enable = matches!(c, JobCommand::Enable { .. });
            let id = id_by_name(&client, JOBS, "job", name)?;
            let verb = if enable { "enable" } else { "disable" };
            let job = client.post(&format!("{JOBS}/{id}/{verb}"), &json!({}))?;
            if g.json {
                output::json(&job)?;
            } else {
                let job: JobDto = typed_for(&format!("job {verb}"), job)?;
                println!("job {name} {verb}d; next run: {}", next_run(&job));
            }
        }
        JobCommand::Run { name, wait } => return run(g, &client, name, *wait),
        JobCommand::Stop { name } => {
            let id = id_by_name(&client, JOBS, "job", name)?;
            let stopped = client.post(&format!("{JOBS}/{id}/stop"), &json!({}))?;
            if g.json {
                output::json(&stopped)?;
            } else {
                let stopped: SessionStarted = typed_for("job stop", stopped)?;
                println!("job {name}: stopping session {}", stopped.session_id);
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
    let vms: Vec<VmDto> = typed_for("job create", client.get(VMS)?)?;
    let mut spec = JobInput {
        name: name.to_string(),
        vm_ids: Vec::new(),
        excluded_disk_ids: Vec::new(),
        // Set below: the default repository, or the one of `--repository` in `apply_flags`.
        repository_id: 0,
        block_size: None,
        compression: None,
        encryption: None,
        method: None,
        retention_points: None,
        schedule: None,
        backup_window: None,
        retries: None,
        retry_wait_seconds: None,
        enabled: Some(true),
        consistency: None,
        require_app_consistency: None,
        pre_freeze_script: None,
        post_thaw_script: None,
    };
    let default_repository = match flags.repository {
        Some(_) => None,
        None => {
            let (id, repo) = default_repository(client)?;
            spec.repository_id = id;
            Some(repo)
        }
    };
    apply_flags(client, &mut spec, flags, &vms)?;
    let job = client.post(JOBS, &spec)?;
    if g.json {
        output::json(&job)?;
    } else {
        let job: JobDto = typed_for("job create", job)?;
        if let Some(repo) = default_repository {
            println!("no --repository given: the job backs up into the server's default repository {repo}");
        }
        println!(
            "created job {} ({} VMs, schedule: {}, next run: {})",
            job.name,
            job.vm_ids.len(),
            job.schedule.as_deref().unwrap_or("manual only"),
            next_run(&job)
        );
    }
    Ok(())
}

/// `cairn job list`: every job with its schedule, next run and last result.
fn list_jobs(g: &Global, client: &Client) -> anyhow::Result<()> {
    let all = client.get(JOBS)?;
    if g.json {
        return output::json(&all);
    }
    let all: Vec<JobDto> = typed_for("job list", all)?;
    if all.is_empty() {
        println!("no jobs (create one with `cairn job create NAME --vm VM [--repository NAME]`)");
    } else {
        let mut t = Table::new(&["NAME", "ENABLED", "SCHEDULE", "NEXT RUN", "LAST RESULT"]);
        for j in &all {
            t.row(vec![
                j.name.clone(),
                yes_no(j.enabled),
                j.schedule.as_deref().unwrap_or("manual").to_string(),
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
    let id = id_by_name(client, JOBS, "job", name)?;
    // The job as it is now, with the version the change is based on.
    let job: JobDto = typed_for("job edit", client.get(&format!("{JOBS}/{id}"))?)?;
    let mut spec = input_of(&job);
    let vms: Vec<VmDto> = typed_for("job edit", client.get(VMS)?)?;
    apply_flags(client, &mut spec, flags, &vms)?;
    let update = JobUpdate {
        version: job.version,
        job: spec,
    };
    let job = client.put(&format!("{JOBS}/{id}"), &update)?;
    if g.json {
        output::json(&job)?;
    } else {
        let job: JobDto = typed_for("job edit", job)?;
        println!(
            "changed job {} (version {}); next run: {}",
            job.name,
            job.version,
            next_run(&job)
        );
    }
    Ok(())
}

/// `cairn job run`: starts a session; with `--wait`, follows it and exits with its outcome.
fn run(g: &Global, client: &Client, name: &str, wait: bool) -> anyhow::Result<ExitCode> {
    let id = id_by_name(client, JOBS, "job", name)?;
    let started = client.post(&format!("{JOBS}/{id}/run"), &json!({}))?;
    let session = typed_for::<SessionStarted>("job run", started.clone())?.session_id;
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
    let all: Vec<RepositoryDto> = typed_for("job create", client.get(REPOSITORIES)?)?;
    let repo = all.into_iter().find(|r| r.is_default).ok_or_else(|| {
        usage!("no --repository given and the server has no default repository: name one (see `cairn repository list`)")
    })?;
    Ok((repo.id, repo.name))
}
