//! Command-line arguments of `kvpick-sim` (binary only).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kvpick_sim::trace::TraceFormat;
use kvpick_sim::trace::generate::Arrivals;

/// Trace-driven simulator for kvpick's routing policies: replays request traces through kvpick's own
/// scheduling code against simulated vLLM engines (continuous batching, chunked prefill, paged KV
/// cache with prefix caching, preemption), to see what KV-cache-aware routing buys on your traffic.
#[derive(Debug, Parser)]
#[command(name = "kvpick-sim", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay a trace (or a generated workload) under each policy and compare them.
    Run(Box<RunArgs>),
    /// Write a generated workload as a kvpick JSONL trace.
    Generate {
        #[command(flatten)]
        gen_: GenArgs,
        /// Output file (kvpick JSONL).
        #[arg(long)]
        out: PathBuf,
    },
    /// Token-weighted prefix hit rate of a trace through one global prefix cache.
    CacheHit {
        /// Trace file.
        #[arg(long)]
        trace: PathBuf,
        /// Trace format.
        #[arg(long, value_enum, default_value_t = TraceFormat::Auto)]
        format: TraceFormat,
        /// Tokens per cache block (Mooncake's hash ids are 512-token blocks).
        #[arg(long, default_value_t = 512)]
        block_tokens: u32,
        /// LRU capacity in tokens; unbounded when absent.
        #[arg(long)]
        capacity_tokens: Option<u64>,
    },
    /// Fit step-time coefficients to measured engine steps (CSV with header
    /// `prefill_tokens,decode_seqs,decode_context,attention_pairs,step_us`); prints a profile.
    FitStepTime {
        /// The CSV of measured steps.
        #[arg(long)]
        samples: PathBuf,
        /// Built-in profile whose non-timing fields the printed profile keeps.
        #[arg(long, default_value = "h100-tp2-qwen3-32b")]
        profile: String,
    },
    /// Print the built-in engine profiles as YAML (a starting point for --profile-file).
    Profiles,
}

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
    /// Arrival-rate ladder `RATE:SECONDS,...` (chat: session starts), or `llm-d`. [llm-d: llm-d]
    #[arg(long)]
    pub stages: Option<String>,
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
    /// chat: mean seconds between turns. [20]
    #[arg(long, default_value_t = 20.0)]
    pub think_time: f64,
    /// Generator seed (defaults to --seed).
    #[arg(long)]
    pub gen_seed: Option<u64>,
}

/// `run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Trace file: Mooncake JSONL, Azure CSV or kvpick JSONL (see --format).
    #[arg(long, conflicts_with = "generate")]
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
    /// Simulated engines (vLLM pods).
    #[arg(long, default_value_t = 16)]
    pub engines: usize,
    /// Built-in engine profile (see `kvpick-sim profiles`).
    #[arg(long, default_value = "h100-tp2-qwen3-32b")]
    pub profile: String,
    /// Engine profile from a YAML file (overrides --profile).
    #[arg(long)]
    pub profile_file: Option<PathBuf>,
    /// Override: KV-cache blocks per engine.
    #[arg(long)]
    pub kv_blocks: Option<u32>,
    /// Override: tokens per KV block (vLLM --block-size; independent of trace blocks).
    #[arg(long)]
    pub block_size: Option<u32>,
    /// Override: vLLM --max-num-batched-tokens.
    #[arg(long)]
    pub max_num_batched_tokens: Option<u32>,
    /// Override: vLLM --max-num-seqs.
    #[arg(long)]
    pub max_num_seqs: Option<u32>,
    /// Override: vLLM --max-model-len (longer requests are reported unfit).
    #[arg(long)]
    pub max_model_len: Option<u32>,
    /// Override step-time coefficients, e.g. `overhead=8000,per_prefill_token=80` (µs).
    #[arg(long)]
    pub step_time: Option<String>,
    /// Comma-separated policies: random, round-robin, least-loaded, approx-prefix,
    /// precise-prefix, config:FILE (an EndpointPickerConfig YAML, as the endpoint picker reads).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "random,round-robin,least-loaded,approx-prefix,precise-prefix"
    )]
    pub policies: Vec<String>,
    /// Served model name (the cache partition of requests without a LoRA).
    #[arg(long, default_value = "qwen3-32b")]
    pub model: String,
    /// How often the router's view of engine metrics (waiting, running, KV usage) refreshes, ms;
    /// 0 = always fresh.
    #[arg(long, default_value_t = 50.0)]
    pub metrics_interval_ms: f64,
    /// Delay from an engine step to its KV events reaching the precise index, ms.
    #[arg(long, default_value_t = 1.0)]
    pub kv_event_latency_ms: f64,
    /// Timeline sampling period for plots, s (default: the trace's span / 300).
    #[arg(long)]
    pub sample_interval_s: Option<f64>,
    /// Seed of every random choice (routing, generators, sub-sampling).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Policies simulated in parallel (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Directory for results.json, summary.md and SVG plots.
    #[arg(long)]
    pub out: Option<PathBuf>,
}
