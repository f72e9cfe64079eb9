//! Searching the picker config's scorer weights on a workload.
//!
//! A [`Space`] names scorers (plugin types of `EndpointPickerConfig`) and the range of each one's
//! weight; a [`Search`] draws candidate points from it (a full grid, or uniform random points);
//! every point becomes a picker config YAML ([`output::picker_yaml`]) that runs through the same
//! `Scheduler` as production, on every seed of the workload, next to the current config. Points
//! are ranked by the mean of the [`Objective`] over seeds; the spread over seeds and the paired
//! gain against the current config (same seeds, same traces) say whether a difference is real.
//! Runs of one seed go in parallel across cores through [`des::run_many`] (bounded by `jobs`);
//! a search too large for one machine runs as shards, each its own process ([`shard`]), whose
//! results merge into the same ranking.

pub mod output;
pub mod shard;
mod space;

pub use space::{DEFAULT_SPACE, Param, SCORERS, Search, Space, points};

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};

use crate::des::{self, RunResult, SimConfig};
use crate::error::SimError;
use crate::policy::PolicySpec;
use crate::report::Summary;
use crate::trace::Trace;

/// What the search optimizes.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Objective {
    /// 90th percentile of time to first token, s (lower is better).
    TtftP90,
    /// Output tokens per second of the requests whose TTFT met the SLO (higher is better).
    ThroughputAtSlo {
        /// The TTFT SLO, s.
        ttft_slo_s: f64,
    },
    /// Token-weighted prefix-cache hit rate (higher is better).
    HitRate,
}

impl Objective {
    /// The objective of one run.
    pub fn of(&self, run: &RunResult) -> f64 {
        match self {
            Objective::TtftP90 => Summary::of(run).ttft.p90,
            Objective::HitRate => Summary::of(run).hit_rate,
            Objective::ThroughputAtSlo { ttft_slo_s } => {
                let start = run.records.first().map(|r| r.arrival).unwrap_or_default();
                let span = run.end.secs_since(start).max(1e-9);
                let good: u64 = (run.records.iter())
                    .filter(|r| {
                        r.first_token
                            .is_some_and(|f| f.secs_since(r.arrival) <= *ttft_slo_s)
                    })
                    .map(|r| r.output_tokens as u64)
                    .sum();
                good as f64 / span
            }
        }
    }

    /// Whether larger values are better.
    pub fn maximize(&self) -> bool {
        !matches!(self, Objective::TtftP90)
    }

    /// `a` is better than `b`.
    pub fn better(&self, a: f64, b: f64) -> bool {
        if self.maximize() { a > b } else { a < b }
    }

    /// Relative gain of `x` over `base` (positive = better), as a fraction.
    pub fn gain(&self, x: f64, base: f64) -> f64 {
        if base == 0.0 {
            return 0.0;
        }
        if self.maximize() {
            (x - base) / base.abs()
        } else {
            (base - x) / base.abs()
        }
    }

    /// Name and unit, for reports.
    pub fn label(&self) -> String {
        match self {
            Objective::TtftP90 => "TTFT p90 (s)".into(),
            Objective::ThroughputAtSlo { ttft_slo_s } => {
                format!("output tok/s with TTFT ≤ {ttft_slo_s} s")
            }
            Objective::HitRate => "prefix hit rate".into(),
        }
    }
}

/// One candidate's results over the seeds.
#[derive(Clone, Debug, Serialize)]
pub struct PointResult {
    /// Weights, in the space's order.
    pub weights: Vec<f64>,
    /// The objective per seed.
    pub scores: Vec<f64>,
    /// Mean over seeds.
    pub mean: f64,
    /// Standard deviation over seeds.
    pub std: f64,
    /// Seeds on which it beat the current config.
    pub wins: usize,
}

impl PointResult {
    fn new(weights: Vec<f64>, scores: Vec<f64>, baseline: &[f64], objective: &Objective) -> Self {
        let n = scores.len().max(1) as f64;
        let mean = scores.iter().sum::<f64>() / n;
        let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
        let wins = scores
            .iter()
            .zip(baseline)
            .filter(|(s, b)| objective.better(**s, **b))
            .count();
        Self {
            weights,
            scores,
            mean,
            std,
            wins,
        }
    }
}

/// What a search found.
#[derive(Clone, Debug, Serialize)]
pub struct TuneResult {
    /// The objective.
    pub objective: Objective,
    /// The space.
    pub space: Space,
    /// Seeds run.
    pub seeds: Vec<u64>,
    /// The current config's results (weights empty).
    pub baseline: PointResult,
    /// Every point, best first.
    pub points: Vec<PointResult>,
}

impl TuneResult {
    /// The best point.
    pub fn best(&self) -> Option<&PointResult> {
        self.points.first()
    }

    /// The best point's relative gain over the current config (positive = better).
    pub fn gain(&self) -> f64 {
        self.best()
            .map_or(0.0, |b| self.objective.gain(b.mean, self.baseline.mean))
    }
}

/// How to evaluate.
#[derive(Clone, Debug)]
pub struct TuneConfig {
    /// The simulation (its `seed` is replaced by each seed).
    pub sim: SimConfig,
    /// The objective.
    pub objective: Objective,
    /// Runs in parallel at most.
    pub jobs: usize,
}

/// Evaluates `current` and every point on every `(seed, trace)`; `progress` counts simulated
/// requests.
pub fn evaluate(
    workloads: &[(u64, Arc<Trace>)],
    space: &Space,
    points: Vec<Vec<f64>>,
    current: &PolicySpec,
    cfg: &TuneConfig,
    progress: Option<&AtomicU64>,
) -> Result<TuneResult, SimError> {
    let units: Vec<usize> = (0..=points.len()).collect();
    let scores = score(workloads, space, &points, current, cfg, &units, progress)?;
    let seeds = workloads.iter().map(|(s, _)| *s).collect();
    Ok(rank(cfg.objective, space, seeds, points, scores))
}

/// The objective of each of `units` on every `(seed, trace)`, one score per seed, in `units`
/// order. Unit 0 is `current`, unit `k` is `points[k - 1]`: the units of a search, which
/// [`shard`] splits between processes.
pub fn score(
    workloads: &[(u64, Arc<Trace>)],
    space: &Space,
    points: &[Vec<f64>],
    current: &PolicySpec,
    cfg: &TuneConfig,
    units: &[usize],
    progress: Option<&AtomicU64>,
) -> Result<Vec<Vec<f64>>, SimError> {
    let block_size = cfg.sim.profile.block_size;
    let policies = (units.iter())
        .map(|&u| match u.checked_sub(1) {
            None => Ok(current.clone()),
            Some(i) => {
                let w = points.get(i).ok_or_else(|| {
                    SimError::InvalidConfig(format!(
                        "unit {u}: the search has {} points",
                        points.len()
                    ))
                })?;
                Ok(PolicySpec::Inline {
                    name: format!("point-{i}"),
                    yaml: Arc::from(output::picker_yaml(space, w, block_size, "")),
                })
            }
        })
        .collect::<Result<Vec<_>, SimError>>()?;
    let mut scores: Vec<Vec<f64>> = vec![Vec::new(); policies.len()];
    for (seed, trace) in workloads {
        let sim = SimConfig {
            seed: *seed,
            ..cfg.sim.clone()
        };
        let runs = des::run_many(trace, &policies, &sim, cfg.jobs, progress);
        for (s, r) in scores.iter_mut().zip(runs) {
            s.push(cfg.objective.of(&r?));
        }
    }
    Ok(scores)
}

/// Ranks a search from its units' scores ([`score`]: `scores[0]` the current config's,
/// `scores[k]` point `k - 1`'s), best first.
pub fn rank(
    objective: Objective,
    space: &Space,
    seeds: Vec<u64>,
    points: Vec<Vec<f64>>,
    scores: Vec<Vec<f64>>,
) -> TuneResult {
    let mut scores = scores.into_iter();
    let base_scores = scores.next().unwrap_or_default();
    let baseline = PointResult::new(Vec::new(), base_scores.clone(), &base_scores, &objective);
    let mut results: Vec<PointResult> = points
        .into_iter()
        .zip(scores)
        .map(|(w, s)| PointResult::new(w, s, &base_scores, &objective))
        .collect();
    results.sort_by(|a, b| {
        let ord = a.mean.total_cmp(&b.mean);
        if objective.maximize() {
            ord.reverse()
        } else {
            ord
        }
    });
    TuneResult {
        objective,
        space: space.clone(),
        seeds,
        baseline,
        points: results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_rank_and_gain() {
        let o = Objective::TtftP90;
        assert!(o.better(1.0, 2.0) && (o.gain(1.0, 2.0) - 0.5).abs() < 1e-12);
        let h = Objective::HitRate;
        assert!(h.better(0.6, 0.5) && (h.gain(0.6, 0.5) - 0.2).abs() < 1e-12);
        let p = PointResult::new(vec![1.0], vec![1.0, 3.0], &[2.0, 2.0], &o);
        assert_eq!((p.mean, p.std, p.wins), (2.0, 1.0, 1));
    }
}
