//! Value parsers of the arguments: sizes, rates, durations, file modes, on/off.

/// Parses a size with an optional K or M suffix (powers of two).
pub fn parse_size(s: &str) -> Result<u32, String> {
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        _ => (s, 0),
    };
    num.parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size (e.g. 64K, 32M)"))
}

/// Parses `256K`, `1M`, `4M` or a byte count.
pub fn parse_block_size(s: &str) -> Result<u32, String> {
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u32 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1u32 << 20),
        _ => (s, 1),
    };
    let n: u32 = num.parse().map_err(|_| format!("invalid block size {s:?}"))?;
    let v = n
        .checked_mul(mul)
        .ok_or_else(|| format!("block size {s:?} too large"))?;
    if cairn_format::index::BLOCK_SIZES.contains(&v) {
        Ok(v)
    } else {
        Err(format!("block size {s:?} is not one of 256K, 512K, 1M, 4M"))
    }
}

/// Parses permission bits in octal (`640`, `0640`, `0o640`): read, write and
/// execute bits only.
pub fn parse_file_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode =
        u32::from_str_radix(digits, 8).map_err(|_| format!("{s:?} is not an octal file mode such as 600 or 0640"))?;
    if mode & 0o7000 != 0 {
        return Err(format!(
            "{s}: setuid, setgid and sticky bits are refused for a restored image (use read/write/execute bits, e.g. 640)"
        ));
    }
    if mode > 0o777 {
        return Err(format!("{s} is not a file mode (at most 777)"));
    }
    Ok(mode)
}

/// Parses a rate per second: `100MiB`, `50M`, `1G`, `10MB` (decimal), a byte count; `0`,
/// `none` or `unlimited` give 0 (no limit). K/M/G/T and KiB/MiB/GiB/TiB are powers of two,
/// KB/MB/GB/TB powers of ten; a trailing `/s` is allowed.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    if t.eq_ignore_ascii_case("none") || t.eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let mul: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(format!("{s:?} is not a rate (e.g. 100MiB, 1G, 0 for unlimited)")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (e.g. 100MiB, 1G, 0 for unlimited)"))?;
    let v = n * mul;
    if !v.is_finite() || v >= u64::MAX as f64 / 2.0 {
        return Err(format!("rate {s:?} is too large"));
    }
    Ok(v.round() as u64)
}

/// Parses a duration in seconds: `600`, `30s`, `10m`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('h') => (&t[..t.len() - 1], 3600),
        Some('d') => (&t[..t.len() - 1], 86_400),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 30s, 10m, 2h)"))
}

/// Parses `on`/`off` (also true/false, yes/no).
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100MiB"), Ok(100 << 20));
        assert_eq!(parse_rate("100M/s"), Ok(100 << 20));
        assert_eq!(parse_rate("10MB"), Ok(10_000_000));
        assert_eq!(parse_rate("1.5G"), Ok(3 << 29));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("none"), Ok(0));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10 parsecs").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("45"), Ok(45));
        assert!(parse_duration("soon").is_err());
    }
}
