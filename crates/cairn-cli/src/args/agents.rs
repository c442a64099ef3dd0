//! Arguments of `cairn agent …` and `cairn throttle …`: data movers and network throttling.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::parse::parse_rate;

/// `cairn throttle …`: network throttling rules.
#[derive(Subcommand, Debug)]
pub enum ThrottleCommand {
    /// Add a rule limiting the traffic between two address ranges, in both directions
    /// (administrator). The limit is shared equally by the transfers it applies to.
    Add {
        /// One address range: 10.0.1.0/24, fd00::/64 or a bare address.
        #[arg(long, value_name = "CIDR")]
        from: String,
        /// The other address range.
        #[arg(long, value_name = "CIDR")]
        to: String,
        /// Bytes per second, e.g. 50MB/s, 100MiB, 1G.
        #[arg(long, value_name = "RATE", value_parser = parse_rate)]
        limit: u64,
        /// When the rule applies (backup-window text, e.g. "mon-fri 08:00-18:00"); default always.
        #[arg(long, value_name = "TEXT")]
        window: Option<String>,
    },
    /// List the rules.
    List,
    /// Remove a rule (administrator).
    Remove {
        /// Rule id (see `cairn throttle list`).
        id: i64,
    },
}

/// `cairn agent …`: without a subcommand, the same as `cairn agent run`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AgentArgs {
    /// What to do; none runs the agent.
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    /// How to run the agent (`cairn agent` or `cairn agent run`).
    #[command(flatten)]
    pub run: AgentRunArgs,
}

/// `cairn agent …` subcommands.
#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Create a one-time enrolment token for a new agent (administrator).
    Token {
        /// Roles the agent gets: proxy, repository, gateway (comma-separated).
        #[arg(long, value_delimiter = ',', required = true, value_parser = ["proxy", "repository", "gateway"])]
        roles: Vec<String>,
        /// How long the token stays valid: seconds, or a number with s, m, h or d.
        #[arg(long, default_value = "1h", value_parser = parse_duration_secs)]
        expires: u64,
    },
    /// List the server's agents with their state (online, offline, revoked).
    List,
    /// Revoke an agent: the server refuses its certificate from now on.
    Revoke {
        /// Agent name.
        name: String,
    },
    /// Have an agent make a new key and get a new certificate at its next heartbeat (agents
    /// also renew on their own 30 days before their certificate ends).
    Renew {
        /// Agent name.
        name: String,
    },
    /// Run the agent: enrol on first start, then send heartbeats over mutual TLS.
    Run(AgentRunArgs),
}

/// Options of the agent process (`--server` and `--ca-cert` are the global flags).
#[derive(Args, Debug, Clone)]
pub struct AgentRunArgs {
    /// The agent's data folder: its key, certificate and the server's CA (created 0700).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// One-time enrolment token from `cairn agent token` (first start only).
    #[arg(long, env = "CAIRN_AGENT_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Agent name at enrolment (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Tasks this agent runs at once (default: the number of CPU cores).
    #[arg(long, value_name = "N")]
    pub max_tasks: Option<u32>,
    /// Where a repository agent listens for data from proxies (port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8521")]
    pub listen: std::net::SocketAddr,
    /// The address other machines reach this agent at (default: this host's address towards
    /// the server).
    #[arg(long, value_name = "IP")]
    pub advertise: Option<std::net::IpAddr>,
}

/// `90`, `90s`, `15m`, `1h`, `7d` as seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let factor = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("{s:?}: use a number with s, m, h or d (e.g. 1h)")),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: use a number with s, m, h or d (e.g. 1h)"))?;
    n.checked_mul(factor)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?}: out of range"))
}
