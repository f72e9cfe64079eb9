//! `kvpick-epp`: the endpoint picker sidecar. Wiring only; the logic lives in the library.
#![forbid(unsafe_code)]

use clap::Parser;

/// KV-cache-aware endpoint picker for vLLM pools behind an Envoy-based gateway.
///
/// The gateway calls kvpick-epp over Envoy's ext_proc protocol for every inference request;
/// kvpick-epp answers with the vLLM pod that already holds the longest prefix of the prompt in its
/// KV cache, unless that pod is overloaded.
#[derive(Debug, Parser)]
#[command(name = "kvpick-epp", version)]
struct Args {
    /// Port of the ext_proc gRPC server the gateway calls.
    #[arg(long, env = "KVPICK_GRPC_PORT", default_value_t = 9002)]
    grpc_port: u16,
    /// Port of the gRPC health service (liveness, readiness, ext_proc).
    #[arg(long, env = "KVPICK_HEALTH_PORT", default_value_t = 9003)]
    health_port: u16,
    /// Port of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "KVPICK_METRICS_PORT", default_value_t = 9090)]
    metrics_port: u16,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!("kvpick-epp is not wired yet: {args:?}")
}
