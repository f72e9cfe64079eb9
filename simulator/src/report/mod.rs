//! What a run measured, summarized per policy, and the ways to show it: a terminal [`table`],
//! [`json`] for machines and [`svg`] plots.

pub mod json;
pub mod svg;
pub mod table;

use serde::Serialize;

use crate::des::RunResult;

/// p50 / p90 / p99 and mean of one latency, in seconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

impl Quantiles {
    /// Of `values` (sorted in place).
    pub fn of(values: &mut [f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let at =
            |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            mean: values.iter().sum::<f64>() / values.len() as f64,
        }
    }
}

/// One policy's results.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Policy name.
    pub policy: String,
    /// Requests in the trace.
    pub requests: usize,
    /// Requests that produced all their output tokens.
    pub completed: usize,
    /// Requests that could never fit an engine.
    pub unfit: usize,
    /// Requests refused by flow control (queue full, or waited past `queueTTL`).
    pub rejected: usize,
    /// Sheddable requests shed: while the pool was saturated, or predicted to miss their
    /// objectives on every engine.
    pub shed: usize,
    /// Of those, shed for their objectives (the rest: while the pool was saturated).
    pub shed_slo: usize,
    /// Requests routed although no engine was predicted to meet their objectives.
    pub slo_best_effort: usize,
    /// Of the completed requests whose trace gave objectives, the fraction that met all of
    /// them (TTFT, and TPOT as (e2e − TTFT) / (outputs − 1)); `None` without such requests.
    pub slo_met: Option<f64>,
    /// Preemptions over all engines.
    pub preemptions: u64,
    /// Time to first token (s).
    pub ttft: Quantiles,
    /// Inter-token latency over all tokens after the first (s).
    pub itl: Quantiles,
    /// Time per output token per request: (e2e − TTFT) / (outputs − 1) (s).
    pub tpot: Quantiles,
    /// End-to-end latency (s).
    pub e2e: Quantiles,
    /// Time from arrival to first being scheduled (s).
    pub queue: Quantiles,
    /// Output tokens per second over the run (first arrival to last token).
    pub output_tok_s: f64,
    /// Prompt tokens per second over the run.
    pub input_tok_s: f64,
    /// Σ cached prompt tokens / Σ prompt tokens of admitted requests.
    pub hit_rate: f64,
    /// Requests routed to each engine.
    pub engine_requests: Vec<u64>,
    /// Tokens each engine computed (prefill, including recompute, plus decode).
    pub engine_tokens: Vec<u64>,
    /// Busiest engine's computed tokens over the mean (1 = perfectly even).
    pub imbalance: f64,
    /// Simulated seconds from first arrival to last event.
    pub makespan_s: f64,
    /// KV-event batches applied to the precise index.
    pub event_batches: u64,
    /// |predicted − simulated| TTFT per request (s), for policies with a latency model.
    pub prediction_error: Option<Quantiles>,
    /// P/D: routed requests prefilled on a prefill engine and decoded on another.
    pub disaggregated: usize,
}

impl Summary {
    /// Summarizes one run.
    pub fn of(run: &RunResult) -> Self {
        let mut ttft = Vec::new();
        let mut tpot = Vec::new();
        let mut e2e = Vec::new();
        let mut queue = Vec::new();
        let mut prediction_error = Vec::new();
        let (mut completed, mut unfit, mut rejected, mut shed, mut shed_slo) = (0, 0, 0, 0, 0);
        let (mut slo_best_effort, mut slo_met, mut slo_asked) = (0, 0, 0);
        let (mut out_tokens, mut in_tokens, mut cached, mut admitted_in) = (0u64, 0u64, 0u64, 0u64);
        let mut engine_requests = vec![0u64; run.engines.len()];
        let mut disaggregated = 0;
        let start = run.records.first().map(|r| r.arrival).unwrap_or_default();
        let mut last = start;
        for r in &run.records {
            if r.unfit {
                unfit += 1;
                continue;
            }
            if r.rejected {
                rejected += 1;
                continue;
            }
            if let Some(reason) = r.shed {
                shed += 1;
                shed_slo += usize::from(
                    kvpick_scheduler::SloMiss::ALL
                        .iter()
                        .any(|m| m.reason() == reason),
                );
                continue;
            }
            slo_best_effort += usize::from(r.slo_best_effort);
            disaggregated += usize::from(r.prefill_engine.is_some());
            if let Some(c) = engine_requests.get_mut(r.engine as usize) {
                *c += 1;
            }
            out_tokens += r.output_tokens as u64;
            if let Some(a) = r.admitted {
                queue.push(a.secs_since(r.arrival));
                in_tokens += r.input_tokens as u64;
                admitted_in += r.input_tokens as u64;
                cached += r.cached_tokens as u64;
            }
            if let Some(f) = r.first_token {
                ttft.push(f.secs_since(r.arrival));
                if let Some(p) = r.predicted_ttft_us {
                    let picked = r.routed.unwrap_or(r.arrival);
                    prediction_error.push((p / 1e6 - f.secs_since(picked)).abs());
                }
            }
            if let (Some(f), Some(d)) = (r.first_token, r.finished) {
                if r.output_tokens == r.output_target {
                    completed += 1;
                    if r.slo_ttft_us.is_some() || r.slo_tpot_us.is_some() {
                        slo_asked += 1;
                        slo_met += usize::from(r.met_slo(f, d));
                    }
                }
                e2e.push(d.secs_since(r.arrival));
                if r.output_tokens > 1 {
                    tpot.push(d.secs_since(f) / (r.output_tokens - 1) as f64);
                }
                last = last.max(d);
            }
        }
        let span = last.secs_since(start).max(1e-9);
        let engine_tokens: Vec<u64> = run
            .engines
            .iter()
            .map(|e| e.prefill_tokens + e.decode_tokens)
            .collect();
        let mean = engine_tokens.iter().sum::<u64>() as f64 / engine_tokens.len().max(1) as f64;
        let max = engine_tokens.iter().copied().max().unwrap_or(0) as f64;
        Self {
            policy: run.policy.clone(),
            requests: run.records.len(),
            completed,
            unfit,
            rejected,
            shed,
            shed_slo,
            slo_best_effort,
            slo_met: (slo_asked > 0).then(|| slo_met as f64 / slo_asked as f64),
            preemptions: run.engines.iter().map(|e| e.preemptions).sum(),
            ttft: Quantiles::of(&mut ttft),
            itl: Quantiles {
                p50: run.itl.quantile(0.5) / 1e6,
                p90: run.itl.quantile(0.9) / 1e6,
                p99: run.itl.quantile(0.99) / 1e6,
                mean: run.itl.mean() / 1e6,
            },
            tpot: Quantiles::of(&mut tpot),
            e2e: Quantiles::of(&mut e2e),
            queue: Quantiles::of(&mut queue),
            output_tok_s: out_tokens as f64 / span,
            input_tok_s: in_tokens as f64 / span,
            hit_rate: if admitted_in == 0 {
                0.0
            } else {
                cached as f64 / admitted_in as f64
            },
            engine_requests,
            engine_tokens,
            imbalance: if mean > 0.0 { max / mean } else { 1.0 },
            makespan_s: run.end.secs_since(start),
            event_batches: run.event_batches,
            prediction_error: (!prediction_error.is_empty())
                .then(|| Quantiles::of(&mut prediction_error)),
            disaggregated,
        }
    }
}

/// TTFT distribution of a run as (seconds, cumulative fraction) points, at most `points` of them.
pub fn ttft_cdf(run: &RunResult, points: usize) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = run
        .records
        .iter()
        .filter_map(|r| r.first_token.map(|f| f.secs_since(r.arrival)))
        .collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return Vec::new();
    }
    let step = (n / points.max(2)).max(1);
    let mut out: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (v[i], (i + 1) as f64 / n as f64))
        .collect();
    out.push((v[n - 1], 1.0));
    out
}

/// The standard plots of a comparison, as (file name, SVG document).
pub fn plots(runs: &[RunResult], summaries: &[Summary]) -> Vec<(&'static str, String)> {
    use svg::{BarChart, LinePlot, Series};
    let timeline = |f: &dyn Fn(&crate::metrics::Sample) -> Option<f64>| -> Vec<Series> {
        runs.iter()
            .map(|r| Series {
                name: r.policy.clone(),
                points: r
                    .timeline
                    .iter()
                    .filter_map(|s| f(s).map(|v| (s.t.secs(), v)))
                    .collect(),
            })
            .collect()
    };
    let ttft = LinePlot {
        title: "Time to first token (CDF)".into(),
        x_label: "TTFT (s, log scale)".into(),
        y_label: "fraction of requests".into(),
        series: runs
            .iter()
            .map(|r| Series {
                name: r.policy.clone(),
                points: ttft_cdf(r, 400),
            })
            .collect(),
        log_x: true,
        y_range: Some((0.0, 1.0)),
        steps: true,
    };
    // Hit rate over a sliding window of 10 samples, token-weighted.
    let hit_series = runs
        .iter()
        .map(|r| Series {
            name: r.policy.clone(),
            points: r
                .timeline
                .windows(10)
                .filter_map(|w| {
                    let input: u64 = w.iter().map(|s| s.admitted_tokens).sum();
                    let cached: u64 = w.iter().map(|s| s.cached_tokens).sum();
                    let t = w.last()?.t.secs();
                    (input > 0).then(|| (t, cached as f64 / input as f64))
                })
                .collect(),
        })
        .collect();
    let hit = LinePlot {
        title: "Prefix-cache hit rate over time (token-weighted, 10-sample window)".into(),
        x_label: "time (s)".into(),
        y_label: "hit rate of requests admitted".into(),
        series: hit_series,
        y_range: Some((0.0, 1.0)),
        ..Default::default()
    };
    let queue = LinePlot {
        title: "Waiting requests over time (all engines)".into(),
        x_label: "time (s)".into(),
        y_label: "waiting requests".into(),
        series: timeline(&|s| Some(s.waiting.iter().map(|&w| w as f64).sum())),
        ..Default::default()
    };
    let kv = LinePlot {
        title: "KV-cache usage over time (mean over engines)".into(),
        x_label: "time (s)".into(),
        y_label: "KV usage".into(),
        series: timeline(&|s| {
            Some(s.kv_usage.iter().sum::<f64>() / s.kv_usage.len().max(1) as f64)
        }),
        y_range: Some((0.0, 1.0)),
        ..Default::default()
    };
    let engines = summaries.first().map_or(0, |s| s.engine_tokens.len());
    let load = BarChart {
        title: "Tokens computed per engine (prefill incl. recompute + decode)".into(),
        x_label: "engine".into(),
        y_label: "tokens".into(),
        categories: (0..engines).map(|e| e.to_string()).collect(),
        series: summaries
            .iter()
            .map(|s| {
                (
                    s.policy.clone(),
                    s.engine_tokens.iter().map(|&t| t as f64).collect(),
                )
            })
            .collect(),
    };
    vec![
        ("ttft_cdf.svg", ttft.render()),
        ("hit_rate.svg", hit.render()),
        ("queue_depth.svg", queue.render()),
        ("kv_usage.svg", kv.render()),
        ("engine_load.svg", load.render()),
    ]
}
