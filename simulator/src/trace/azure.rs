//! Azure LLM inference traces (`AzureLLMInferenceTrace_{code,conv}.csv`, Splitwise, ISCA'24).
//!
//! CSV with header `TIMESTAMP,ContextTokens,GeneratedTokens`; timestamps are wall-clock
//! (`2023-11-16 18:15:46.6805900`) and become offsets from the first row. There is no prefix
//! information, so every prompt is content of its own: no request shares a block with another, and
//! the trace measures load balancing alone.

use std::path::Path;

use super::{PromptSpec, Segment, Trace, TraceRequest, bad_line, tokens};
use crate::clock::SimTime;
use crate::error::SimError;

/// Parses a whole Azure CSV trace; `path` only names errors.
pub fn parse(path: &Path, text: &str) -> Result<Trace, SimError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == "TIMESTAMP,ContextTokens,GeneratedTokens" => {}
        _ => {
            return Err(bad_line(
                path,
                1,
                "expected header TIMESTAMP,ContextTokens,GeneratedTokens",
            ));
        }
    }
    let mut requests = Vec::new();
    let mut epoch: Option<f64> = None;
    for (i, raw) in lines {
        if raw.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        let mut fields = raw.split(',');
        let (Some(ts), Some(ctx), Some(gen_), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad_line(path, line, "expected 3 comma-separated fields"));
        };
        let secs = parse_timestamp(ts.trim())
            .ok_or_else(|| bad_line(path, line, format!("bad TIMESTAMP {ts:?}")))?;
        let ctx: u32 = ctx
            .trim()
            .parse()
            .map_err(|_| bad_line(path, line, format!("bad ContextTokens {ctx:?}")))?;
        let gen_: u32 = gen_
            .trim()
            .parse()
            .map_err(|_| bad_line(path, line, format!("bad GeneratedTokens {gen_:?}")))?;
        if ctx == 0 {
            return Err(bad_line(path, line, "ContextTokens must be positive"));
        }
        let start = *epoch.get_or_insert(secs);
        requests.push(TraceRequest {
            arrival: SimTime::from_secs_f64(secs - start),
            prompt: PromptSpec::Segments(vec![Segment {
                id: tokens::content_id("azure", &[line as u64]),
                len: ctx,
            }]),
            output_tokens: gen_.max(1),
            output_id: tokens::content_id("azure-output", &[line as u64]),
            model: None,
            lora: None,
            session: None,
            objective: Default::default(),
        });
    }
    Ok(Trace {
        name: path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into()),
        requests,
        prefix_block_tokens: None,
    })
}

/// Seconds since 1970 of `YYYY-MM-DD HH:MM:SS[.fraction]` (UTC, proleptic Gregorian).
fn parse_timestamp(s: &str) -> Option<f64> {
    let (date, time) = s.split_once(' ')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec >= 61.0 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_relative_times() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 23:59:59.5,374,44\n2023-11-17 00:00:01.0,396,0\n";
        let t = parse(Path::new("a.csv"), text).unwrap();
        assert_eq!(t.requests[1].arrival, SimTime::from_millis(1500));
        assert_eq!(t.requests[1].output_tokens, 1);
        assert_eq!(t.requests[0].input_tokens(), 374);
        assert_eq!(parse_timestamp("1970-01-02 00:00:00"), Some(86_400.0));
    }

    #[test]
    fn bad_lines_are_named() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,x,44\n";
        let e = parse(Path::new("a.csv"), text).unwrap_err().to_string();
        assert!(e.starts_with("a.csv:2: bad ContextTokens"), "{e}");
    }
}
