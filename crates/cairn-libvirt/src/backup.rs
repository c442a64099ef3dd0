//! The XML of libvirt's backup API: what cairn asks for (a pull-mode backup whose NBD server
//! listens on a unix socket, and the checkpoint made at the same instant) and what libvirt
//! answers (the export of each disk, and a checkpoint's name and parent).
//!
//! In pull mode libvirt makes the point-in-time view itself (copy-before-write into a scratch
//! file per disk) and serves it over NBD; an incremental backup's export also carries the dirty
//! bitmap since its checkpoint, as the NBD meta context `qemu:dirty-bitmap:<bitmap>`.

use std::path::PathBuf;

use crate::xml::{XmlError, attr, child, children, escape, parse, text};

/// A pull-mode backup to start (`virDomainBackupBegin`'s first XML).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullBackup {
    /// The unix socket libvirt's NBD server listens on (QEMU creates it: its folder must be
    /// writable by the user QEMU runs as).
    pub socket: PathBuf,
    /// The disks to export; the domain's other disks are left out.
    pub disks: Vec<BackupDisk>,
    /// The checkpoint an incremental backup starts from; `None` exports everything.
    pub incremental: Option<String>,
}

/// One disk of a [`PullBackup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDisk {
    /// The disk's target name (`vda`).
    pub target: String,
    /// Its copy-before-write scratch file (created by libvirt, removed when the job ends).
    pub scratch: PathBuf,
    /// Export all of it even in an incremental backup (a disk without a bitmap since the
    /// checkpoint: a raw disk, or one added since).
    pub full: bool,
}

impl PullBackup {
    /// The `<domainbackup>` document.
    pub fn xml(&self) -> String {
        let mut x = String::from("<domainbackup mode='pull'>\n");
        if let Some(cp) = &self.incremental {
            x += &format!("  <incremental>{}</incremental>\n", escape(cp));
        }
        x += &format!(
            "  <server transport='unix' socket='{}'/>\n  <disks>\n",
            escape(&self.socket.to_string_lossy())
        );
        for d in &self.disks {
            let mode = if d.full && self.incremental.is_some() {
                " backupmode='full'"
            } else {
                ""
            };
            x += &format!(
                "    <disk name='{}' backup='yes'{mode} type='file'><scratch file='{}'/></disk>\n",
                escape(&d.target),
                escape(&d.scratch.to_string_lossy())
            );
        }
        x + "  </disks>\n</domainbackup>\n"
    }
}

/// The `<domaincheckpoint>` made with a backup: a dirty bitmap on each disk in `bitmap`, none on
/// the domain's other disks in `without` (raw disks can have none, and a checkpoint that names a
/// disk it cannot track fails).
pub fn checkpoint_xml(name: &str, bitmap: &[&str], without: &[&str]) -> String {
    let mut x = format!("<domaincheckpoint>\n  <name>{}</name>\n  <disks>\n", escape(name));
    for t in bitmap {
        x += &format!("    <disk name='{}' checkpoint='bitmap'/>\n", escape(t));
    }
    for t in without {
        x += &format!("    <disk name='{}' checkpoint='no'/>\n", escape(t));
    }
    x + "  </disks>\n</domaincheckpoint>\n"
}

/// How libvirt exports one disk of a running backup job (`virDomainBackupGetXMLDesc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskExport {
    /// The disk's target name.
    pub target: String,
    /// The NBD export name.
    pub export: String,
    /// The dirty bitmap exported with it (incremental backups): read it as the meta context
    /// `qemu:dirty-bitmap:<bitmap>`.
    pub bitmap: Option<String>,
    /// The checkpoint the bitmap starts from (incremental backups).
    pub since: Option<String>,
}

/// The exports of a running backup job, from its `<domainbackup>` description.
pub fn parse_exports(xml: &str) -> Result<Vec<DiskExport>, XmlError> {
    let doc = parse("backup job XML", xml)?;
    let root = doc.root_element();
    if root.tag_name().name() != "domainbackup" {
        return Err(XmlError::new(
            "backup job XML",
            format!("the root element is <{}>, not <domainbackup>", root.tag_name().name()),
        ));
    }
    let mut out = Vec::new();
    for d in child(root, "disks").into_iter().flat_map(|n| children(n, "disk")) {
        if attr(d, "backup").as_deref() == Some("no") {
            continue;
        }
        let target = attr(d, "name").ok_or_else(|| XmlError::new("backup job XML", "a <disk> without a name"))?;
        out.push(DiskExport {
            export: attr(d, "exportname").unwrap_or_else(|| target.clone()),
            bitmap: attr(d, "exportbitmap"),
            since: attr(d, "incremental"),
            target,
        });
    }
    Ok(out)
}

/// A checkpoint as libvirt describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its name.
    pub name: String,
    /// The checkpoint before it, if any.
    pub parent: Option<String>,
    /// The disks it tracks with a bitmap.
    pub disks: Vec<String>,
}

impl Checkpoint {
    /// Reads a `<domaincheckpoint>` document.
    pub fn parse(xml: &str) -> Result<Checkpoint, XmlError> {
        let doc = parse("checkpoint XML", xml)?;
        let root = doc.root_element();
        if root.tag_name().name() != "domaincheckpoint" {
            return Err(XmlError::new(
                "checkpoint XML",
                format!(
                    "the root element is <{}>, not <domaincheckpoint>",
                    root.tag_name().name()
                ),
            ));
        }
        let name = child(root, "name")
            .and_then(text)
            .ok_or_else(|| XmlError::new("checkpoint XML", "no <name>"))?;
        let parent = child(root, "parent").and_then(|p| child(p, "name")).and_then(text);
        let disks = child(root, "disks")
            .into_iter()
            .flat_map(|n| children(n, "disk"))
            .filter(|d| attr(*d, "checkpoint").as_deref() != Some("no"))
            .filter_map(|d| attr(d, "name"))
            .collect();
        Ok(Checkpoint { name, parent, disks })
    }
}

/// Checkpoint documents in an order libvirt can redefine them in: each after its parent (a
/// parent missing from `xmls` is taken as existing).
pub fn parents_first(xmls: &[String]) -> Result<Vec<&str>, XmlError> {
    let parsed: Vec<(Checkpoint, &str)> = xmls
        .iter()
        .map(|x| Checkpoint::parse(x).map(|c| (c, x.as_str())))
        .collect::<Result<_, _>>()?;
    let names: std::collections::HashSet<&str> = parsed.iter().map(|(c, _)| c.name.as_str()).collect();
    let mut placed: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut out = Vec::new();
    while out.len() < parsed.len() {
        let before = out.len();
        for (c, x) in &parsed {
            let ready = c
                .parent
                .as_deref()
                .is_none_or(|p| !names.contains(p) || placed.contains(p));
            if !placed.contains(c.name.as_str()) && ready {
                placed.insert(&c.name);
                out.push(*x);
            }
        }
        if out.len() == before {
            return Err(XmlError::new("checkpoint XML", "the checkpoints' parents form a loop"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_incremental_requests() {
        let mut b = PullBackup {
            socket: "/run/cairn/backup/web01.sock".into(),
            disks: vec![BackupDisk {
                target: "vda".into(),
                scratch: "/run/cairn/backup/vda.scratch".into(),
                full: false,
            }],
            incremental: None,
        };
        let full = b.xml();
        assert!(full.starts_with("<domainbackup mode='pull'>"), "{full}");
        assert!(full.contains("<server transport='unix' socket='/run/cairn/backup/web01.sock'/>"));
        assert!(full.contains(
            "<disk name='vda' backup='yes' type='file'><scratch file='/run/cairn/backup/vda.scratch'/></disk>"
        ));
        assert!(!full.contains("incremental"));
        b.incremental = Some("cairn-1&2".into());
        assert!(b.xml().contains("<incremental>cairn-1&amp;2</incremental>"));
        assert!(!b.xml().contains("backupmode"));
        b.disks[0].full = true;
        assert!(
            b.xml()
                .contains("<disk name='vda' backup='yes' backupmode='full' type='file'>")
        );
        roxmltree::Document::parse(&b.xml()).expect("well-formed");
    }

    #[test]
    fn checkpoints_name_every_disk() {
        let x = checkpoint_xml("cairn-7", &["vda"], &["vdb"]);
        assert!(x.contains("<disk name='vda' checkpoint='bitmap'/>"));
        assert!(x.contains("<disk name='vdb' checkpoint='no'/>"));
        let cp = Checkpoint::parse(&x).expect("parses");
        assert_eq!(cp.name, "cairn-7");
        assert_eq!(cp.disks, ["vda"]);
        assert_eq!(cp.parent, None);
    }

    #[test]
    fn reads_what_libvirt_exports() {
        let xml = "<domainbackup mode='pull'>
  <incremental>c1</incremental>
  <server transport='unix' socket='/tmp/s'/>
  <disks>
    <disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='c1' exportname='vda' exportbitmap='backup-vda' index='3'>
      <driver type='qcow2'/><scratch file='/tmp/x'/>
    </disk>
    <disk name='vdb' backup='no'/>
  </disks>
</domainbackup>";
        let e = parse_exports(xml).expect("parses");
        assert_eq!(
            e,
            [DiskExport {
                target: "vda".into(),
                export: "vda".into(),
                bitmap: Some("backup-vda".into()),
                since: Some("c1".into()),
            }]
        );
        assert!(
            parse_exports("<domain/>")
                .expect_err("not a backup")
                .to_string()
                .contains("not <domainbackup>")
        );
    }

    #[test]
    fn reads_a_checkpoints_parent() {
        let xml = "<domaincheckpoint><name>c2</name><parent><name>c1</name></parent>
            <creationTime>1765147802</creationTime>
            <disks><disk name='vda' checkpoint='bitmap' bitmap='c2'/></disks>
            <domain type='qemu'><name>x</name></domain></domaincheckpoint>";
        let cp = Checkpoint::parse(xml).expect("parses");
        assert_eq!(cp.parent.as_deref(), Some("c1"));
        assert_eq!(cp.disks, ["vda"]);
    }

    #[test]
    fn parents_come_first() {
        let cp = |n: &str, p: Option<&str>| {
            format!(
                "<domaincheckpoint><name>{n}</name>{}</domaincheckpoint>",
                p.map(|p| format!("<parent><name>{p}</name></parent>"))
                    .unwrap_or_default()
            )
        };
        let xmls = vec![cp("c3", Some("c2")), cp("c2", Some("c1")), cp("c1", Some("c0"))];
        let order: Vec<String> = parents_first(&xmls)
            .expect("ordered")
            .into_iter()
            .map(|x| Checkpoint::parse(x).expect("parses").name)
            .collect();
        assert_eq!(order, ["c1", "c2", "c3"]);
        let looped = vec![cp("a", Some("b")), cp("b", Some("a"))];
        assert!(parents_first(&looped).expect_err("a loop").to_string().contains("loop"));
    }

    proptest::proptest! {
        /// Any text gives exports or an error, never a panic.
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = parse_exports(&s);
            let _ = Checkpoint::parse(&s);
        }
    }
}
