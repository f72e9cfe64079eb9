//! A search split between processes (a Kubernetes Indexed Job, or several machines): every
//! candidate is an independent set of simulations, so shard `i` of `N` runs every `N`-th
//! *unit* from `i` (unit 0 is the current config, unit `k` the point `k − 1`), writes their
//! scores ([`ShardResult`]), and [`merge`] ranks the union exactly as one process would: the
//! points are re-derived from the [`Plan`] and the scores travel as their bits, so the merged
//! ranking, `tune.json` and picker YAML are the single-process ones to the last digit.
//!
//! Every shard carries the plan it ran (space, search, seeds, objective, current config, and a
//! digest of the workload and simulation settings); shards of different searches, a shard given
//! twice or a missing one are refused.

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};

use super::{Objective, Search, Space, TuneConfig, TuneResult, points, rank, score};
use crate::des::SimConfig;
use crate::error::SimError;
use crate::policy::PolicySpec;
use crate::trace::Trace;

/// Shard `index` of `count` (0-based, as a Kubernetes Indexed Job numbers its pods:
/// `JOB_COMPLETION_INDEX`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Which one, `0..count`.
    pub index: usize,
    /// How many.
    pub count: usize,
}

impl FromStr for Shard {
    type Err = SimError;

    /// `I/N` with `0 ≤ I < N`.
    fn from_str(s: &str) -> Result<Self, SimError> {
        let bad = || SimError::InvalidConfig(format!("shard {s:?}: expected I/N with 0 ≤ I < N"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<usize>().map_err(|_| bad())?,
            n.trim().parse::<usize>().map_err(|_| bad())?,
        );
        if index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    /// The units it runs of a search of `total` units: every `count`-th from `index`, so shards
    /// of a grid get similar mixes of weights (and of run times).
    pub fn units(&self, total: usize) -> Vec<usize> {
        (self.index..total).step_by(self.count.max(1)).collect()
    }

    /// The file it writes: `shard-I-of-N.json`.
    pub fn file_name(&self) -> String {
        format!("shard-{}-of-{}.json", self.index, self.count)
    }
}

/// What decides a search's units and their scores. Shards of one search carry equal plans.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The weights searched, as `--space` spells them.
    pub space: String,
    /// The picker of every point.
    pub picker: String,
    /// How points are drawn.
    pub search: Search,
    /// Points drawn at most.
    pub max_points: usize,
    /// Seeds every unit runs on.
    pub seeds: Vec<u64>,
    /// What is optimized.
    pub objective: Objective,
    /// The current config's name (unit 0).
    pub current: String,
    /// The engines' block size: the written picker config's `index.blockSize`.
    pub block_size: u32,
    /// Digest of the workloads and the simulation settings ([`fingerprint`]).
    pub fingerprint: String,
}

impl Plan {
    /// The space it searches.
    pub fn space(&self) -> Result<Space, SimError> {
        Space::parse(&self.space, &self.picker)
    }

    /// Its points, drawn as the single-process search draws them.
    pub fn points(&self) -> Result<Vec<Vec<f64>>, SimError> {
        points(&self.space()?, self.search, self.max_points)
    }
}

/// A digest of what every unit runs on: each seed's trace (every request's arrival, prompt,
/// output and model) and the simulation settings but the seed and the timeline sampling (which
/// change no score).
pub fn fingerprint(workloads: &[(u64, Arc<Trace>)], sim: &SimConfig) -> String {
    let mut h = Digest(xxhash_rust::xxh3::Xxh3::new());
    let sim = SimConfig {
        seed: 0,
        sample_interval_us: 0,
        ..sim.clone()
    };
    let _ = write!(h, "{sim:?}");
    for (seed, trace) in workloads {
        let _ = write!(h, "|{seed}|{}|{}", trace.name, trace.requests.len());
        for r in &trace.requests {
            let _ = write!(h, "{r:?}");
        }
    }
    format!("{:032x}", h.0.digest128())
}

/// `fmt::Write` into a streaming hash, so nothing is formatted into memory first.
struct Digest(xxhash_rust::xxh3::Xxh3);

impl std::fmt::Write for Digest {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// One unit's scores, one per seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitScores {
    /// The unit (0: the current config, `k`: point `k − 1`).
    pub unit: usize,
    /// The scores, for people.
    pub scores: Vec<f64>,
    /// The same, exactly (`f64::to_bits`): what [`merge`] reads.
    pub bits: Vec<u64>,
}

/// What one shard ran and found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardResult {
    /// The search.
    pub plan: Plan,
    /// Which shard.
    pub shard: Shard,
    /// Its units' scores, in unit order.
    pub units: Vec<UnitScores>,
}

/// Runs `shard` of `plan`'s search: its units on every workload (`workloads` in `plan.seeds`
/// order), `current` as unit 0.
pub fn run(
    plan: &Plan,
    shard: Shard,
    workloads: &[(u64, Arc<Trace>)],
    current: &PolicySpec,
    cfg: &TuneConfig,
    progress: Option<&AtomicU64>,
) -> Result<ShardResult, SimError> {
    let seeds: Vec<u64> = workloads.iter().map(|(s, _)| *s).collect();
    if seeds != plan.seeds || cfg.objective != plan.objective {
        return Err(SimError::InvalidConfig(
            "the workloads or the objective differ from the plan's".into(),
        ));
    }
    let space = plan.space()?;
    let points = plan.points()?;
    let units = shard.units(points.len() + 1);
    let scores = score(workloads, &space, &points, current, cfg, &units, progress)?;
    Ok(ShardResult {
        plan: plan.clone(),
        shard,
        units: (units.into_iter().zip(scores))
            .map(|(unit, scores)| UnitScores {
                unit,
                bits: scores.iter().map(|s| s.to_bits()).collect(),
                scores,
            })
            .collect(),
    })
}

/// The ranking of the search whose every shard is in `shards` (any order), with its plan.
pub fn merge(shards: Vec<ShardResult>) -> Result<(Plan, TuneResult), SimError> {
    let bad = |m: String| SimError::InvalidConfig(format!("merging shards: {m}"));
    let first = shards.first().ok_or_else(|| bad("no shard given".into()))?;
    let (plan, count) = (first.plan.clone(), first.shard.count);
    let points = plan.points()?;
    let total = points.len() + 1;
    let mut scores: Vec<Option<Vec<f64>>> = vec![None; total];
    let mut seen = vec![false; count];
    for s in &shards {
        let name = format!("shard {}/{}", s.shard.index, s.shard.count);
        if s.plan != plan {
            return Err(bad(format!(
                "{name} ran another search than shard {}/{} (plans differ)",
                first.shard.index, count
            )));
        }
        if s.shard.count != count || s.shard.index >= count {
            return Err(bad(format!("{name} is not one of {count} shards")));
        }
        if std::mem::replace(&mut seen[s.shard.index], true) {
            return Err(bad(format!("{name} given twice")));
        }
        let units: Vec<usize> = s.units.iter().map(|u| u.unit).collect();
        if units != s.shard.units(total) {
            return Err(bad(format!("{name} holds other units than its share")));
        }
        for u in &s.units {
            if u.bits.len() != plan.seeds.len() {
                return Err(bad(format!(
                    "{name}: unit {} has {} scores for {} seeds",
                    u.unit,
                    u.bits.len(),
                    plan.seeds.len()
                )));
            }
            scores[u.unit] = Some(u.bits.iter().map(|b| f64::from_bits(*b)).collect());
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(bad(format!("shard {i}/{count} missing")));
    }
    let scores = scores
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("a unit has no scores".into()))?;
    let result = rank(
        plan.objective,
        &plan.space()?,
        plan.seeds.clone(),
        points,
        scores,
    );
    Ok((plan, result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tune::DEFAULT_SPACE;

    fn plan() -> Plan {
        Plan {
            space: DEFAULT_SPACE.into(),
            picker: "max-score-picker".into(),
            search: Search::Grid { levels: 2 },
            max_points: 100,
            seeds: vec![1, 2],
            objective: Objective::TtftP90,
            current: "precise-prefix".into(),
            block_size: 16,
            fingerprint: "f".into(),
        }
    }

    /// Shards with made-up scores: unit `u` on seed `s` scores `u·0.1 + s/3`.
    fn shards(count: usize) -> Vec<ShardResult> {
        let p = plan();
        let total = p.points().unwrap().len() + 1;
        (0..count)
            .map(|index| {
                let shard = Shard { index, count };
                let units = (shard.units(total).into_iter())
                    .map(|unit| {
                        let scores: Vec<f64> = (p.seeds.iter())
                            .map(|&s| unit as f64 * 0.1 + s as f64 / 3.0)
                            .collect();
                        UnitScores {
                            unit,
                            bits: scores.iter().map(|s| s.to_bits()).collect(),
                            scores,
                        }
                    })
                    .collect();
                ShardResult {
                    plan: p.clone(),
                    shard,
                    units,
                }
            })
            .collect()
    }

    #[test]
    fn shards_parse_and_cover_every_unit_once() {
        assert_eq!(
            "2/8".parse::<Shard>().ok(),
            Some(Shard { index: 2, count: 8 })
        );
        for bad in ["8/8", "1", "a/2", "1/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let mut all: Vec<usize> = (0..3)
            .flat_map(|index| Shard { index, count: 3 }.units(10))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn merge_ranks_like_one_process_and_refuses_mixtures() {
        let (_, whole) = merge(shards(1)).unwrap();
        let mut three = shards(3);
        three.reverse();
        // Through JSON and back, as the files go.
        let three: Vec<ShardResult> = (three.iter())
            .map(|s| serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap())
            .collect();
        let (_, merged) = merge(three.clone()).unwrap();
        assert_eq!(
            serde_json::to_string(&merged).unwrap(),
            serde_json::to_string(&whole).unwrap()
        );
        assert_eq!(merged.points.len(), 7);
        assert!(merge(three[..2].to_vec()).is_err(), "a shard missing");
        let mut twice = three.clone();
        twice[1] = twice[0].clone();
        assert!(merge(twice).is_err(), "a shard given twice");
        let mut other = three.clone();
        other[0].plan.fingerprint = "g".into();
        assert!(merge(other).is_err(), "another workload");
        let mut short = three;
        short[0].units[0].bits.pop();
        assert!(merge(short).is_err(), "a score missing");
    }
}
