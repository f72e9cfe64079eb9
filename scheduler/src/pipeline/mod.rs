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
//!
//! Under a P/D profile handler ([`crate::disagg`]) the steps run for the decode profile; then the
//! decider reads the decode pick, and when it asks for a remote prefill the prefill profile runs
//! the same steps over the candidates it keeps (never the decode pod itself), priced as a
//! prefill-only request ([`disagg`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::EndpointPickerConfig;
use crate::disagg::{Decider, PdOutcome};
use crate::error::Error;
use crate::index::KvIndex;
use crate::inflight::{InFlight, InFlightConfig, ReservationId};
use crate::latency::LatencyModel;
use crate::pods::{EndpointId, PodSignals};
use crate::profile::EngineProfile;
use crate::scorers::{PredictedLatencyParams, ScorerSpec};
use crate::slo::SloVerdict;
use crate::time::Timestamp;

use self::stage::{Shared, Side, Stage};
use crate::decision::Decision;
use crate::request::{Candidate, Request};

mod pd;
mod stage;

/// The scheduling pipeline of one profile (or a P/D pair), shared by every request
/// (`Send + Sync`).
#[derive(Debug)]
pub struct Scheduler {
    index: Arc<KvIndex>,
    config: EndpointPickerConfig,
    /// The profile that picks the destination (the decode profile under P/D).
    main: Stage,
    /// P/D: the prefill profile and the decider that says when it runs.
    prefill: Option<(Stage, Decider)>,
    inflight: InFlight,
    latency: Option<LatencyModel>,
    /// Profiles calibrated online, by model ([`Scheduler::set_engine_profile`]); a few entries.
    tuned: parking_lot::RwLock<Vec<(Arc<str>, Arc<LatencyModel>)>>,
    expected_output_tokens: u32,
    /// The latency scorer's parameters (objectives by request, objective and default).
    slo_params: Option<PredictedLatencyParams>,
    /// P/D: each disaggregated request's decode reservation → its prefill reservation, released
    /// with the decode's first token (the prefill-only request ends before the decode starts).
    /// Bounded like the accounting: the oldest link goes first.
    linked: parking_lot::Mutex<BTreeMap<ReservationId, ReservationId>>,
}

/// P/D reservation links held at most (as many as the accounting's reservations).
const MAX_LINKS: usize = 1 << 16;

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
        let pd = config.disaggregation.as_ref();
        let predicted = std::iter::once(&config.profile)
            .chain(pd.map(|d| &d.prefill))
            .flat_map(|p| &p.scorers)
            .find_map(|s| match &s.spec {
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
            linked: Default::default(),
            expected_output_tokens: predicted.map_or(256, |p| p.expected_output_tokens),
            slo_params: predicted.map(|p| (**p).clone()),
            inflight: InFlight::new(inflight),
            // The decider reads what the decode pick holds, from the index.
            main: Stage::new(&config.profile, pd.is_some()),
            prefill: pd.map(|d| (Stage::new(&d.prefill, false), d.decider.spec)),
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
        &self.main.names
    }

    /// Names of the prefill profile's scorers under P/D, in the order of the prefill pick's
    /// [`crate::decision::Ranked::scores`]; empty otherwise.
    pub fn prefill_scorer_names(&self) -> &[Arc<str>] {
        self.prefill.as_ref().map_or(&[], |(s, _)| &s.names)
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

    /// Reserves `decision`'s cost on its primary at `now`; `None` for an empty decision. A
    /// disaggregated decision also reserves its prefill-only request on the prefill pod, given
    /// back with the returned reservation's first token (or its release).
    pub fn reserve(&self, decision: &Decision, now: Timestamp) -> Option<ReservationId> {
        let primary = decision.primary()?;
        let prefill = decision
            .pd
            .prefill()
            .and_then(|p| Some(self.inflight.reserve(p.primary()?, p.cost, now)));
        let id = self.inflight.reserve(primary, decision.cost, now);
        if let Some(prefill) = prefill {
            let mut linked = self.linked.lock();
            while linked.len() >= MAX_LINKS {
                linked.pop_first();
            }
            linked.insert(id, prefill);
        }
        Some(id)
    }

    /// The reserved request produced its first token (its prefill is done).
    pub fn first_token(&self, id: ReservationId, now: Timestamp) {
        self.inflight.first_token(id, now);
        self.release_linked(id, now);
    }

    /// The reserved request ended (response end, client gone, error, timeout).
    pub fn release(&self, id: ReservationId, now: Timestamp) {
        self.inflight.release(id, now);
        self.release_linked(id, now);
    }

    fn release_linked(&self, id: ReservationId, now: Timestamp) {
        if self.linked.lock().is_empty() {
            return;
        }
        if let Some(prefill) = self.linked.lock().remove(&id) {
            self.inflight.release(prefill, now);
        }
    }

    /// Folds a fresh scrape of `endpoint` into the in-flight accounting.
    pub fn reconcile(&self, endpoint: EndpointId, signals: &PodSignals) {
        self.inflight.reconcile(endpoint, signals);
    }

    /// Forgets what the scorers learnt about `endpoint` (routing history, sessions). Call it when
    /// the endpoint goes away, before its id is reused; its KV-index entries are the index's
    /// business ([`KvIndex::clear_endpoint`]).
    pub fn forget_endpoint(&self, endpoint: EndpointId) {
        self.main.forget(endpoint);
        if let Some((prefill, _)) = &self.prefill {
            prefill.forget(endpoint);
        }
        self.inflight.forget(endpoint);
    }

    /// Ranks the eligible candidates for `request`: primary first, then fallbacks. Candidates
    /// name distinct endpoints. Under P/D the decision also says whether and where the prompt is
    /// prefilled ([`Decision::pd`]).
    ///
    /// Fails with [`Error::NoEndpoint`] when no candidate is eligible; its reason names the
    /// filter that emptied the set ([`crate::filters`]).
    pub fn pick(
        &self,
        request: &Request<'_>,
        candidates: &[Candidate<'_>],
        now: Timestamp,
    ) -> Result<Decision, Error> {
        let tuned = self.tuned(request.model);
        let shared = Shared {
            index: &self.index,
            inflight: &self.inflight,
            latency: tuned.as_deref().or(self.latency.as_ref()),
            expected_output_tokens: self.expected_output_tokens,
        };
        let staleness = &self.config.staleness;
        let main = self
            .main
            .rank(&shared, Side::Whole, request, candidates, staleness, now)?;
        let slo = match &self.slo_params {
            Some(p) => SloVerdict::of(
                &p.slo_for(request.slo, request.objective),
                &main.predictions,
            ),
            None => SloVerdict::NoObjective,
        };
        let mut decision = Decision {
            matched_blocks: main.matched_blocks,
            total_blocks: main.total_blocks,
            ranked: main.ranked,
            cost: main.cost,
            predicted: main.predicted,
            slo,
            pd: PdOutcome::Off,
        };
        if let Some((stage, decider)) = &self.prefill {
            let pd = pd::Step {
                main: &self.main,
                prefill: stage,
                decider,
                shared: &shared,
                staleness,
            };
            pd.run(request, candidates, &mut decision, now);
        }
        Ok(decision)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod latency_tests;

#[cfg(test)]
mod pd_tests;
