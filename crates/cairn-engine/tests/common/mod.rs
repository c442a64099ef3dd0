//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use cairn_disk::{DiskSource, Extent};
use cairn_repo::{BackupPlan, FullKind, Method};

/// Block size of the test backups.
pub const BS: u64 = 256 << 10;

/// Pseudo-random bytes (xorshift), so no two blocks are alike.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    cairn_testkit::rng::xorshift_bytes(u64::from(seed), len)
}

/// A forever-forward plan for VM `vm` at [`BS`].
pub fn plan() -> BackupPlan {
    BackupPlan {
        vm: "vm".into(),
        block_size: BS as u32,
        method: Method::ForeverForward,
        full_every: None,
        full_kind: FullKind::Synthetic,
        force_full: false,
        vm_config: None,
    }
}

/// An in-memory disk, every byte of it allocated.
pub struct MemDisk(pub Vec<u8>);

impl DiskSource for MemDisk {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn virtual_size(&self) -> u64 {
        self.0.len() as u64
    }
    fn allocation(&self) -> cairn_disk::Result<Vec<Extent>> {
        Ok(vec![Extent {
            offset: 0,
            length: self.0.len() as u64,
        }])
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> cairn_disk::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
}
