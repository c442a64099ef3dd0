//! Arguments of `cairn audit …`: the server's audit log.

use clap::Subcommand;

/// `cairn audit …`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Entries of the audit log, newest first.
    List {
        /// Only entries at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        since: Option<jiff::Timestamp>,
        /// Only entries of this user.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// At most this many entries (1 to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Only entries older than this id (the next page).
        #[arg(long, value_name = "ID")]
        before: Option<i64>,
    },
    /// Check the whole chain: exit code 1 when an entry was changed or removed.
    Verify,
}
