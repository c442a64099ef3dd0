//! Tokens and the small pieces shared by the schedule and window syntaxes.

use std::fmt;

use jiff::civil::{Time, Weekday};

use crate::error::ParseError;

/// One word of input; `quoted` words came from `"..."` and are never keywords.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub text: String,
    pub quoted: bool,
}

/// Splits on whitespace; `"..."` groups words (with `\"` and `\\` escapes).
pub(crate) fn tokenize(s: &str) -> Result<Vec<Token>, ParseError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut text = String::new();
            loop {
                match chars.next() {
                    None => return Err(ParseError::UnterminatedQuote(s.to_owned())),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(e) => text.push(e),
                        None => return Err(ParseError::UnterminatedQuote(s.to_owned())),
                    },
                    Some(o) => text.push(o),
                }
            }
            out.push(Token { text, quoted: true });
        } else {
            let mut text = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '"' {
                    break;
                }
                text.push(c);
                chars.next();
            }
            out.push(Token { text, quoted: false });
        }
    }
    Ok(out)
}

/// Writes `s` as one token, quoting when needed.
pub(crate) fn write_word(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let plain = !s.is_empty()
        && !s.chars().any(|c| c.is_whitespace() || c == '"' || c == '\\')
        && !s.eq_ignore_ascii_case("tz");
    if plain {
        return f.write_str(s);
    }
    f.write_str("\"")?;
    for c in s.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// A cursor over tokens.
pub(crate) struct Tokens {
    toks: Vec<Token>,
    pos: usize,
}

impl Tokens {
    pub fn new(toks: Vec<Token>) -> Self {
        Tokens { toks, pos: 0 }
    }
    pub fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }
    pub fn next_tok(&mut self) -> Option<Token> {
        let t = self.toks.get(self.pos).cloned();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }
    /// True (and consumes) if the next token is the unquoted keyword `kw`.
    pub fn eat(&mut self, kw: &str) -> bool {
        match self.peek() {
            Some(t) if !t.quoted && t.text.eq_ignore_ascii_case(kw) => {
                self.pos += 1;
                true
            }
            _ => false,
        }
    }
    /// The next token's text, or the "expected" error.
    pub fn expect(&mut self, what: &'static str) -> Result<Token, ParseError> {
        self.next_tok().ok_or_else(|| ParseError::expected(what, None))
    }
    pub fn is_done(&self) -> bool {
        self.pos >= self.toks.len()
    }
}

/// Parses `HH:MM` (00:00–23:59).
pub(crate) fn parse_time(s: &str) -> Option<Time> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: i8 = h.parse().ok()?;
    let m: i8 = m.parse().ok()?;
    Time::new(h, m, 0, 0).ok()
}

/// Parses a comma list of times, sorted and without duplicates.
pub(crate) fn parse_times(tok: Option<&Token>) -> Result<Vec<Time>, ParseError> {
    const WHAT: &str = "times like 22:00 or 01:00,13:00";
    let tok = tok.ok_or_else(|| ParseError::expected(WHAT, None))?;
    let mut v = Vec::new();
    for part in tok.text.split(',') {
        v.push(parse_time(part).ok_or_else(|| ParseError::expected(WHAT, Some(&tok.text)))?);
    }
    v.sort();
    v.dedup();
    Ok(v)
}

pub(crate) struct Hm(pub Time);

impl fmt::Display for Hm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0.hour(), self.0.minute())
    }
}

pub(crate) struct TimeList<'a>(pub &'a [Time]);

impl fmt::Display for TimeList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", Hm(*t))?;
        }
        Ok(())
    }
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const FULL_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// Parses one weekday name (`mon` or `monday`), Monday = 0.
pub(crate) fn parse_weekday(s: &str) -> Option<u8> {
    let l = s.to_ascii_lowercase();
    (0..7u8).find(|&i| DAY_NAMES[i as usize] == l || FULL_NAMES[i as usize] == l)
}

pub(crate) fn weekday_from_index(i: u8) -> Weekday {
    Weekday::from_monday_zero_offset(i as i8).unwrap_or(Weekday::Monday)
}

/// A set of weekdays (bit 0 = Monday … bit 6 = Sunday). Written `mon-fri`, `sat,sun`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Weekdays(u8);

impl Weekdays {
    /// All seven days.
    pub const ALL: Weekdays = Weekdays(0x7f);
    /// Monday to Friday.
    pub const WORKDAYS: Weekdays = Weekdays(0x1f);

    /// The set holding only `day`.
    pub fn single(day: Weekday) -> Weekdays {
        Weekdays(1 << day.to_monday_zero_offset())
    }
    /// Adds `day`.
    pub fn with(self, day: Weekday) -> Weekdays {
        Weekdays(self.0 | Weekdays::single(day).0)
    }
    /// Whether `day` is in the set.
    pub fn contains(self, day: Weekday) -> bool {
        self.0 & (1 << day.to_monday_zero_offset()) != 0
    }
    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Whether the set holds all seven days.
    pub fn is_all(self) -> bool {
        self.0 == 0x7f
    }

    /// Parses a day list; `None` when the token is not one.
    pub(crate) fn parse(s: &str) -> Option<Weekdays> {
        let mut bits = 0u8;
        for part in s.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (parse_weekday(a)?, parse_weekday(b)?);
                    let mut i = a;
                    loop {
                        bits |= 1 << i;
                        if i == b {
                            break;
                        }
                        i = (i + 1) % 7;
                    }
                }
                None => bits |= 1 << parse_weekday(part)?,
            }
        }
        Some(Weekdays(bits))
    }
}

impl fmt::Display for Weekdays {
    /// Runs of three or more days as ranges, others as single names, e.g. `mon-wed,fri,sun`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0u8;
        while i < 7 {
            if self.0 & (1 << i) == 0 {
                i += 1;
                continue;
            }
            let mut j = i;
            while j + 1 < 7 && self.0 & (1 << (j + 1)) != 0 {
                j += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if j >= i + 2 {
                write!(f, "{}-{}", DAY_NAMES[i as usize], DAY_NAMES[j as usize])?;
                i = j + 1;
            } else {
                f.write_str(DAY_NAMES[i as usize])?;
                i += 1;
            }
        }
        Ok(())
    }
}
