//! Parsers for the endpoint picker's tokenization flags (usable as clap `value_parser`s).
//!
//! `--tokenize-timeout 200ms` (also `1s`, `1.5s`, `750us`, or a bare number of milliseconds) and
//! `--tokenize-cache-bytes 256Mi` (also `1Gi`, `500M`, `64k`, or bytes).

use std::time::Duration;

use crate::error::Error;

/// A duration: a number with unit `us`, `ms`, `s` or `m`; a bare number is milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, Error> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| Error::Config(format!("bad duration {s:?} (e.g. 200ms, 1.5s)")))?;
    let seconds = match unit.trim() {
        "us" | "µs" => value / 1e6,
        "" | "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        other => {
            return Err(Error::Config(format!(
                "bad duration unit {other:?} in {s:?}"
            )));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(Error::Config(format!("bad duration {s:?}")));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A byte count: a number with an optional `k`/`M`/`G` (powers of 1000) or `Ki`/`Mi`/`Gi` suffix.
pub fn parse_bytes(s: &str) -> Result<usize, Error> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| Error::Config(format!("bad byte count {s:?} (e.g. 256Mi)")))?;
    let scale: usize = match unit.trim().trim_end_matches('B') {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => return Err(Error::Config(format!("bad byte unit {other:?} in {s:?}"))),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| Error::Config(format!("byte count {s:?} overflows")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("200").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("750us").unwrap(), Duration::from_micros(750));
        for bad in ["", "ms", "1h", "-1s", "x"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("256Mi").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("64k").unwrap(), 64_000);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("0").unwrap(), 0);
        for bad in ["", "Mi", "1Ti", "1.5G", "99999999999999999999"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }
}
