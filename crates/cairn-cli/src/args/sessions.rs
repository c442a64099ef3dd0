//! Arguments of `cairn session …`: runs of jobs.

use clap::Subcommand;

/// `cairn session …`.
#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// List sessions, newest first.
    List {
        /// Only the sessions of this job.
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// Sessions per page.
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Every session (all pages).
        #[arg(long)]
        all: bool,
    },
    /// Show a session: statistics, tasks and their logs.
    Show {
        /// Session id.
        id: i64,
    },
    /// Stop a running session.
    Stop {
        /// Session id.
        id: i64,
    },
}
