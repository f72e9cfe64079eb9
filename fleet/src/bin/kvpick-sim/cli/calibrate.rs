//! Arguments of `calibrate`: which Prometheus, which series and window, what to fit.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{ProfileArgs, positive_duration};

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
