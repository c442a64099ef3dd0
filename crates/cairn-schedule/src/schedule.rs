//! Schedules: parsing, printing and next-run computation.

use std::fmt;
use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

use crate::error::ParseError;
use crate::resolve::resolve;
use crate::text::{
    Hm, TimeList, Token, Tokens, Weekdays, parse_time, parse_times, tokenize, weekday_from_index, write_word,
};

/// An IANA time zone named in a schedule or window (`tz Europe/Berlin`).
#[derive(Debug, Clone)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

impl Zone {
    /// Looks `name` up in the time zone database.
    pub fn new(name: &str) -> Result<Zone, ParseError> {
        TimeZone::get(name)
            .map(|tz| Zone {
                name: name.to_owned(),
                tz,
            })
            .map_err(|e| ParseError::UnknownTimeZone {
                name: name.to_owned(),
                reason: e.to_string(),
            })
    }
    /// The name as written.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The zone's rules.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        self.name == other.name
    }
}
impl Eq for Zone {}

pub(crate) fn parse_tz_suffix(t: &mut Tokens) -> Result<Option<Zone>, ParseError> {
    if !t.eat("tz") {
        return Ok(None);
    }
    let name = t.expect("a time zone name like Europe/Berlin")?;
    Zone::new(&name.text).map(Some)
}

/// Which day of the month a `monthly` schedule runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonthDay {
    /// Day 1–31; months shorter than that run on their last day.
    Day(u8),
    /// The first…fourth or last given weekday.
    Nth(Nth, Weekday),
}

/// Ordinal of a weekday within a month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nth {
    /// The first.
    First,
    /// The second.
    Second,
    /// The third.
    Third,
    /// The fourth.
    Fourth,
    /// The last (fourth or fifth).
    Last,
}

impl Nth {
    const NAMES: [(&'static str, Nth, i8); 5] = [
        ("first", Nth::First, 1),
        ("second", Nth::Second, 2),
        ("third", Nth::Third, 3),
        ("fourth", Nth::Fourth, 4),
        ("last", Nth::Last, -1),
    ];
    fn parse(s: &str) -> Option<Nth> {
        Nth::NAMES
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(s))
            .map(|x| x.1)
    }
    fn name(self) -> &'static str {
        Nth::NAMES.iter().find(|x| x.1 == self).map_or("last", |x| x.0)
    }
    fn index(self) -> i8 {
        Nth::NAMES.iter().find(|x| x.1 == self).map_or(-1, |x| x.2)
    }
}

/// The step of an `every` schedule, 1 minute to 24 hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    minutes: u32,
}

impl Interval {
    /// A step of `minutes` (1..=1440).
    pub fn minutes(minutes: u32) -> Option<Interval> {
        (1..=1440).contains(&minutes).then_some(Interval { minutes })
    }
    /// The step in minutes.
    pub fn as_minutes(self) -> u32 {
        self.minutes
    }
    fn parse(s: &str) -> Option<Interval> {
        let (n, mult) = if let Some(n) = s.strip_suffix(['m', 'M']) {
            (n, 1)
        } else if let Some(n) = s.strip_suffix(['h', 'H']) {
            (n, 60)
        } else {
            return None;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 5 {
            return None;
        }
        Interval::minutes(n.parse::<u32>().ok()? * mult)
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.minutes.is_multiple_of(60) {
            write!(f, "{}h", self.minutes / 60)
        } else {
            write!(f, "{}m", self.minutes)
        }
    }
}

/// A cron expression with its text (five fields, croner dialect).
#[derive(Debug, Clone)]
pub struct CronExpr {
    text: String,
    cron: Cron,
}

impl CronExpr {
    /// Parses a five-field expression.
    pub fn new(text: &str) -> Result<CronExpr, ParseError> {
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(text).map_err(|e| ParseError::InvalidCron {
            expr: text.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(CronExpr {
            text: text.to_owned(),
            cron,
        })
    }
    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// Whether the wall-clock minute `dt` matches.
    pub fn matches(&self, dt: DateTime) -> bool {
        dt.to_zoned(TimeZone::UTC)
            .ok()
            .and_then(|z| self.cron.is_time_matching(&z).ok())
            .unwrap_or(false)
    }
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &CronExpr) -> bool {
        self.text == other.text
    }
}
impl Eq for CronExpr {}

/// What a schedule fires on (see the crate docs for the text of each form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `daily TIMES [DAYS]`.
    Daily {
        /// Sorted, distinct wall-clock times.
        times: Vec<Time>,
        /// Days it runs on (all by default).
        days: Weekdays,
    },
    /// `weekly DAYS TIMES`.
    Weekly {
        /// Days it runs on (not empty).
        days: Weekdays,
        /// Sorted, distinct wall-clock times.
        times: Vec<Time>,
    },
    /// `monthly N TIMES` or `monthly last fri TIMES`.
    Monthly {
        /// Which day of the month.
        day: MonthDay,
        /// Sorted, distinct wall-clock times.
        times: Vec<Time>,
    },
    /// `every Nm|Nh [from A to B] [DAYS]`.
    Every {
        /// The step.
        interval: Interval,
        /// `from`/`to`, inclusive; `None` means 00:00–23:59.
        window: Option<(Time, Time)>,
        /// Days a run sequence may start on (all by default).
        days: Weekdays,
    },
    /// `after JOB`: event-driven, runs when that job finishes.
    After {
        /// The job's name.
        job: String,
    },
    /// `cron "EXPR"`.
    Cron(Box<CronExpr>),
}

/// A job's schedule: a [`Rule`] plus an optional time zone.
///
/// Text form: see the crate docs. Serialized (serde) as that text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// When it fires.
    pub rule: Rule,
    /// The zone its wall-clock times are in; `None` = the server's zone.
    pub tz: Option<Zone>,
}

impl Schedule {
    /// The next run strictly after `after`, reading wall-clock times in the schedule's zone or,
    /// without one, the system zone. `None` for `after JOB` schedules.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        self.next_after_in(after, &TimeZone::system())
    }

    /// Like [`Schedule::next_after`], with `default_tz` for schedules without `tz`.
    pub fn next_after_in(&self, after: Timestamp, default_tz: &TimeZone) -> Option<Timestamp> {
        let tz = self.tz.as_ref().map_or(default_tz, Zone::time_zone);
        // Folds can put wall-clock times before `after`'s own at later instants; start a day
        // early and rely on the mapping being monotonic.
        let mut c = tz.to_datetime(after).checked_sub(1.day()).unwrap_or(DateTime::MIN);
        for _ in 0..20_000 {
            c = self.rule.next_civil(c)?;
            let t = resolve(tz, c)?;
            if t > after {
                return Some(t);
            }
        }
        None
    }

    /// Whether this schedule is event-driven (`after JOB`).
    pub fn is_event_driven(&self) -> bool {
        matches!(self.rule, Rule::After { .. })
    }

    /// [`missed_runs`] with `default_tz` for schedules without `tz`.
    pub fn missed_in(&self, since: Timestamp, now: Timestamp, default_tz: &TimeZone) -> Missed {
        let mut m = Missed {
            count: 0,
            run_now: false,
            first: None,
        };
        let mut t = since;
        while let Some(next) = self.next_after_in(t, default_tz) {
            if next > now {
                break;
            }
            m.first.get_or_insert(next);
            m.count += 1;
            if m.count >= MISSED_COUNT_CAP {
                break;
            }
            t = next;
        }
        m.run_now = m.count > 0;
        m
    }
}

/// [`Missed::count`] stops counting here.
pub const MISSED_COUNT_CAP: u32 = 10_000;

/// Runs that fell due while the server was not running them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    /// How many scheduled runs lie in `(since, now]`, saturating at [`MISSED_COUNT_CAP`].
    pub count: u32,
    /// Run once now (true when `count > 0`): however many were missed, catch up with ONE run.
    pub run_now: bool,
    /// The earliest missed run, for the log.
    pub first: Option<Timestamp>,
}

/// Runs missed in `(since, now]`, where `since` is the last run (or the job's creation).
/// At most one catch-up run is asked for. Uses the system zone for schedules without `tz`;
/// see [`Schedule::missed_in`].
pub fn missed_runs(schedule: &Schedule, since: Timestamp, now: Timestamp) -> Missed {
    schedule.missed_in(since, now, &TimeZone::system())
}

fn first_at(date: Date, times: &[Time], c: DateTime) -> Option<DateTime> {
    times.iter().map(|t| date.to_datetime(*t)).find(|dt| *dt > c)
}

impl Rule {
    /// The first wall-clock time this rule fires at that is strictly after `c`.
    pub(crate) fn next_civil(&self, c: DateTime) -> Option<DateTime> {
        match self {
            Rule::Daily { times, days } | Rule::Weekly { days, times } => {
                let mut d = c.date();
                for _ in 0..8 {
                    if days.contains(d.weekday())
                        && let Some(dt) = first_at(d, times, c)
                    {
                        return Some(dt);
                    }
                    d = d.tomorrow().ok()?;
                }
                None
            }
            Rule::Monthly { day, times } => {
                let mut m = c.date().first_of_month();
                for _ in 0..3 {
                    let d = match *day {
                        MonthDay::Day(n) => m.with().day(n.min(m.days_in_month() as u8) as i8).build().ok()?,
                        MonthDay::Nth(nth, wd) => m.nth_weekday_of_month(nth.index(), wd).ok()?,
                    };
                    if let Some(dt) = first_at(d, times, c) {
                        return Some(dt);
                    }
                    m = m.checked_add(1.month()).ok()?;
                }
                None
            }
            Rule::Every { interval, window, days } => {
                let (from, to) = window.unwrap_or((Time::midnight(), Time::constant(23, 59, 0, 0)));
                let span = (to.duration_since(from).as_secs() / 60).rem_euclid(1440);
                let step = i64::from(interval.minutes);
                let mut d = c.date().yesterday().ok()?;
                for _ in 0..10 {
                    if days.contains(d.weekday()) {
                        let start = d.to_datetime(from);
                        if start > c {
                            return Some(start);
                        }
                        let past = c.duration_since(start).as_secs() / 60;
                        let k = past / step + 1;
                        if k * step <= span {
                            return start.checked_add(SignedDuration::from_mins(k * step)).ok();
                        }
                    }
                    d = d.tomorrow().ok()?;
                }
                None
            }
            Rule::After { .. } => None,
            Rule::Cron(expr) => {
                let z = c.to_zoned(TimeZone::UTC).ok()?;
                expr.cron.find_next_occurrence(&z, false).ok().map(|z| z.datetime())
            }
        }
    }
}

fn parse_days(tok: Option<Token>) -> Result<Weekdays, ParseError> {
    const WHAT: &str = "weekdays like mon-fri or sat,sun";
    let tok = tok.ok_or_else(|| ParseError::expected(WHAT, None))?;
    match Weekdays::parse(&tok.text) {
        Some(d) if !d.is_empty() && !tok.quoted => Ok(d),
        _ => Err(ParseError::expected(WHAT, Some(&tok.text))),
    }
}

/// Optional day list: present when the next token parses as one.
fn opt_days(t: &mut Tokens) -> Weekdays {
    match t.peek().filter(|k| !k.quoted).and_then(|k| Weekdays::parse(&k.text)) {
        Some(d) if !d.is_empty() => {
            t.next_tok();
            d
        }
        _ => Weekdays::ALL,
    }
}

fn parse_rule(t: &mut Tokens) -> Result<Rule, ParseError> {
    const KINDS: &str = "one of daily, weekly, monthly, every, after, cron";
    let kind = t.next_tok().ok_or(ParseError::Empty)?;
    if kind.quoted {
        return Err(ParseError::expected(KINDS, Some(&kind.text)));
    }
    Ok(match kind.text.to_ascii_lowercase().as_str() {
        "daily" => {
            let times = parse_times(t.next_tok().as_ref())?;
            Rule::Daily {
                times,
                days: opt_days(t),
            }
        }
        "weekly" => {
            let days = parse_days(t.next_tok())?;
            Rule::Weekly {
                days,
                times: parse_times(t.next_tok().as_ref())?,
            }
        }
        "monthly" => {
            const WHAT: &str = "a day 1-31 or first, second, third, fourth, last";
            let tok = t.expect(WHAT)?;
            let day = if let Some(nth) = Nth::parse(&tok.text) {
                let wd = t.expect("a weekday like fri")?;
                let wd = crate::text::parse_weekday(&wd.text)
                    .ok_or_else(|| ParseError::expected("a weekday like fri", Some(&wd.text)))?;
                MonthDay::Nth(nth, weekday_from_index(wd))
            } else {
                match tok.text.parse::<u8>() {
                    Ok(n) if (1..=31).contains(&n) && !tok.text.starts_with('+') => MonthDay::Day(n),
                    _ => return Err(ParseError::expected(WHAT, Some(&tok.text))),
                }
            };
            Rule::Monthly {
                day,
                times: parse_times(t.next_tok().as_ref())?,
            }
        }
        "every" => {
            const WHAT: &str = "an interval like 15m or 4h (1m to 24h)";
            let tok = t.expect(WHAT)?;
            let interval = Interval::parse(&tok.text).ok_or_else(|| ParseError::expected(WHAT, Some(&tok.text)))?;
            let window = if t.eat("from") {
                const HM: &str = "a time like 08:00";
                let a = t.expect(HM)?;
                let a = parse_time(&a.text).ok_or_else(|| ParseError::expected(HM, Some(&a.text)))?;
                if !t.eat("to") {
                    return Err(ParseError::expected("`to`", t.peek().map(|k| k.text.as_str())));
                }
                let b = t.expect(HM)?;
                let b = parse_time(&b.text).ok_or_else(|| ParseError::expected(HM, Some(&b.text)))?;
                Some((a, b))
            } else {
                None
            };
            Rule::Every {
                interval,
                window,
                days: opt_days(t),
            }
        }
        "after" => {
            let job = t.expect("a job name")?;
            Rule::After { job: job.text }
        }
        "cron" => {
            let e = t.expect("a quoted cron expression like \"0 22 * * 1-5\"")?;
            Rule::Cron(Box::new(CronExpr::new(&e.text)?))
        }
        _ => return Err(ParseError::expected(KINDS, Some(&kind.text))),
    })
}

impl FromStr for Schedule {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Schedule, ParseError> {
        let mut t = Tokens::new(tokenize(s)?);
        let rule = parse_rule(&mut t)?;
        let tz = if matches!(rule, Rule::After { .. }) {
            None
        } else {
            parse_tz_suffix(&mut t)?
        };
        if let Some(extra) = t.next_tok() {
            let what = if matches!(rule, Rule::After { .. }) {
                "end of schedule (`after` takes no time zone; quote names with spaces)"
            } else {
                "`tz ZONE` or end of schedule"
            };
            return Err(ParseError::expected(what, Some(&extra.text)));
        }
        debug_assert!(t.is_done());
        Ok(Schedule { rule, tz })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Daily { times, days } => {
                write!(f, "daily {}", TimeList(times))?;
                if !days.is_all() {
                    write!(f, " {days}")?;
                }
                Ok(())
            }
            Rule::Weekly { days, times } => write!(f, "weekly {days} {}", TimeList(times)),
            Rule::Monthly { day, times } => {
                match day {
                    MonthDay::Day(n) => write!(f, "monthly {n}")?,
                    MonthDay::Nth(nth, wd) => {
                        let wd = Weekdays::single(*wd);
                        write!(f, "monthly {} {wd}", nth.name())?
                    }
                }
                write!(f, " {}", TimeList(times))
            }
            Rule::Every { interval, window, days } => {
                write!(f, "every {interval}")?;
                if let Some((a, b)) = window {
                    write!(f, " from {} to {}", Hm(*a), Hm(*b))?;
                }
                if !days.is_all() {
                    write!(f, " {days}")?;
                }
                Ok(())
            }
            Rule::After { job } => {
                f.write_str("after ")?;
                write_word(f, job)
            }
            Rule::Cron(e) => {
                f.write_str("cron ")?;
                write_word(f, e.as_str())
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.rule)?;
        if let Some(z) = &self.tz {
            write!(f, " tz {}", z.name())?;
        }
        Ok(())
    }
}

impl serde::Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Schedule, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
