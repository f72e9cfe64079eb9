//! vLLM's cumulative counters, sampled on a time grid, cut into per-engine windows of increases.
//!
//! Prometheus returns each counter (and each histogram's `_sum` and `_count`) as a series per
//! engine, evaluated every `step` seconds. The increase of a counter between two consecutive grid
//! points is what the engine did in that window; a counter that went down was reset (a restarted
//! pod) and counts from zero, as Prometheus' own `increase()` does.

use std::collections::BTreeMap;

/// One time series as Prometheus answers it: its labels (without `__name__`) and its points
/// `(unix seconds, value)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Labels, `__name__` removed.
    pub labels: BTreeMap<String, String>,
    /// Points in time order.
    pub points: Vec<(f64, f64)>,
}

/// The counters calibration reads, with vLLM's names (newest first where vLLM renamed one).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    /// Engine steps (`vllm:iteration_tokens_total` histogram count).
    Steps,
    /// Tokens computed by those steps, prompt and generated (its sum).
    StepTokens,
    /// Tokens generated (`vllm:generation_tokens_total`), first tokens included.
    Generated,
    /// Inter-token gaps observed: one per decoding sequence per step.
    ItlCount,
    /// Their sum, s.
    ItlSum,
    /// First tokens (`vllm:time_to_first_token_seconds` count): one per request served.
    TtftCount,
    /// Their sum, s.
    TtftSum,
    /// Finished requests' prompt lengths: count.
    PromptLenCount,
    /// ... and sum, tokens.
    PromptLenSum,
    /// Finished requests' output lengths: count.
    OutputLenCount,
    /// ... and sum, tokens.
    OutputLenSum,
    /// Prompt tokens looked up in the prefix cache.
    PrefixQueries,
    /// Of those, found cached.
    PrefixHits,
    /// Queue time (`vllm:request_queue_time_seconds`): count.
    QueueCount,
    /// ... and sum, s.
    QueueSum,
    /// Prefill time, first scheduled to first token (`vllm:request_prefill_time_seconds`): count.
    PrefillCount,
    /// ... and sum, s.
    PrefillSum,
}

/// Every counter, in index order.
pub const COUNTERS: [Counter; 17] = [
    Counter::Steps,
    Counter::StepTokens,
    Counter::Generated,
    Counter::ItlCount,
    Counter::ItlSum,
    Counter::TtftCount,
    Counter::TtftSum,
    Counter::PromptLenCount,
    Counter::PromptLenSum,
    Counter::OutputLenCount,
    Counter::OutputLenSum,
    Counter::PrefixQueries,
    Counter::PrefixHits,
    Counter::QueueCount,
    Counter::QueueSum,
    Counter::PrefillCount,
    Counter::PrefillSum,
];

impl Counter {
    /// Metric names to try, in order (vLLM renamed `time_per_output_token` to
    /// `inter_token_latency`, and `gpu_prefix_cache_*` to `prefix_cache_*`).
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Counter::Steps => &["vllm:iteration_tokens_total_count"],
            Counter::StepTokens => &["vllm:iteration_tokens_total_sum"],
            Counter::Generated => &["vllm:generation_tokens_total"],
            Counter::ItlCount => &[
                "vllm:inter_token_latency_seconds_count",
                "vllm:time_per_output_token_seconds_count",
            ],
            Counter::ItlSum => &[
                "vllm:inter_token_latency_seconds_sum",
                "vllm:time_per_output_token_seconds_sum",
            ],
            Counter::TtftCount => &["vllm:time_to_first_token_seconds_count"],
            Counter::TtftSum => &["vllm:time_to_first_token_seconds_sum"],
            Counter::PromptLenCount => &["vllm:request_prompt_tokens_count"],
            Counter::PromptLenSum => &["vllm:request_prompt_tokens_sum"],
            Counter::OutputLenCount => &["vllm:request_generation_tokens_count"],
            Counter::OutputLenSum => &["vllm:request_generation_tokens_sum"],
            Counter::PrefixQueries => &[
                "vllm:prefix_cache_queries_total",
                "vllm:gpu_prefix_cache_queries_total",
            ],
            Counter::PrefixHits => &[
                "vllm:prefix_cache_hits_total",
                "vllm:gpu_prefix_cache_hits_total",
            ],
            Counter::QueueCount => &["vllm:request_queue_time_seconds_count"],
            Counter::QueueSum => &["vllm:request_queue_time_seconds_sum"],
            Counter::PrefillCount => &["vllm:request_prefill_time_seconds_count"],
            Counter::PrefillSum => &["vllm:request_prefill_time_seconds_sum"],
        }
    }

    /// Whether calibration cannot work without it (the step-time fit and the arrival rate).
    pub fn required(self) -> bool {
        matches!(
            self,
            Counter::Steps
                | Counter::StepTokens
                | Counter::Generated
                | Counter::ItlCount
                | Counter::ItlSum
                | Counter::TtftCount
        )
    }
}

/// What one engine did in one window: the increase of every counter.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// The engine (its labels, `k=v` joined by commas).
    pub engine: String,
    /// Window end, unix seconds.
    pub end: f64,
    /// Window length, s.
    pub secs: f64,
    /// Increases, indexed by `Counter as usize`.
    pub delta: [f64; COUNTERS.len()],
}

impl Window {
    /// The increase of `c`.
    pub fn get(&self, c: Counter) -> f64 {
        self.delta[c as usize]
    }
}

/// A series' identity as an engine: its labels without `le`, `k=v` joined by commas.
pub fn engine_key(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .filter(|(k, _)| *k != "le")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Increase from `a` to `b` of a counter that may have been reset in between.
pub fn increase(a: f64, b: f64) -> f64 {
    if b >= a { b - a } else { b }
}

/// A series' values on the grid `start + k·step`, `k < n` (`None` where it has no sample).
pub fn on_grid(series: &Series, start: f64, step: f64, n: usize) -> Vec<Option<f64>> {
    let mut out = vec![None; n];
    for &(t, v) in &series.points {
        let k = ((t - start) / step).round();
        if k >= 0.0 && (k as usize) < n && v.is_finite() {
            out[k as usize] = Some(v);
        }
    }
    out
}

/// Per-engine windows from each counter's series on the grid `start + k·step`, `k < n`. A window
/// exists where every counter that has series has both ends; counters without any series (optional
/// ones the server does not export) count 0.
pub fn windows(
    counters: &BTreeMap<Counter, Vec<Series>>,
    start: f64,
    step: f64,
    n: usize,
) -> Vec<Window> {
    let mut grid: BTreeMap<String, BTreeMap<Counter, Vec<Option<f64>>>> = BTreeMap::new();
    for (&c, series) in counters {
        for s in series {
            grid.entry(engine_key(&s.labels))
                .or_default()
                .insert(c, on_grid(s, start, step, n));
        }
    }
    let mut out = Vec::new();
    for (engine, values) in grid {
        'window: for k in 1..n {
            let mut delta = [0.0; COUNTERS.len()];
            for c in COUNTERS {
                match values.get(&c) {
                    Some(v) => match (v[k - 1], v[k]) {
                        (Some(a), Some(b)) => delta[c as usize] = increase(a, b),
                        _ => continue 'window,
                    },
                    None if counters.get(&c).is_some_and(|s| !s.is_empty()) => continue 'window,
                    None => {}
                }
            }
            out.push(Window {
                engine: engine.clone(),
                end: start + k as f64 * step,
                secs: step,
                delta,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(pod: &str, points: &[(f64, f64)]) -> Series {
        Series {
            labels: [("pod".to_owned(), pod.to_owned())].into(),
            points: points.to_vec(),
        }
    }

    #[test]
    fn windows_take_increases_and_survive_resets() {
        let mut c = BTreeMap::new();
        c.insert(
            Counter::Steps,
            vec![
                series("a", &[(100.0, 5.0), (110.0, 9.0), (120.0, 2.0)]),
                series("b", &[(110.0, 1.0), (120.0, 4.0)]),
            ],
        );
        c.insert(
            Counter::Generated,
            vec![series("a", &[(100.0, 0.0), (110.0, 10.0), (120.0, 30.0)])],
        );
        let w = windows(&c, 100.0, 10.0, 3);
        // Engine a: two windows (the second after a reset: 2 steps); b lacks Generated: none.
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(
            (w[0].get(Counter::Steps), w[0].get(Counter::Generated)),
            (4.0, 10.0)
        );
        assert_eq!((w[1].get(Counter::Steps), w[1].end), (2.0, 120.0));
        assert_eq!(w[1].get(Counter::PrefixHits), 0.0);
        assert_eq!(engine_key(&w[0].labels_for_test()), "pod=a");
    }

    impl Window {
        fn labels_for_test(&self) -> BTreeMap<String, String> {
            let (k, v) = self.engine.split_once('=').unwrap();
            [(k.to_owned(), v.to_owned())].into()
        }
    }
}
