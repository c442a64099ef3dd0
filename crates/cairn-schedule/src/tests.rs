//! Unit tests and properties.

use jiff::civil::{DateTime, Time, date};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use proptest::prelude::*;

use crate::schedule::{CronExpr, MonthDay, Nth, Rule};
use crate::{BackupWindow, ParseError, Schedule, Weekdays, Zone};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}
fn sch(s: &str) -> Schedule {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}
fn next(s: &str, after: &str) -> String {
    sch(s).next_after_in(ts(after), &TimeZone::UTC).unwrap().to_string()
}

#[test]
fn round_trips_examples() {
    for s in [
        "daily 22:00",
        "daily 01:00,13:00 mon-fri",
        "weekly sat 03:00",
        "monthly 1 22:00",
        "monthly last fri 22:00",
        "every 15m",
        "every 4h from 08:00 to 20:00",
        "every 1h from 20:00 to 06:00 sat,sun",
        "after Nightly",
        "after \"SQL \\\"prod\\\" nightly\"",
        "after \"tz\"",
        "cron \"0 22 * * 1-5\"",
        "daily 02:30 tz Europe/Berlin",
    ] {
        assert_eq!(sch(s).to_string(), s);
    }
    assert_eq!(
        sch("DAILY 13:00,01:00 Monday-Friday").to_string(),
        "daily 01:00,13:00 mon-fri"
    );
    assert_eq!(sch("every 60m").to_string(), "every 1h");
    assert_eq!(
        sch("daily 1:00 mon,tue,wed,fri,sat").to_string(),
        "daily 01:00 mon-wed,fri,sat"
    );
}

#[test]
fn parse_errors_name_the_token() {
    let err = |s: &str| s.parse::<Schedule>().unwrap_err().to_string();
    assert_eq!("".parse::<Schedule>().unwrap_err(), ParseError::Empty);
    assert_eq!(
        err("hourly 1"),
        "expected one of daily, weekly, monthly, every, after, cron, found `hourly`"
    );
    assert_eq!(
        err("daily 25:00"),
        "expected times like 22:00 or 01:00,13:00, found `25:00`"
    );
    assert_eq!(
        err("daily"),
        "expected times like 22:00 or 01:00,13:00, found end of input"
    );
    assert_eq!(
        err("daily 22:00 mon-fri extra"),
        "expected `tz ZONE` or end of schedule, found `extra`"
    );
    assert_eq!(
        err("monthly 32 22:00"),
        "expected a day 1-31 or first, second, third, fourth, last, found `32`"
    );
    assert_eq!(
        err("every 0m"),
        "expected an interval like 15m or 4h (1m to 24h), found `0m`"
    );
    assert_eq!(
        err("every 25h"),
        "expected an interval like 15m or 4h (1m to 24h), found `25h`"
    );
    assert_eq!(err("every 1h from 08:00 until 09:00"), "expected `to`, found `until`");
    assert!(err("daily 22:00 tz Mars/Olympus").starts_with("unknown time zone `Mars/Olympus`"));
    assert!(err("cron \"61 * * * *\"").starts_with("invalid cron expression `61 * * * *`"));
    assert!(err("cron \"0 0 0 * * *\"").starts_with("invalid cron expression"));
    assert!(matches!(
        "after \"x".parse::<Schedule>(),
        Err(ParseError::UnterminatedQuote(_))
    ));
    assert_eq!(
        err("after two words"),
        "expected end of schedule (`after` takes no time zone; quote names with spaces), found `words`"
    );
}

#[test]
fn serde_as_text() {
    let s = sch("daily 01:00,13:00 mon-fri tz Europe/Berlin");
    let j = serde_json::to_string(&s).unwrap();
    assert_eq!(j, "\"daily 01:00,13:00 mon-fri tz Europe/Berlin\"");
    assert_eq!(serde_json::from_str::<Schedule>(&j).unwrap(), s);
    assert!(serde_json::from_str::<Schedule>("\"daily 99:00\"").is_err());
    let w: BackupWindow = "mon-fri 20:00-06:00 tz Europe/Berlin".parse().unwrap();
    let j = serde_json::to_string(&w).unwrap();
    assert_eq!(serde_json::from_str::<BackupWindow>(&j).unwrap(), w);
}

#[test]
fn daily_and_weekdays() {
    assert_eq!(next("daily 22:00", "2026-03-27T21:59:59Z"), "2026-03-27T22:00:00Z");
    assert_eq!(next("daily 22:00", "2026-03-27T22:00:00Z"), "2026-03-28T22:00:00Z");
    // 2026-03-27 is a Friday.
    assert_eq!(
        next("daily 01:00,13:00 mon-fri", "2026-03-27T13:00:00Z"),
        "2026-03-30T01:00:00Z"
    );
    assert_eq!(next("weekly sat 03:00", "2026-03-27T13:00:00Z"), "2026-03-28T03:00:00Z");
    assert_eq!(
        sch("after Other").next_after_in(ts("2026-01-01T00:00:00Z"), &TimeZone::UTC),
        None
    );
}

#[test]
fn dst_gap_runs_once_at_gap_end() {
    // Berlin springs forward 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z).
    let s = "daily 02:30 tz Europe/Berlin";
    assert_eq!(next(s, "2026-03-28T12:00:00Z"), "2026-03-29T01:00:00Z");
    assert_eq!(next(s, "2026-03-29T01:00:00Z"), "2026-03-30T00:30:00Z");
    // Several times inside the gap collapse into one run.
    let s = "cron \"*/15 2 * * *\" tz Europe/Berlin";
    assert_eq!(next(s, "2026-03-28T12:00:00Z"), "2026-03-29T01:00:00Z");
    assert_eq!(next(s, "2026-03-29T01:00:00Z"), "2026-03-30T00:00:00Z");
    let s = "every 15m tz Europe/Berlin";
    assert_eq!(next(s, "2026-03-29T00:45:00Z"), "2026-03-29T01:00:00Z");
    assert_eq!(next(s, "2026-03-29T01:00:00Z"), "2026-03-29T01:15:00Z");
}

#[test]
fn dst_fold_runs_once() {
    // Berlin falls back 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z).
    let s = "daily 02:30 tz Europe/Berlin";
    assert_eq!(next(s, "2026-10-24T12:00:00Z"), "2026-10-25T00:30:00Z");
    assert_eq!(next(s, "2026-10-25T00:30:00Z"), "2026-10-26T01:30:00Z");
    let s = "every 30m tz Europe/Berlin";
    // 02:30 CEST (00:30Z) -> the repeated 02:00/02:30 CET are skipped -> 03:00 CET (02:00Z).
    assert_eq!(next(s, "2026-10-25T00:30:00Z"), "2026-10-25T02:00:00Z");
}

#[test]
fn month_ends_and_leap_years() {
    // Day 31 in shorter months runs on the last day.
    assert_eq!(next("monthly 31 22:00", "2026-01-31T22:00:00Z"), "2026-02-28T22:00:00Z");
    assert_eq!(next("monthly 31 22:00", "2028-01-31T22:00:00Z"), "2028-02-29T22:00:00Z");
    assert_eq!(next("monthly 30 22:00", "2026-02-28T22:00:00Z"), "2026-03-30T22:00:00Z");
    assert_eq!(next("monthly 29 00:00", "2100-02-01T00:00:00Z"), "2100-02-28T00:00:00Z");
    assert_eq!(
        next("monthly last fri 22:00", "2026-03-01T00:00:00Z"),
        "2026-03-27T22:00:00Z"
    );
    assert_eq!(
        next("monthly last fri 22:00", "2026-03-27T22:00:00Z"),
        "2026-04-24T22:00:00Z"
    );
    assert_eq!(
        next("monthly first mon 01:00", "2026-03-01T00:00:00Z"),
        "2026-03-02T01:00:00Z"
    );
    assert_eq!(
        next("cron \"0 0 29 2 *\"", "2026-03-01T00:00:00Z"),
        "2028-02-29T00:00:00Z"
    );
}

#[test]
fn every_with_window() {
    let s = "every 4h from 08:00 to 20:00";
    assert_eq!(next(s, "2026-03-27T07:00:00Z"), "2026-03-27T08:00:00Z");
    assert_eq!(next(s, "2026-03-27T16:00:00Z"), "2026-03-27T20:00:00Z");
    assert_eq!(next(s, "2026-03-27T20:00:00Z"), "2026-03-28T08:00:00Z");
    let s = "every 3h from 20:00 to 02:00 fri";
    assert_eq!(next(s, "2026-03-27T20:00:00Z"), "2026-03-27T23:00:00Z");
    assert_eq!(next(s, "2026-03-27T23:00:00Z"), "2026-03-28T02:00:00Z");
    assert_eq!(next(s, "2026-03-28T02:00:00Z"), "2026-04-03T20:00:00Z");
    assert_eq!(next("every 7m", "2026-03-27T23:55:00Z"), "2026-03-28T00:00:00Z");
}

#[test]
fn missed_runs_catch_up_once() {
    let s = sch("daily 22:00");
    let m = s.missed_in(ts("2026-03-01T22:00:00Z"), ts("2026-03-11T23:00:00Z"), &TimeZone::UTC);
    assert_eq!((m.count, m.run_now), (10, true));
    assert_eq!(m.first, Some(ts("2026-03-02T22:00:00Z")));
    let m = s.missed_in(ts("2026-03-01T22:00:00Z"), ts("2026-03-02T21:59:00Z"), &TimeZone::UTC);
    assert_eq!((m.count, m.run_now, m.first), (0, false, None));
    let m = sch("every 1m").missed_in(ts("2026-01-01T00:00:00Z"), ts("2026-03-01T00:00:00Z"), &TimeZone::UTC);
    assert_eq!((m.count, m.run_now), (crate::MISSED_COUNT_CAP, true));
    assert!(
        !sch("after X")
            .missed_in(ts("2026-01-01T00:00:00Z"), ts("2027-01-01T00:00:00Z"), &TimeZone::UTC)
            .run_now
    );
}

#[test]
fn window_open_close() {
    let w: BackupWindow = "mon-fri 20:00-06:00 sat,sun 00:00-24:00".parse().unwrap();
    assert_eq!(w.to_string(), "mon-fri 20:00-06:00 sat,sun 00:00-24:00");
    let utc = TimeZone::UTC;
    // Wednesday 2026-03-25.
    assert!(!w.is_open_in(ts("2026-03-25T12:00:00Z"), &utc));
    assert!(w.is_open_in(ts("2026-03-25T21:00:00Z"), &utc));
    assert_eq!(
        w.closes_at_in(ts("2026-03-25T21:00:30Z"), &utc),
        Some(ts("2026-03-26T06:00:00Z"))
    );
    assert_eq!(w.closes_at_in(ts("2026-03-25T12:00:00Z"), &utc), None);
    assert_eq!(
        w.opens_at_in(ts("2026-03-25T12:00:00Z"), &utc),
        Some(ts("2026-03-25T20:00:00Z"))
    );
    // Friday night runs into the weekend; Sunday's span ends at midnight (Monday 00:00-06:00
    // belongs to no span: the mon-fri span starts on Monday evening).
    assert_eq!(
        w.closes_at_in(ts("2026-03-27T21:00:00Z"), &utc),
        Some(ts("2026-03-30T00:00:00Z"))
    );
    assert_eq!(
        BackupWindow::always().closes_at_in(ts("2026-03-27T21:00:00Z"), &utc),
        None
    );
    let never: BackupWindow = "never".parse().unwrap();
    assert_eq!(never.opens_at_in(ts("2026-03-27T21:00:00Z"), &utc), None);
    assert!("mon-fri 20:00".parse::<BackupWindow>().is_err());
    assert!("20:00-06:00".parse::<BackupWindow>().is_err());
}

#[test]
fn window_across_dst() {
    // Open 00:00-04:00 Berlin; on 2026-03-29 the clock skips 02:00-03:00: closes 04:00 CEST = 02:00Z.
    let w: BackupWindow = "mon-sun 00:00-04:00 tz Europe/Berlin".parse().unwrap();
    let utc = TimeZone::UTC;
    assert_eq!(
        w.closes_at_in(ts("2026-03-28T23:30:00Z"), &utc),
        Some(ts("2026-03-29T02:00:00Z"))
    );
    // On fall-back 02:00-03:00 repeats: 04:00 CET = 03:00Z.
    assert_eq!(
        w.closes_at_in(ts("2026-10-24T23:30:00Z"), &utc),
        Some(ts("2026-10-25T03:00:00Z"))
    );
    // Window ending inside the gap closes at the jump.
    let w: BackupWindow = "mon-sun 01:00-02:30 tz Europe/Berlin".parse().unwrap();
    assert_eq!(
        w.closes_at_in(ts("2026-03-29T00:10:00Z"), &utc),
        Some(ts("2026-03-29T01:00:00Z"))
    );
    let mut grid = [[false; 24]; 7];
    grid[0][22] = true;
    grid[0][23] = true;
    grid[1][0] = true;
    let g = BackupWindow::from_grid(&grid, Some(Zone::new("UTC").unwrap()));
    assert_eq!(
        g.closes_at_in(ts("2026-03-30T22:00:00Z"), &utc),
        Some(ts("2026-03-31T01:00:00Z"))
    );
}

// ---- properties ----

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kolkata",
    "America/Santiago",
];
const CRONS: &[&str] = &[
    "0 22 * * 1-5",
    "*/15 2 * * *",
    "30 1,2,3 * * *",
    "0 0 L * *",
    "0 12 * * 5#3",
    "5 */4 * * sun",
    "0 0 29 2 *",
];

fn times() -> impl Strategy<Value = Vec<Time>> {
    prop::collection::vec((0i8..24, prop::sample::select(vec![0i8, 15, 30, 45, 59])), 1..4).prop_map(|v| {
        let mut t: Vec<Time> = v.into_iter().map(|(h, m)| Time::constant(h, m, 0, 0)).collect();
        t.sort();
        t.dedup();
        t
    })
}
fn days() -> impl Strategy<Value = Weekdays> {
    (1u8..128).prop_map(|b| {
        (0..7)
            .filter(|i| b & (1 << i) != 0)
            .fold(None::<Weekdays>, |acc, i| {
                let d = crate::text::weekday_from_index(i);
                Some(acc.map_or(Weekdays::single(d), |a| a.with(d)))
            })
            .unwrap_or(Weekdays::ALL)
    })
}
fn time() -> impl Strategy<Value = Time> {
    (0i8..24, 0i8..60).prop_map(|(h, m)| Time::constant(h, m, 0, 0))
}

fn rule() -> impl Strategy<Value = Rule> {
    prop_oneof![
        (times(), days()).prop_map(|(times, days)| Rule::Daily { times, days }),
        (times(), days()).prop_map(|(times, days)| Rule::Weekly { times, days }),
        (1u8..=31, times()).prop_map(|(d, times)| Rule::Monthly {
            day: MonthDay::Day(d),
            times
        }),
        (
            prop::sample::select(vec![Nth::First, Nth::Second, Nth::Fourth, Nth::Last]),
            0u8..7,
            times()
        )
            .prop_map(|(n, wd, times)| Rule::Monthly {
                day: MonthDay::Nth(n, crate::text::weekday_from_index(wd)),
                times
            }),
        (
            prop::sample::select(vec![1u32, 7, 15, 30, 45, 60, 90, 240, 1440]),
            prop::option::of((time(), time())),
            days()
        )
            .prop_map(|(m, window, days)| Rule::Every {
                interval: crate::Interval::minutes(m).unwrap(),
                window,
                days
            }),
        prop::sample::select(CRONS.to_vec()).prop_map(|c| Rule::Cron(Box::new(CronExpr::new(c).unwrap()))),
    ]
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (rule(), prop::option::of(prop::sample::select(ZONES.to_vec()))).prop_map(|(rule, tz)| Schedule {
        rule,
        tz: tz.map(|z| Zone::new(z).unwrap()),
    })
}

/// Instants near DST changes (and elsewhere), with random seconds.
fn instant() -> impl Strategy<Value = Timestamp> {
    let bases = vec![
        "2026-03-08T00:00:00Z", // US spring
        "2026-03-28T12:00:00Z", // EU spring
        "2026-04-04T12:00:00Z", // southern autumn
        "2026-09-05T12:00:00Z", // Chile spring
        "2026-09-26T12:00:00Z", // NZ spring
        "2026-10-03T12:00:00Z", // Lord Howe spring
        "2026-10-24T12:00:00Z", // EU autumn
        "2026-11-01T00:00:00Z", // US autumn
        "2028-02-27T00:00:00Z", // leap day
        "2026-12-30T00:00:00Z",
    ];
    (prop::sample::select(bases), -2 * 86_400i64..2 * 86_400)
        .prop_map(|(b, off)| ts(b).checked_add(SignedDuration::from_secs(off)).unwrap())
}

/// Independent check of whether wall-clock time `c` is one the rule names.
fn civil_matches(rule: &Rule, c: DateTime) -> bool {
    if c.second() != 0 || c.subsec_nanosecond() != 0 {
        return false;
    }
    match rule {
        Rule::Daily { times, days } | Rule::Weekly { times, days } => {
            days.contains(c.weekday()) && times.contains(&c.time())
        }
        Rule::Monthly { day, times } => {
            let dim = c.date().days_in_month();
            times.contains(&c.time())
                && match *day {
                    MonthDay::Day(n) => c.day() == (n as i8).min(dim),
                    MonthDay::Nth(Nth::Last, wd) => c.weekday() == wd && c.day() + 7 > dim,
                    MonthDay::Nth(n, wd) => {
                        let k = match n {
                            Nth::First => 0,
                            Nth::Second => 1,
                            Nth::Third => 2,
                            _ => 3,
                        };
                        c.weekday() == wd && (c.day() - 1) / 7 == k
                    }
                }
        }
        Rule::Every { interval, window, days } => {
            let (from, to) = window.unwrap_or((Time::midnight(), Time::constant(23, 59, 0, 0)));
            let span = (to.duration_since(from).as_mins()).rem_euclid(1440);
            [c.date(), c.date().yesterday().unwrap()].iter().any(|d| {
                let m = c.duration_since(d.to_datetime(from)).as_mins();
                days.contains(d.weekday()) && (0..=span).contains(&m) && m % i64::from(interval.as_minutes()) == 0
            })
        }
        Rule::After { .. } => false,
        Rule::Cron(e) => e.matches(c),
    }
}

/// Whether the instant `s` is one the schedule runs at.
fn is_run_instant(rule: &Rule, tz: &TimeZone, s: Timestamp) -> bool {
    let c = tz.to_datetime(s);
    if civil_matches(rule, c) && tz.to_ambiguous_timestamp(c).earlier().ok() == Some(s) {
        return true;
    }
    let before = tz.to_offset(s - SignedDuration::from_nanos(1));
    let after = tz.to_offset(s);
    if after > before {
        // `s` ends a gap: wall-clock times in the gap run now.
        let mut g = s.to_zoned(TimeZone::fixed(before)).datetime();
        while g < c {
            if civil_matches(rule, g) {
                return true;
            }
            g = g.checked_add(1.minute()).unwrap();
        }
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn next_after_is_the_first_run(s in schedule(), after in instant()) {
        let zone = s.tz.as_ref().map_or(TimeZone::UTC, |z| z.time_zone().clone());
        let next = s.next_after_in(after, &TimeZone::UTC);
        let limit = after.checked_add(SignedDuration::from_hours(24 * 4)).unwrap();
        if let Some(n) = next {
            prop_assert!(n > after);
            prop_assert!(is_run_instant(&s.rule, &zone, n), "{s}: {n} is not a run instant");
        }
        // Brute force: no run instant strictly between `after` and `next` (within 4 days).
        let end = next.map_or(limit, |n| n.min(limit));
        let mut t = after.round(jiff::TimestampRound::new().smallest(jiff::Unit::Minute).mode(jiff::RoundMode::Floor)).unwrap();
        loop {
            t = t.checked_add(SignedDuration::from_mins(1)).unwrap();
            if t >= end { break; }
            prop_assert!(!is_run_instant(&s.rule, &zone, t), "{s}: after {after} got {next:?} but {t} runs");
        }
        // Runs at most one catch-up.
        let m = s.missed_in(after, limit, &TimeZone::UTC);
        prop_assert_eq!(m.run_now, next.is_some_and(|n| n <= limit));
    }

    #[test]
    fn text_round_trip(s in schedule()) {
        let text = s.to_string();
        let back: Schedule = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn after_names_round_trip(name in "[ a-zA-Z\"\\\\-]{1,12}") {
        let s = Schedule { rule: Rule::After { job: name }, tz: None };
        prop_assert_eq!(s.to_string().parse::<Schedule>().unwrap(), s);
    }

    #[test]
    fn window_closes_when_it_closes(w in prop::collection::vec((days(), 0u16..1440, 0u16..=1440), 1..4),
                                    tz in prop::sample::select(ZONES.to_vec()), t in instant()) {
        let spans = w.into_iter().map(|(days, start, end)| crate::WindowSpan { days, start, end }).collect();
        let w = BackupWindow::from_spans(spans, Some(Zone::new(tz).unwrap()));
        let utc = TimeZone::UTC;
        prop_assert_eq!(w.to_string().parse::<BackupWindow>().unwrap(), w.clone());
        if let Some(close) = w.closes_at_in(t, &utc) {
            prop_assert!(close > t);
            prop_assert!(!w.is_open_in(close, &utc));
            // Open throughout [t, close): sample every minute boundary and t itself.
            let mut s = t;
            while s < close {
                prop_assert!(w.is_open_in(s, &utc), "{w:?} closed at {s} before {close}");
                s = s.checked_add(SignedDuration::from_mins(1)).unwrap()
                    .round(jiff::TimestampRound::new().smallest(jiff::Unit::Minute).mode(jiff::RoundMode::Floor)).unwrap();
            }
        }
        if let Some(open) = w.opens_at_in(t, &utc) {
            prop_assert!(w.is_open_in(open, &utc));
        }
    }
}

#[test]
fn leap_day_weekly() {
    // 2028-02-29 is a Tuesday.
    assert_eq!(date(2028, 2, 29).weekday(), jiff::civil::Weekday::Tuesday);
    assert_eq!(next("weekly tue 00:00", "2028-02-28T00:00:00Z"), "2028-02-29T00:00:00Z");
}
