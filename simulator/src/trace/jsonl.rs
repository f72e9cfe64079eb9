//! kvpick's own trace format: JSON Lines, one request per line.
//!
//! ```text
//! {"timestamp_ms": 12.5, "output_length": 200,            required: arrival (ms) and output tokens
//!  "tokens": [151644, 872, ...]                           the prompt, exactly one of: token ids,
//!  | "segments": [[id, len], ...]                         synthetic segments (see `trace::tokens`),
//!  | "hash_ids": [...], "input_length": N,                Mooncake-style chained prefix blocks of
//!    "block_tokens": 512                                  `block_tokens` (default 512) tokens
//!  "output_id": 42,                                       optional: output token stream (chat turns)
//!  "model": "qwen3-32b", "lora": "sql-adapter",           optional: model, LoRA adapter,
//!  "session": "user-17",                                  session id,
//!  "priority": -1,                                        priority (default 0; negative:
//!                                                         sheddable), latency objectives in
//!  "slo_ttft_ms": 500, "slo_tpot_ms": 50}                 whole ms (default: the config's)
//! ```
//!
//! Unknown fields are errors (they are usually typos). Generators write this format. The
//! objectives and priority are what the endpoint picker reads from `x-slo-ttft-ms`,
//! `x-slo-tpot-ms` and the request's InferenceObjective: with a `predicted-latency-scorer`
//! policy, a sheddable request predicted to miss them on every engine is shed, a critical one
//! waits in flow control (when on) for an engine predicted to meet them, then goes best-effort.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use kvpick_scheduler::Slo;

use super::{Objective, PromptSpec, Segment, Trace, TraceRequest, bad_line, tokens};
use crate::clock::SimTime;
use crate::error::SimError;

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Line {
    timestamp_ms: f64,
    output_length: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tokens: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    segments: Option<Vec<(u64, u32)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash_ids: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input_length: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    block_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lora: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slo_ttft_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slo_tpot_ms: Option<i64>,
}

fn is_zero(p: &i32) -> bool {
    *p == 0
}

/// An objective in whole ms, accepted as the endpoint picker accepts its headers. Read as signed
/// so that a negative one is refused by this rule, naming its field, rather than by serde.
fn slo_ms(name: &str, ms: Option<i64>) -> Result<Option<Duration>, String> {
    match ms {
        None => Ok(None),
        Some(ms) => (u64::try_from(ms).ok().and_then(Slo::objective_ms))
            .map(Some)
            .ok_or_else(|| format!("{name} must be 1..={}, got {ms}", Slo::MAX_MS)),
    }
}

/// Parses a whole kvpick JSONL trace; `path` only names errors.
pub fn parse(path: &Path, text: &str) -> Result<Trace, SimError> {
    let mut requests = Vec::new();
    let mut block_tokens_seen: Option<u32> = None;
    let mut all_blocks = true;
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        let bad = |m: String| bad_line(path, line, m);
        let l: Line = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        if !(l.timestamp_ms.is_finite() && l.timestamp_ms >= 0.0) {
            return Err(bad("timestamp_ms must be a non-negative number".into()));
        }
        let prompt = match (l.tokens, l.segments, l.hash_ids) {
            (Some(t), None, None) => {
                all_blocks = false;
                PromptSpec::Tokens(t.into())
            }
            (None, Some(s), None) => {
                all_blocks = false;
                PromptSpec::Segments(s.into_iter().map(|(id, len)| Segment { id, len }).collect())
            }
            (None, None, Some(ids)) => {
                let bt = l.block_tokens.unwrap_or(512);
                let n = l
                    .input_length
                    .ok_or_else(|| bad("hash_ids needs input_length".into()))?;
                if bt == 0 || ids.len() != n.div_ceil(bt) as usize {
                    return Err(bad(format!(
                        "{} hash_ids for input_length {n} in blocks of {bt}",
                        ids.len()
                    )));
                }
                if block_tokens_seen.is_some_and(|b| b != bt) {
                    all_blocks = false;
                }
                block_tokens_seen = Some(bt);
                let mut left = n;
                PromptSpec::Segments(
                    ids.iter()
                        .map(|&h| {
                            let len = left.min(bt);
                            left -= len;
                            Segment {
                                id: super::mooncake::segment_id(h),
                                len,
                            }
                        })
                        .collect(),
                )
            }
            _ => {
                return Err(bad(
                    "exactly one of tokens, segments, hash_ids must be given".into(),
                ));
            }
        };
        if prompt.is_empty() {
            return Err(bad("empty prompt".into()));
        }
        let slo = Slo {
            ttft: slo_ms("slo_ttft_ms", l.slo_ttft_ms).map_err(bad)?,
            tpot: slo_ms("slo_tpot_ms", l.slo_tpot_ms).map_err(bad)?,
        };
        requests.push(TraceRequest {
            arrival: SimTime::from_secs_f64(l.timestamp_ms / 1000.0),
            prompt,
            output_tokens: l.output_length.max(1),
            output_id: l
                .output_id
                .unwrap_or_else(|| tokens::content_id("kvpick-output", &[line as u64])),
            model: l.model.map(Arc::from),
            lora: l.lora.map(Arc::from),
            session: l.session.map(Arc::from),
            objective: Objective {
                priority: l.priority,
                slo,
            },
        });
    }
    Ok(Trace {
        name: path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into()),
        prefix_block_tokens: block_tokens_seen.filter(|_| all_blocks && !requests.is_empty()),
        requests,
    })
}

/// Writes `trace` in kvpick's JSONL format.
pub fn write(trace: &Trace, out: &mut impl Write) -> std::io::Result<()> {
    for r in &trace.requests {
        let mut l = Line {
            timestamp_ms: r.arrival.micros() as f64 / 1000.0,
            output_length: r.output_tokens,
            output_id: Some(r.output_id),
            model: r.model.as_deref().map(str::to_owned),
            lora: r.lora.as_deref().map(str::to_owned),
            session: r.session.as_deref().map(str::to_owned),
            priority: r.objective.priority,
            slo_ttft_ms: r.objective.slo.ttft.map(|d| d.as_millis() as i64),
            slo_tpot_ms: r.objective.slo.tpot.map(|d| d.as_millis() as i64),
            ..Line::default()
        };
        match &r.prompt {
            PromptSpec::Tokens(t) => l.tokens = Some(t.to_vec()),
            PromptSpec::Segments(s) => l.segments = Some(s.iter().map(|s| (s.id, s.len)).collect()),
        }
        serde_json::to_writer(&mut *out, &l)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_ambiguity() {
        let text = concat!(
            "{\"timestamp_ms\": 1.5, \"output_length\": 3, \"tokens\": [1,2,3], \"lora\": \"a\"}\n",
            "{\"timestamp_ms\": 2, \"output_length\": 3, \"segments\": [[9, 40]], \"session\": \"s\"}\n",
            "{\"timestamp_ms\": 3, \"output_length\": 3, \"hash_ids\": [1, 2], \"input_length\": 20, \"block_tokens\": 16, \"priority\": -1, \"slo_ttft_ms\": 500, \"slo_tpot_ms\": 40}\n",
        );
        let t = parse(Path::new("k.jsonl"), text).unwrap();
        assert_eq!(t.requests.len(), 3);
        assert_eq!(t.requests[0].lora.as_deref(), Some("a"));
        assert_eq!(t.requests[2].input_tokens(), 20);
        let objective = Objective {
            priority: -1,
            slo: Slo {
                ttft: Some(Duration::from_millis(500)),
                tpot: Some(Duration::from_millis(40)),
            },
        };
        assert_eq!(t.requests[2].objective, objective);
        assert_eq!(t.requests[0].objective, Objective::default());
        let mut buf = Vec::new();
        write(&t, &mut buf).unwrap();
        let back = parse(Path::new("k.jsonl"), std::str::from_utf8(&buf).unwrap()).unwrap();
        for (a, b) in t.requests.iter().zip(&back.requests) {
            let (mut ta, mut tb) = (Vec::new(), Vec::new());
            a.prompt.materialize(&mut ta);
            b.prompt.materialize(&mut tb);
            assert_eq!(
                (ta, a.arrival, a.output_id, a.objective),
                (tb, b.arrival, b.output_id, b.objective)
            );
        }
        let e = parse(
            Path::new("k.jsonl"),
            "{\"timestamp_ms\": 1, \"output_length\": 3, \"tokens\": [1], \"segments\": []}",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("k.jsonl:1: exactly one"), "{e}");
        let e = parse(
            Path::new("k.jsonl"),
            "{\"timestamp_ms\": 1, \"output_len\": 3}",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("k.jsonl:1: unknown field"), "{e}");
        for bad in [
            "\"slo_ttft_ms\": 0",
            "\"slo_tpot_ms\": 3600001",
            "\"slo_ttft_ms\": -5",
        ] {
            let line =
                format!("{{\"timestamp_ms\": 1, \"output_length\": 3, \"tokens\": [1], {bad}}}");
            let e = parse(Path::new("k.jsonl"), &line).unwrap_err().to_string();
            assert!(e.starts_with("k.jsonl:1:") && e.contains("slo_t"), "{e}");
        }
    }
}
