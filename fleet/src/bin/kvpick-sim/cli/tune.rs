//! Arguments of `tune` (the weight search, whole or one shard of it) and `tune merge`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::{SimArgs, WorkloadArgs, positive_duration};

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
    #[command(flatten)]
    pub report: ReportArgs,
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
    #[command(flatten)]
    pub report: ReportArgs,
}

/// How `tune` and `tune merge` report the ranking.
#[derive(Debug, Args)]
pub struct ReportArgs {
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
