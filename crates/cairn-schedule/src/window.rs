//! Backup windows: when jobs may run.

use std::fmt;
use std::str::FromStr;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::error::ParseError;
use crate::schedule::{Zone, parse_tz_suffix};
use crate::text::{Tokens, Weekdays, parse_time, tokenize};

const WEEK_MINUTES: usize = 7 * 1440;

/// Days plus a wall-clock range in which jobs may run. `end <= start` runs past midnight into
/// the next day (`end == start` is 24 hours). Times are minutes since midnight; `end` may be 1440.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpan {
    /// The days the range starts on.
    pub days: Weekdays,
    /// Start, minutes since midnight (0..1440).
    pub start: u16,
    /// End (exclusive), minutes since midnight (0..=1440).
    pub end: u16,
}

/// When jobs may run: a job must not start while the window is closed and is stopped when it
/// closes. Text form: `always`, or `DAYS HH:MM-HH:MM ...` (e.g.
/// `mon-fri 20:00-06:00 sat,sun 00:00-24:00`), optionally ending with `tz ZONE`.
/// Wall-clock minutes are looked up on the local time of an instant, so in a DST gap the
/// skipped minutes simply do not occur and in a fold the repeated minutes count twice.
#[derive(Clone, PartialEq, Eq)]
pub struct BackupWindow {
    spans: Vec<WindowSpan>,
    always: bool,
    /// The zone of the wall-clock times; `None` = the server's zone.
    tz: Option<Zone>,
    bits: Vec<u64>,
}

impl fmt::Debug for BackupWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupWindow({self})")
    }
}

impl BackupWindow {
    /// A window that never closes.
    pub fn always() -> BackupWindow {
        let mut w = BackupWindow::from_spans(Vec::new(), None);
        w.always = true;
        w.bits.iter_mut().for_each(|b| *b = u64::MAX);
        w
    }

    /// A window open during `spans` (minutes clamped to a day).
    pub fn from_spans(spans: Vec<WindowSpan>, tz: Option<Zone>) -> BackupWindow {
        let mut bits = vec![0u64; WEEK_MINUTES.div_ceil(64)];
        for s in &spans {
            let start = usize::from(s.start.min(1439));
            let end = usize::from(s.end.min(1440));
            let len = if end > start { end - start } else { end + 1440 - start };
            for d in 0..7u8 {
                if s.days.contains(crate::text::weekday_from_index(d)) {
                    for m in 0..len {
                        let i = (usize::from(d) * 1440 + start + m) % WEEK_MINUTES;
                        bits[i / 64] |= 1 << (i % 64);
                    }
                }
            }
        }
        BackupWindow {
            spans,
            always: false,
            tz,
            bits,
        }
    }

    /// A window from a weekday × hour grid (`grid[0]` = Monday, `grid[d][h]` = hour h open).
    pub fn from_grid(grid: &[[bool; 24]; 7], tz: Option<Zone>) -> BackupWindow {
        let mut spans = Vec::new();
        for (d, hours) in grid.iter().enumerate() {
            let mut h = 0;
            while h < 24 {
                if !hours[h] {
                    h += 1;
                    continue;
                }
                let s = h;
                while h < 24 && hours[h] {
                    h += 1;
                }
                spans.push(WindowSpan {
                    days: Weekdays::single(crate::text::weekday_from_index(d as u8)),
                    start: (s * 60) as u16,
                    end: (h * 60) as u16,
                });
            }
        }
        BackupWindow::from_spans(spans, tz)
    }

    /// The spans.
    pub fn spans(&self) -> &[WindowSpan] {
        &self.spans
    }

    fn zone<'a>(&'a self, default_tz: &'a TimeZone) -> &'a TimeZone {
        self.tz.as_ref().map_or(default_tz, Zone::time_zone)
    }

    fn bit(&self, i: usize) -> bool {
        let i = i % WEEK_MINUTES;
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }

    /// Minute-of-week index of `t` and the elapsed part of that minute.
    fn locate(tz: &TimeZone, t: Timestamp) -> (usize, SignedDuration) {
        let dt = tz.to_datetime(t);
        let idx = dt.weekday().to_monday_zero_offset() as usize * 1440 + dt.hour() as usize * 60 + dt.minute() as usize;
        let into = SignedDuration::new(i64::from(dt.second()), dt.subsec_nanosecond());
        (idx, into)
    }

    /// Whether a job may run (or start) at `t`; the system zone if the window has no `tz`.
    pub fn is_open(&self, t: Timestamp) -> bool {
        self.is_open_in(t, &TimeZone::system())
    }

    /// [`BackupWindow::is_open`] with `default_tz` for windows without `tz`.
    pub fn is_open_in(&self, t: Timestamp, default_tz: &TimeZone) -> bool {
        self.bit(Self::locate(self.zone(default_tz), t).0)
    }

    /// When the window open at `t` closes, so a running job can be stopped then.
    /// `None` if it is closed at `t` or never closes.
    pub fn closes_at(&self, t: Timestamp) -> Option<Timestamp> {
        self.closes_at_in(t, &TimeZone::system())
    }

    /// [`BackupWindow::closes_at`] with `default_tz` for windows without `tz`.
    pub fn closes_at_in(&self, t: Timestamp, default_tz: &TimeZone) -> Option<Timestamp> {
        if !self.is_open_in(t, default_tz) {
            return None;
        }
        self.next_change(t, default_tz, true)
    }

    /// The first instant at or after `t` at which the window is open (`t` itself if open now),
    /// so a job due while it is closed can wait. `None` if it never opens.
    pub fn opens_at_in(&self, t: Timestamp, default_tz: &TimeZone) -> Option<Timestamp> {
        if self.is_open_in(t, default_tz) {
            return Some(t);
        }
        self.next_change(t, default_tz, false)
    }

    /// First instant after `t` where openness differs from `open` (which it is at `t`).
    fn next_change(&self, t: Timestamp, default_tz: &TimeZone, open: bool) -> Option<Timestamp> {
        let tz = self.zone(default_tz);
        let mut cur = t;
        // Each round either ends or crosses an offset transition; a few hundred covers years.
        for _ in 0..512 {
            let (idx, into) = Self::locate(tz, cur);
            let run = (0..WEEK_MINUTES).take_while(|m| self.bit(idx + m) == open).count();
            if run == WEEK_MINUTES {
                return None;
            }
            let candidate = cur.checked_add(SignedDuration::from_mins(run as i64) - into).ok()?;
            match tz.following(cur).next().map(|tr| tr.timestamp()) {
                Some(tr) if tr < candidate => {
                    cur = tr;
                    if self.is_open_in(cur, default_tz) != open {
                        return Some(cur);
                    }
                }
                _ => return Some(candidate),
            }
        }
        None
    }
}

impl fmt::Display for BackupWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.always {
            f.write_str("always")?;
        }
        for (i, s) in self.spans.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let days = if s.days.is_all() {
                "mon-sun".to_owned()
            } else {
                s.days.to_string()
            };
            write!(
                f,
                "{days} {:02}:{:02}-{:02}:{:02}",
                s.start / 60,
                s.start % 60,
                s.end / 60,
                s.end % 60
            )?;
        }
        if let Some(z) = &self.tz {
            if !self.always && self.spans.is_empty() {
                f.write_str("never")?;
            }
            write!(f, " tz {}", z.name())?;
        } else if !self.always && self.spans.is_empty() {
            f.write_str("never")?;
        }
        Ok(())
    }
}

fn parse_minutes(s: &str, allow_24: bool) -> Option<u16> {
    if allow_24 && s == "24:00" {
        return Some(1440);
    }
    let t = parse_time(s)?;
    Some(t.hour() as u16 * 60 + t.minute() as u16)
}

impl FromStr for BackupWindow {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<BackupWindow, ParseError> {
        let mut t = Tokens::new(tokenize(s)?);
        if t.eat("always") {
            let tz = parse_tz_suffix(&mut t)?;
            if let Some(x) = t.next_tok() {
                return Err(ParseError::expected("`tz ZONE` or end of window", Some(&x.text)));
            }
            let mut w = BackupWindow::always();
            w.tz = tz;
            return Ok(w);
        }
        let never = t.eat("never");
        let mut spans = Vec::new();
        while !never && let Some(tok) = t.peek() {
            if !tok.quoted && tok.text.eq_ignore_ascii_case("tz") {
                break;
            }
            const DAYS: &str = "weekdays like mon-fri, `always` or `never`";
            let tok = t.expect(DAYS)?;
            let days = Weekdays::parse(&tok.text)
                .filter(|d| !d.is_empty() && !tok.quoted)
                .ok_or_else(|| ParseError::expected(DAYS, Some(&tok.text)))?;
            const RANGE: &str = "a time range like 20:00-06:00";
            let r = t.expect(RANGE)?;
            let (a, b) = r
                .text
                .split_once('-')
                .ok_or_else(|| ParseError::expected(RANGE, Some(&r.text)))?;
            let (start, end) = parse_minutes(a, false)
                .zip(parse_minutes(b, true))
                .ok_or_else(|| ParseError::expected(RANGE, Some(&r.text)))?;
            spans.push(WindowSpan { days, start, end });
        }
        if !never && spans.is_empty() {
            return Err(ParseError::expected(
                "weekdays like mon-fri, `always` or `never`",
                t.peek().map(|k| k.text.as_str()),
            ));
        }
        let tz = parse_tz_suffix(&mut t)?;
        if let Some(x) = t.next_tok() {
            return Err(ParseError::expected("`tz ZONE` or end of window", Some(&x.text)));
        }
        Ok(BackupWindow::from_spans(spans, tz))
    }
}

impl serde::Serialize for BackupWindow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BackupWindow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<BackupWindow, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
