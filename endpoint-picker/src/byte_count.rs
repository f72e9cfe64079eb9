//! Byte counts on the command line (`--tokenize-cache-bytes 256Mi`; also `1Gi`, `500M`, `64k`,
//! or bytes), as a clap `value_parser`. Durations have their own, shared syntax:
//! [`kvpick_scheduler::duration`].

/// A byte count: a number with an optional `k`/`M`/`G` (powers of 1000) or `Ki`/`Mi`/`Gi` suffix.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("bad byte count {s:?} (e.g. 256Mi)"))?;
    let scale: usize = match unit.trim().trim_end_matches('B') {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => return Err(format!("bad byte unit {other:?} in {s:?}")),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("byte count {s:?} overflows"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
