//! The simulated pool: the engines' shape and speed, the router's view of them, the picker
//! replicas in front and the P/D split with its KV transfer (shared by `run`, `tune`, `fleet`,
//! `demo` and `calibrate`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::duration;

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
