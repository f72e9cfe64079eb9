//! Where a command's requests come from: a trace file or a generator's knobs, then scaled,
//! sampled and cut.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use kvpick_sim::trace::TraceFormat;
use kvpick_sim::trace::generate::{Arrivals, RateStage, parse_stages};

use super::duration;

/// Which workload generator.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Generator {
    /// Groups sharing a system prompt, users with their own question.
    SharedPrefix,
    /// llm-d's precise-scheduling benchmark workload (shared-prefix preset; knobs still apply).
    LlmD,
    /// Multi-turn chat sessions.
    Chat,
}

/// Workload generator knobs.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Generator (instead of --trace).
    #[arg(long, value_enum)]
    pub generate: Option<Generator>,
    /// shared-prefix: groups (distinct system prompts). [llm-d: 150]
    #[arg(long)]
    pub groups: Option<u32>,
    /// shared-prefix: users (distinct questions) per group. [llm-d: 5]
    #[arg(long)]
    pub users_per_group: Option<u32>,
    /// System prompt length in tokens (shared-prefix and chat). [llm-d: 6000]
    #[arg(long)]
    pub system_len: Option<u32>,
    /// shared-prefix: question length in tokens. [llm-d: 1200]
    #[arg(long)]
    pub question_len: Option<u32>,
    /// Output tokens per request (chat: per answer). [llm-d: 1000]
    #[arg(long)]
    pub output_len: Option<u32>,
    /// Arrival-rate ladder `RATE:DURATION,...`: requests per second (chat: session starts) for a
    /// duration with its unit, e.g. `4:10s,8:1m30s` (a bare `4:10` is refused); or `llm-d`.
    /// [llm-d: llm-d; shared-prefix: 5:60s; chat: 0.5:120s]
    // `std::vec::Vec` spelled out: one value holds the whole ladder (clap's derive would take a
    // plain `Vec` as a repeated flag).
    #[arg(long, value_parser = stages)]
    pub stages: Option<std::vec::Vec<RateStage>>,
    /// Multiplies every stage's rate. [1]
    #[arg(long)]
    pub rate_scale: Option<f64>,
    /// Arrival spacing within a stage.
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    pub arrivals: Arrivals,
    /// chat: turns per session. [5]
    #[arg(long, default_value_t = 5)]
    pub turns: u32,
    /// chat: user message tokens. [300]
    #[arg(long, default_value_t = 300)]
    pub user_len: u32,
    /// chat: distinct system prompts. [4]
    #[arg(long, default_value_t = 4)]
    pub system_prompts: u32,
    /// chat: mean time between turns. [20s]
    #[arg(long, default_value = "20s", value_parser = duration)]
    pub think_time: Duration,
    /// Generator seed (defaults to --seed).
    #[arg(long)]
    pub gen_seed: Option<u64>,
}

/// Where requests come from: a trace file or a generator, then scaled, sampled, cut.
#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// Trace file: Mooncake JSONL, Azure CSV or kvpick JSONL (see --format).
    #[arg(long, alias = "workload", conflicts_with = "generate")]
    pub trace: Option<PathBuf>,
    /// Trace format.
    #[arg(long, value_enum, default_value_t = TraceFormat::Auto)]
    pub format: TraceFormat,
    #[command(flatten)]
    pub gen_: GenArgs,
    /// Multiply arrival times by this (< 1 compresses the trace: more load).
    #[arg(long)]
    pub time_scale: Option<f64>,
    /// Keep each request with this probability (seeded sub-sampling).
    #[arg(long)]
    pub sample: Option<f64>,
    /// Keep only the first N requests.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Spread each arrival uniformly over this window after its timestamp (seeded by --seed),
    /// for traces recorded at a coarse resolution: the Mooncake conversation trace's timestamps
    /// are whole seconds (`--arrival-jitter 1s`). Applied before --sample and --limit.
    #[arg(long, value_parser = duration)]
    pub arrival_jitter: Option<Duration>,
}

/// `--stages`, checked when the flags are read.
fn stages(text: &str) -> Result<Vec<RateStage>, String> {
    parse_stages(text).map_err(|e| e.to_string())
}
