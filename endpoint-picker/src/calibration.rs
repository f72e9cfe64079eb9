//! Online calibration (`--online-calibration`, on by default): the predicted-latency scorer's
//! engine profile refined per model from the pods' own counters.
//!
//! The scrape loops hand each page's vLLM counters (step and token counts, TTFT, inter-token,
//! queue and prefill time histograms: [`Counter`]) to the model's [`Calibrator`] (the core's,
//! with `kvpick-sim calibrate`'s fit); once a second the scrape supervisor asks each model for a
//! refit (at most every `--calibration-interval`), installs an accepted profile in the scheduler
//! and exports what is in use. Refits are counted by outcome: `accepted`, `accepted_partial`
//! (coefficients the windows did not identify kept their values), `failed`, `unidentified`,
//! `implausible`, `worse_than_start` ([`Outcome::label`]). Bounded: 64 models, and per model the calibrator's windows and pods.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvpick_scheduler::Scheduler;
use kvpick_scheduler::Timestamp;
use kvpick_scheduler::profile::EngineProfile;
use kvpick_scheduler::profile::fit::Counter;
use kvpick_scheduler::profile::online::{Calibrator, CounterSample, OnlineConfig, Outcome};
use parking_lot::Mutex;

use crate::telemetry as t;

/// Models calibrated at most.
const MAX_MODELS: usize = 64;

/// The calibrators of every model, and the scheduler they feed.
#[derive(Debug)]
pub struct OnlineCalibration {
    config: OnlineConfig,
    scheduler: Arc<Scheduler>,
    models: Mutex<BTreeMap<String, Calibrator>>,
}

impl OnlineCalibration {
    /// Calibration for `scheduler`'s predicted-latency scorer; `None` when its config has none.
    pub fn new(config: OnlineConfig, scheduler: Arc<Scheduler>) -> Option<Self> {
        scheduler.engine_profile("")?;
        Some(Self {
            config,
            scheduler,
            models: Mutex::new(BTreeMap::new()),
        })
    }

    /// One scrape of `endpoint`, serving `model`, at `now`.
    pub fn observe(&self, model: &str, endpoint: &str, now: Timestamp, sample: &CounterSample) {
        if sample[Counter::Steps as usize].is_none() {
            return;
        }
        let mut models = self.models.lock();
        if !models.contains_key(model) {
            let Some(start) = self.scheduler.engine_profile(model) else {
                return;
            };
            if models.len() >= MAX_MODELS {
                return;
            }
            export(model, &start);
            models.insert(
                model.to_owned(),
                Calibrator::new(start, self.config.clone()),
            );
        }
        if let Some(c) = models.get_mut(model) {
            c.observe(endpoint, now, sample);
        }
    }

    /// Forgets `endpoint` (it left the pool).
    pub fn forget(&self, endpoint: &str) {
        for c in self.models.lock().values_mut() {
            c.forget(endpoint);
        }
    }

    /// Refits the models that are due; installs and exports accepted profiles.
    pub fn refit(&self, now: Timestamp) {
        let mut models = self.models.lock();
        for (model, c) in models.iter_mut() {
            let outcome = match c.refit(now) {
                Some(o) => o,
                None => continue,
            };
            match &outcome {
                Outcome::Accepted {
                    profile,
                    fitted_us,
                    start_us,
                    kept,
                } => {
                    self.scheduler.set_engine_profile(model, profile.clone());
                    export(model, profile);
                    let kept: Vec<&str> = kept.iter().map(|k| k.coefficient.name()).collect();
                    tracing::info!(
                        model,
                        fitted_us,
                        start_us,
                        step_time = ?profile.step_time,
                        ?kept,
                        "online calibration: new engine profile"
                    );
                }
                Outcome::Rejected(r) => {
                    tracing::info!(model, reason = ?r, "online calibration: fit rejected");
                }
            }
            let label = outcome.label();
            metrics::counter!(t::PROFILE_FITS, "model" => model.clone(), "outcome" => label)
                .increment(1);
        }
    }
}

/// The profile's step-time coefficients as gauges.
fn export(model: &str, p: &EngineProfile) {
    let s = &p.step_time;
    for (name, v) in [
        ("overhead", s.overhead_us),
        ("per_prefill_token", s.per_prefill_token_us),
        ("per_decode_seq", s.per_decode_seq_us),
        ("per_context_token", s.per_context_token_us),
        ("per_attention_pair", s.per_attention_pair_us),
    ] {
        metrics::gauge!(t::ENGINE_PROFILE, "model" => model.to_owned(), "coefficient" => name)
            .set(v);
    }
}
