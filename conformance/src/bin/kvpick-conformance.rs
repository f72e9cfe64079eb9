//! Runs the conformance suite against any endpoint picker.
//!
//! Start the picker first, configured with the pool endpoints given here (the suite serves a
//! stand-in model server on each; they need not answer before the suite starts), then:
//!
//! ```text
//! kvpick-conformance --ext-proc 127.0.0.1:9002 --health 127.0.0.1:9003 \
//!   --pods 127.0.0.1:18001,127.0.0.1:18002,127.0.0.1:18003 --model conformance-model \
//!   [--sheddable-header 'x-gateway-inference-objective: conformance-sheddable'] \
//!   [--fallbacks] [--test-hooks]
//! ```
//!
//! Prints one line per check and exits non-zero when one fails. `envoy` must be on PATH.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use kvpick_conformance::{Target, checks};

#[derive(Debug, Parser)]
#[command(about = "Conformance suite for Gateway API Inference Extension endpoint pickers")]
struct Args {
    /// The picker's ext_proc gRPC address (plaintext).
    #[arg(long)]
    ext_proc: SocketAddr,
    /// The picker's gRPC health address.
    #[arg(long)]
    health: SocketAddr,
    /// Health services that must be SERVING (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "liveness,readiness,envoy.service.ext_proc.v3.ExternalProcessor"
    )]
    health_services: Vec<String>,
    /// The pool's endpoints (at least three, comma-separated): the picker must be configured
    /// with them, and the suite serves a stand-in model server on each.
    #[arg(long, value_delimiter = ',', required = true)]
    pods: Vec<SocketAddr>,
    /// The model the pool serves.
    #[arg(long, default_value = "conformance-model")]
    model: String,
    /// The request header that makes a request sheddable, as `name: value`.
    #[arg(
        long,
        default_value = "x-gateway-inference-objective: conformance-sheddable"
    )]
    sheddable_header: String,
    /// The picker lists fallback endpoints: check the gateway can use them.
    #[arg(long)]
    fallbacks: bool,
    /// The picker runs with its Inference Extension test hooks on.
    #[arg(long)]
    test_hooks: bool,
    /// How long the picker may take to notice the pods' metrics change (e.g. 30).
    #[arg(long, default_value_t = 30)]
    settle_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let Some((name, value)) = args.sheddable_header.split_once(':') else {
        bail!("--sheddable-header must be `name: value`");
    };
    let mut target = Target::new(args.ext_proc, args.health, args.pods);
    target.health_services = args.health_services;
    target.model = args.model;
    target.sheddable_header = (name.trim().to_owned(), value.trim().to_owned());
    target.fallbacks = args.fallbacks;
    target.test_hooks = args.test_hooks;
    target.settle = Duration::from_secs(args.settle_seconds);
    let report = checks::run(&target).await.context("running the suite")?;
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
