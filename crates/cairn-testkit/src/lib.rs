//! Test support shared by cairn's crates. It is a dev-dependency only and never published.
//!
//! - [`rng`]: a deterministic pseudo-random generator;
//! - [`tools`]: checking that an external tool is installed and running commands that must
//!   succeed;
//! - [`postgres`] (feature `postgres`): a fresh database on the test PostgreSQL server;
//! - [`qemu_vm`] (feature `qemu`): a guestless `qemu-system-x86_64` VM under TCG with one qcow2
//!   disk, written through the block layer with `qemu-io` in its monitor.
//!
//! Helpers panic with a message naming what is missing: the tests that use them never skip.

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "qemu")]
pub mod qemu_vm;
pub mod rng;
pub mod tools;
