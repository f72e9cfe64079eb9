//! Command-line arguments of `kvpick-sim` (binary only): the commands, and `run`'s own arguments
//! here; the argument groups by what they describe in the modules below (re-exported).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kvpick_sim::trace::TraceFormat;

mod calibrate;
mod live;
mod pool;
mod tune;
mod workload;

pub use calibrate::CalibrateArgs;
pub use live::{DemoArgs, FleetArgs, LoadArgs};
pub use pool::{
    ProfileArgs, ReplicaArgs, ReplicaIndexArg, ReplicaRoutingArg, SimArgs, TransferArgs,
};
pub use tune::{MergeArgs, ObjectiveArg, ReportArgs, SearchArg, TuneAction, TuneArgs};
pub use workload::{GenArgs, Generator, WorkloadArgs};

/// Trace-driven simulator for kvpick's routing policies: replays request traces through kvpick's own
/// scheduling code against simulated vLLM engines (continuous batching, chunked prefill, paged KV
/// cache with prefix caching, preemption), to see what KV-cache-aware routing buys on your traffic.
///
/// Durations take their unit: 500ms, 2s, 1m30s, 1.5s (a bare number is refused: 200 could mean
/// milliseconds or seconds), as kvpick-epp's flags and picker config do; so do the stages of
/// `--stages` (`4:10s`, not `4:10`).
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
    /// Fit the engine profile (step time) and the workload's shape to what a cluster's Prometheus
    /// holds about its vLLM pods; writes profile.yaml, workload.jsonl, calibration.json, fit.svg.
    Calibrate(Box<CalibrateArgs>),
    /// Search the picker config's scorer weights on a workload, several seeds per point, in
    /// parallel; writes the winner as picker.yaml (kvpick-epp --config) and configmap.yaml.
    /// A large search runs as shards (`--shard I/N`, one process each, e.g. a Kubernetes
    /// Indexed Job) and `tune merge` ranks their results as one process would.
    Tune(Box<TuneArgs>),
    /// Print the built-in engine profiles as YAML (a starting point for --profile-file).
    Profiles,
    /// Serve simulated vLLM pods on the network (OpenAI API, /metrics, ZMQ KV events) until
    /// Ctrl-C, driven in real time by the simulator's engines; writes kvpick-epp's endpoints file.
    Fleet(Box<FleetArgs>),
    /// Open-loop load against any OpenAI-compatible endpoint, measured at the client
    /// (TTFT, ITL, E2E, throughput, prefix hits from usage.prompt_tokens_details).
    Load(Box<LoadArgs>),
    /// The one-command demo: a fleet, kvpick-epp and Envoy; the same workload routed cache-blind,
    /// by the previous default (precise prefix) and by kvpick's default; each measured at the
    /// client and compared side by side.
    Demo(Box<DemoArgs>),
}

/// `run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub sim: SimArgs,
    /// Comma-separated policies: random, round-robin, least-loaded, approx-prefix,
    /// precise-prefix, predicted-latency, config:FILE (an EndpointPickerConfig YAML, as the
    /// endpoint picker reads).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "random,round-robin,least-loaded,approx-prefix,precise-prefix,predicted-latency"
    )]
    pub policies: Vec<String>,
    /// Timeline sampling period for plots (default: the trace's span / 300, at least 100ms).
    #[arg(long, value_parser = positive_duration)]
    pub sample_interval: Option<Duration>,
    /// Seed of every random choice (routing, generators, sub-sampling).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Policies simulated in parallel (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Directory for results.json, summary.md and SVG plots.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write every request's record (arrival, engine, tokens, cached, first token,
    /// predicted TTFT) to `requests-POLICY.jsonl` in `--out`, for per-request analysis.
    #[arg(long, requires = "out")]
    pub records: bool,
}

/// A duration option: kvpick's one syntax ([`kvpick_scheduler::duration`]).
fn duration(text: &str) -> Result<Duration, String> {
    kvpick_scheduler::duration::parse_flag(text)
}

/// A duration option that must be more than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        d if d.is_zero() => Err(format!("{text:?} must be more than zero")),
        d => Ok(d),
    }
}
