//! `Scheduler::pick`: one request, its candidates and `now` in; an ordered decision out.
//!
//! The pipeline, per request:
//! 1. filters ([`crate::filters`]): subset hint, the profile's filters, staleness;
//! 2. shared context: block keys of a token prompt, and the KV-index lookup over the `Live`
//!    candidates, each computed only when a scorer of the profile needs it;
//! 3. every scorer rates every eligible candidate in [0, 1] ([`crate::scorers`]);
//! 4. total = Σ weight·score / Σ weight: a weighted mean, so totals stay in [0, 1] and read the
//!    same whatever the scale of the weights (all weights 0 → all totals 0, order is random);
//! 5. the picker orders the candidates ([`crate::pickers`]);
//! 6. scorers that learn from routing history are told the primary.
//!
//! Between 2 and 3, when a scorer asks for it, each candidate's cost (prompt, tokens cached
//! there, expected output) and predicted latency are computed from the in-flight accounting
//! ([`crate::inflight`]) and the latency model ([`crate::latency`]). The caller reserves the
//! decision's cost on the primary with [`Scheduler::reserve`] and releases it as the response
//! goes ([`Scheduler::first_token`], [`Scheduler::release`]); each new scrape a pick sees is
//! folded in ([`Scheduler::reconcile`]) so that what the pod reports is not counted twice.

use std::sync::Arc;

use crate::config::EndpointPickerConfig;
use crate::error::Error;
use crate::filters::{self, FilterSpec};
use crate::index::{KvIndex, PrefixMatches};
use crate::inflight::{Cost, InFlight, InFlightConfig, ReservationId};
use crate::keys::{BlockKey, block_keys};
use crate::latency::{LatencyModel, Prediction};
use crate::pickers::Picker;
use crate::pods::{EndpointId, EndpointSet, PodSignals};
use crate::profile::EngineProfile;
use crate::scorers::{Needs, ScoreContext, Scorer, ScorerSpec, positions_of};
use crate::time::Timestamp;

use crate::decision::{Decision, Ranked};
use crate::request::{Candidate, EventsState, Prompt, Request};

/// The scheduling pipeline of one profile, shared by every request (`Send + Sync`).
#[derive(Debug)]
pub struct Scheduler {
    index: Arc<KvIndex>,
    config: EndpointPickerConfig,
    filters: Vec<FilterSpec>,
    scorers: Vec<Box<dyn Scorer>>,
    weights: Vec<f64>,
    weight_sum: f64,
    scorer_names: Vec<Arc<str>>,
    picker: Picker,
    needs: Needs,
    inflight: InFlight,
    latency: Option<LatencyModel>,
    /// Profiles calibrated online, by model ([`Scheduler::set_engine_profile`]); a few entries.
    tuned: parking_lot::RwLock<Vec<(Arc<str>, Arc<LatencyModel>)>>,
    expected_output_tokens: u32,
}

/// Models with a profile of their own at most.
const MAX_TUNED_MODELS: usize = 64;

impl Scheduler {
    /// A scheduler with the default config ([`EndpointPickerConfig::default`]) over `index`, whose own
    /// settings replace the config's `index` section.
    pub fn new(index: Arc<KvIndex>) -> Self {
        let mut config = EndpointPickerConfig::default();
        config.index = index.config().clone();
        Self::build(config, index)
    }

    /// A scheduler running `config`'s profile over `index`. Fails when the index was built with
    /// another block size than the config's (keys would never meet).
    pub fn with_config(config: EndpointPickerConfig, index: Arc<KvIndex>) -> Result<Self, Error> {
        if config.index.block_size != index.block_size() {
            return Err(Error::InvalidConfig(format!(
                "index.blockSize: {} does not match the KV index's block size {}",
                config.index.block_size,
                index.block_size()
            )));
        }
        Ok(Self::build(config, index))
    }

    fn build(config: EndpointPickerConfig, index: Arc<KvIndex>) -> Self {
        let profile = &config.profile;
        let scorers: Vec<Box<dyn Scorer>> =
            profile.scorers.iter().map(|s| s.spec.build()).collect();
        let weights: Vec<f64> = profile.scorers.iter().map(|s| s.weight).collect();
        let needs = scorers
            .iter()
            .fold(Needs::default(), |n, s| n.union(s.needs()));
        let predicted = profile.scorers.iter().find_map(|s| match &s.spec {
            ScorerSpec::PredictedLatency(p) => Some(p),
            _ => None,
        });
        let mut inflight = InFlightConfig::default();
        if let Some(p) = predicted {
            inflight.ttl = p.reservation_ttl;
        }
        Self {
            latency: predicted.map(|p| LatencyModel::new(p.profile.clone())),
            tuned: Default::default(),
            expected_output_tokens: predicted.map_or(256, |p| p.expected_output_tokens),
            inflight: InFlight::new(inflight),
            filters: profile.filters.iter().map(|f| f.spec.clone()).collect(),
            weight_sum: weights.iter().sum(),
            weights,
            scorer_names: profile
                .scorers
                .iter()
                .map(|s| Arc::from(s.name.as_str()))
                .collect(),
            picker: Picker::new(profile.picker.spec.clone()),
            scorers,
            needs,
            index,
            config,
        }
    }

    /// The index it reads.
    pub fn index(&self) -> &Arc<KvIndex> {
        &self.index
    }

    /// The config it runs.
    pub fn config(&self) -> &EndpointPickerConfig {
        &self.config
    }

    /// Names of the scorers, in the order of [`Ranked::scores`].
    pub fn scorer_names(&self) -> &[Arc<str>] {
        &self.scorer_names
    }

    /// The engine profile predictions for `model` use: its own ([`Scheduler::set_engine_profile`])
    /// or the config's; `None` without a predicted-latency scorer.
    pub fn engine_profile(&self, model: &str) -> Option<EngineProfile> {
        match self.tuned(model) {
            Some(m) => Some(m.profile().clone()),
            None => self.latency.as_ref().map(|m| m.profile().clone()),
        }
    }

    /// Prices `model`'s requests with `profile` from now on (online calibration). Returns false
    /// when the config has no predicted-latency scorer, or when 64 models already have one.
    pub fn set_engine_profile(&self, model: &str, profile: EngineProfile) -> bool {
        if self.latency.is_none() {
            return false;
        }
        let mut tuned = self.tuned.write();
        let latency = Arc::new(LatencyModel::new(profile));
        if let Some(entry) = tuned.iter_mut().find(|(m, _)| &**m == model) {
            entry.1 = latency;
        } else if tuned.len() < MAX_TUNED_MODELS {
            tuned.push((Arc::from(model), latency));
        } else {
            return false;
        }
        true
    }

    fn tuned(&self, model: &str) -> Option<Arc<LatencyModel>> {
        let tuned = self.tuned.read();
        if tuned.is_empty() {
            return None;
        }
        tuned
            .iter()
            .find(|(m, _)| &**m == model)
            .map(|(_, l)| l.clone())
    }

    /// The in-flight accounting (for export).
    pub fn inflight(&self) -> &InFlight {
        &self.inflight
    }

    /// Reserves `decision`'s cost on its primary at `now`; `None` for an empty decision.
    pub fn reserve(&self, decision: &Decision, now: Timestamp) -> Option<ReservationId> {
        let primary = decision.primary()?;
        Some(self.inflight.reserve(primary, decision.cost, now))
    }

    /// The reserved request produced its first token (its prefill is done).
    pub fn first_token(&self, id: ReservationId, now: Timestamp) {
        self.inflight.first_token(id, now);
    }

    /// The reserved request ended (response end, client gone, error, timeout).
    pub fn release(&self, id: ReservationId, now: Timestamp) {
        self.inflight.release(id, now);
    }

    /// Folds a fresh scrape of `endpoint` into the in-flight accounting.
    pub fn reconcile(&self, endpoint: EndpointId, signals: &PodSignals) {
        self.inflight.reconcile(endpoint, signals);
    }

    /// Forgets what the scorers learnt about `endpoint` (routing history, sessions). Call it when
    /// the endpoint goes away, before its id is reused; its KV-index entries are the index's
    /// business ([`KvIndex::clear_endpoint`]).
    pub fn forget_endpoint(&self, endpoint: EndpointId) {
        for scorer in &self.scorers {
            scorer.forget(endpoint);
        }
        self.inflight.forget(endpoint);
    }

    /// Ranks the eligible candidates for `request`: primary first, then fallbacks. Candidates
    /// name distinct endpoints.
    ///
    /// Fails with [`Error::NoEndpoint`] when no candidate is eligible; its reason names the
    /// filter that emptied the set ([`crate::filters`]).
    pub fn pick(
        &self,
        request: &Request<'_>,
        candidates: &[Candidate<'_>],
        now: Timestamp,
    ) -> Result<Decision, Error> {
        let mut eligible = candidates.to_vec();
        filters::apply(request, &self.filters, &mut eligible)?;
        self.config.staleness.apply(&mut eligible, now);
        let mut positions = Vec::new();
        positions_of(&eligible, &mut positions);

        let block_size = self.index.block_size();
        let (keys, total_blocks) = match request.prompt {
            Prompt::Tokens(tokens) => {
                let total = u32::try_from(block_size.full_blocks(tokens.len())).unwrap_or(u32::MAX);
                let keys: Vec<BlockKey> = if self.needs.keys || self.needs.lookup {
                    block_keys(request.partition().root(), tokens, block_size).collect()
                } else {
                    Vec::new()
                };
                (keys, total)
            }
            Prompt::Text(_) | Prompt::Empty => (Vec::new(), 0),
        };
        let mut matches = PrefixMatches::default();
        if self.needs.lookup && !keys.is_empty() {
            let live: EndpointSet = eligible
                .iter()
                .filter(|c| c.events == EventsState::Live)
                .map(|c| c.endpoint.id)
                .collect();
            if !live.is_empty() {
                self.index.lookup(&keys, &live, &mut matches);
            }
        }
        let prompt_tokens = match request.prompt {
            Prompt::Tokens(t) => u32::try_from(t.len()).unwrap_or(u32::MAX),
            // About four characters a token: enough to price an untokenized prompt.
            Prompt::Text(t) => u32::try_from(t.len() / 4).unwrap_or(u32::MAX),
            Prompt::Empty => 0,
        };
        let output_tokens = request.max_tokens.unwrap_or(self.expected_output_tokens);
        let costs: Vec<Cost> = eligible
            .iter()
            .map(|c| {
                let cached = matches
                    .get(c.endpoint.id)
                    .map_or(0.0, |m| f64::from(m.weighted) * f64::from(block_size.get()));
                Cost {
                    prompt_tokens,
                    cached_tokens: (cached as u32).min(prompt_tokens),
                    output_tokens,
                }
            })
            .collect();
        let tuned = self.tuned(request.model);
        let predictions: Vec<Prediction> = match tuned.as_deref().or(self.latency.as_ref()) {
            Some(model) if self.needs.predict => {
                for c in &eligible {
                    self.inflight.reconcile(c.endpoint.id, c.signals);
                }
                let loads = self
                    .inflight
                    .loads(eligible.iter().map(|c| c.endpoint.id), now);
                // Arrivals per endpoint: the pool's pick rate spread over the candidates.
                let arrivals = loads.first().map_or(0.0, |l| l.pick_rate) / n_eligible(&eligible);
                eligible
                    .iter()
                    .zip(&costs)
                    .zip(&loads)
                    .map(|((c, cost), load)| model.predict(cost, load, c.signals, arrivals))
                    .collect()
            }
            _ => Vec::new(),
        };
        let ctx = ScoreContext {
            request,
            candidates: &eligible,
            costs: &costs,
            predictions: &predictions,
            keys: &keys,
            block_size,
            matches: &matches,
            looked_up: self.needs.lookup,
            positions: &positions,
            now,
        };

        let n = eligible.len();
        let mut scores = vec![0.0; n * self.scorers.len()];
        let mut totals = vec![0.0; n];
        for ((scorer, &weight), column) in self
            .scorers
            .iter()
            .zip(&self.weights)
            .zip(scores.chunks_exact_mut(n))
        {
            scorer.score(&ctx, column);
            for (total, s) in totals.iter_mut().zip(column.iter_mut()) {
                // A scorer's contract is [0, 1]; hold it to it rather than let NaN rank.
                *s = if s.is_nan() { 0.0 } else { s.clamp(0.0, 1.0) };
                *total += weight * *s;
            }
        }
        if self.weight_sum > 0.0 {
            for t in &mut totals {
                *t /= self.weight_sum;
            }
        }

        let mut order = Vec::with_capacity(n);
        self.picker.rank(&totals, &mut order);
        let ranked: Vec<Ranked> = order
            .iter()
            .map(|&i| Ranked {
                endpoint: eligible[i].endpoint.id,
                score: totals[i],
                scores: scores.iter().skip(i).step_by(n).copied().collect(),
            })
            .collect();
        let (Some(primary), Some(&first)) = (ranked.first().map(|r| r.endpoint), order.first())
        else {
            return Err(Error::NoEndpoint(filters::NO_CANDIDATES));
        };
        for scorer in &self.scorers {
            scorer.observe(&ctx, primary);
        }
        Ok(Decision {
            matched_blocks: matches
                .matches
                .iter()
                .find(|m| m.endpoint == primary)
                .map_or(0, |m| m.blocks),
            total_blocks,
            ranked,
            cost: costs.get(first).copied().unwrap_or_default(),
            predicted: predictions.get(first).copied(),
        })
    }
}

fn n_eligible(eligible: &[Candidate<'_>]) -> f64 {
    eligible.len().max(1) as f64
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod latency_tests;
