//! libvirt's XML as cairn reads it: a domain's description, a backup job's exports and a
//! checkpoint, from arbitrary text. Each must give a value or an error; whatever a domain
//! parses to, asking which disks a backup reads must not fail either.
#![no_main]

use cairn_libvirt::DomainXml;
use cairn_libvirt::backup::{Checkpoint, parents_first, parse_exports};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = DomainXml::parse(text) {
        for disk in &d.disks {
            let _ = disk.skip_reason();
            let _ = disk.path();
        }
        let _ = d.backed_up_disks().count();
    }
    let _ = parse_exports(text);
    if Checkpoint::parse(text).is_ok() {
        let _ = parents_first(&[text.to_string(), text.to_string()]);
    }
});
