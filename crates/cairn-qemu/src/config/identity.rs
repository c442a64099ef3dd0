//! A new identity for a copy of a VM: random UUID and MAC addresses.

use super::VmConfig;

impl VmConfig {
    /// The same VM with a new random UUID and new random MAC addresses (QEMU's `52:54:00`
    /// range): a copy that runs beside the original. Launching the result with
    /// [`super::LaunchSpec::new_macs`] off starts it with this identity every time.
    pub fn with_new_identity(&self) -> VmConfig {
        let mut copy = self.clone();
        copy.uuid = Some(random_uuid());
        for nic in &mut copy.nics {
            nic.mac = random_mac();
        }
        copy
    }
}

/// `n` random bytes from the kernel (time-derived when /dev/urandom cannot be read).
fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_err()
    {
        let mut x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()) << 32;
        for b in &mut buf {
            // xorshift
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    buf
}

/// A random locally administered MAC in QEMU's `52:54:00` range.
pub(super) fn random_mac() -> String {
    let r = random_bytes(3);
    format!("52:54:00:{:02x}:{:02x}:{:02x}", r[0], r[1], r[2])
}

/// A random version 4 UUID.
pub(super) fn random_uuid() -> String {
    let mut r = random_bytes(16);
    r[6] = (r[6] & 0x0f) | 0x40;
    r[8] = (r[8] & 0x3f) | 0x80;
    let h: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_identity_changes_the_uuid_and_every_mac_only() {
        let config: VmConfig = serde_json::from_value(serde_json::json!({
            "name": "web01", "uuid": "00000000-0000-4000-8000-000000000001", "machine": "pc", "accel": "tcg",
            "cpu_model": null, "cpus": 1, "smp": null, "memory": 67108864, "kernel": null, "initrd": null,
            "append": null, "firmware": null, "controllers": [], "disks": [],
            "nics": [{"id": "nic0", "model": "virtio-net-pci", "mac": "52:54:00:12:34:56", "netdev": "net0",
                      "netdev_type": "user", "address": {}, "bootindex": null}],
            "guest_agent": false, "guest_agent_bus": null
        }))
        .unwrap();
        let copy = config.with_new_identity();
        assert_ne!(copy.uuid, config.uuid);
        assert_ne!(copy.nics[0].mac, config.nics[0].mac);
        assert!(copy.nics[0].mac.starts_with("52:54:00:"), "{}", copy.nics[0].mac);
        assert_eq!(copy.nics[0].mac.len(), 17);
        let uuid = copy.uuid.clone().unwrap();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4", "a version 4 UUID: {uuid}");
        assert_eq!(
            VmConfig {
                uuid: config.uuid.clone(),
                nics: config.nics.clone(),
                ..copy
            },
            config,
            "nothing else changes"
        );
    }
}
