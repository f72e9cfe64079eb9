//! Request traces: when each request arrives, what its prompt is, how many tokens it generates.
//!
//! Prompts are kept compact: most traces name *content* rather than carry tokens (Mooncake gives
//! ids of 512-token blocks, generators give ids of system prompts and questions), so a prompt is a
//! list of [`Segment`]s, each a deterministic run of synthetic tokens derived from its id (see
//! [`tokens`]). Equal ids give equal tokens, so requests that share content share block keys, and the
//! real `keys::block_keys` + index path runs unchanged. Traces that carry real token ids keep them.
//!
//! Loaders: [`mooncake`], [`azure`], kvpick's own [`jsonl`]; generators: [`generate`].

pub mod azure;
pub mod generate;
pub mod jsonl;
pub mod mooncake;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::clock::SimTime;
use crate::error::SimError;

/// A run of deterministic synthetic tokens: the first `len` tokens of the stream named by `id`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Names the content; equal ids mean equal tokens.
    pub id: u64,
    /// Tokens taken from the stream.
    pub len: u32,
}

/// A request's prompt.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptSpec {
    /// Synthetic tokens, segment after segment.
    Segments(Vec<Segment>),
    /// Literal token ids.
    Tokens(Arc<[u32]>),
}

impl PromptSpec {
    /// Prompt length in tokens.
    pub fn len(&self) -> usize {
        match self {
            PromptSpec::Segments(s) => s.iter().map(|s| s.len as usize).sum(),
            PromptSpec::Tokens(t) => t.len(),
        }
    }

    /// Whether the prompt has no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the prompt's tokens into `out` (cleared first).
    pub fn materialize(&self, out: &mut Vec<u32>) {
        out.clear();
        match self {
            PromptSpec::Segments(segments) => {
                out.reserve(self.len());
                for s in segments {
                    tokens::extend(s.id, s.len, out);
                }
            }
            PromptSpec::Tokens(t) => out.extend_from_slice(t),
        }
    }
}

/// One request of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRequest {
    /// When it arrives at the router.
    pub arrival: SimTime,
    /// Its prompt.
    pub prompt: PromptSpec,
    /// Tokens it generates (vLLM `max_tokens` with `ignore_eos`); at least 1.
    pub output_tokens: u32,
    /// Names the synthetic stream its output tokens are drawn from: a multi-turn chat reuses it as
    /// the next turn's assistant segment, so the answer's KV blocks can be hit.
    pub output_id: u64,
    /// Served model name; `None` means the run's default model.
    pub model: Option<Arc<str>>,
    /// LoRA adapter, which partitions the prefix cache.
    pub lora: Option<Arc<str>>,
    /// Session id, for session affinity.
    pub session: Option<Arc<str>>,
    /// Its priority and latency objectives.
    pub objective: Objective,
}

/// What a request asks of the pool beyond its tokens, as the endpoint picker reads it from the
/// request's headers (`x-slo-ttft-ms`, `x-slo-tpot-ms`, its InferenceObjective's priority): the
/// simulator's admission acts on it with the picker's own verdicts ([`kvpick_scheduler::slo`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Objective {
    /// Priority; negative is sheddable.
    pub priority: i32,
    /// Latency objectives; none by default (the picker config's defaults then apply).
    pub slo: kvpick_scheduler::Slo,
}

impl TraceRequest {
    /// Prompt length in tokens.
    pub fn input_tokens(&self) -> u32 {
        u32::try_from(self.prompt.len()).unwrap_or(u32::MAX)
    }
}

/// A whole trace, sorted by arrival.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// Where it came from, for reports.
    pub name: String,
    /// The requests, in arrival order.
    pub requests: Vec<TraceRequest>,
    /// For traces whose segments are chained prefix blocks of a fixed size (Mooncake: 512), that
    /// size: the global cache analysis then matches on segment ids exactly as the trace defines.
    pub prefix_block_tokens: Option<u32>,
}

/// Input formats [`load`] understands.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceFormat {
    /// Pick by content: Mooncake JSONL (`hash_ids`), Azure CSV (`TIMESTAMP` header), kvpick JSONL.
    Auto,
    /// Mooncake FAST'25 JSONL.
    Mooncake,
    /// Azure LLM inference CSV.
    Azure,
    /// kvpick's own JSONL.
    Kvpick,
}

/// Loads a trace file.
pub fn load(path: &Path, format: TraceFormat) -> Result<Trace, SimError> {
    let text = std::fs::read_to_string(path).map_err(|e| SimError::io(path, e))?;
    let format = match format {
        TraceFormat::Auto => sniff(&text),
        f => f,
    };
    let mut trace = match format {
        TraceFormat::Mooncake => mooncake::parse(path, &text)?,
        TraceFormat::Azure => azure::parse(path, &text)?,
        _ => jsonl::parse(path, &text)?,
    };
    trace.sort();
    Ok(trace)
}

fn sniff(text: &str) -> TraceFormat {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if first.starts_with("TIMESTAMP") {
        TraceFormat::Azure
    } else if first.contains("\"hash_ids\"") {
        TraceFormat::Mooncake
    } else {
        TraceFormat::Kvpick
    }
}

impl Trace {
    /// Sorts by arrival, keeping the file order of simultaneous arrivals.
    pub fn sort(&mut self) {
        self.requests.sort_by_key(|r| r.arrival);
    }

    /// Multiplies every arrival time by `factor` (< 1 compresses the trace: more load).
    pub fn scale_time(&mut self, factor: f64) -> Result<(), SimError> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(SimError::InvalidConfig(format!(
                "--time-scale must be a positive number, got {factor}"
            )));
        }
        for r in &mut self.requests {
            r.arrival = SimTime((r.arrival.micros() as f64 * factor).round() as u64);
        }
        Ok(())
    }

    /// Keeps each request with probability `fraction`, deterministically for `seed`.
    pub fn sample(&mut self, fraction: f64, seed: u64) -> Result<(), SimError> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(SimError::InvalidConfig(format!(
                "--sample must be in (0, 1], got {fraction}"
            )));
        }
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5a3c_9e1d_77b2_0f41);
        self.requests.retain(|_| rng.random::<f64>() < fraction);
        Ok(())
    }

    /// Spreads each arrival uniformly over `[t, t + window)`, deterministically for `seed`, and
    /// sorts again. For traces recorded at a coarse resolution (the Mooncake conversation trace's
    /// timestamps are whole seconds, up to 16 requests on one): read literally, a second's
    /// requests arrive at one instant, which no picker replica can see each other's picks within.
    pub fn jitter(&mut self, window: SimTime, seed: u64) {
        if window == SimTime::ZERO {
            return;
        }
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x71e2_4a0b_c3d9_5f86);
        for r in &mut self.requests {
            let shift = rng.random_range(0..window.micros());
            r.arrival = r.arrival.plus_micros(shift);
        }
        self.sort();
    }

    /// Keeps the first `n` requests.
    pub fn limit(&mut self, n: usize) {
        self.requests.truncate(n);
    }

    /// Total prompt tokens.
    pub fn input_tokens(&self) -> u64 {
        self.requests.iter().map(|r| r.input_tokens() as u64).sum()
    }

    /// Arrival of the last request.
    pub fn span(&self) -> SimTime {
        self.requests.last().map_or(SimTime::ZERO, |r| r.arrival)
    }
}

/// A bad-line error for `path:line`.
pub(crate) fn bad_line(path: &Path, line: usize, message: impl Into<String>) -> SimError {
    SimError::BadTraceLine {
        file: path.to_path_buf(),
        line,
        message: message.into(),
    }
}
