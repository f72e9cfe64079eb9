//! Searching the picker config's scorer weights on a workload.
//!
//! A [`Space`] names scorers (plugin types of `EndpointPickerConfig`) and the range of each one's
//! weight; a [`Search`] draws candidate points from it (a full grid, or uniform random points);
//! every point becomes a picker config YAML ([`output::picker_yaml`]) that runs through the same
//! `Scheduler` as production, on every seed of the workload, next to the current config. Points
//! are ranked by the mean of the [`Objective`] over seeds; the spread over seeds and the paired
//! gain against the current config (same seeds, same traces) say whether a difference is real.
//! Runs of one seed go in parallel across cores through [`des::run_many`] (bounded by `jobs`).

pub mod output;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::Serialize;

use crate::des::{self, RunResult, SimConfig};
use crate::error::SimError;
use crate::policy::PolicySpec;
use crate::report::Summary;
use crate::trace::Trace;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// What the search optimizes.
#[derive(Copy, Clone, Debug, PartialEq, Serialize)]
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

/// One searched weight: a scorer's plugin type and the weight's range.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Param {
    /// Plugin type, e.g. `queue-scorer`.
    pub scorer: String,
    /// Lowest weight.
    pub lo: f64,
    /// Highest weight.
    pub hi: f64,
}

/// The search space: weights of scorers, and the picker every point uses.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Space {
    /// The weights searched.
    pub params: Vec<Param>,
    /// Picker plugin type (`max-score-picker`, `weighted-random-picker`).
    pub picker: String,
}

/// Scorers whose only parameter is their weight, and that need nothing the simulator lacks.
pub const SCORERS: [&str; 5] = [
    "precise-prefix-cache-scorer",
    "prefix-cache-scorer",
    "kv-cache-utilization-scorer",
    "queue-scorer",
    "running-requests-size-scorer",
];

/// The default space: kvpick's default profile's three scorers.
pub const DEFAULT_SPACE: &str =
    "precise-prefix-cache-scorer=0:4,kv-cache-utilization-scorer=0:2,queue-scorer=0:2";

impl Space {
    /// Parses `scorer=LO:HI[,scorer=LO:HI...]`.
    pub fn parse(spec: &str, picker: &str) -> Result<Self, SimError> {
        let bad = |m: String| SimError::InvalidConfig(format!("--space {spec:?}: {m}"));
        let mut params = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (scorer, range) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?}: expected scorer=LO:HI")))?;
            if !SCORERS.contains(&scorer) {
                return Err(bad(format!(
                    "unknown scorer {scorer:?} (one of {})",
                    SCORERS.join(", ")
                )));
            }
            if params.iter().any(|p: &Param| p.scorer == scorer) {
                return Err(bad(format!("{scorer} given twice")));
            }
            let (lo, hi) = range
                .split_once(':')
                .and_then(|(a, b)| {
                    Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?))
                })
                .filter(|(lo, hi)| lo.is_finite() && hi.is_finite() && *lo >= 0.0 && hi >= lo)
                .ok_or_else(|| bad(format!("{part:?}: expected 0 ≤ LO ≤ HI")))?;
            params.push(Param {
                scorer: scorer.to_owned(),
                lo,
                hi,
            });
        }
        if params.is_empty() {
            return Err(bad("no scorer".into()));
        }
        if !["max-score-picker", "weighted-random-picker"].contains(&picker) {
            return Err(SimError::InvalidConfig(format!(
                "--picker {picker:?}: max-score-picker or weighted-random-picker"
            )));
        }
        Ok(Self {
            params,
            picker: picker.to_owned(),
        })
    }
}

/// How candidate points are drawn.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Search {
    /// Every combination of `levels` evenly spaced values per weight.
    Grid {
        /// Values per weight (≥ 2).
        levels: usize,
    },
    /// `points` uniform random points.
    Random {
        /// How many.
        points: usize,
        /// Seed of the draw.
        seed: u64,
    },
}

/// Candidate weight vectors (all-zero points, which cannot rank anything, left out), at most
/// `max_points`.
pub fn points(space: &Space, search: Search, max_points: usize) -> Result<Vec<Vec<f64>>, SimError> {
    let dims = space.params.len();
    let out: Vec<Vec<f64>> = match search {
        Search::Grid { levels } => {
            let levels = levels.max(2);
            let total = levels.checked_pow(dims as u32).filter(|&n| n <= max_points).ok_or_else(|| {
                SimError::InvalidConfig(format!(
                    "a {levels}^{dims} grid exceeds {max_points} points: fewer --levels, or --search random"
                ))
            })?;
            (0..total)
                .map(|mut i| {
                    (space.params.iter())
                        .map(|p| {
                            let k = i % levels;
                            i /= levels;
                            p.lo + (p.hi - p.lo) * k as f64 / (levels - 1) as f64
                        })
                        .collect()
                })
                .collect()
        }
        Search::Random { points, seed } => {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..points.min(max_points))
                .map(|_| {
                    (space.params.iter())
                        .map(|p| {
                            let v = p.lo + (p.hi - p.lo) * rng.random::<f64>();
                            (v * 100.0).round() / 100.0
                        })
                        .collect()
                })
                .collect()
        }
    };
    Ok(out
        .into_iter()
        .filter(|w| w.iter().any(|&x| x > 0.0))
        .collect())
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
    let block_size = cfg.sim.profile.block_size;
    let mut policies = vec![current.clone()];
    for (i, w) in points.iter().enumerate() {
        policies.push(PolicySpec::Inline {
            name: format!("point-{i}"),
            yaml: Arc::from(output::picker_yaml(space, w, block_size, "")),
        });
    }
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
    let mut scores = scores.into_iter();
    let base_scores = scores.next().unwrap_or_default();
    let baseline = PointResult::new(
        Vec::new(),
        base_scores.clone(),
        &base_scores,
        &cfg.objective,
    );
    let mut results: Vec<PointResult> = points
        .into_iter()
        .zip(scores)
        .map(|(w, s)| PointResult::new(w, s, &base_scores, &cfg.objective))
        .collect();
    let o = cfg.objective;
    results.sort_by(|a, b| {
        let ord = a.mean.total_cmp(&b.mean);
        if o.maximize() { ord.reverse() } else { ord }
    });
    Ok(TuneResult {
        objective: cfg.objective,
        space: space.clone(),
        seeds: workloads.iter().map(|(s, _)| *s).collect(),
        baseline,
        points: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_parse_and_refuse() {
        let s = Space::parse(DEFAULT_SPACE, "max-score-picker").unwrap();
        assert_eq!(s.params.len(), 3);
        assert_eq!((s.params[0].lo, s.params[0].hi), (0.0, 4.0));
        for bad in [
            "",
            "queue-scorer=2:1",
            "bogus-scorer=0:1",
            "queue-scorer=0:1,queue-scorer=0:2",
            "queue-scorer",
        ] {
            assert!(Space::parse(bad, "max-score-picker").is_err(), "{bad}");
        }
        assert!(Space::parse("queue-scorer=0:1", "random-picker").is_err());
    }

    #[test]
    fn grid_and_random_points() {
        let s = Space::parse(
            "queue-scorer=0:2,kv-cache-utilization-scorer=1:3",
            "max-score-picker",
        )
        .unwrap();
        let g = points(&s, Search::Grid { levels: 3 }, 100).unwrap();
        assert_eq!(g.len(), 9);
        assert!(g.contains(&vec![1.0, 3.0]) && g.contains(&vec![0.0, 1.0]));
        assert!(points(&s, Search::Grid { levels: 11 }, 100).is_err());
        let r = points(
            &s,
            Search::Random {
                points: 20,
                seed: 4,
            },
            100,
        )
        .unwrap();
        assert_eq!(
            r,
            points(
                &s,
                Search::Random {
                    points: 20,
                    seed: 4
                },
                100
            )
            .unwrap()
        );
        assert!(
            r.iter()
                .all(|w| (0.0..=2.0).contains(&w[0]) && (1.0..=3.0).contains(&w[1]))
        );
        let z = Space::parse("queue-scorer=0:1", "max-score-picker").unwrap();
        assert_eq!(
            points(&z, Search::Grid { levels: 2 }, 10).unwrap(),
            vec![vec![1.0]]
        );
    }

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
