//! The VM's disks as QEMU sees them: guest device, top format node, image file,
//! size and dirty bitmaps (`query-block` + `query-named-block-nodes`).
//!
//! A VM started with `-drive` has auto-named nodes (`#block123`); they work as node
//! names in every command but change when QEMU restarts, so cairn identifies a disk
//! by its guest device ([`LiveDisk::device`]) and looks the node up each time.
//! While a view exists QEMU puts a `copy-before-write` filter above the disk's node;
//! the listing looks through such filters to the format node.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::qmp::Qmp;
use crate::{Error, Result};

/// Block drivers that only filter another node (their child `file` is the real disk).
const FILTER_DRIVERS: &[&str] = &[
    "copy-before-write",
    "throttle",
    "copy-on-read",
    "preallocate",
    "compress",
    "blkdebug",
    "snapshot-access",
];

/// A dirty bitmap on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitmapInfo {
    /// Bitmap name.
    pub name: String,
    /// True while it records writes (enabled and usable).
    pub recording: bool,
    /// True when stored in the qcow2 image (survives QEMU restarts).
    pub persistent: bool,
    /// True when QEMU did not close the image cleanly while the bitmap was in use: it
    /// cannot be trusted and every use fails until it is removed.
    pub inconsistent: bool,
    /// Bytes covered by one bit.
    pub granularity: u64,
    /// Dirty bytes.
    pub count: u64,
    /// True while an operation (export, job) holds it.
    pub busy: bool,
}

/// One disk of a running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveDisk {
    /// The guest device id (`-device …,id=disk0`); when the device has no id, the
    /// drive name (`-drive id=`) or else the device's QOM path.
    pub device: String,
    /// The drive (block backend) name for disks given with `-drive`; `None` with `-blockdev`.
    pub backend: Option<String>,
    /// The guest device as `query-block` names it (an id or a QOM path).
    pub qdev: String,
    /// The top format node (possibly auto-named, `#block123`).
    pub node: String,
    /// The image file name as QEMU opened it.
    pub file: String,
    /// The format driver (`qcow2`, `raw`, ...).
    pub format: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// True when the guest cannot write to it.
    pub read_only: bool,
    /// True for removable media (a CD-ROM with a disc); cairn normally backs up only fixed disks.
    pub removable: bool,
    /// Named dirty bitmaps on the format node.
    pub bitmaps: Vec<BitmapInfo>,
}

impl LiveDisk {
    /// The bitmap called `name`, if present.
    pub fn bitmap(&self, name: &str) -> Option<&BitmapInfo> {
        self.bitmaps.iter().find(|b| b.name == name)
    }
}

/// Finds the disk that `name` designates: its node, device id or drive name.
pub fn find_disk<'a>(disks: &'a [LiveDisk], name: &str) -> Option<&'a LiveDisk> {
    disks.iter().find(|d| d.node == name).or_else(|| {
        disks
            .iter()
            .find(|d| d.device == name || d.backend.as_deref() == Some(name))
    })
}

/// Lists the VM's disks: every drive with a medium attached to a guest device
/// (empty CD-ROM drives and drives without a device are skipped).
pub async fn list_disks(qmp: &Qmp) -> Result<Vec<LiveDisk>> {
    let block: Vec<Value> = qmp.execute_as("query-block", Value::Null).await?;
    let nodes: Vec<Value> = qmp.execute_as("query-named-block-nodes", Value::Null).await?;
    let by_name: HashMap<&str, &Value> = nodes
        .iter()
        .filter_map(|n| n["node-name"].as_str().map(|name| (name, n)))
        .collect();
    let mut graph: Option<Value> = None;
    let mut disks = Vec::new();
    for entry in &block {
        let Some(inserted) = entry.get("inserted") else {
            continue;
        };
        let qdev = entry["qdev"].as_str().unwrap_or("").to_owned();
        if qdev.is_empty() {
            continue;
        }
        let mut node = inserted["node-name"]
            .as_str()
            .ok_or_else(|| Error::Unexpected(format!("query-block: drive of {qdev} has no node-name")))?
            .to_owned();
        // Look through filters (a view's copy-before-write, throttling) to the format node.
        for _ in 0..8 {
            let drv = by_name.get(node.as_str()).and_then(|n| n["drv"].as_str()).unwrap_or("");
            if !FILTER_DRIVERS.contains(&drv) {
                break;
            }
            if graph.is_none() {
                graph = Some(qmp.execute("x-debug-query-block-graph", Value::Null).await?);
            }
            node = filtered_child(graph.as_ref().unwrap_or(&Value::Null), &node).ok_or_else(|| {
                Error::Unexpected(format!("cannot find the node below filter {node} ({drv}) of {qdev}"))
            })?;
        }
        let info = by_name
            .get(node.as_str())
            .ok_or_else(|| Error::Unexpected(format!("node {node} of {qdev} is not in query-named-block-nodes")))?;
        let backend = entry["device"].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        disks.push(LiveDisk {
            device: device_id(&qdev, backend.as_deref()),
            backend,
            qdev,
            file: info["file"].as_str().unwrap_or("").to_owned(),
            format: info["drv"].as_str().unwrap_or("").to_owned(),
            virtual_size: info["image"]["virtual-size"].as_u64().unwrap_or(0),
            read_only: info["ro"].as_bool().unwrap_or(false),
            removable: entry["removable"].as_bool().unwrap_or(false),
            bitmaps: parse_bitmaps(info),
            node,
        });
    }
    Ok(disks)
}

/// The guest device id from `query-block`'s `qdev` (an id, or a QOM path such as
/// `/machine/peripheral/disk0/virtio-backend`).
pub(crate) fn device_id(qdev: &str, backend: Option<&str>) -> String {
    if !qdev.starts_with('/') {
        return qdev.to_owned();
    }
    let path = qdev.strip_suffix("/virtio-backend").unwrap_or(qdev);
    if let Some(id) = path.strip_prefix("/machine/peripheral/") {
        return id.to_owned();
    }
    backend.map(str::to_owned).unwrap_or_else(|| path.to_owned())
}

/// The QOM path of the guest device (`qdev` as a path; the proxy object for virtio).
pub(crate) fn device_path(qdev: &str) -> String {
    if qdev.starts_with('/') {
        qdev.strip_suffix("/virtio-backend").unwrap_or(qdev).to_owned()
    } else {
        format!("/machine/peripheral/{qdev}")
    }
}

fn parse_bitmaps(node: &Value) -> Vec<BitmapInfo> {
    let Some(list) = node["dirty-bitmaps"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|b| {
            Some(BitmapInfo {
                name: b["name"].as_str()?.to_owned(),
                recording: b["recording"].as_bool().unwrap_or(false),
                persistent: b["persistent"].as_bool().unwrap_or(false),
                inconsistent: b["inconsistent"].as_bool().unwrap_or(false),
                granularity: b["granularity"].as_u64().unwrap_or(0),
                count: b["count"].as_u64().unwrap_or(0),
                busy: b["busy"].as_bool().unwrap_or(false),
            })
        })
        .collect()
}

/// The node a filter node filters (its `file` child, else its only block child) in
/// `x-debug-query-block-graph` output.
fn filtered_child(graph: &Value, filter: &str) -> Option<String> {
    let nodes = graph["nodes"].as_array()?;
    let id_of = |name: &str| {
        nodes
            .iter()
            .find(|n| n["type"] == "block-driver" && n["name"] == name)
            .and_then(|n| n["id"].as_u64())
    };
    let name_of = |id: u64| {
        nodes
            .iter()
            .find(|n| n["id"].as_u64() == Some(id))
            .and_then(|n| n["name"].as_str())
            .map(str::to_owned)
    };
    let parent = id_of(filter)?;
    let edges = graph["edges"].as_array()?;
    let children: Vec<&Value> = edges.iter().filter(|e| e["parent"].as_u64() == Some(parent)).collect();
    let child = children
        .iter()
        .find(|e| e["name"] == "file")
        .or_else(|| children.iter().find(|e| e["name"] == "backing"))
        .or(children.first())?;
    name_of(child["child"].as_u64()?)
}

/// The named bitmaps of every node, by node name (`query-named-block-nodes`).
pub async fn bitmaps_by_node(qmp: &Qmp) -> Result<HashMap<String, Vec<BitmapInfo>>> {
    let nodes: Vec<Value> = qmp.execute_as("query-named-block-nodes", Value::Null).await?;
    Ok(nodes
        .iter()
        .filter_map(|n| Some((n["node-name"].as_str()?.to_owned(), parse_bitmaps(n))))
        .filter(|(_, b)| !b.is_empty())
        .collect())
}

/// A dirty bitmap [`remove_bitmaps`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedBitmap {
    /// The disk's guest device ([`LiveDisk::device`]).
    pub device: String,
    /// The bitmap's name.
    pub name: String,
}

/// Removes from every disk of the VM each bitmap whose name `select` accepts (a persistent one
/// from its qcow2 image too, so it stops recording for good). Every bitmap is tried; the first
/// failure is returned after the others were removed.
pub async fn remove_bitmaps(qmp: &Qmp, select: impl Fn(&str) -> bool) -> Result<Vec<RemovedBitmap>> {
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for disk in list_disks(qmp).await? {
        for bitmap in disk.bitmaps.iter().filter(|b| select(&b.name)) {
            match qmp.bitmap_remove(&disk.node, &bitmap.name).await {
                Ok(()) => removed.push(RemovedBitmap {
                    device: disk.device.clone(),
                    name: bitmap.name.clone(),
                }),
                Err(e) => failed.push(format!("bitmap {} of disk {}: {e}", bitmap.name, disk.device)),
            }
        }
    }
    if failed.is_empty() {
        Ok(removed)
    } else {
        Err(Error::Unexpected(format!(
            "removing dirty bitmaps (removed: {}): {}",
            if removed.is_empty() {
                "none".to_owned()
            } else {
                removed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
            },
            failed.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn device_ids_from_qdev() {
        assert_eq!(device_id("disk1", None), "disk1");
        assert_eq!(
            device_id("/machine/peripheral/disk0/virtio-backend", Some("drive0")),
            "disk0"
        );
        assert_eq!(
            device_id("/machine/peripheral-anon/device[0]/virtio-backend", Some("virtio0")),
            "virtio0"
        );
        assert_eq!(
            device_id("/machine/peripheral-anon/device[0]", None),
            "/machine/peripheral-anon/device[0]"
        );
        assert_eq!(
            device_path("/machine/peripheral/disk0/virtio-backend"),
            "/machine/peripheral/disk0"
        );
        assert_eq!(device_path("disk1"), "/machine/peripheral/disk1");
    }

    #[test]
    fn filter_child_from_graph() {
        let graph = json!({
            "nodes": [
                {"id": 2, "type": "block-driver", "name": "#block249"},
                {"id": 7, "type": "block-driver", "name": "cairn-scratch-0"},
                {"id": 11, "type": "block-driver", "name": "#block165"},
                {"id": 1, "type": "block-backend", "name": "drive0"}
            ],
            "edges": [
                {"name": "target", "parent": 2, "child": 7},
                {"name": "file", "parent": 2, "child": 11},
                {"name": "root", "parent": 1, "child": 2}
            ]
        });
        assert_eq!(filtered_child(&graph, "#block249").as_deref(), Some("#block165"));
        assert_eq!(filtered_child(&graph, "nosuch"), None);
    }
}
