//! Load scorers: how busy each candidate is, from its scraped signals.
//!
//! Queue depth and running requests are min-max normalised across the candidates of the request
//! (the least loaded scores 1, the most loaded 0, all equal → all 1), as llm-d's `queue-scorer`
//! and `running-requests-size-scorer` do: the absolute numbers mean little across pod shapes, the
//! order among the candidates is what matters. KV-cache utilization is already a fraction.

use super::{ScoreContext, Scorer};

/// `queue-scorer`: the shortest waiting queue scores 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueDepth;

impl Scorer for QueueDepth {
    fn score(&self, ctx: &ScoreContext<'_, '_>, out: &mut [f64]) {
        fewest_is_best(ctx.candidates.iter().map(|c| c.signals.waiting), out);
    }
}

/// `running-requests-size-scorer`: the fewest running requests scores 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunningRequests;

impl Scorer for RunningRequests {
    fn score(&self, ctx: &ScoreContext<'_, '_>, out: &mut [f64]) {
        fewest_is_best(ctx.candidates.iter().map(|c| c.signals.running), out);
    }
}

/// `kv-cache-utilization-scorer`: 1 − KV-cache usage, clamped to [0, 1]; an unreadable (NaN)
/// usage scores 0, as if full.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvCacheUtilization;

impl Scorer for KvCacheUtilization {
    fn score(&self, ctx: &ScoreContext<'_, '_>, out: &mut [f64]) {
        for (o, c) in out.iter_mut().zip(ctx.candidates) {
            let usage = c.signals.kv_usage;
            *o = if usage.is_nan() {
                0.0
            } else {
                1.0 - usage.clamp(0.0, 1.0)
            };
        }
    }
}

/// Min-max normalisation where the smallest value scores 1 and the largest 0.
fn fewest_is_best(values: impl Iterator<Item = u32> + Clone, out: &mut [f64]) {
    let (min, max) = values
        .clone()
        .fold((u32::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if max <= min {
        out.fill(1.0);
        return;
    }
    let span = f64::from(max - min);
    for (o, v) in out.iter_mut().zip(values) {
        *o = f64::from(max - v) / span;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{endpoint, request, run};
    use super::*;
    use crate::pods::PodSignals;
    use crate::time::Timestamp;

    fn pods(f: impl Fn(&mut PodSignals, usize)) -> Vec<(crate::pods::Endpoint, PodSignals)> {
        (0..4)
            .map(|i| {
                let mut s = PodSignals::idle(Timestamp::ZERO);
                f(&mut s, i);
                (endpoint(i as u32), s)
            })
            .collect()
    }

    #[test]
    fn queue_is_min_max_normalised_shortest_first() {
        let waiting = [4, 0, 2, 4];
        let p = pods(|s, i| s.waiting = waiting[i]);
        assert_eq!(run(&QueueDepth, &request(), &p), [0.0, 1.0, 0.5, 0.0]);
    }

    #[test]
    fn equal_queues_all_score_one() {
        let p = pods(|s, _| s.waiting = 7);
        assert_eq!(run(&QueueDepth, &request(), &p), [1.0; 4]);
        let p = pods(|s, _| s.waiting = 0);
        assert_eq!(run(&QueueDepth, &request(), &p), [1.0; 4]);
    }

    #[test]
    fn running_is_min_max_normalised_fewest_first() {
        let running = [10, 20, 30, 50];
        let p = pods(|s, i| s.running = running[i]);
        assert_eq!(run(&RunningRequests, &request(), &p), [1.0, 0.75, 0.5, 0.0]);
    }

    #[test]
    fn kv_utilization_is_one_minus_usage_clamped() {
        let usage = [0.25, 1.5, -0.5, f64::NAN];
        let p = pods(|s, i| s.kv_usage = usage[i]);
        assert_eq!(
            run(&KvCacheUtilization, &request(), &p),
            [0.75, 0.0, 1.0, 0.0]
        );
    }
}
