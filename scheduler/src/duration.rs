//! kvpick's one duration syntax, for flags, environment variables, config files and simulator
//! options alike: a number with its unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, `d`, and the long
//! forms `sec`, `min`, ...), parts combined (`1m30s`, `1h 5m`), decimals allowed (`1.5s`). A bare
//! number is refused: `200` could mean 200 ms or 200 s, and the two readings differ a thousandfold.

use std::time::Duration;

/// What a duration looks like, for `--help` and error messages.
pub const EXPECTED: &str = "a duration with its unit, such as 500ms, 2s or 1m30s";

/// Why a text is not a duration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not {EXPECTED}: {reason}")]
pub struct DurationError {
    text: String,
    reason: String,
}

/// Parses `text` (surrounding spaces ignored).
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    humantime::parse_duration(t).map_err(|e| DurationError {
        text: text.to_owned(),
        reason: e.to_string(),
    })
}

/// [`parse`] with a `String` error, as clap's `value_parser` takes it.
pub fn parse_flag(text: &str) -> Result<Duration, String> {
    parse(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_their_unit() {
        assert_eq!(parse("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse(" 2s "), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        for bad in ["", "2", "1.5", "s", "2x", "-1s", "soon"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let e = parse("200").unwrap_err().to_string();
        assert!(e.contains("\"200\"") && e.contains("unit"), "{e}");
    }
}
