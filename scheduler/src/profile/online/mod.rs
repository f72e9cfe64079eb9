//! Online calibration: an engine profile refined from the pods' own counters as they are
//! scraped, with the fit `kvpick-sim calibrate` uses ([`super::fit`]).
//!
//! Each scrape of a pod gives the cumulative counters of [`Counter`]; a [`Calibrator`] (one per
//! model) cuts them into per-pod windows of at least `resolution`, keeps those of the last
//! `window` (at most `max_windows`), and refits at most every `interval`:
//!
//! - the step-time model is fitted on the older two thirds of the windows;
//! - a coefficient the windows do not **identify** (fixed at 0 by the fit, or less than `min_t`
//!   standard errors above 0) keeps its value in the profile in use, and the fit is accepted as
//!   `accepted_partial`: a pool whose load barely changes cannot tell the per-decoding-sequence
//!   cost from the overhead (both scale with the steps when every step decodes about as many
//!   sequences), and noise then puts the per-sequence cost at 0 with the overhead absorbing it.
//!   Kept at its value in use, that cost is then counted on top of the overhead that absorbed it,
//!   so such a profile errs on the slow side at the observed load; the guard below bounds it. When
//!   no coefficient is identified the fit is rejected as `unidentified`;
//! - it is **implausible** (rejected, counted) when R² is below `min_r2`, or when an identified
//!   overhead, per-prefill-token or per-decoding-sequence cost leaves a factor `max_factor` of the
//!   starting profile's (the decode cost compared with the start's context cost folded in at the
//!   observed context, as the fit folds it);
//! - the guard: it must predict the newest third (held out) at least as well as the **starting**
//!   profile does (weighted RMSE of mean inter-token gaps and prefill times), else it is rejected
//!   as `worse_than_start`. So an accepted profile is never worse than the configured one on the
//!   latest traffic, by that measure.
//!
//! Pure: counters and `now` in, an outcome out; the caller installs an accepted profile.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::EngineProfile;
use super::fit::{self, COUNTERS, Counter, Window, increase};
use crate::time::Timestamp;

mod outcome;

pub use outcome::{Coefficient, Kept, Outcome, Rejection};

/// How online calibration runs.
#[derive(Clone, Debug, PartialEq)]
pub struct OnlineConfig {
    /// Refit at most this often.
    pub interval: Duration,
    /// Fit over the windows of this long a past.
    pub window: Duration,
    /// A window spans at least this long (several scrapes, so that means are means).
    pub resolution: Duration,
    /// Windows with fewer inter-token gaps give no gap row.
    pub min_gaps: f64,
    /// Windows kept at most, all pods together (memory bound).
    pub max_windows: usize,
    /// Pods tracked at most (memory bound; more are ignored).
    pub max_engines: usize,
    /// A fitted coefficient beyond this factor of the starting one is implausible.
    pub max_factor: f64,
    /// A fit below this R² is implausible.
    pub min_r2: f64,
    /// A coefficient less than this many standard errors above 0 is not identified by the windows
    /// and keeps its value in use.
    pub min_t: f64,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            window: Duration::from_secs(600),
            resolution: Duration::from_secs(3),
            min_gaps: 10.0,
            max_windows: 4096,
            max_engines: 1024,
            max_factor: 10.0,
            min_r2: 0.5,
            min_t: 2.0,
        }
    }
}

/// Cumulative counter values of one scrape, indexed by `Counter as usize` (`None`: absent).
pub type CounterSample = [Option<f64>; COUNTERS.len()];

/// A profile the checks accepted.
struct Fitted {
    profile: EngineProfile,
    fitted_us: f64,
    start_us: f64,
    kept: Vec<Kept>,
}

/// One model's online calibration.
#[derive(Clone, Debug)]
pub struct Calibrator {
    config: OnlineConfig,
    start: EngineProfile,
    current: EngineProfile,
    last: BTreeMap<String, (Timestamp, [f64; COUNTERS.len()])>,
    windows: VecDeque<Window>,
    last_fit: Option<Timestamp>,
}

impl Calibrator {
    /// Starts from `start` (the configured profile).
    pub fn new(start: EngineProfile, config: OnlineConfig) -> Self {
        Self {
            config,
            current: start.clone(),
            start,
            last: BTreeMap::new(),
            windows: VecDeque::new(),
            last_fit: None,
        }
    }

    /// The profile in use.
    pub fn current(&self) -> &EngineProfile {
        &self.current
    }

    /// Windows held.
    pub fn windows(&self) -> usize {
        self.windows.len()
    }

    /// A scrape of `engine` at `now`. Pages without the fit's required counters are ignored.
    pub fn observe(&mut self, engine: &str, now: Timestamp, sample: &CounterSample) {
        if COUNTERS
            .iter()
            .any(|&c| c.required() && sample[c as usize].is_none_or(|v| !v.is_finite()))
        {
            return;
        }
        let values: [f64; COUNTERS.len()] = std::array::from_fn(|i| sample[i].unwrap_or(0.0));
        let Some((at, before)) = self.last.get_mut(engine) else {
            if self.last.len() < self.config.max_engines {
                self.last.insert(engine.to_owned(), (now, values));
            }
            return;
        };
        let secs = now.saturating_since(*at);
        if secs < self.config.resolution {
            return;
        }
        let delta: [f64; COUNTERS.len()] = std::array::from_fn(|i| increase(before[i], values[i]));
        (*at, *before) = (now, values);
        if delta[Counter::Steps as usize] > 0.0 {
            self.windows.push_back(Window {
                engine: engine.to_owned(),
                end: now.since_epoch().as_secs_f64(),
                secs: secs.as_secs_f64(),
                delta,
            });
        }
        let oldest = now.since_epoch().as_secs_f64() - self.config.window.as_secs_f64();
        while self
            .windows
            .front()
            .is_some_and(|w| w.end < oldest || self.windows.len() > self.config.max_windows)
        {
            self.windows.pop_front();
        }
    }

    /// Forgets a pod that left.
    pub fn forget(&mut self, engine: &str) {
        self.last.remove(engine);
    }

    /// Refits when `interval` has passed since the last attempt and enough windows are held
    /// (8, so that both the fit and the held-out check have some); `None` otherwise.
    pub fn refit(&mut self, now: Timestamp) -> Option<Outcome> {
        if self
            .last_fit
            .is_some_and(|t| now.saturating_since(t) < self.config.interval)
            || self.windows.len() < 8
        {
            return None;
        }
        self.last_fit = Some(now);
        let mut all: Vec<Window> = self.windows.iter().cloned().collect();
        all.sort_by(|a, b| a.end.total_cmp(&b.end));
        let held = all.split_off(all.len() * 2 / 3);
        let outcome = match self.judge(&all, &held) {
            Ok(f) => {
                self.current = f.profile.clone();
                Outcome::Accepted {
                    profile: f.profile,
                    fitted_us: f.fitted_us,
                    start_us: f.start_us,
                    kept: f.kept,
                }
            }
            Err(r) => Outcome::Rejected(r),
        };
        Some(outcome)
    }

    fn judge(&self, train: &[Window], held: &[Window]) -> Result<Fitted, Rejection> {
        let c = &self.config;
        let chunk = self.start.max_num_batched_tokens;
        let f = fit::fit_step_time(train, c.min_gaps, chunk, false)
            .map_err(|e| Rejection::Failed(e.to_string()))?;
        if f.r2.is_nan() || f.r2 < c.min_r2 {
            return Err(Rejection::Implausible(format!(
                "R² {:.3} below {}",
                f.r2, c.min_r2
            )));
        }
        let s = &self.start.step_time;
        let (len_in, len_out) = fit::mean_lengths(train);
        let start_decode = s.per_decode_seq_us + s.per_context_token_us * (len_in + len_out / 2.0);
        let mut model = f.model;
        let mut kept = Vec::new();
        for (k, t) in Coefficient::ALL.into_iter().zip(f.t_values) {
            let got = k.of(&f.model);
            // A NaN t (no degree of freedom left, or 0 of an exact fit) identifies nothing.
            let identified = t.partial_cmp(&c.min_t).is_some_and(|o| o.is_ge());
            if !identified {
                k.keep(&mut model, &self.current.step_time);
                kept.push(Kept {
                    coefficient: k,
                    fitted_us: got,
                    t,
                });
                continue;
            }
            let start = match k {
                Coefficient::PerDecodeSeq => start_decode,
                _ => k.of(s),
            };
            let ok = got.is_finite() && got <= start * c.max_factor && got >= start / c.max_factor;
            if !ok && start > 0.0 {
                return Err(Rejection::Implausible(format!(
                    "{} {got:.2} µs is beyond ×{} of the starting {start:.2} µs",
                    k.name(),
                    c.max_factor
                )));
            }
        }
        if kept.len() == Coefficient::ALL.len() {
            return Err(Rejection::Unidentified(format!(
                "no coefficient at least {} standard errors above 0: {kept:?}",
                c.min_t
            )));
        }
        let rmse = |model| fit::rmse_us(model, held, c.min_gaps, chunk);
        let (Some(fitted_us), Some(start_us)) = (rmse(&model), rmse(s)) else {
            return Err(Rejection::Failed("no held-out window with traffic".into()));
        };
        if fitted_us > start_us {
            return Err(Rejection::WorseThanStart {
                fitted_us,
                start_us,
            });
        }
        let mut profile = self.start.clone();
        profile.name = format!("{} (calibrated online)", self.start.name);
        profile.step_time = model;
        Ok(Fitted {
            profile,
            fitted_us,
            start_us,
            kept,
        })
    }
}

#[cfg(test)]
mod tests;
