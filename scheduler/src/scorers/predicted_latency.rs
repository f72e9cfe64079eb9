//! `predicted-latency-scorer`: rates candidates by their predicted TTFT/TPOT for this request
//! ([`crate::latency`]), and routes to SLO headroom when the request has objectives.
//!
//! The pipeline computes one [`Prediction`] per candidate (the model needs the in-flight
//! accounting, which the scheduler owns); this scorer turns them into scores:
//!
//! - no objective: `min cost / cost`, the cost being the predicted TTFT plus the delay its own
//!   prefill imposes on later arrivals there ([`crate::latency`]): on an idle pool the fastest
//!   first token wins, under sustained load cache hits weigh more;
//! - with objectives (the request's headers, else its objective's, else the config's defaults):
//!   candidates predicted to meet them score in [0.5, 1], ordered by the share of the prompt they
//!   hold cached (then by TTFT), so that work lands where it keeps caches warm while the SLO holds;
//!   the others score below 0.5 by TTFT, so when none can meet them the fastest wins.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Needs, ScoreContext, Scorer};
use crate::profile::EngineProfile;
use crate::request::Slo;

/// The scorer's parameters (`predicted-latency-scorer`'s `parameters`).
#[derive(Clone, Debug, PartialEq)]
pub struct PredictedLatencyParams {
    /// The engines' profile the predictions price work with (`profile`: a built-in name or the
    /// fields of a calibrated `profile.yaml`).
    pub profile: EngineProfile,
    /// Output tokens expected of a request that sets no `max_tokens` (`expectedOutputTokens`).
    pub expected_output_tokens: u32,
    /// Objectives of requests whose headers and objective set none (`defaultSlo`).
    pub default_slo: Slo,
    /// Objectives by InferenceObjective name (`objectiveSlos`).
    pub objective_slos: BTreeMap<String, Slo>,
    /// A reservation not released after this long is dropped (`reservationTTL`).
    pub reservation_ttl: Duration,
}

impl Default for PredictedLatencyParams {
    fn default() -> Self {
        Self {
            profile: EngineProfile::named("h100-tp2-qwen3-32b")
                .unwrap_or_else(|| unreachable!("built-in profile")),
            expected_output_tokens: 256,
            default_slo: Slo::default(),
            objective_slos: BTreeMap::new(),
            reservation_ttl: Duration::from_secs(600),
        }
    }
}

impl PredictedLatencyParams {
    /// The objectives that apply to a request with `slo` from its headers and `objective`.
    pub fn slo_for(&self, slo: Slo, objective: Option<&str>) -> Slo {
        let by_objective = objective
            .and_then(|o| self.objective_slos.get(o))
            .copied()
            .unwrap_or_default();
        slo.or(by_objective).or(self.default_slo)
    }
}

/// The scorer.
#[derive(Debug)]
pub struct PredictedLatency {
    params: PredictedLatencyParams,
}

impl PredictedLatency {
    /// A scorer with `params`.
    pub fn new(params: PredictedLatencyParams) -> Self {
        Self { params }
    }
}

impl Scorer for PredictedLatency {
    fn needs(&self) -> Needs {
        Needs {
            keys: true,
            lookup: true,
            predict: true,
        }
    }

    fn score(&self, ctx: &ScoreContext<'_, '_>, out: &mut [f64]) {
        let predictions = ctx.predictions;
        if predictions.len() != out.len() {
            out.fill(0.0);
            return;
        }
        let best = predictions
            .iter()
            .map(|p| p.ttft_us)
            .fold(f64::INFINITY, f64::min)
            .max(1.0);
        let speed = |ttft: f64| best / ttft.max(1.0);
        let slo = self.params.slo_for(ctx.request.slo, ctx.request.objective);
        if slo.is_empty() {
            let least = predictions
                .iter()
                .map(|p| p.cost_us)
                .fold(f64::INFINITY, f64::min)
                .max(1.0);
            for (o, p) in out.iter_mut().zip(predictions) {
                *o = least / p.cost_us.max(1.0);
            }
            return;
        }
        let meets = |p: &crate::latency::Prediction| crate::slo::SloMiss::of(&slo, p).is_none();
        for ((o, p), cost) in out.iter_mut().zip(predictions).zip(ctx.costs) {
            *o = if meets(p) {
                let cached = if cost.prompt_tokens == 0 {
                    0.0
                } else {
                    f64::from(cost.cached_tokens) / f64::from(cost.prompt_tokens)
                };
                0.5 + 0.4 * cached.clamp(0.0, 1.0) + 0.1 * speed(p.ttft_us)
            } else {
                0.499 * speed(p.ttft_us)
            };
        }
    }
}
