//! Rule parsing and the equal sharing of a rule among the transfers it matches.

use std::net::{IpAddr, Ipv4Addr};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use proptest::prelude::*;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rule(id: i64, from: &str, to: &str, limit: i64, window: Option<&str>) -> Rule {
    Rule::new(id, from, to, limit, window).unwrap()
}

fn throttles(rules: Vec<Rule>) -> NetworkThrottles {
    let t = NetworkThrottles::new(TimeZone::UTC);
    t.set_rules(rules);
    t
}

/// Monday 2 March 2026, 10:00 UTC.
fn monday_morning() -> Timestamp {
    "2026-03-02T10:00:00Z".parse().unwrap()
}

/// Saturday 7 March 2026, 10:00 UTC.
fn saturday_morning() -> Timestamp {
    "2026-03-07T10:00:00Z".parse().unwrap()
}

#[test]
fn ranges_parse_as_cidrs_or_bare_addresses() {
    assert_eq!(parse_range("from", "10.0.1.0/24").unwrap().to_string(), "10.0.1.0/24");
    assert_eq!(parse_range("from", " fd00::/64 ").unwrap().to_string(), "fd00::/64");
    assert_eq!(parse_range("from", "192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
    assert_eq!(parse_range("from", "fd00::7").unwrap().to_string(), "fd00::7/128");
    // Host bits are cleared; an IPv4-mapped address is the IPv4 address.
    assert_eq!(parse_range("to", "10.0.1.7/24").unwrap().to_string(), "10.0.1.0/24");
    assert_eq!(parse_range("to", "::ffff:10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
    for bad in ["10.0.1.0/33", "10.0.1/24", "host.example", "", "fd00::/129"] {
        let e = parse_range("to", bad).unwrap_err();
        assert!(e.starts_with(&format!("to {bad:?}: not an IP address range")), "{e}");
    }
}

#[test]
fn the_validator_names_the_bad_field() {
    let good = NewThrottleRule {
        from_cidr: "10.0.1.0/24".into(),
        to_cidr: "10.9.0.0/16".into(),
        limit_bytes: 50_000_000,
        window: Some("mon-fri 08:00-18:00".into()),
    };
    validate(&good).unwrap();
    type Spoil = fn(&mut NewThrottleRule);
    let cases: [(Spoil, &str); 5] = [
        (|r| r.from_cidr = "10.0.1.0/40".into(), "from "),
        (|r| r.to_cidr = "nowhere".into(), "to "),
        (|r| r.limit_bytes = 0, "limit_bytes 0"),
        (|r| r.limit_bytes = -1, "limit_bytes -1"),
        (|r| r.window = Some("workdays 8-18".into()), "window "),
    ];
    for (spoil, field) in cases {
        let mut bad = good.clone();
        spoil(&mut bad);
        let e = validate(&bad).unwrap_err();
        assert!(e.starts_with(field), "{e:?} should start with {field:?}");
    }
    // A blank window is no window.
    let mut blank = good.clone();
    blank.window = Some("  ".into());
    validate(&blank).unwrap();
}

#[test]
fn a_stored_rule_that_does_not_parse_is_named() {
    let stored = ThrottleRule {
        id: 12,
        rule: NewThrottleRule {
            from_cidr: "10.0.0.0/8".into(),
            to_cidr: "10.0.0.0/99".into(),
            limit_bytes: 5,
            window: None,
        },
        created_at: Timestamp::UNIX_EPOCH,
    };
    let e = Rule::parse(&stored).unwrap_err();
    assert!(e.starts_with("throttling rule 12: to \"10.0.0.0/99\""), "{e}");
}

#[test]
fn rules_describe_themselves_for_log_lines() {
    let r = rule(3, "10.0.1.0/24", "10.9.0.0/16", 50_000_000, Some("mon-fri 08:00-18:00"));
    assert_eq!(
        r.to_string(),
        "rule 3 (10.0.1.0/24 ↔ 10.9.0.0/16, 50 MB/s, mon-fri 08:00-18:00)"
    );
    let r = rule(4, "fd00::/64", "192.0.2.7", 8 << 20, None);
    assert_eq!(r.to_string(), "rule 4 (fd00::/64 ↔ 192.0.2.7/32, 8 MiB/s)");
    assert_eq!(rate_text(1500), "1500 B/s");
    assert_eq!(rate_text(2000), "2 kB/s");
    assert_eq!(rate_text(3 << 30), "3 GiB/s");
    assert_eq!(rate_text((1 << 20) + 1), "1.00 MiB/s");
}

#[test]
fn a_rule_matches_in_both_directions_only_between_its_ranges() {
    let r = rule(1, "10.0.1.0/24", "10.9.0.0/16", 100, None);
    assert!(r.matches(ip("10.0.1.5"), ip("10.9.200.1")));
    assert!(r.matches(ip("10.9.200.1"), ip("10.0.1.5")));
    assert!(!r.matches(ip("10.0.1.5"), ip("10.0.1.6")), "both ends in one range");
    assert!(!r.matches(ip("10.0.2.5"), ip("10.9.0.1")), "source outside");
    assert!(!r.matches(ip("10.0.1.5"), ip("10.8.0.1")), "target outside");
    // IPv4-mapped IPv6 addresses (a dual-stack listener) are their IPv4 addresses.
    assert!(r.matches(ip("::ffff:10.0.1.5"), ip("10.9.0.1")));
    let v6 = rule(2, "fd00::/64", "fd01::/64", 100, None);
    assert!(v6.matches(ip("fd01::9"), ip("fd00::1")));
    assert!(!v6.matches(ip("fd00::1"), ip("10.0.1.5")));
}

#[test]
fn the_limit_is_shared_equally_and_freed_when_transfers_end() {
    let t = throttles(vec![rule(1, "10.0.1.0/24", "10.9.0.0/16", 90, None)]);
    let now = monday_morning();
    let a = t.register(ip("10.0.1.1"), ip("10.9.0.1"));
    assert_eq!(a.rate(now), Some(90));
    assert_eq!(
        a.rule_text(now).as_deref(),
        Some("rule 1 (10.0.1.0/24 ↔ 10.9.0.0/16, 90 B/s)")
    );
    let b = t.register(ip("10.9.0.2"), ip("10.0.1.2")); // the other direction counts too
    let c = t.register(ip("10.0.1.3"), ip("10.9.0.3"));
    let other = t.register(ip("10.0.1.4"), ip("172.16.0.1")); // matches no rule
    assert_eq!(t.active(), 4);
    for x in [&a, &b, &c] {
        assert_eq!(x.rate(now), Some(30));
    }
    assert_eq!(
        a.rule_text(now).as_deref(),
        Some("rule 1 (10.0.1.0/24 ↔ 10.9.0.0/16, 90 B/s) shared by 3 transfers")
    );
    assert_eq!(other.rate(now), None);
    assert_eq!(other.rule_text(now), None);
    drop(c);
    assert_eq!(a.rate(now), Some(45));
    drop(b);
    assert_eq!(a.rate(now), Some(90));
    drop(a);
    drop(other);
    assert_eq!(t.active(), 0);
}

#[test]
fn a_share_is_never_zero() {
    let t = throttles(vec![rule(1, "10.0.0.0/8", "10.0.0.0/8", 2, None)]);
    let xs: Vec<_> = (1..=5)
        .map(|i| t.register(ip(&format!("10.0.0.{i}")), ip("10.1.0.1")))
        .collect();
    assert_eq!(xs[0].rate(monday_morning()), Some(1));
}

#[test]
fn a_rule_applies_only_inside_its_window() {
    let t = throttles(vec![rule(
        1,
        "10.0.1.0/24",
        "10.9.0.0/16",
        100,
        Some("mon-fri 08:00-18:00"),
    )]);
    let a = t.register(ip("10.0.1.1"), ip("10.9.0.1"));
    assert_eq!(a.rate(monday_morning()), Some(100));
    assert_eq!(a.rate(saturday_morning()), None);
    assert_eq!(a.rule_text(saturday_morning()), None);
    assert_eq!(
        a.rate("2026-03-02T18:00:00Z".parse().unwrap()),
        None,
        "the end is exclusive"
    );
    // A window naming a zone follows that zone: 10:00 UTC is 19:00 in Tokyo.
    t.set_rules(vec![rule(
        2,
        "10.0.1.0/24",
        "10.9.0.0/16",
        100,
        Some("mon-fri 08:00-18:00 tz Asia/Tokyo"),
    )]);
    assert_eq!(a.rate(monday_morning()), None);
    assert_eq!(a.rate("2026-03-02T01:00:00Z".parse().unwrap()), Some(100));
}

#[test]
fn the_smallest_share_wins_and_rule_changes_apply_at_once() {
    let wide = rule(1, "10.0.0.0/8", "10.0.0.0/8", 1000, None);
    let narrow = rule(2, "10.0.1.0/24", "10.9.0.0/16", 300, Some("mon-fri 08:00-18:00"));
    let t = throttles(vec![wide.clone(), narrow.clone()]);
    let now = monday_morning();
    let a = t.register(ip("10.0.1.1"), ip("10.9.0.1"));
    assert_eq!(a.rate(now), Some(300));
    assert!(a.rule_text(now).unwrap().starts_with("rule 2 "));
    // Outside the narrow rule's window only the wide one applies.
    assert_eq!(a.rate(saturday_morning()), Some(1000));
    // Five transfers elsewhere in 10/8 shrink the wide rule's share below the narrow one's.
    let others: Vec<_> = (1..=5)
        .map(|i| t.register(ip(&format!("10.5.0.{i}")), ip("10.6.0.1")))
        .collect();
    assert_eq!(a.rate(now), Some(1000 / 6));
    assert_eq!(
        a.rule_text(now).as_deref(),
        Some("rule 1 (10.0.0.0/8 ↔ 10.0.0.0/8, 1 kB/s) shared by 6 transfers")
    );
    assert_eq!(others[0].rate(now), Some(1000 / 6));
    // Removing the rules frees everything at once.
    t.set_rules(vec![narrow]);
    assert_eq!(a.rate(now), Some(300));
    assert_eq!(others[0].rate(now), None);
    t.set_rules(Vec::new());
    assert_eq!(a.rate(now), None);
}

#[test]
fn clones_share_rules_and_transfers() {
    let t = throttles(Vec::new());
    let clone = t.clone();
    let a = t.register(ip("10.0.1.1"), ip("10.9.0.1"));
    let b = clone.register(ip("10.0.1.2"), ip("10.9.0.2"));
    clone.set_rules(vec![rule(1, "10.0.1.0/24", "10.9.0.0/16", 100, None)]);
    assert_eq!(a.rate(monday_morning()), Some(50));
    drop(b);
    assert_eq!(t.active(), 1);
    assert_eq!(t.rules().len(), 1);
}

/// A rule over two small IPv4 ranges in 10.0.0.0/24, with an optional weekday window.
#[derive(Debug, Clone)]
struct ModelRule {
    from: (u8, u8),
    to: (u8, u8),
    limit: u64,
    weekdays_only: bool,
}

impl ModelRule {
    /// Ranges as prefixes: `(base, prefix_len)` → `10.0.0.base/prefix_len`, aligned.
    fn range(&(base, len): &(u8, u8)) -> (u8, u8) {
        let len = 24 + len % 9; // /24 ../32
        let size = 1u16 << (32 - u16::from(len));
        let base = (u16::from(base) / size * size) as u8;
        (base, len)
    }

    fn contains(range: &(u8, u8), host: u8) -> bool {
        let (base, len) = Self::range(range);
        let size = 1u16 << (32 - u16::from(len));
        u16::from(host) >= u16::from(base) && u16::from(host) < u16::from(base) + size
    }

    fn matches(&self, a: u8, b: u8) -> bool {
        (Self::contains(&self.from, a) && Self::contains(&self.to, b))
            || (Self::contains(&self.from, b) && Self::contains(&self.to, a))
    }

    fn to_rule(&self, id: i64) -> Rule {
        let text = |r: &(u8, u8)| {
            let (base, len) = Self::range(r);
            format!("10.0.0.{base}/{len}")
        };
        rule(
            id,
            &text(&self.from),
            &text(&self.to),
            self.limit as i64,
            self.weekdays_only.then_some("mon-fri 00:00-24:00"),
        )
    }
}

fn model_rule() -> impl Strategy<Value = ModelRule> {
    (any::<(u8, u8)>(), any::<(u8, u8)>(), 1u64..10_000, any::<bool>()).prop_map(|(from, to, limit, weekdays_only)| {
        ModelRule {
            from,
            to,
            limit,
            weekdays_only,
        }
    })
}

fn host(h: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, h))
}

proptest! {
    /// Against a model written apart from the code: each transfer's rate is the smallest
    /// `limit / matching transfers` over the open rules matching it; swapping a transfer's
    /// direction changes nothing; on a weekend the weekday rules drop out.
    #[test]
    fn rates_follow_the_model(
        rules in proptest::collection::vec(model_rule(), 0..5),
        transfers in proptest::collection::vec(any::<(u8, u8, bool)>(), 1..12),
    ) {
        let t = throttles(rules.iter().enumerate().map(|(i, r)| r.to_rule(i as i64 + 1)).collect());
        let active: Vec<_> = transfers
            .iter()
            .map(|&(a, b, flip)| if flip { t.register(host(b), host(a)) } else { t.register(host(a), host(b)) })
            .collect();
        for (now, weekend) in [(monday_morning(), false), (saturday_morning(), true)] {
            for (x, &(a, b, _)) in active.iter().zip(&transfers) {
                let expected = rules
                    .iter()
                    .filter(|r| !(weekend && r.weekdays_only) && r.matches(a, b))
                    .map(|r| {
                        let n = transfers.iter().filter(|&&(c, d, _)| r.matches(c, d)).count() as u64;
                        (r.limit / n).max(1)
                    })
                    .min();
                prop_assert_eq!(x.rate(now), expected);
                prop_assert_eq!(x.rule_text(now).is_some(), expected.is_some());
            }
        }
        // Both directions: a lone transfer and its mirror image get the same rate.
        drop(active);
        prop_assert_eq!(t.active(), 0);
        for &(a, b, _) in &transfers {
            let there = t.register(host(a), host(b)).rate(monday_morning());
            let back = t.register(host(b), host(a)).rate(monday_morning());
            prop_assert_eq!(there, back);
        }
    }

    /// n transfers under one always-open rule each get limit / n; with the window closed, none.
    #[test]
    fn one_rule_is_split_n_ways(n in 1usize..20, limit in 1u64..1_000_000) {
        let t = throttles(vec![rule(1, "10.0.0.0/25", "10.0.0.128/25", limit as i64, Some("mon-fri 00:00-24:00"))]);
        let active: Vec<_> = (0..n).map(|i| t.register(host(i as u8), host(200))).collect();
        for x in &active {
            prop_assert_eq!(x.rate(monday_morning()), Some((limit / n as u64).max(1)));
            prop_assert_eq!(x.rate(saturday_morning()), None);
        }
    }
}
