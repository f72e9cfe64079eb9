//! The workload's shape from vLLM's metrics, and a synthetic trace with that shape.
//!
//! - Arrival rate over time: first tokens per window, summed over engines (each request served
//!   records one), as a rate ladder.
//! - Prompt and output lengths: vLLM's `request_prompt_tokens` / `request_generation_tokens`
//!   histograms. Bucket masses are kept exactly; inside a bucket `[lo, hi]` a length is
//!   `lo + (hi − lo)·u^k` with `u` uniform and one exponent `k` for all buckets, chosen so that the
//!   distribution's mean equals the observed mean (`sum / count`). Lengths are therefore right to
//!   the bucket and right on average; finer detail is not in the metrics.
//! - Prefix reuse: the observed prefix-cache hit rate `h` (hits / queries) becomes the share of
//!   each prompt taken from one of `groups` shared prefixes. Measured under the current routing,
//!   `h` is a lower bound on what a cache-aware router can find.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::clock::SimTime;
use crate::error::SimError;
use crate::trace::generate::{Arrivals, RateStage, arrival_times};
use crate::trace::{PromptSpec, Segment, Trace, TraceRequest, tokens};

/// A length distribution from a Prometheus histogram.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LengthDist {
    /// Bucket intervals `(lo, hi]`; the last one ends at the largest length allowed.
    pub buckets: Vec<(f64, f64)>,
    /// Observations per bucket.
    pub counts: Vec<f64>,
    /// Observed mean (`sum / count`).
    pub mean: f64,
    /// Shape exponent inside buckets (1 = uniform; > 1 leans to `lo`).
    pub exponent: f64,
}

impl LengthDist {
    /// From cumulative bucket counts `(le, count)` (any order, `+Inf` included or not), the
    /// histogram's `sum` and `count`, and the largest possible value `max`.
    pub fn from_buckets(
        cumulative: &[(f64, f64)],
        sum: f64,
        count: f64,
        max: f64,
    ) -> Result<Self, SimError> {
        if count <= 0.0 {
            return Err(SimError::Prometheus(
                "a length histogram without observations in the window".into(),
            ));
        }
        let mut c: Vec<(f64, f64)> = cumulative
            .iter()
            .copied()
            .filter(|(le, _)| le.is_finite())
            .collect();
        c.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut buckets = Vec::new();
        let mut counts = Vec::new();
        let (mut lo, mut below) = (0.0, 0.0);
        for (le, cum) in c {
            buckets.push((lo, le));
            counts.push((cum - below).max(0.0));
            (lo, below) = (le, cum.max(below));
        }
        if count > below {
            buckets.push((lo, max.max(lo * 2.0).max(lo + 1.0)));
            counts.push(count - below);
        }
        let mean = sum / count;
        let total: f64 = counts.iter().sum();
        let floor: f64 = buckets
            .iter()
            .zip(&counts)
            .map(|((lo, _), n)| lo * n)
            .sum::<f64>()
            / total;
        let width: f64 = buckets
            .iter()
            .zip(&counts)
            .map(|((lo, hi), n)| (hi - lo) * n)
            .sum::<f64>()
            / total;
        // E[u^k] = 1/(k+1): solve floor + width/(k+1) = mean, within a sane range.
        let theta = if width > 0.0 {
            ((mean - floor) / width).clamp(0.01, 0.99)
        } else {
            0.5
        };
        Ok(Self {
            buckets,
            counts,
            mean,
            exponent: 1.0 / theta - 1.0,
        })
    }

    /// The value at quantile `q` in [0, 1].
    pub fn quantile(&self, q: f64) -> f64 {
        let total: f64 = self.counts.iter().sum();
        let mut target = q.clamp(0.0, 1.0) * total;
        for ((lo, hi), n) in self.buckets.iter().zip(&self.counts) {
            if *n > 0.0 && target <= *n {
                return lo + (hi - lo) * (target / n).powf(self.exponent);
            }
            target -= n;
        }
        self.buckets.last().map_or(0.0, |b| b.1)
    }

    /// One length, at least 1.
    pub fn sample(&self, rng: &mut SmallRng) -> u32 {
        (self.quantile(rng.random::<f64>()).round() as u32).max(1)
    }
}

/// A synthetic workload of the observed shape.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    /// Arrival-rate ladder.
    #[serde(skip)]
    pub stages: Vec<RateStage>,
    /// Prompt lengths.
    pub input: LengthDist,
    /// Output lengths.
    pub output: LengthDist,
    /// Share of each prompt taken from a shared prefix.
    pub prefix_share: f64,
    /// Distinct shared prefixes.
    pub groups: u32,
}

impl Workload {
    /// A trace of this shape (Poisson arrivals), seeded.
    pub fn generate(&self, seed: u64) -> Result<Trace, SimError> {
        if self.groups == 0 || !(0.0..=1.0).contains(&self.prefix_share) {
            return Err(SimError::InvalidConfig(
                "workload: groups must be positive and the prefix share in [0, 1]".into(),
            ));
        }
        let mut rng = SmallRng::seed_from_u64(seed);
        let times = arrival_times(&self.stages, Arrivals::Poisson, 1.0, &mut rng);
        let requests = times
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let len = self.input.sample(&mut rng);
                let shared = ((len as f64 * self.prefix_share).round() as u32).min(len);
                let group = rng.random_range(0..self.groups) as u64;
                let mut segments = Vec::with_capacity(2);
                if shared > 0 {
                    let id = tokens::content_id("calibrated/prefix", &[seed, group]);
                    segments.push(Segment { id, len: shared });
                }
                if len > shared {
                    let id = tokens::content_id("calibrated/rest", &[seed, i as u64]);
                    segments.push(Segment {
                        id,
                        len: len - shared,
                    });
                }
                TraceRequest {
                    arrival: SimTime::from_secs_f64(t),
                    prompt: PromptSpec::Segments(segments),
                    output_tokens: self.output.sample(&mut rng),
                    output_id: tokens::content_id("calibrated/output", &[seed, i as u64]),
                    model: None,
                    lora: None,
                    session: Some(format!("g{group}").into()),
                    objective: Default::default(),
                }
            })
            .collect();
        Ok(Trace {
            name: format!(
                "calibrated(in {:.0}, out {:.0}, prefix {:.0}% of {} groups)",
                self.input.mean,
                self.output.mean,
                self.prefix_share * 100.0,
                self.groups
            ),
            requests,
            prefix_block_tokens: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist() -> LengthDist {
        // 1-2-5 buckets; 30 values of 150, 70 of 700, total 53,500.
        let cum = [
            (100.0, 0.0),
            (200.0, 30.0),
            (500.0, 30.0),
            (1000.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        LengthDist::from_buckets(&cum, 53_500.0, 100.0, 4096.0).unwrap()
    }

    #[test]
    fn buckets_keep_mass_and_mean() {
        let d = dist();
        assert_eq!(d.counts, vec![0.0, 30.0, 0.0, 70.0]);
        let mut rng = SmallRng::seed_from_u64(1);
        let xs: Vec<u32> = (0..20_000).map(|_| d.sample(&mut rng)).collect();
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
        assert!((mean / 535.0 - 1.0).abs() < 0.02, "{mean}");
        let in_low = xs.iter().filter(|&&x| (100..=200).contains(&x)).count() as f64;
        assert!((in_low / xs.len() as f64 - 0.3).abs() < 0.02);
        assert!((100.0..=200.0).contains(&d.quantile(0.2)));
        assert!((500.0..=1000.0).contains(&d.quantile(0.9)));
        assert!(LengthDist::from_buckets(&[], 0.0, 0.0, 10.0).is_err());
    }

    #[test]
    fn overflow_bucket_and_generated_trace() {
        let d =
            LengthDist::from_buckets(&[(10.0, 5.0)], 5.0 * 5.0 + 5.0 * 40.0, 10.0, 100.0).unwrap();
        assert_eq!(d.buckets.last(), Some(&(10.0, 100.0)));
        let w = Workload {
            stages: vec![RateStage {
                rate: 20.0,
                duration_s: 50.0,
            }],
            input: dist(),
            output: d,
            prefix_share: 0.5,
            groups: 4,
        };
        let t = w.generate(3).unwrap();
        let n = t.requests.len() as f64;
        assert!((n / 1000.0 - 1.0).abs() < 0.1, "{n}");
        let shared: u64 = t
            .requests
            .iter()
            .map(|r| match &r.prompt {
                PromptSpec::Segments(s) if s.len() == 2 => s[0].len as u64,
                _ => 0,
            })
            .sum();
        let share = shared as f64 / t.input_tokens() as f64;
        assert!((share - 0.5).abs() < 0.02, "{share}");
        assert_eq!(t.requests, w.generate(3).unwrap().requests);
    }
}
