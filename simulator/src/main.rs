//! `kvpick-sim`: replays request traces through kvpick's scheduler against simulated vLLM engines.
#![forbid(unsafe_code)]

use clap::Parser;

/// Trace-driven simulator for kvpick's scheduling policies.
#[derive(Debug, Parser)]
#[command(name = "kvpick-sim", version)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!("kvpick-sim is not wired yet: {args:?}")
}
