//! Wall-clock to instant mapping with cairn's DST rules.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};

/// Maps a wall-clock time in `tz` to the instant it runs at: the instant itself when unique,
/// the first occurrence in a fold, the end of the gap (the transition) in a gap.
/// The mapping never decreases as `dt` increases.
pub(crate) fn resolve(tz: &TimeZone, dt: DateTime) -> Option<Timestamp> {
    match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
        AmbiguousOffset::Gap { after, .. } => {
            // Read with the later offset, `dt` lies before the transition; the transition
            // is the first instant after the gap.
            let early = after.to_timestamp(dt).ok()?;
            tz.following(early).next().map(|t| t.timestamp())
        }
    }
}
