//! Pickers: turn the candidates' total scores into an order of preference.
//!
//! Every picker ranks all candidates (the primary first, then fallbacks the proxy may retry on),
//! optionally cut to `maxNumOfEndpoints`:
//!
//! | `type` | Picker | Order |
//! |---|---|---|
//! | `max-score-picker` | [`PickerKind::MaxScore`] | score descending, ties in random order |
//! | `weighted-random-picker` | [`PickerKind::WeightedRandom`] | sampled without replacement, P ∝ score |
//! | `random-picker` | [`PickerKind::Random`] | uniformly random |
//!
//! Weighted random uses Efraimidis–Spirakis keys (`u^(1/w)`, compared as `ln(u)/w`), the A-Res
//! sampling llm-d's picker of the same name uses: the whole order is one sort. Zero scores come
//! last, in random order. Randomness is a splitmix64 stream from a configured seed: lock-free
//! (one atomic add per pick) and reproducible for a given seed and sequence of picks.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::splitmix::{GAMMA, SplitMix64, splitmix64};

/// How a picker orders candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PickerKind {
    /// Highest score first, ties broken at random.
    MaxScore,
    /// Random, weighted by score.
    WeightedRandom,
    /// Uniformly random.
    Random,
}

/// A picker as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickerSpec {
    /// The ordering.
    pub kind: PickerKind,
    /// Keep at most this many endpoints (`maxNumOfEndpoints`); `None` keeps every candidate.
    pub max_endpoints: Option<NonZeroUsize>,
    /// Seed of the random stream (`seed`): fixed by default, so runs are reproducible.
    pub seed: u64,
}

impl PickerSpec {
    /// The seed used when the config sets none.
    pub const DEFAULT_SEED: u64 = 0x6b76_7069_636b_0001;

    /// A picker of `kind` keeping every candidate, with the default seed.
    pub const fn new(kind: PickerKind) -> Self {
        Self {
            kind,
            max_endpoints: None,
            seed: Self::DEFAULT_SEED,
        }
    }
}

impl Default for PickerSpec {
    fn default() -> Self {
        Self::new(PickerKind::MaxScore)
    }
}

/// A configured picker, shared by all requests.
#[derive(Debug)]
pub struct Picker {
    spec: PickerSpec,
    state: AtomicU64,
}

impl Picker {
    /// A picker whose random stream starts at `spec.seed`.
    pub fn new(spec: PickerSpec) -> Self {
        Self {
            state: AtomicU64::new(spec.seed),
            spec,
        }
    }

    /// Its configuration.
    pub fn spec(&self) -> &PickerSpec {
        &self.spec
    }

    /// Writes to `order` the positions of `scores` in order of preference.
    pub fn rank(&self, scores: &[f64], order: &mut Vec<usize>) {
        // One atomic step per pick; the pick's own draws come from a stream seeded by it.
        let mut rng = SplitMix64(splitmix64(self.state.fetch_add(GAMMA, Ordering::Relaxed)));
        let mut keyed: Vec<(f64, u64, usize)> = scores
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let s = if s.is_nan() { 0.0 } else { s };
                let key = match self.spec.kind {
                    PickerKind::MaxScore => s,
                    PickerKind::Random => 0.0,
                    PickerKind::WeightedRandom if s > 0.0 => rng.unit().ln() / s,
                    PickerKind::WeightedRandom => f64::NEG_INFINITY,
                };
                (key, rng.next_u64(), i)
            })
            .collect();
        keyed.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        let keep = self
            .spec
            .max_endpoints
            .map_or(usize::MAX, NonZeroUsize::get);
        order.clear();
        order.extend(keyed.iter().take(keep).map(|k| k.2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picker(kind: PickerKind, seed: u64) -> Picker {
        Picker::new(PickerSpec {
            seed,
            ..PickerSpec::new(kind)
        })
    }

    fn rank(p: &Picker, scores: &[f64]) -> Vec<usize> {
        let mut out = Vec::new();
        p.rank(scores, &mut out);
        out
    }

    /// How often each position comes first over `n` picks.
    fn firsts(p: &Picker, scores: &[f64], n: usize) -> Vec<usize> {
        let mut count = vec![0; scores.len()];
        for _ in 0..n {
            count[rank(p, scores)[0]] += 1;
        }
        count
    }

    #[test]
    fn max_score_orders_by_score_and_breaks_ties_at_random() {
        let p = picker(PickerKind::MaxScore, 1);
        assert_eq!(rank(&p, &[0.2, 0.9, 0.5, f64::NAN]), [1, 2, 0, 3]);
        let count = firsts(&p, &[0.7, 0.1, 0.7, 0.7], 3000);
        assert_eq!(count[1], 0);
        for i in [0, 2, 3] {
            assert!((850..1150).contains(&count[i]), "{count:?}");
        }
        // Ties among fallbacks are shuffled too, and the order is always a permutation.
        let r = rank(&p, &[0.5, 0.5, 0.9]);
        assert_eq!(r[0], 2);
        let mut sorted = r.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2]);
    }

    #[test]
    fn weighted_random_is_proportional_to_score_and_zero_comes_last() {
        let p = picker(PickerKind::WeightedRandom, 2);
        let count = firsts(&p, &[0.6, 0.2, 0.0], 8000);
        assert_eq!(count[2], 0);
        let share = count[0] as f64 / 8000.0;
        assert!((0.72..0.78).contains(&share), "{count:?}");
        for _ in 0..100 {
            assert_eq!(rank(&p, &[0.6, 0.2, 0.0])[2], 2);
        }
        // All zero: uniform.
        let count = firsts(&p, &[0.0, 0.0], 4000);
        assert!((1800..2200).contains(&count[0]), "{count:?}");
    }

    #[test]
    fn random_ignores_scores() {
        let p = picker(PickerKind::Random, 3);
        let count = firsts(&p, &[1.0, 0.0, 0.5], 3000);
        for c in count {
            assert!((850..1150).contains(&c), "{c}");
        }
    }

    #[test]
    fn max_endpoints_cuts_the_order() {
        let p = Picker::new(PickerSpec {
            max_endpoints: NonZeroUsize::new(2),
            ..PickerSpec::default()
        });
        assert_eq!(rank(&p, &[0.1, 0.3, 0.2]), [1, 2]);
    }

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let scores = [0.5, 0.5, 0.5, 0.25, 0.25];
        for kind in [
            PickerKind::MaxScore,
            PickerKind::WeightedRandom,
            PickerKind::Random,
        ] {
            let seq = |seed| {
                let p = picker(kind, seed);
                (0..50).map(|_| rank(&p, &scores)).collect::<Vec<_>>()
            };
            assert_eq!(seq(42), seq(42), "{kind:?}");
            assert_ne!(seq(42), seq(43), "{kind:?}");
        }
    }
}
