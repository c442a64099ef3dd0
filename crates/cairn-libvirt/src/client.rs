//! A connection to a libvirt daemon through libvirt's C library (the `virt` binding): domains,
//! their XML and state, pull-mode backup jobs and checkpoints.
//!
//! Every call blocks until the daemon answers; an async caller runs them on a blocking thread.
//! The `virt` binding covers connections and domains; the backup and checkpoint calls it does
//! not wrap are made here on its raw bindings (`virt::sys`).

use std::ffi::{CStr, CString, c_char};

use virt::connect::Connect;
use virt::domain::{Domain, DomainState as VirtState};
use virt::enumutil::Enum;
use virt::sys;

use crate::backup::{Checkpoint, DiskExport, PullBackup, parse_exports};
use crate::domain::DomainXml;
use crate::error::Error;

/// An open connection to a libvirt daemon.
pub struct Libvirt {
    conn: Connect,
    uri: String,
}

/// Whether a domain runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// Its QEMU runs the guest.
    Running,
    /// Its QEMU runs, the guest is paused.
    Paused,
    /// It is defined but has no QEMU process.
    ShutOff,
    /// Anything else (shutting down, crashed, suspended to memory…).
    Other,
}

/// A domain of a [`Libvirt`] host.
pub struct LibvirtDomain {
    dom: Domain,
    name: String,
}

/// A domain found by [`Libvirt::domains`].
#[derive(Debug, Clone)]
pub struct DomainEntry {
    /// What its XML says (the live XML when it runs).
    pub xml: DomainXml,
    /// Whether it runs.
    pub state: DomainState,
}

/// libvirt's message for the call that just failed.
fn cause(e: &virt::error::Error) -> String {
    e.message().to_string()
}

impl Libvirt {
    /// Connects to the daemon at `uri` (`qemu:///system`, `qemu+ssh://root@kvm01/system`,
    /// `qemu+tls://kvm01/system`…).
    pub fn connect(uri: &str) -> Result<Libvirt, Error> {
        // libvirt prints every error to stderr unless told otherwise; cairn reports them itself.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|e| Error::Connect {
            uri: uri.to_string(),
            cause: cause(&e),
        })?;
        Ok(Libvirt {
            conn,
            uri: uri.to_string(),
        })
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Every domain of the host, running or not, sorted by name.
    pub fn domains(&self) -> Result<Vec<DomainEntry>, Error> {
        let all = self.conn.list_all_domains(0).map_err(|e| Error::Connect {
            uri: self.uri.clone(),
            cause: format!("listing domains: {}", cause(&e)),
        })?;
        let mut out = Vec::new();
        for dom in all {
            let name = dom.name().unwrap_or_default();
            let d = LibvirtDomain { dom, name };
            out.push(DomainEntry {
                xml: DomainXml::parse(&d.xml()?)?,
                state: d.state()?,
            });
        }
        out.sort_by(|a, b| a.xml.name.cmp(&b.xml.name));
        Ok(out)
    }

    /// The domain named `name`.
    pub fn domain(&self, name: &str) -> Result<LibvirtDomain, Error> {
        let dom = self.conn.lookup_domain_by_name(name).map_err(|_| Error::NoDomain {
            uri: self.uri.clone(),
            name: name.to_string(),
        })?;
        Ok(LibvirtDomain {
            dom,
            name: name.to_string(),
        })
    }

    /// Defines a domain from `xml` (persistent; not started).
    pub fn define(&self, xml: &str) -> Result<LibvirtDomain, Error> {
        let name = DomainXml::parse(xml)?.name;
        let dom = self.conn.define_domain_xml(xml).map_err(|e| Error::Call {
            domain: name.clone(),
            what: "defining it".into(),
            cause: cause(&e),
        })?;
        Ok(LibvirtDomain { dom, name })
    }
}

impl LibvirtDomain {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn failed(&self, what: &str, e: &virt::error::Error) -> Error {
        Error::Call {
            domain: self.name.clone(),
            what: what.to_string(),
            cause: cause(e),
        }
    }

    /// The error of the raw call that just failed.
    fn last_error(&self, what: &str) -> Error {
        self.failed(what, &virt::error::Error::last_error())
    }

    /// Whether it runs.
    pub fn state(&self) -> Result<DomainState, Error> {
        let (state, _) = self.dom.state().map_err(|e| self.failed("reading its state", &e))?;
        Ok(match state {
            Enum::Known(VirtState::Running) | Enum::Known(VirtState::Blocked) => DomainState::Running,
            Enum::Known(VirtState::Paused) => DomainState::Paused,
            Enum::Known(VirtState::Shutoff) => DomainState::ShutOff,
            _ => DomainState::Other,
        })
    }

    /// Its XML as it runs now (or as defined, when it does not run).
    pub fn xml(&self) -> Result<String, Error> {
        self.dom.xml_desc(0).map_err(|e| self.failed("reading its XML", &e))
    }

    /// Its XML as defined (what it starts with next time).
    pub fn inactive_xml(&self) -> Result<String, Error> {
        self.dom
            .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
            .map_err(|e| self.failed("reading its defined XML", &e))
    }

    /// Starts it.
    pub fn start(&self) -> Result<(), Error> {
        self.dom.create().map_err(|e| self.failed("starting it", &e))
    }

    /// Stops it at once (pulls the plug).
    pub fn destroy(&self) -> Result<(), Error> {
        self.dom.destroy().map_err(|e| self.failed("stopping it", &e))
    }

    /// Removes its definition, with its checkpoints' metadata (its disk files stay).
    pub fn undefine(&self) -> Result<(), Error> {
        self.dom
            .undefine_flags(sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
            .map_err(|e| self.failed("removing its definition", &e))
    }

    /// Starts a pull-mode backup job, with a new checkpoint at the same instant when
    /// `checkpoint_xml` is given (see [`crate::backup::checkpoint_xml`]).
    pub fn begin_backup(&self, backup: &PullBackup, checkpoint_xml: Option<&str>) -> Result<(), Error> {
        let what = "starting the backup";
        let backup = c_string(&self.name, what, &backup.xml())?;
        let checkpoint = checkpoint_xml.map(|x| c_string(&self.name, what, x)).transpose()?;
        let checkpoint_ptr = checkpoint.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: the domain pointer is valid while `self.dom` lives; both strings outlive the call.
        let rc = unsafe { sys::virDomainBackupBegin(self.dom.as_ptr(), backup.as_ptr(), checkpoint_ptr, 0) };
        if rc < 0 {
            return Err(self.last_error(what));
        }
        Ok(())
    }

    /// The exports of the running backup job.
    pub fn backup_exports(&self) -> Result<Vec<DiskExport>, Error> {
        // SAFETY: valid domain pointer; libvirt returns a string we own (or null on failure).
        let xml = unsafe { owned_string(sys::virDomainBackupGetXMLDesc(self.dom.as_ptr(), 0)) }
            .ok_or_else(|| self.last_error("reading the backup job"))?;
        Ok(parse_exports(&xml)?)
    }

    /// Ends the running backup job (its NBD server and scratch files go; its checkpoint stays).
    pub fn end_backup(&self) -> Result<(), Error> {
        // SAFETY: valid domain pointer.
        if unsafe { sys::virDomainAbortJob(self.dom.as_ptr()) } < 0 {
            return Err(self.last_error("ending the backup job"));
        }
        Ok(())
    }

    /// Its checkpoints with their XML (what [`LibvirtDomain::redefine_checkpoint`] takes back
    /// after libvirt lost them).
    pub fn checkpoints(&self) -> Result<Vec<(Checkpoint, String)>, Error> {
        let mut list: *mut sys::virDomainCheckpointPtr = std::ptr::null_mut();
        // SAFETY: valid domain pointer; on success `list` holds `n` checkpoint references we free.
        let n = unsafe { sys::virDomainListAllCheckpoints(self.dom.as_ptr(), &mut list, 0) };
        if n < 0 {
            return Err(self.last_error("listing its checkpoints"));
        }
        let mut xmls = Vec::new();
        for i in 0..n as usize {
            // SAFETY: `i < n`; each reference is freed once after its XML is read.
            unsafe {
                let cp = *list.add(i);
                xmls.push(owned_string(sys::virDomainCheckpointGetXMLDesc(cp, 0)));
                sys::virDomainCheckpointFree(cp);
            }
        }
        // SAFETY: the array itself was allocated by libvirt with malloc; its strings and arrays are freed with free().
        unsafe { libc::free(list.cast()) };
        let mut out = Vec::new();
        for xml in xmls {
            let xml = xml.ok_or_else(|| self.last_error("reading a checkpoint"))?;
            out.push((Checkpoint::parse(&xml)?, xml));
        }
        Ok(out)
    }

    /// Defines a checkpoint again from the XML libvirt once gave for it (after libvirt lost its
    /// metadata; the disk's bitmap must still exist).
    pub fn redefine_checkpoint(&self, xml: &str) -> Result<(), Error> {
        let what = "redefining a checkpoint";
        let text = c_string(&self.name, what, xml)?;
        // SAFETY: valid domain pointer and string; the returned reference is freed.
        unsafe {
            let cp = sys::virDomainCheckpointCreateXML(
                self.dom.as_ptr(),
                text.as_ptr(),
                sys::VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE,
            );
            if cp.is_null() {
                return Err(self.last_error(what));
            }
            sys::virDomainCheckpointFree(cp);
        }
        Ok(())
    }

    /// Deletes checkpoint `name`: its bitmaps too, or only libvirt's record of it.
    pub fn delete_checkpoint(&self, name: &str, metadata_only: bool) -> Result<(), Error> {
        let what = format!("deleting checkpoint {name}");
        let c_name = c_string(&self.name, &what, name)?;
        let flags = if metadata_only {
            sys::VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
        } else {
            0
        };
        // SAFETY: valid domain pointer and string; the looked-up reference is freed.
        unsafe {
            let cp = sys::virDomainCheckpointLookupByName(self.dom.as_ptr(), c_name.as_ptr(), 0);
            if cp.is_null() {
                return Err(self.last_error(&what));
            }
            let rc = sys::virDomainCheckpointDelete(cp, flags);
            sys::virDomainCheckpointFree(cp);
            if rc < 0 {
                return Err(self.last_error(&what));
            }
        }
        Ok(())
    }
}

/// `s` as a C string; a NUL byte in it is an error about `what`.
fn c_string(domain: &str, what: &str, s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Call {
        domain: domain.to_string(),
        what: what.to_string(),
        cause: "the text holds a NUL byte".into(),
    })
}

/// Takes a string libvirt allocated for the caller: copies it and frees it.
///
/// # Safety
/// `p` is null or a NUL-terminated string from libvirt's allocator that nothing else frees.
unsafe fn owned_string(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: per the contract above.
    unsafe {
        let s = CStr::from_ptr(p).to_string_lossy().into_owned();
        libc::free(p.cast());
        Some(s)
    }
}
