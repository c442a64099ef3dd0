//! When cairn backup jobs run: schedules, backup windows and retries.
//!
//! A pure library: nothing here reads the clock or sleeps. The backup server asks
//! [`Schedule::next_after`] for the next run, [`missed_runs`] after downtime,
//! [`BackupWindow`] whether a job may start or must stop, and [`RetryPolicy`] when to retry
//! the failed VMs of a session.
//!
//! # Schedule syntax
//!
//! Keywords and weekday names are case-insensitive; `TIMES` is a comma list of `HH:MM`
//! wall-clock times (`01:00,13:00`), `DAYS` a comma list of weekdays and ranges
//! (`mon-fri`, `sat,sun`, `mon,wed-fri`, ranges may wrap: `fri-mon`).
//!
//! | Text | Runs |
//! |------|------|
//! | `daily TIMES [DAYS]` | every day (or on `DAYS`) at each of `TIMES` |
//! | `weekly DAYS TIMES` | on `DAYS` at each of `TIMES` (same as `daily TIMES DAYS`) |
//! | `monthly N TIMES` | on day `N` (1–31) of each month; in shorter months on the last day |
//! | `monthly first\|second\|third\|fourth\|last DAY TIMES` | on that weekday of each month |
//! | `every Nm\|Nh [from HH:MM to HH:MM] [DAYS]` | from `from` (default 00:00) every N, up to and including `to` (default 23:59); a `to` before `from` runs over midnight; restarts each day |
//! | `after JOB` | when job `JOB` finishes (event-driven: [`Schedule::next_after`] is `None`); quote names with spaces: `after "SQL nightly"` |
//! | `cron "EXPR"` | a five-field cron expression (minute hour day-of-month month day-of-week, croner dialect with `L`, `#`, `W`) |
//!
//! Every form but `after` may end with `tz ZONE` (an IANA name such as `Europe/Berlin`);
//! without it the schedule follows the server's zone, passed to the `*_in` methods.
//!
//! # Daylight saving time
//!
//! Schedules name wall-clock times. A wall-clock time that does not exist (spring forward)
//! runs once, at the first instant after the gap (for Europe/Berlin, 02:30 runs at 03:00 CEST);
//! several times inside one gap collapse into that one run. A wall-clock time that occurs
//! twice (fall back) runs once, at its first occurrence. `every` schedules count in
//! wall-clock time too, so on a fall-back day the repeated hour is not run twice.
//!
//! # Example
//!
//! ```
//! use cairn_schedule::Schedule;
//! let s: Schedule = "daily 22:00 mon-fri tz Europe/Berlin".parse().unwrap();
//! let after: jiff::Timestamp = "2026-03-27T12:00:00Z".parse().unwrap(); // a Friday
//! assert_eq!(s.next_after(after).unwrap().to_string(), "2026-03-27T21:00:00Z");
//! assert_eq!(s.to_string(), "daily 22:00 mon-fri tz Europe/Berlin");
//! ```

#![warn(missing_docs)]

mod error;
mod resolve;
mod retry;
mod schedule;
mod text;
mod window;

pub use error::ParseError;

pub use schedule::{CronExpr, Interval, MISSED_COUNT_CAP, Missed, MonthDay, Nth, Rule, Schedule, Zone, missed_runs};
pub use text::Weekdays;

pub use retry::RetryPolicy;
pub use window::{BackupWindow, WindowSpan};

#[cfg(test)]
mod tests;
