//! The search space (scorer weights and their ranges) and how candidate points are drawn from it.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::SimError;

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
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
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
}
