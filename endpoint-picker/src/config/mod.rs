//! Command line and environment: every flag `--x-y` is also `KVPICK_X_Y`; a flag beats its variable.
//!
//! The environment is clap's own (`#[arg(env)]`). [`parse`] reads it; tests parse with
//! [`parse_ignoring_environment`], a pure function of the arguments, and check the environment by
//! running the binary with a scoped one (`tests/environment.rs`), never touching their own.
//!
//! [`Cli`] declares kvpick's own flags; [`chart`] the endpoint picker charts' flags it accepts
//! too; [`command`] the `query` subcommand; `validate` the checks clap cannot make.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};

pub mod chart;
mod command;
mod validate;

pub use chart::ChartFlags;
pub use command::{Command, Query};

/// KV-cache-aware endpoint picker for vLLM pools behind an Envoy-based gateway.
///
/// The gateway calls kvpick-epp over Envoy's ext_proc protocol for every inference request;
/// kvpick-epp answers with the vLLM pod that already holds the longest prefix of the prompt in
/// its KV cache, unless that pod is overloaded. Every flag can also be set through the environment
/// variable shown with it; a flag on the command line wins.
///
/// Durations take their unit: 500ms, 2s, 1m30s, 1.5s (a bare number is refused: 200 could mean
/// milliseconds or seconds). The picker config's durations are written the same way.
#[derive(Debug, Parser)]
#[command(name = "kvpick-epp", version)]
pub struct Cli {
    /// Address the servers listen on.
    #[arg(long, env = "KVPICK_LISTEN_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub listen_address: IpAddr,
    /// Port of the ext_proc gRPC server the gateway calls.
    #[arg(long, env = "KVPICK_GRPC_PORT", default_value_t = 9002)]
    pub grpc_port: u16,
    /// Port of the kvpick.v1.Index query API (`kvpick-epp query`): it lists pods and their load
    /// and tells whether a prompt prefix is cached, so it is not on the ext_proc port.
    #[arg(long, env = "KVPICK_QUERY_PORT", default_value_t = 9004)]
    pub query_port: u16,
    /// Address the query API listens on: loopback by default (reach it with `kubectl
    /// port-forward` or `kubectl exec`); set 0.0.0.0 to expose it, behind a NetworkPolicy.
    #[arg(long, env = "KVPICK_QUERY_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub query_address: IpAddr,
    /// Port of the gRPC health service (liveness, readiness, inference-extension, ext_proc).
    #[arg(
        long,
        visible_alias = "grpc-health-port",
        env = "KVPICK_HEALTH_PORT",
        default_value_t = 9003
    )]
    pub health_port: u16,
    /// Port of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "KVPICK_METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,
    /// TLS certificate (PEM) for the ext_proc port, with --key-path; without it, a directory
    /// holding `tls.crt` and `tls.key` (llm-d's meaning, e.g. a mounted Secret). Serves TLS only;
    /// the files are re-read when they change (cert-manager renewals), no restart.
    #[arg(long, env = "KVPICK_CERT_PATH")]
    pub cert_path: Option<PathBuf>,
    /// TLS private key (PEM) for the ext_proc port.
    #[arg(long, env = "KVPICK_KEY_PATH", requires = "cert_path")]
    pub key_path: Option<PathBuf>,
    /// `true`: the ext_proc port serves TLS only, with a self-signed certificate made at start
    /// unless --cert-path gives one (gateways that connect over TLS without verifying, such as
    /// agentgateway and the charts' Envoy and Istio, need nothing more). `false`: plaintext only.
    /// Unset: either, told apart by the connection's first byte, so gateways that expect llm-d's
    /// TLS default and plaintext Envoys both work.
    #[arg(long, env = "KVPICK_SECURE_SERVING", overrides_with = "secure_serving", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub secure_serving: Option<bool>,
    /// How often --cert-path and --key-path are checked for changes.
    #[arg(long, env = "KVPICK_CERT_RELOAD_INTERVAL", default_value = "10s", value_parser = duration)]
    pub cert_reload_interval: Duration,
    /// Picker configuration file (index, staleness, filters, scorers, weights, picker,
    /// saturation, priorities, flow control): llm-d's EndpointPickerConfig YAML; without it,
    /// kvpick's default profile (precise prefix 2, KV utilization 1, queue 1), flow control off.
    #[arg(long, visible_alias = "config-file", env = "KVPICK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Engine profile the predicted-latency scorer prices work with: a `profile.yaml` as
    /// `kvpick-sim calibrate` writes it (replaces the config's `profile` parameter).
    #[arg(long, env = "KVPICK_ENGINE_PROFILE")]
    pub engine_profile: Option<PathBuf>,
    /// Refine that profile per model from the pods' own metrics (iteration tokens, TTFT,
    /// inter-token, queue and prefill time histograms), guarded: a fit must predict the latest
    /// traffic at least as well as the starting profile (README, "Online calibration").
    #[arg(long, env = "KVPICK_ONLINE_CALIBRATION", default_value_t = true, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub online_calibration: bool,
    /// Online calibration refits at most this often.
    #[arg(long, env = "KVPICK_CALIBRATION_INTERVAL", default_value = "30s", value_parser = duration)]
    pub calibration_interval: Duration,
    /// Online calibration fits over this long a past.
    #[arg(long, env = "KVPICK_CALIBRATION_WINDOW", default_value = "10m", value_parser = duration)]
    pub calibration_window: Duration,
    /// Endpoints file for file discovery (YAML; re-read when it changes; format in README.md).
    #[arg(long, env = "KVPICK_ENDPOINTS_FILE")]
    pub endpoints_file: Option<PathBuf>,
    /// How often the endpoints file is checked for changes.
    #[arg(long, env = "KVPICK_ENDPOINTS_POLL_INTERVAL", default_value = "1s", value_parser = duration)]
    pub endpoints_poll_interval: Duration,
    /// InferencePool name, for Kubernetes discovery.
    #[arg(long, env = "KVPICK_POOL_NAME")]
    pub pool_name: Option<String>,
    /// InferencePool namespace, for Kubernetes discovery.
    #[arg(long, env = "KVPICK_POOL_NAMESPACE")]
    pub pool_namespace: Option<String>,
    /// Bind mode: listen for KV events here (e.g. tcp://*:5557) from pods that connect to kvpick
    /// (vLLM `--kv-events-config` with `endpoint: tcp://<kvpick>:5557`, topic `kv@<pod-ip>@<model>`).
    #[arg(long, env = "KVPICK_KV_EVENTS_BIND")]
    pub kv_events_bind: Option<String>,
    /// Kubernetes discovery without a pool: pods matching these labels (`k=v,k2=v2`) in --pool-namespace.
    #[arg(long, env = "KVPICK_ENDPOINT_SELECTOR")]
    pub endpoint_selector: Option<String>,
    /// With --endpoint-selector: the pods' serving ports (`8000,8001`); rank N is the Nth port.
    #[arg(long, env = "KVPICK_ENDPOINT_TARGET_PORTS", value_delimiter = ',')]
    pub endpoint_target_ports: Vec<u16>,
    /// Model of discovered pods without a `kvpick.io/model` annotation (Kubernetes discovery).
    #[arg(long, env = "KVPICK_MODEL")]
    pub model: Option<String>,
    /// Base port of the pods' KV-event publishers, rank N on base+N (connect mode). Kubernetes:
    /// the annotation `kvpick.io/kv-events-port` overrides; default 5557, or 0 with
    /// --kv-events-bind. Endpoints file: for entries without `kvEvents`; default none. 0: none.
    #[arg(long, env = "KVPICK_KV_EVENTS_PORT")]
    pub kv_events_port: Option<u16>,
    /// Base port of the pods' KV-event replay sockets, rank N on base+N (Kubernetes: the
    /// annotation `kvpick.io/kv-replay-port` overrides; endpoints file: for entries without
    /// `kvReplay`); 0: none.
    #[arg(long, env = "KVPICK_KV_REPLAY_PORT", default_value_t = 0)]
    pub kv_replay_port: u16,
    /// KV-event ingestion.
    #[command(flatten)]
    pub kv_events: crate::kv_events::KvEventsArgs,
    /// Shared in-flight load between replicas (Valkey/Redis).
    #[command(flatten)]
    pub shared_inflight: crate::shared_inflight::SharedInflightArgs,
    /// Loading the index from a peer replica at start.
    #[command(flatten)]
    pub bootstrap: crate::bootstrap::BootstrapArgs,
    /// Tokenization of text and chat prompts.
    #[command(flatten)]
    pub tokenize: crate::tokenizer::TokenizeArgs,
    /// KV block size in tokens, when neither --config nor the endpoints file gives one.
    #[arg(long, env = "KVPICK_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: u32,
    /// Fallback endpoints listed after the primary (`ip:port,ip:port`); needs Envoy's override_host policy.
    #[arg(long, env = "KVPICK_FALLBACKS", default_value_t = 0)]
    pub fallbacks: usize,
    /// Believe the x-kvpick-priority header. Only when the gateway sets it (or strips it from
    /// clients): otherwise a client can put itself ahead of others. Off: ignored and counted in
    /// kvpick_untrusted_headers_ignored_total.
    #[arg(long, env = "KVPICK_TRUST_PRIORITY_HEADER", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub trust_priority_header: bool,
    /// Believe the x-gateway-inference-fairness-id header (flow control). Only when the gateway
    /// sets it (e.g. from the authenticated tenant) and strips what clients send.
    #[arg(long, env = "KVPICK_TRUST_FAIRNESS_HEADER", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub trust_fairness_header: bool,
    /// Believe the latency-objective headers (x-slo-ttft-ms, x-slo-tpot-ms, x-llm-d-slo-*), as
    /// llm-d does: they only shape the pick of the request that carries them. `false`: ignored
    /// and counted in kvpick_untrusted_headers_ignored_total; the config's objectives apply.
    #[arg(long, env = "KVPICK_TRUST_SLO_HEADERS", default_value_t = true, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub trust_slo_headers: bool,
    /// Put each candidate's scores in the `kvpick.scores` dynamic metadata (debugging).
    #[arg(long, env = "KVPICK_EMIT_SCORES", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub emit_scores: bool,
    /// The Gateway API Inference Extension conformance suite's test hooks: the
    /// `test-epp-endpoint-selection` header filters candidates, and the endpoint that served is
    /// echoed in `x-conformance-test-served-endpoint`. UNSAFE in production: any client could
    /// steer its own request to a pod of its choice and learn pod addresses. Off by default.
    #[arg(long, env = "KVPICK_CONFORMANCE_TEST_HOOKS", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub conformance_test_hooks: bool,
    /// Largest request body accepted, in bytes (e.g. 16Mi); larger bodies get a 400.
    #[arg(long, env = "KVPICK_MAX_BODY_BYTES", default_value = "16Mi", value_parser = bytes)]
    pub max_body_bytes: usize,
    /// Longest a request body may take to arrive after its headers; slower ones get a 408.
    #[arg(long, env = "KVPICK_BODY_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub body_timeout: Duration,
    /// Memory budget of the whole process, in bytes (e.g. 3Gi): half for the KV index (its
    /// capacity is capped to fit), a quarter for open requests and their bodies, a quarter for
    /// KV-event batches and replays. Requests over budget get 503; keep it under the container
    /// limit with room for the binary and tokenizers.
    #[arg(long, env = "KVPICK_MEMORY_BUDGET", default_value = "3Gi", value_parser = bytes)]
    pub memory_budget: usize,
    /// Most ext_proc streams (requests in flight through the gateway) open at once; more get 503.
    #[arg(long, env = "KVPICK_MAX_STREAMS", default_value_t = crate::budget::DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,
    /// Most ext_proc connections open at once; more are closed at accept and counted. Each has
    /// its HTTP/2 window and streams set aside in the budget (default: an eighth of the request
    /// share's worth, 76 at 3Gi).
    #[arg(long, env = "KVPICK_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most ext_proc connections from one IP address (default: half of --max-connections), so
    /// one peer cannot take every connection.
    #[arg(long, env = "KVPICK_MAX_CONNECTIONS_PER_PEER")]
    pub max_connections_per_peer: Option<usize>,
    /// How often each endpoint's /metrics is scraped (e.g. 50ms, 1s).
    #[arg(long, env = "KVPICK_REFRESH_METRICS_INTERVAL", default_value = "50ms", value_parser = duration)]
    pub refresh_metrics_interval: Duration,
    /// Timeout of one /metrics scrape.
    #[arg(long, env = "KVPICK_SCRAPE_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub scrape_timeout: Duration,
    /// Signals older than this mark an endpoint stale; stale endpoints are avoided while others are fresh (--config's staleness.maxSignalAge wins).
    #[arg(long, env = "KVPICK_METRICS_STALENESS_THRESHOLD", default_value = "2s", value_parser = duration)]
    pub metrics_staleness_threshold: Duration,
    /// Passive health: an endpoint that answers a request with a 5xx is avoided for this long
    /// while others are eligible (0s turns it off).
    #[arg(long, env = "KVPICK_FAILURE_COOLDOWN", default_value = "2s", value_parser = duration)]
    pub failure_cooldown: Duration,
    /// How long open streams may finish after SIGTERM before they are cut (readiness goes false
    /// first, then the listeners stop accepting).
    #[arg(long, visible_alias = "drain-timeout", env = "KVPICK_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,
    /// Log format: text or json (`console` is text, as for --zap-encoder); filter with RUST_LOG
    /// or -v, default info.
    #[arg(long, visible_alias = "zap-encoder", env = "KVPICK_LOG_FORMAT", default_value = "text", value_parser = ["text", "json", "console"])]
    pub log_format: String,
    /// The endpoint picker charts' flags.
    #[command(flatten)]
    pub chart: ChartFlags,
    /// Query a running kvpick-epp instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Parses a duration flag: kvpick's one syntax ([`kvpick_scheduler::duration`]).
pub use kvpick_scheduler::duration::parse_flag as duration;

// Byte counts such as `3Gi`, `512Mi` or `1000000`.
use crate::byte_count::parse_bytes as bytes;

/// Parses `args` (program name first), the environment filling in flags not given.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Cli::try_parse_from(args)
}

/// Parses `args` (program name first) alone: what the flags say whatever the process environment
/// holds.
pub fn parse_ignoring_environment<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let no_env = |a: clap::Arg| a.env(None::<&str>);
    let cmd = Cli::command()
        .mut_args(no_env)
        .mut_subcommands(|s| s.mut_args(no_env));
    Cli::from_arg_matches(&cmd.try_get_matches_from(args)?)
}

#[cfg(test)]
mod tests;
