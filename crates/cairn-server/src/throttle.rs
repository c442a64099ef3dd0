//! Network throttling rules and the share of a rule each running transfer gets.
//!
//! A rule limits the data-channel traffic between two address ranges. A transfer from source
//! data mover address S to target data mover address T matches a rule when S is in one range and
//! T in the other, in either direction. A rule with a window (backup-window text such as
//! `mon-fri 08:00-18:00`) applies only while the window is open; windows without `tz` follow the
//! server's time zone.
//!
//! A rule's limit is shared equally by all *active* transfers it matches; when several rules
//! match a transfer, the smallest resulting share applies. The share is computed when asked
//! ([`ActiveTransfer::rate`]), so it follows transfers that start and end, windows that open and
//! close, and rules that change while a transfer runs.
//!
//! ```
//! use cairn_server::throttle::{NetworkThrottles, Rule};
//! let rule = Rule::new(1, "10.0.1.0/24", "10.9.0.0/16", 100_000_000, None).unwrap();
//! let throttles = NetworkThrottles::new(jiff::tz::TimeZone::UTC);
//! throttles.set_rules(vec![rule]);
//! let a = throttles.register("10.0.1.5".parse().unwrap(), "10.9.3.4".parse().unwrap());
//! let b = throttles.register("10.9.0.1".parse().unwrap(), "10.0.1.7".parse().unwrap());
//! let now = jiff::Timestamp::now();
//! assert_eq!(a.rate(now), Some(50_000_000));
//! drop(b);
//! assert_eq!(a.rate(now), Some(100_000_000));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use cairn_configdb::{ConfigDb, NewThrottleRule, ThrottleRule};
use cairn_schedule::BackupWindow;
use ipnet::IpNet;
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// Parses an address range: `10.0.1.0/24`, `fd00::/64`, or a bare address (a /32 or /128).
/// Host bits after the prefix are cleared (`10.0.1.7/24` is `10.0.1.0/24`). `field` names the
/// value in the error.
pub fn parse_range(field: &str, text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    let net = match t.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match t.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr.to_canonical()),
            Err(_) => {
                return Err(format!(
                    "{field} {text:?}: not an IP address range (e.g. 10.0.1.0/24, fd00::/64 or a bare address)"
                ));
            }
        },
    };
    Ok(net.trunc())
}

/// Parses a rule's window text (backup-window syntax); `None` or blank text: always.
pub fn parse_window(field: &str, text: Option<&str>) -> Result<Option<BackupWindow>, String> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => t.parse::<BackupWindow>().map(Some).map_err(|e| {
            format!("{field} {t:?}: {e} (e.g. `mon-fri 08:00-18:00`, `always`, optionally ending with `tz ZONE`)")
        }),
    }
}

/// Checks a rule as the API receives it; the error names the bad field (`from`, `to`,
/// `limit_bytes` or `window`).
pub fn validate(rule: &NewThrottleRule) -> Result<(), String> {
    Rule::from_new(0, rule).map(|_| ())
}

/// A parsed throttling rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Database id.
    pub id: i64,
    /// One address range.
    pub from: IpNet,
    /// The other address range.
    pub to: IpNet,
    /// Bytes per second shared by the active transfers the rule matches (≥ 1).
    pub limit: u64,
    /// When the rule applies; `None`: always.
    pub window: Option<BackupWindow>,
}

impl Rule {
    /// A rule from its parts as typed; the error names the bad field.
    pub fn new(id: i64, from: &str, to: &str, limit: i64, window: Option<&str>) -> Result<Rule, String> {
        let limit = u64::try_from(limit)
            .ok()
            .filter(|l| *l > 0)
            .ok_or_else(|| format!("limit_bytes {limit}: give at least 1 byte per second"))?;
        Ok(Rule {
            id,
            from: parse_range("from", from)?,
            to: parse_range("to", to)?,
            limit,
            window: parse_window("window", window)?,
        })
    }

    /// A stored rule, parsed; the error names the rule and the bad field.
    pub fn parse(stored: &ThrottleRule) -> Result<Rule, String> {
        Rule::from_new(stored.id, &stored.rule).map_err(|e| format!("throttling rule {}: {e}", stored.id))
    }

    fn from_new(id: i64, rule: &NewThrottleRule) -> Result<Rule, String> {
        Rule::new(
            id,
            &rule.from_cidr,
            &rule.to_cidr,
            rule.limit_bytes,
            rule.window.as_deref(),
        )
    }

    /// Whether traffic between `a` and `b` (either being the source) falls under the rule.
    pub fn matches(&self, a: IpAddr, b: IpAddr) -> bool {
        let (a, b) = (a.to_canonical(), b.to_canonical());
        (self.from.contains(&a) && self.to.contains(&b)) || (self.from.contains(&b) && self.to.contains(&a))
    }

    /// Whether the rule applies at `now` (`time_zone` for a window that names no zone).
    pub fn is_open(&self, now: Timestamp, time_zone: &TimeZone) -> bool {
        self.window.as_ref().is_none_or(|w| w.is_open_in(now, time_zone))
    }
}

impl fmt::Display for Rule {
    /// `rule 3 (10.0.1.0/24 ↔ 10.9.0.0/16, 50 MB/s, mon-fri 08:00-18:00)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule {} ({} ↔ {}, {}",
            self.id,
            self.from,
            self.to,
            rate_text(self.limit)
        )?;
        if let Some(w) = &self.window {
            write!(f, ", {w}")?;
        }
        f.write_str(")")
    }
}

/// A rate for people: the largest decimal or binary unit that divides it exactly (`50 MB/s`,
/// `8 MiB/s`, `1500 B/s`), else MiB/s with two decimals.
pub fn rate_text(bytes_per_sec: u64) -> String {
    const UNITS: [(u64, &str); 8] = [
        (1 << 40, "TiB"),
        (1_000_000_000_000, "TB"),
        (1 << 30, "GiB"),
        (1_000_000_000, "GB"),
        (1 << 20, "MiB"),
        (1_000_000, "MB"),
        (1 << 10, "KiB"),
        (1_000, "kB"),
    ];
    if bytes_per_sec == 0 {
        return "0 B/s".into();
    }
    for (size, unit) in UNITS {
        if bytes_per_sec >= size && bytes_per_sec.is_multiple_of(size) {
            return format!("{} {unit}/s", bytes_per_sec / size);
        }
    }
    if bytes_per_sec < 1 << 20 {
        format!("{bytes_per_sec} B/s")
    } else {
        format!("{:.2} MiB/s", bytes_per_sec as f64 / (1u64 << 20) as f64)
    }
}

struct Inner {
    rules: Vec<Rule>,
    /// Active transfers by registration number: (source, target), canonical addresses.
    transfers: BTreeMap<u64, (IpAddr, IpAddr)>,
    next: u64,
}

/// The throttling rules in force and the transfers running now (cheap to clone; clones share).
#[derive(Clone)]
pub struct NetworkThrottles {
    inner: Arc<Mutex<Inner>>,
    time_zone: TimeZone,
}

impl fmt::Debug for NetworkThrottles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("NetworkThrottles")
            .field("rules", &inner.rules.len())
            .field("active", &inner.transfers.len())
            .finish()
    }
}

impl NetworkThrottles {
    /// No rules and no transfers; windows without `tz` follow `time_zone`.
    pub fn new(time_zone: TimeZone) -> NetworkThrottles {
        NetworkThrottles {
            inner: Arc::new(Mutex::new(Inner {
                rules: Vec::new(),
                transfers: BTreeMap::new(),
                next: 0,
            })),
            time_zone,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent even if a holder panicked: every change is one assignment.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the rules in force (at start and after every change through the API); running
    /// transfers get their new share the next time they ask.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        self.lock().rules = rules;
    }

    /// The rules in force.
    pub fn rules(&self) -> Vec<Rule> {
        self.lock().rules.clone()
    }

    /// Reads the stored rules into force; a stored rule that does not parse (which the API never
    /// stores) is skipped with a warning. Returns how many rules are in force.
    pub async fn reload(&self, db: &ConfigDb) -> cairn_configdb::Result<usize> {
        let mut rules = Vec::new();
        for stored in db.list_throttle_rules().await? {
            match Rule::parse(&stored) {
                Ok(rule) => rules.push(rule),
                Err(e) => tracing::warn!("{e}; the rule is ignored"),
            }
        }
        let n = rules.len();
        self.set_rules(rules);
        Ok(n)
    }

    /// Registers a transfer from data mover address `source` to `target`; it counts as active
    /// (taking its part of each rule it matches) until the returned value is dropped.
    pub fn register(&self, source: IpAddr, target: IpAddr) -> ActiveTransfer {
        let (source, target) = (source.to_canonical(), target.to_canonical());
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        inner.transfers.insert(id, (source, target));
        ActiveTransfer {
            throttles: self.clone(),
            id,
            source,
            target,
        }
    }

    /// How many transfers are active.
    pub fn active(&self) -> usize {
        self.lock().transfers.len()
    }
}

/// A running transfer between two data movers; unregisters itself when dropped.
#[derive(Debug)]
pub struct ActiveTransfer {
    throttles: NetworkThrottles,
    id: u64,
    source: IpAddr,
    target: IpAddr,
}

/// The rule that limits a transfer most, with its share.
struct Applying {
    rule: Rule,
    share: u64,
    sharing: usize,
}

impl ActiveTransfer {
    /// The source data mover's address.
    pub fn source(&self) -> IpAddr {
        self.source
    }

    /// The target data mover's address.
    pub fn target(&self) -> IpAddr {
        self.target
    }

    /// Bytes per second this transfer may send at `now`: over the rules that match it and are
    /// open now, the smallest of `limit / active transfers the rule matches` (at least 1);
    /// `None` when no rule applies.
    pub fn rate(&self, now: Timestamp) -> Option<u64> {
        self.applying(now).map(|a| a.share)
    }

    /// A short description of the rule that sets [`ActiveTransfer::rate`] at `now`, for log
    /// lines: `rule 3 (10.0.1.0/24 ↔ 10.9.0.0/16, 50 MB/s, mon-fri 08:00-18:00)`, followed by
    /// `shared by N transfers` when others share it. `None` when no rule applies.
    pub fn rule_text(&self, now: Timestamp) -> Option<String> {
        self.applying(now).map(|a| {
            if a.sharing > 1 {
                format!("{} shared by {} transfers", a.rule, a.sharing)
            } else {
                a.rule.to_string()
            }
        })
    }

    fn applying(&self, now: Timestamp) -> Option<Applying> {
        let inner = self.throttles.lock();
        let mut best: Option<Applying> = None;
        for rule in &inner.rules {
            if !rule.matches(self.source, self.target) || !rule.is_open(now, &self.throttles.time_zone) {
                continue;
            }
            // This transfer is among them: it stays registered while it exists.
            let sharing = inner
                .transfers
                .values()
                .filter(|(s, t)| rule.matches(*s, *t))
                .count()
                .max(1);
            let share = (rule.limit / sharing as u64).max(1);
            if best.as_ref().is_none_or(|b| share < b.share) {
                best = Some(Applying {
                    rule: rule.clone(),
                    share,
                    sharing,
                });
            }
        }
        best
    }
}

impl Drop for ActiveTransfer {
    fn drop(&mut self) {
        self.throttles.lock().transfers.remove(&self.id);
    }
}

#[cfg(test)]
mod tests;
