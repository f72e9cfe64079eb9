//! The endpoint picker charts' flags: what the Gateway API Inference Extension's `inferencepool`
//! chart and llm-d's router charts (`llm-d-router-gateway`, `llm-d-router-standalone`) pass to
//! their EPP, so that swapping the image for kvpick-epp's leaves the chart's arguments unchanged.
//!
//! Flags that name something kvpick has are aliases on [`super::Cli`]'s own (`--grpc-health-port`,
//! `--config-file`, `--zap-encoder`, `--drain-timeout`); this module holds the rest. Each is
//! accepted with the meaning it has for llm-d's EPP where kvpick can honour it, and refused with a
//! message saying why where it cannot (a chart value that asks for leader election or tracing
//! would otherwise be silently dropped).

use std::time::Duration;

use clap::Args;
use clap::builder::BoolishValueParser;

use crate::error::Error;

/// The InferencePool API group kvpick watches (`inference.networking.k8s.io/v1`).
pub const POOL_GROUP: &str = "inference.networking.k8s.io";

/// The model-server metric names llm-d's EPP reads by default: vLLM's, the only ones kvpick
/// reads. The GIE chart passes others only for SGLang, TensorRT-LLM and Triton pools.
const VLLM_METRICS: [(&str, &str); 5] = [
    (
        "--total-queued-requests-metric",
        "vllm:num_requests_waiting",
    ),
    (
        "--total-running-requests-metric",
        "vllm:num_requests_running",
    ),
    (
        "--kv-cache-usage-percentage-metric",
        "vllm:kv_cache_usage_perc",
    ),
    ("--lora-info-metric", "vllm:lora_requests_info"),
    ("--cache-info-metric", "vllm:cache_config_info"),
];

/// Flags of llm-d's EPP (and the Inference Extension's before it) that kvpick accepts for the
/// charts' sake. Booleans take pflag's forms: `--flag` or `--flag=true|false`.
#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Endpoint picker chart flags (llm-d / Inference Extension)")]
pub struct ChartFlags {
    /// The InferencePool's API group; only `inference.networking.k8s.io` (InferencePool v1).
    #[arg(long, env = "KVPICK_POOL_GROUP")]
    pub pool_group: Option<String>,
    /// The picker config as text, instead of --config/--config-file.
    #[arg(long, env = "KVPICK_CONFIG_TEXT", conflicts_with = "config")]
    pub config_text: Option<String>,
    /// Log verbosity as llm-d counts it (2 default, 3 verbose, 4 debug, 5 trace); RUST_LOG wins.
    #[arg(short = 'v', long = "v", value_name = "LEVEL")]
    pub verbosity: Option<u8>,
    /// Leader election between replicas: kvpick has none; only `false` is accepted (replicas
    /// then each route on their own, active-active).
    #[arg(long, overrides_with = "ha_enable_leader_election", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ha_enable_leader_election: Option<bool>,
    /// OpenTelemetry traces: kvpick emits none; only `false` is accepted.
    #[arg(long, overrides_with = "tracing", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub tracing: Option<bool>,
    /// Bearer-token auth on /metrics: kvpick's /metrics has none (restrict it with a
    /// NetworkPolicy); only `false` is accepted.
    #[arg(long, overrides_with = "metrics_endpoint_auth", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub metrics_endpoint_auth: Option<bool>,
    /// Reload --cert-path when it changes: kvpick always does; both values are accepted.
    #[arg(long, overrides_with = "enable_cert_reload", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub enable_cert_reload: Option<bool>,
    /// How often llm-d flushes its Prometheus gauges; kvpick computes them at each scrape, so
    /// any value is accepted and has no effect.
    #[arg(long, value_parser = super::duration)]
    pub refresh_prometheus_metrics_interval: Option<Duration>,
    /// Model-server metric names (deprecated in llm-d): only vLLM's, the ones kvpick reads.
    #[arg(long, hide = true)]
    pub total_queued_requests_metric: Option<String>,
    #[arg(long, hide = true)]
    pub total_running_requests_metric: Option<String>,
    #[arg(long, hide = true)]
    pub kv_cache_usage_percentage_metric: Option<String>,
    #[arg(long, hide = true)]
    pub lora_info_metric: Option<String>,
    #[arg(long, hide = true)]
    pub cache_info_metric: Option<String>,
    /// The model servers' metrics path: only `/metrics`, where vLLM serves them.
    #[arg(long, hide = true)]
    pub model_server_metrics_path: Option<String>,
}

impl ChartFlags {
    /// Refuses what kvpick cannot honour, naming the flag and what to do instead.
    pub fn check(&self) -> Result<(), Error> {
        let refuse = |m: &str| Err(Error::Config(m.to_owned()));
        if let Some(group) = self.pool_group.as_deref()
            && !group.is_empty()
            && group != POOL_GROUP
        {
            return Err(Error::Config(format!(
                "--pool-group {group}: kvpick watches InferencePool {POOL_GROUP}/v1 only \
                 (the Inference Extension's v1 CRDs)"
            )));
        }
        if self.ha_enable_leader_election == Some(true) {
            return refuse(
                "--ha-enable-leader-election: kvpick has no leader election; run one replica, or \
                 several active-active with --ha-enable-leader-election=false (llm-d chart value \
                 router.epp.flags.ha-enable-leader-election: false)",
            );
        }
        if self.tracing == Some(true) {
            return refuse(
                "--tracing=true: kvpick emits no OpenTelemetry traces; use its Prometheus metrics \
                 (chart value tracing.enabled: false passes --tracing=false)",
            );
        }
        if self.metrics_endpoint_auth == Some(true) {
            return refuse(
                "--metrics-endpoint-auth=true: kvpick's /metrics has no token auth; keep it \
                 in-cluster behind a NetworkPolicy and pass --metrics-endpoint-auth=false \
                 (chart value monitoring.prometheus.auth.enabled: false)",
            );
        }
        let given = [
            &self.total_queued_requests_metric,
            &self.total_running_requests_metric,
            &self.kv_cache_usage_percentage_metric,
            &self.lora_info_metric,
            &self.cache_info_metric,
        ];
        for ((flag, vllm), value) in VLLM_METRICS.iter().zip(given) {
            let Some(value) = value.as_deref() else {
                continue;
            };
            // The GIE chart renders some as `--flag="name"`, quotes included.
            let name = value.trim_matches('"');
            let lora_off = *flag == "--lora-info-metric" && name.is_empty();
            if name != *vllm && !lora_off {
                return Err(Error::Config(format!(
                    "{flag} {value}: kvpick reads vLLM's metrics ({vllm}) only; SGLang, \
                     TensorRT-LLM and Triton pools are not supported"
                )));
            }
        }
        if let Some(path) = self.model_server_metrics_path.as_deref()
            && path.trim_matches('"') != "/metrics"
        {
            return Err(Error::Config(format!(
                "--model-server-metrics-path {path}: kvpick scrapes /metrics, where vLLM serves them"
            )));
        }
        Ok(())
    }

    /// The `tracing` filter `-v` asks for, when given: llm-d's 2 (and below) is info, 3 and 4
    /// debug, 5 and above trace.
    pub fn log_filter(&self) -> Option<&'static str> {
        self.verbosity.map(|v| match v {
            0..=2 => "info",
            3 | 4 => "debug",
            _ => "trace",
        })
    }
}
