//! Fitting the engine's step-time profile to vLLM's aggregated metrics.
//!
//! vLLM exports no per-step timing, but two of its histograms are sums of step durations:
//!
//! - every decoding sequence records one inter-token gap per step, and that gap *is* the step's
//!   duration, so the mean gap is the mean duration of the steps, weighted by how many sequences
//!   decode in each;
//! - a request's prefill time (first scheduled to first token: `request_prefill_time_seconds`, or
//!   TTFT minus queue time where that is absent) is the duration of its prefill chunks.
//!
//! Per window of one engine (`S` steps, `D` inter-token gaps summing to `G` seconds over a
//! window of `T` seconds, `N` first tokens, `P` = iteration tokens − generated tokens = prompt
//! tokens computed, `B` = `max_num_batched_tokens`, `L` = mean prompt + mean output / 2 = the
//! context a decoding sequence reads on average):
//!
//! ```text
//! n = G / T                 sequences decoding at a random instant (Little's law)
//! mean gap      ≈   overhead + per_prefill_token·n·P/D + per_decode_seq·m + per_context_token·L·m
//!                 with m = D/S + 1
//! mean prefill  ≈ k·overhead + per_prefill_token·u     + per_decode_seq·k·n + per_context_token·k·L·n
//!                 with u = P/N prompt tokens computed per request, k = ⌈u/B⌉ chunks
//! ```
//!
//! A decoding sequence only waits for the prefill chunks scheduled while it decodes: with Poisson
//! arrivals a request's prefill meets `n` decoding sequences on average (arrivals see time
//! averages), so the prefill tokens a gap sees on average are `n·P/D`, not `P/S` (which would
//! charge decoders for prefills that ran while nothing decoded). Likewise a gap is weighted by
//! the batch it sits in: a decoding sequence shares its step with itself and with the others,
//! whose number is Poisson-distributed under Poisson arrivals (an M/G/∞ system), so the batch a
//! gap sees averages `D/S + 1`, not `D/S` (which would bias the overhead by one sequence's cost).
//!
//! Both are linear in the coefficients: one weighted least-squares fit over all rows, gap rows
//! weighted by `D`, prefill rows by `N`, each kind scaled to the same total weight (the gaps pin
//! the per-step costs, the prefill times the per-token cost). Coefficients are constrained
//! non-negative by dropping the most negative one and refitting (an active-set method: a negative
//! cost means no signal). `per_context_token` is fitted only on request (`--fit-context`): it is
//! weakly identified from window means, since it varies with `D/S` unless prompt lengths differ a
//! lot between windows; it is then kept only when it varies apart from `D/S` and earns its
//! parameter (BIC). Otherwise its cost folds into `per_decode_seq` at the observed context. Prefill attention
//! (`per_attention_pair`) is not identifiable from these metrics: it folds into
//! `per_prefill_token` at the observed prompt lengths, and the calibrated profile sets it to 0.
//! Approximations, stated: the regressors are window means, exact when the batch is steady within
//! a window (short windows at a steady load fit best); chunk counts come from mean lengths.

use serde::Serialize;

mod counters;
mod lsq;

pub use counters::{COUNTERS, Counter, Window, increase};
use lsq::{Row, correlation, nonnegative_fit, rss, spread, t_values};

use super::StepTimeModel;
use crate::error::Error;

/// The regressors, in column order after the intercept.
pub(super) const COLUMNS: [&str; 3] = ["per_prefill_token", "per_decode_seq", "per_context_token"];

/// One window's observation and the fit's prediction for it.
#[derive(Clone, Debug, Serialize)]
pub struct Residual {
    /// `gap` (mean inter-token gap) or `prefill` (mean prefill time).
    pub kind: &'static str,
    /// The engine.
    pub engine: String,
    /// Window end, unix seconds.
    pub end: f64,
    /// Observed mean, µs.
    pub observed_us: f64,
    /// Predicted, µs.
    pub predicted_us: f64,
    /// The row's regressors (see the module docs), in coefficient order.
    pub regressors: [f64; 4],
}

/// The fitted step-time model and how well it fits.
#[derive(Clone, Debug, Serialize)]
pub struct StepFit {
    /// The coefficients (`per_attention_pair_us` is 0, see the module docs).
    pub model: StepTimeModel,
    /// Weighted coefficient of determination over the windows used.
    pub r2: f64,
    /// Weighted root mean square residual, µs.
    pub rmse_us: f64,
    /// Windows used.
    pub windows: usize,
    /// Coefficients fixed at 0, and why.
    pub dropped: Vec<String>,
    /// Each coefficient over its standard error (`overhead`, then [`COLUMNS`]' order; 0 for one
    /// fixed at 0): how well the windows identify it. A small value says the windows did not tell
    /// the coefficient apart from 0, or from another coefficient (the overhead and the
    /// per-sequence cost trade off when every window decodes about as many sequences).
    pub t_values: [f64; 4],
    /// Per window.
    pub residuals: Vec<Residual>,
}

/// Mean prompt and output lengths over `windows` (0 when no request finished).
pub fn mean_lengths(windows: &[Window]) -> (f64, f64) {
    let total = |c: Counter| windows.iter().map(|w| w.get(c)).sum::<f64>();
    let ratio = |s: f64, n: f64| if n > 0.0 { s / n } else { 0.0 };
    (
        ratio(total(Counter::PromptLenSum), total(Counter::PromptLenCount)),
        ratio(total(Counter::OutputLenSum), total(Counter::OutputLenCount)),
    )
}

/// Fits the step-time model to the windows with at least `min_gaps` inter-token gaps (gap rows)
/// or 3 first tokens (prefill rows), for engines computing at most `chunk_tokens` per step;
/// `per_context_token` only with `fit_context`.
pub fn fit_step_time(
    windows: &[Window],
    min_gaps: f64,
    chunk_tokens: u32,
    fit_context: bool,
) -> Result<StepFit, Error> {
    let (rows, used) = rows(windows, min_gaps, chunk_tokens);
    if rows.len() < 4 {
        return Err(Error::Calibration(format!(
            "{} windows with traffic, need at least 4: widen --window, shorten \
             --resolution, or calibrate while the pods serve traffic",
            rows.len()
        )));
    }
    let mut active = [true, true, true, fit_context];
    let mut dropped = Vec::new();
    if !fit_context {
        dropped.push(
            "per_context_token: not fitted (--fit-context); folded into per_decode_seq".into(),
        );
    }
    for (j, name) in COLUMNS.iter().enumerate() {
        if active[j + 1] && spread(&rows, j + 1) < 1e-9 {
            active[j + 1] = false;
            dropped.push(format!("{name}: no variation in the data"));
        }
    }
    if active[2] && active[3] && correlation(&rows, 2, 3).abs() > 0.995 {
        active[3] = false;
        dropped.push(
            "per_context_token: not separable from per_decode_seq (prompt lengths did not vary \
             between windows); folded into per_decode_seq"
                .into(),
        );
    }
    let mut coef = nonnegative_fit(&rows, &mut active, &mut dropped)?;
    // Keep the context cost only if it earns its parameter (BIC over the rows).
    if active[3] {
        let mut without = active;
        without[3] = false;
        let mut notes = Vec::new();
        let simpler = nonnegative_fit(&rows, &mut without, &mut notes)?;
        let n = rows.len() as f64;
        let bic_gain =
            n * (rss(&rows, &coef) / rss(&rows, &simpler).max(f64::MIN_POSITIVE)).ln() + n.ln();
        if bic_gain >= 0.0 {
            coef = simpler;
            active = without;
            dropped.push(
                "per_context_token: does not improve the fit enough (BIC); folded into \
                 per_decode_seq"
                    .into(),
            );
            dropped.extend(notes);
        }
    }
    let predict = |x: &[f64; 4]| (0..4).map(|j| coef[j] * x[j]).sum::<f64>();
    let (sw, swy) = rows
        .iter()
        .fold((0.0, 0.0), |(a, b), r| (a + r.w, b + r.w * r.y));
    let mean = swy / sw;
    let (ss_res, ss_tot) = rows.iter().fold((0.0, 0.0), |(a, b), r| {
        (
            a + r.w * (r.y - predict(&r.x)).powi(2),
            b + r.w * (r.y - mean).powi(2),
        )
    });
    let residuals = rows
        .iter()
        .zip(used)
        .map(|(r, w)| Residual {
            kind: r.kind,
            engine: w.engine.clone(),
            end: w.end,
            observed_us: r.y,
            predicted_us: predict(&r.x),
            regressors: r.x,
        })
        .collect();
    let t_values = t_values(&rows, &active, &coef);
    Ok(StepFit {
        model: StepTimeModel {
            overhead_us: coef[0].max(0.0),
            per_prefill_token_us: coef[1],
            per_decode_seq_us: coef[2],
            per_context_token_us: coef[3],
            per_attention_pair_us: 0.0,
        },
        r2: if ss_tot > 0.0 {
            1.0 - ss_res / ss_tot
        } else {
            1.0
        },
        rmse_us: (ss_res / sw).sqrt(),
        windows: rows.len(),
        dropped,
        t_values,
        residuals,
    })
}

/// The regression rows of `windows` (see the module docs), weighted, with the window of each.
fn rows(windows: &[Window], min_gaps: f64, chunk_tokens: u32) -> (Vec<Row>, Vec<&Window>) {
    let (mean_in, mean_out) = mean_lengths(windows);
    let mut rows = Vec::new();
    let mut used = Vec::new();
    for w in windows {
        let steps = w.get(Counter::Steps);
        if steps < 1.0 {
            continue;
        }
        let gaps = w.get(Counter::ItlCount);
        let firsts = w.get(Counter::TtftCount);
        let prefill = (w.get(Counter::StepTokens) - w.get(Counter::Generated)).max(0.0);
        let mean = |sum: Counter, count: Counter, default: f64| {
            let n = w.get(count);
            if n > 0.0 { w.get(sum) / n } else { default }
        };
        let len_in = mean(Counter::PromptLenSum, Counter::PromptLenCount, mean_in);
        let len_out = mean(Counter::OutputLenSum, Counter::OutputLenCount, mean_out);
        let decode = gaps / steps;
        let len = len_in + len_out / 2.0;
        // Sequences decoding at a random instant: decode-seconds per second.
        let decoding = w.get(Counter::ItlSum) / w.secs.max(f64::MIN_POSITIVE);
        if gaps >= min_gaps.max(1.0) {
            rows.push(Row {
                kind: "gap",
                x: [
                    1.0,
                    decoding * prefill / gaps,
                    decode + 1.0,
                    (decode + 1.0) * len,
                ],
                y: w.get(Counter::ItlSum) / gaps * 1e6,
                w: gaps,
            });
            used.push(w);
        }
        let prefill_s = if w.get(Counter::PrefillCount) > 0.0 {
            Some(mean(Counter::PrefillSum, Counter::PrefillCount, 0.0))
        } else if w.get(Counter::QueueCount) > 0.0 && firsts > 0.0 {
            Some(
                mean(Counter::TtftSum, Counter::TtftCount, 0.0)
                    - mean(Counter::QueueSum, Counter::QueueCount, 0.0),
            )
        } else {
            None
        };
        if let Some(t) = prefill_s.filter(|t| *t > 0.0 && firsts >= 3.0) {
            let per_request = prefill / firsts;
            let chunks = (per_request / chunk_tokens.max(1) as f64).ceil().max(1.0);
            rows.push(Row {
                kind: "prefill",
                x: [
                    chunks,
                    per_request,
                    chunks * decoding,
                    chunks * decoding * len,
                ],
                y: t * 1e6,
                w: firsts,
            });
            used.push(w);
        }
    }
    // Each kind of evidence weighs the same in total.
    let total = |k: &str| {
        rows.iter()
            .filter(|r| r.kind == k)
            .map(|r| r.w)
            .sum::<f64>()
    };
    let (gap_w, prefill_w) = (total("gap"), total("prefill"));
    if gap_w > 0.0 && prefill_w > 0.0 {
        for r in rows.iter_mut().filter(|r| r.kind == "prefill") {
            r.w *= gap_w / prefill_w;
        }
    }
    (rows, used)
}

/// Weighted root mean square error, µs, of `model` over the windows' mean inter-token gaps and
/// prefill times (the rows [`fit_step_time`] fits); `None` when no window qualifies. The attention
/// coefficient has no regressor here (see the module docs) and is left out.
pub fn rmse_us(
    model: &StepTimeModel,
    windows: &[Window],
    min_gaps: f64,
    chunk_tokens: u32,
) -> Option<f64> {
    let (rows, _) = rows(windows, min_gaps, chunk_tokens);
    let coef = [
        model.overhead_us,
        model.per_prefill_token_us,
        model.per_decode_seq_us,
        model.per_context_token_us,
    ];
    let weight: f64 = rows.iter().map(|r| r.w).sum();
    (weight > 0.0).then(|| (rss(&rows, &coef) / weight).sqrt())
}

#[cfg(test)]
pub(crate) mod tests;
