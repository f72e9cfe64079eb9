//! Calibration from a live cluster's Prometheus: the engines' step-time profile and the workload's
//! shape, fitted to what vLLM exports, written as files the simulator runs.
//!
//! The fleet crate's `prometheus::observe` asks Prometheus (range queries over `[end − window, end]`
//! every `resolution`) for vLLM's counters and length histograms and its cache config, as an
//! [`Observed`]; [`calibrate`] turns them, purely,
//! into a [`Calibration`]: per-engine windows ([`windows`]), the step-time fit ([`fit`]), the
//! workload shape ([`shape`]). [`Calibration::write`] writes `profile.yaml` (for
//! `--profile-file`), `workload.jsonl` (for `--trace`), `calibration.json` and `fit.svg`.

pub mod shape;
pub mod windows;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::Profile;
use crate::error::SimError;
use crate::report::svg::{LinePlot, Series as PlotSeries};
use crate::trace::generate::RateStage;
use fit::StepFit;
pub use kvpick_scheduler::profile::fit;
use shape::{LengthDist, Workload};
use windows::{Counter, Series, Window};

/// What to ask Prometheus, and how to build the profile.
#[derive(Clone, Debug)]
pub struct CalibrateOptions {
    /// Label selector added to every vLLM series, `{k="v",...}` or empty.
    pub selector: String,
    /// End of the observed range, unix seconds.
    pub end: f64,
    /// Length of the observed range, s.
    pub window_s: f64,
    /// Grid step and fit window, s (at least two scrape intervals).
    pub resolution_s: f64,
    /// The profile whose non-timing fields (batch limits, max model length) are kept; KV blocks and
    /// block size come from `vllm:cache_config_info` when present.
    pub base: Profile,
    /// Shared prefixes in the synthetic workload.
    pub groups: u32,
    /// Windows with fewer inter-token gaps are left out of the fit.
    pub min_gaps: f64,
    /// Also fit `per_context_token` (see [`fit`]).
    pub fit_context: bool,
}

impl CalibrateOptions {
    /// The query grid: its first point (unix s) and the number of points.
    pub fn grid(&self) -> Result<(f64, usize), SimError> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !ok(self.window_s) || !ok(self.resolution_s) || self.resolution_s * 4.0 > self.window_s {
            return Err(SimError::InvalidConfig(format!(
                "--window ({} s) must hold at least 4 × --resolution ({} s)",
                self.window_s, self.resolution_s
            )));
        }
        let s = self.selector.trim();
        let braced = s.starts_with('{') && s.ends_with('}');
        if !(s.is_empty() || braced) {
            return Err(SimError::InvalidConfig(format!(
                "--selector {s:?}: expected {{label=\"value\",...}}"
            )));
        }
        let n = (self.window_s / self.resolution_s).floor() as usize + 1;
        Ok((self.end - (n - 1) as f64 * self.resolution_s, n))
    }
}

/// What Prometheus answered.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Each counter's series per engine, on the grid.
    pub counters: BTreeMap<Counter, Vec<Series>>,
    /// Grid start (unix s).
    pub start: f64,
    /// Grid points.
    pub points: usize,
    /// Cumulative prompt-length buckets `(le, increase over the range)`, summed over engines.
    pub prompt_buckets: Vec<(f64, f64)>,
    /// Same for output lengths.
    pub output_buckets: Vec<(f64, f64)>,
    /// `(block_size, num_gpu_blocks)` from `vllm:cache_config_info`.
    pub cache_config: Option<(u32, u32)>,
}

/// `(le, increase)` summed over engines, from cumulative bucket series.
pub fn bucket_increases(series: &[Series]) -> Vec<(f64, f64)> {
    let mut by_le: BTreeMap<String, f64> = BTreeMap::new();
    for s in series {
        let Some(le) = s.labels.get("le") else {
            continue;
        };
        let inc: f64 = s
            .points
            .windows(2)
            .map(|p| windows::increase(p[0].1, p[1].1))
            .sum();
        *by_le.entry(le.clone()).or_default() += inc;
    }
    by_le
        .into_iter()
        .filter_map(|(le, v)| {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v))
        })
        .collect()
}

/// Means of what the engines reported over the range (for checking a simulation against).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ObservedMeans {
    /// Requests per second, all engines.
    pub rate: f64,
    /// Highest window rate.
    pub peak_rate: f64,
    /// Time to first token, s.
    pub ttft_s: f64,
    /// Inter-token latency, s.
    pub itl_s: f64,
    /// Queue time, s.
    pub queue_s: f64,
    /// Prefill time (first scheduled to first token), s.
    pub prefill_s: f64,
    /// Prefix-cache hit rate (hit tokens / queried tokens).
    pub prefix_hit_rate: f64,
}

impl ObservedMeans {
    /// The server's own share of the TTFT, µs: vLLM measures the TTFT from the request's arrival
    /// at its HTTP server and queue and prefill time inside the engine, so what is left is the
    /// way in and out (tokenization, IPC, detokenization). 0 when a histogram is missing.
    pub fn frontend_us(&self) -> f64 {
        if self.ttft_s <= 0.0 || self.prefill_s <= 0.0 {
            return 0.0;
        }
        ((self.ttft_s - self.queue_s - self.prefill_s) * 1e6).max(0.0)
    }
}

/// The result.
#[derive(Clone, Debug, Serialize)]
pub struct Calibration {
    /// Engines seen (series of `vllm:iteration_tokens_total`).
    pub engines: usize,
    /// The step-time fit.
    pub fit: StepFit,
    /// The calibrated profile.
    pub profile: Profile,
    /// The workload's shape.
    pub workload: Workload,
    /// The rate ladder of the synthetic workload, `(rate, seconds)`, one stage per window.
    pub stages: Vec<(f64, f64)>,
    /// When the first stage started, unix seconds.
    pub stages_start: f64,
    /// What the engines reported.
    pub observed: ObservedMeans,
}

/// Builds the calibration from what Prometheus answered.
pub fn calibrate(obs: &Observed, opts: &CalibrateOptions) -> Result<Calibration, SimError> {
    let step = opts.resolution_s;
    let all = windows::windows(&obs.counters, obs.start, step, obs.points);
    let active: Vec<Window> = all
        .iter()
        .filter(|w| w.get(Counter::Steps) > 0.0)
        .cloned()
        .collect();
    if active.is_empty() {
        return Err(SimError::Prometheus(
            "the engines ran no step in the window: calibrate while they serve traffic".into(),
        ));
    }
    let fit = fit::fit_step_time(
        &active,
        opts.min_gaps,
        opts.base.max_num_batched_tokens,
        opts.fit_context,
    )?;
    let mut profile = opts.base.clone();
    profile.name = "calibrated".into();
    profile.step_time = fit.model;
    if let Some((block_size, blocks)) = obs.cache_config {
        profile.block_size = block_size;
        profile.kv_blocks = blocks;
    }
    profile.validate()?;
    let engines = {
        let mut e: Vec<&str> = active.iter().map(|w| w.engine.as_str()).collect();
        e.sort_unstable();
        e.dedup();
        e.len()
    };
    let mut per_end: BTreeMap<i64, f64> = BTreeMap::new();
    for w in &all {
        *per_end.entry((w.end * 1000.0).round() as i64).or_default() += w.get(Counter::TtftCount);
    }
    let stages: Vec<RateStage> = per_end
        .values()
        .map(|&n| RateStage {
            rate: n / step,
            duration_s: step,
        })
        .collect();
    let total = |c: Counter| all.iter().map(|w| w.get(c)).sum::<f64>();
    let ratio = |a: Counter, b: Counter| {
        let d = total(b);
        if d > 0.0 { total(a) / d } else { 0.0 }
    };
    let observed = ObservedMeans {
        rate: total(Counter::TtftCount) / (stages.len() as f64 * step).max(step),
        peak_rate: stages.iter().map(|s| s.rate).fold(0.0, f64::max),
        ttft_s: ratio(Counter::TtftSum, Counter::TtftCount),
        itl_s: ratio(Counter::ItlSum, Counter::ItlCount),
        queue_s: ratio(Counter::QueueSum, Counter::QueueCount),
        prefill_s: ratio(Counter::PrefillSum, Counter::PrefillCount),
        prefix_hit_rate: ratio(Counter::PrefixHits, Counter::PrefixQueries),
    };
    profile.frontend_us = observed.frontend_us();
    let max_len = profile.max_model_len as f64;
    let dist = |buckets: &[(f64, f64)], sum: Counter, count: Counter| {
        LengthDist::from_buckets(buckets, total(sum), total(count), max_len)
    };
    let workload = Workload {
        stages: stages.clone(),
        input: dist(
            &obs.prompt_buckets,
            Counter::PromptLenSum,
            Counter::PromptLenCount,
        )?,
        output: dist(
            &obs.output_buckets,
            Counter::OutputLenSum,
            Counter::OutputLenCount,
        )?,
        prefix_share: observed.prefix_hit_rate.clamp(0.0, 0.95),
        groups: opts.groups.max(1),
    };
    Ok(Calibration {
        engines,
        fit,
        profile,
        workload,
        stages: stages.iter().map(|s| (s.rate, s.duration_s)).collect(),
        stages_start: per_end
            .keys()
            .next()
            .map_or(obs.start, |&e| e as f64 / 1000.0 - step),
        observed,
    })
}

impl Calibration {
    /// Writes `profile.yaml`, `workload.jsonl` (generated with `seed`), `calibration.json` and
    /// `fit.svg` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, seed: u64) -> Result<Vec<PathBuf>, SimError> {
        std::fs::create_dir_all(dir).map_err(|e| SimError::io(dir, e))?;
        let write = |name: &str, body: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, body).map_err(|e| SimError::io(&path, e))?;
            Ok::<_, SimError>(path)
        };
        let yaml = serde_saphyr::to_string(&self.profile)
            .map_err(|e| SimError::InvalidConfig(format!("profile: {e}")))?;
        let header = format!(
            "# Calibrated from Prometheus: {} engines, {} windows, R² {:.3}, RMSE {:.0} µs.\n\
             # Use: kvpick-sim run --profile-file profile.yaml --engines {} --trace workload.jsonl\n",
            self.engines, self.fit.windows, self.fit.r2, self.fit.rmse_us, self.engines
        );
        let mut paths = vec![write("profile.yaml", (header + &yaml).as_bytes())?];
        let trace = self.workload.generate(seed)?;
        let mut jsonl = Vec::new();
        crate::trace::jsonl::write(&trace, &mut jsonl).map_err(|e| SimError::io(dir, e))?;
        paths.push(write("workload.jsonl", &jsonl)?);
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| SimError::InvalidConfig(format!("calibration.json: {e}")))?;
        paths.push(write("calibration.json", &json)?);
        paths.push(write("fit.svg", self.fit_plot().as_bytes())?);
        Ok(paths)
    }

    /// Fitted against observed mean step duration, windows sorted by the observation.
    pub fn fit_plot(&self) -> String {
        let mut r: Vec<(f64, f64)> = self
            .fit
            .residuals
            .iter()
            .map(|r| (r.observed_us / 1e3, r.predicted_us / 1e3))
            .collect();
        r.sort_by(|a, b| a.0.total_cmp(&b.0));
        LinePlot {
            title: format!(
                "Step-time fit: {} windows, R² {:.3}, RMSE {:.2} ms",
                self.fit.windows,
                self.fit.r2,
                self.fit.rmse_us / 1e3
            ),
            x_label: "observed (ms): mean inter-token gap or mean prefill time per window".into(),
            y_label: "ms".into(),
            series: vec![
                PlotSeries {
                    name: "observed".into(),
                    points: r.iter().map(|p| (p.0, p.0)).collect(),
                },
                PlotSeries {
                    name: "fitted".into(),
                    points: r,
                },
            ],
            log_x: false,
            y_range: None,
            steps: false,
        }
        .render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontend_time_is_what_the_ttft_holds_beyond_queue_and_prefill() {
        let o = ObservedMeans {
            ttft_s: 0.060,
            queue_s: 0.027,
            prefill_s: 0.021,
            ..Default::default()
        };
        assert!((o.frontend_us() - 12_000.0).abs() < 1e-6);
        // A missing prefill histogram (older vLLM) gives no estimate rather than a wrong one.
        let old = ObservedMeans {
            prefill_s: 0.0,
            ..o.clone()
        };
        assert_eq!(old.frontend_us(), 0.0);
        // Histograms that disagree (windows cut mid-request) never give a negative time.
        let odd = ObservedMeans { queue_s: 0.05, ..o };
        assert_eq!(odd.frontend_us(), 0.0);
    }
}
