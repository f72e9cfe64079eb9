//! vLLM's cumulative counters, sampled on a time grid, cut into per-engine windows of increases.
//!
//! Prometheus returns each counter (and each histogram's `_sum` and `_count`) as a series per
//! engine, evaluated every `step` seconds. The increase of a counter between two consecutive grid
//! points is what the engine did in that window; a counter that went down was reset (a restarted
//! pod) and counts from zero, as Prometheus' own `increase()` does.

use std::collections::BTreeMap;

pub use kvpick_scheduler::profile::fit::{COUNTERS, Counter, Window, increase};

/// One time series as Prometheus answers it: its labels (without `__name__`) and its points
/// `(unix seconds, value)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Labels, `__name__` removed.
    pub labels: BTreeMap<String, String>,
    /// Points in time order.
    pub points: Vec<(f64, f64)>,
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
        assert_eq!(w[0].engine, "pod=a");
        assert_eq!(engine_key(&series("a", &[]).labels), "pod=a");
    }
}
