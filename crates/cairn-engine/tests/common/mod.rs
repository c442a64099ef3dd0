//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use cairn_repo::{BackupPlan, FullKind, Method};

/// Block size of the test backups.
pub const BS: u64 = 256 << 10;

/// Pseudo-random bytes (xorshift), so no two blocks are alike.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
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
