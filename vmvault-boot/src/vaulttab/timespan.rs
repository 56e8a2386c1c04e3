//! systemd's time-span syntax (`parse_sec`): `30`, `30s`, `500ms`, `1min 30s`, `2h`,
//! `infinity`. A number without a unit is seconds.

use std::time::Duration;

use super::error::TimespanError;

/// Units systemd accepts, longest first within each prefix so `ms` is not read as `m`.
const UNITS: &[(&str, u64)] = &[
    ("usec", 1),
    ("us", 1),
    ("µs", 1),
    ("msec", 1_000),
    ("ms", 1_000),
    ("seconds", 1_000_000),
    ("second", 1_000_000),
    ("sec", 1_000_000),
    ("s", 1_000_000),
    ("minutes", 60_000_000),
    ("minute", 60_000_000),
    ("min", 60_000_000),
    ("months", 2_629_800_000_000),
    ("month", 2_629_800_000_000),
    ("M", 2_629_800_000_000),
    ("m", 60_000_000),
    ("hours", 3_600_000_000),
    ("hour", 3_600_000_000),
    ("hr", 3_600_000_000),
    ("h", 3_600_000_000),
    ("days", 86_400_000_000),
    ("day", 86_400_000_000),
    ("d", 86_400_000_000),
    ("weeks", 604_800_000_000),
    ("week", 604_800_000_000),
    ("w", 604_800_000_000),
    ("years", 31_557_600_000_000),
    ("year", 31_557_600_000_000),
    ("y", 31_557_600_000_000),
];

/// Parses a time span. `infinity` gives [`Duration::MAX`]. Fractions (`1.5s`) are
/// accepted as systemd accepts them.
pub fn parse_timespan(s: &str) -> Result<Duration, TimespanError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(TimespanError::Empty);
    }
    if s == "infinity" {
        return Ok(Duration::MAX);
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_end];
        if num.is_empty() || num.starts_with('.') && num.len() == 1 {
            return Err(TimespanError::NotANumber(rest.to_string()));
        }
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if frac.contains('.') {
            return Err(TimespanError::NotANumber(rest.to_string()));
        }
        rest = rest[num_end..].trim_start();
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        let mult = if unit.is_empty() {
            1_000_000
        } else {
            UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, m)| *m)
                .ok_or_else(|| TimespanError::UnknownUnit(unit.to_string()))?
        };
        rest = &rest[unit_end..];
        let i: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| TimespanError::Overflow)?
        };
        let mut v = i.checked_mul(mult as u128).ok_or(TimespanError::Overflow)?;
        let mut scale = mult as u128;
        for d in frac.bytes().take(18) {
            scale /= 10;
            v += (d - b'0') as u128 * scale;
        }
        total = total.checked_add(v).ok_or(TimespanError::Overflow)?;
    }
    let secs = u64::try_from(total / 1_000_000).map_err(|_| TimespanError::Overflow)?;
    Ok(Duration::new(secs, (total % 1_000_000) as u32 * 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(parse_timespan("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_timespan("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_timespan("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_timespan("1min 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_timespan("1min30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_timespan("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_timespan("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_timespan("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_timespan("infinity").unwrap(), Duration::MAX);
        assert!(parse_timespan("").is_err());
        assert!(parse_timespan("x").is_err());
        assert!(parse_timespan("5 parsecs").is_err());
        assert!(parse_timespan("1..2s").is_err());
        assert!(parse_timespan(".").is_err());
    }
}
