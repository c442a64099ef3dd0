//! Shared by the server commands: reading fields of the API's JSON, and finding hosts, jobs,
//! repositories, users, proxies and VMs by name (the API addresses them by id).

use cairn_api::inventory::VmDto;
use serde_json::Value;

use crate::client::{Client, usage};

/// A string field, or `""`.
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A string field, or `-` when absent or null.
pub fn s_or_dash(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => "-".to_string(),
    }
}

/// An integer field.
pub fn i(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

/// A non-negative integer field.
pub fn u(v: &Value, key: &str) -> Option<u64> {
    v.get(key)
        .and_then(|x| x.as_u64().or_else(|| x.as_f64().map(|f| f.max(0.0) as u64)))
}

/// A number field.
pub fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// An array field (empty when absent).
pub fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// The elements of an array answer.
pub fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// `yes`/`no`.
pub fn yes_no(x: bool) -> String {
    if x { "yes" } else { "no" }.to_string()
}

/// Edit distance of two names (case-insensitive).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Names close to `name` (similar spelling or containing each other), nearest first, at most 5.
pub fn near_names<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let lower = name.to_lowercase();
    let mut scored: Vec<(usize, String)> = candidates
        .into_iter()
        .filter_map(|c| {
            let d = distance(name, c);
            let cl = c.to_lowercase();
            let close = d <= (name.chars().count() / 3).max(2) || cl.contains(&lower) || lower.contains(&cl);
            close.then(|| (d, c.to_string()))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(5).map(|(_, c)| c).collect()
}

/// ` (did you mean …?)`, ` (known: …)` or ` (there are none)` after "no X named NAME".
pub fn hint(name: &str, known: &[&str]) -> String {
    let near = near_names(name, known.iter().copied());
    if !near.is_empty() {
        format!(" (did you mean {}?)", near.join(", "))
    } else if known.is_empty() {
        " (there are none)".to_string()
    } else {
        let mut names: Vec<&str> = known.to_vec();
        names.sort_unstable();
        names.dedup();
        let shown: Vec<&str> = names.iter().copied().take(10).collect();
        let more = if names.len() > shown.len() { ", …" } else { "" };
        format!(" (known: {}{more})", shown.join(", "))
    }
}

/// "there is no KIND named NAME" with the near names or the known ones: a usage error (exit
/// code 2), like every name on the command line the server does not know.
pub fn unknown(kind: &str, name: &str, known: &[&str]) -> anyhow::Error {
    usage!("there is no {kind} named {name:?}{}", hint(name, known))
}

/// The element of the list at `path` whose `name` is `name`.
pub fn by_name(client: &Client, path: &str, kind: &str, name: &str) -> anyhow::Result<Value> {
    let all = client.get(path)?;
    let items = list(&all);
    if let Some(found) = items.iter().find(|x| s(x, "name") == name) {
        return Ok(found.clone());
    }
    let names: Vec<&str> = items.iter().map(|x| s(x, "name")).collect();
    Err(unknown(kind, name, &names))
}

/// The id of an element found by [`by_name`].
pub fn id_by_name(client: &Client, path: &str, kind: &str, name: &str) -> anyhow::Result<i64> {
    let v = by_name(client, path, kind, name)?;
    i(&v, "id").ok_or_else(|| anyhow::anyhow!("the server's {kind} {name:?} has no id"))
}

/// `HOST/VM` of a VM of `GET /api/v1/vms`.
pub fn vm_full_name(vm: &VmDto) -> String {
    format!("{}/{}", vm.host, vm.name)
}

/// Finds a VM of `GET /api/v1/vms` by `NAME` (unique across hosts) or `HOST/VM`.
pub fn find_vm<'a>(vms: &'a [VmDto], wanted: &str) -> anyhow::Result<&'a VmDto> {
    resolve(vms, wanted, |v| &v.host, |v| &v.name)
}

/// Finds a VM by `NAME` or `HOST/VM`, given how to read a VM's host and name.
fn resolve<'a, T>(
    vms: &'a [T],
    wanted: &str,
    host: impl Fn(&T) -> &str,
    name: impl Fn(&T) -> &str,
) -> anyhow::Result<&'a T> {
    let full = |v: &T| format!("{}/{}", host(v), name(v));
    let exact: Vec<&T> = vms.iter().filter(|v| name(v) == wanted).collect();
    match exact.len() {
        1 => return Ok(exact[0]),
        0 => {}
        _ => {
            let names: Vec<String> = exact.iter().map(|v| full(v)).collect();
            return Err(usage!(
                "VM {wanted:?} is on several hosts ({}): name it as HOST/VM",
                names.join(", ")
            ));
        }
    }
    if let Some((h, n)) = wanted.split_once('/')
        && let Some(v) = vms.iter().find(|v| host(v) == h && name(v) == n)
    {
        return Ok(v);
    }
    let mut known: Vec<String> = vms.iter().map(|v| name(v).to_string()).collect();
    known.extend(vms.iter().map(full));
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    Err(unknown("VM", wanted, &known))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn near_names_find_typos_and_parts() {
        let near = near_names("nightley", ["nightly", "weekly", "night-db", "other"]);
        assert_eq!(near[0], "nightly");
        assert!(!near.contains(&"other".to_string()));
        assert!(near_names("web", ["web01", "db01"]).contains(&"web01".to_string()));
    }

    #[test]
    fn vms_resolve_by_name_or_host_and_name() {
        let vm = |id: i64, name: &str, host: &str| -> VmDto {
            serde_json::from_value(json!({
                "id": id, "host_id": 1, "host": host, "external_id": name, "name": name,
                "present": true, "last_seen_at": "2026-11-23T10:00:00Z", "disks": []
            }))
            .expect("a VM")
        };
        let vms = vec![vm(1, "web", "a"), vm(2, "web", "b"), vm(3, "db", "a")];
        assert_eq!(find_vm(&vms, "db").unwrap().id, 3);
        assert_eq!(find_vm(&vms, "b/web").unwrap().id, 2);
        let e = find_vm(&vms, "web").unwrap_err().to_string();
        assert!(e.contains("a/web") && e.contains("b/web"), "{e}");
        let e = find_vm(&vms, "dbb").unwrap_err();
        assert!(e.to_string().contains("did you mean db"), "{e}");
        assert!(
            e.is::<crate::client::UsageError>(),
            "an unknown name is a usage error (exit 2)"
        );
    }
}
