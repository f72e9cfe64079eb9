//! Mooncake FAST'25 traces (`conversation_trace.jsonl`, `synthetic_trace.jsonl`).
//!
//! One JSON object per line: `timestamp` (arrival, ms), `input_length`, `output_length` (tokens) and
//! `hash_ids`, one id per 512-token block of the prompt, chained (equal only when the whole prefix
//! up to that block is equal); the last block may be partial. Each hash id becomes a [`Segment`] of
//! that id's synthetic token stream, so two requests sharing hash ids share tokens and block keys.

use std::path::Path;

use serde::Deserialize;

use super::{PromptSpec, Segment, Trace, TraceRequest, bad_line, tokens};
use crate::clock::SimTime;
use crate::error::SimError;

/// Tokens per Mooncake hash id.
pub const BLOCK_TOKENS: u32 = 512;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    timestamp: f64,
    input_length: u32,
    output_length: u32,
    hash_ids: Vec<u64>,
}

/// The synthetic content id of Mooncake hash id `hash_id`.
pub fn segment_id(hash_id: u64) -> u64 {
    tokens::content_id("mooncake", &[hash_id])
}

/// Parses a whole Mooncake trace; `path` only names errors.
pub fn parse(path: &Path, text: &str) -> Result<Trace, SimError> {
    let mut requests = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        let l: Line = serde_json::from_str(raw).map_err(|e| bad_line(path, line, e.to_string()))?;
        if !(l.timestamp.is_finite() && l.timestamp >= 0.0) {
            return Err(bad_line(
                path,
                line,
                "timestamp must be a non-negative number",
            ));
        }
        if l.input_length == 0 {
            return Err(bad_line(path, line, "input_length must be positive"));
        }
        let expected = l.input_length.div_ceil(BLOCK_TOKENS) as usize;
        if l.hash_ids.len() != expected {
            return Err(bad_line(
                path,
                line,
                format!(
                    "{} hash_ids for input_length {} (expected ceil({}/512) = {expected})",
                    l.hash_ids.len(),
                    l.input_length,
                    l.input_length
                ),
            ));
        }
        let mut left = l.input_length;
        let segments = l
            .hash_ids
            .iter()
            .map(|&h| {
                let len = left.min(BLOCK_TOKENS);
                left -= len;
                Segment {
                    id: segment_id(h),
                    len,
                }
            })
            .collect();
        requests.push(TraceRequest {
            arrival: SimTime::from_secs_f64(l.timestamp / 1000.0),
            prompt: PromptSpec::Segments(segments),
            output_tokens: l.output_length.max(1),
            output_id: tokens::content_id("mooncake-output", &[line as u64]),
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
        prefix_block_tokens: Some(BLOCK_TOKENS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_splits_blocks() {
        let text = "{\"timestamp\": 1500, \"input_length\": 1100, \"output_length\": 0, \"hash_ids\": [0, 1, 2]}\n";
        let t = parse(Path::new("m.jsonl"), text).unwrap();
        let r = &t.requests[0];
        assert_eq!(r.arrival, SimTime::from_millis(1500));
        assert_eq!(r.input_tokens(), 1100);
        assert_eq!(r.output_tokens, 1, "zero outputs are raised to one token");
        let PromptSpec::Segments(s) = &r.prompt else {
            panic!("segments expected")
        };
        assert_eq!(s.iter().map(|s| s.len).collect::<Vec<_>>(), [512, 512, 76]);
    }

    #[test]
    fn errors_name_file_and_line() {
        let text = "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [0]}\n\n{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 1, \"hash_ids\": [0]}\n";
        let e = parse(Path::new("t.jsonl"), text).unwrap_err().to_string();
        assert!(e.starts_with("t.jsonl:3: 1 hash_ids"), "{e}");
        let e = parse(Path::new("t.jsonl"), "{oops")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.jsonl:1:"), "{e}");
    }
}
