use thiserror::Error;

/// Why a schedule or backup window text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The text was empty.
    #[error("empty schedule: expected one of daily, weekly, monthly, every, after, cron")]
    Empty,
    /// A token was not what the grammar allows at that place.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What the parser wanted, e.g. "a time like 22:00".
        expected: &'static str,
        /// The offending token in backquotes, or "end of input".
        found: String,
    },
    /// A `"` was opened and never closed.
    #[error("unterminated quote in {0:?}")]
    UnterminatedQuote(String),
    /// The `tz` name is not in the time zone database.
    #[error("unknown time zone `{name}`: {reason}")]
    UnknownTimeZone {
        /// The name given after `tz`.
        name: String,
        /// The lookup error.
        reason: String,
    },
    /// croner rejected the cron expression.
    #[error("invalid cron expression `{expr}`: {reason}")]
    InvalidCron {
        /// The expression as given.
        expr: String,
        /// croner's explanation.
        reason: String,
    },
}

impl ParseError {
    pub(crate) fn expected(expected: &'static str, found: Option<&str>) -> Self {
        ParseError::Expected {
            expected,
            found: match found {
                Some(t) => format!("`{t}`"),
                None => "end of input".to_owned(),
            },
        }
    }
}
