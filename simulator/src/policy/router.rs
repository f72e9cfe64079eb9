//! A policy's routing state for one run: the endpoints it routes over, the picker (or baseline)
//! it asks, and the reservations it holds until each request's first token and completion.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use kvpick_scheduler::events::EventBatch;
use kvpick_scheduler::filters::ROLE_LABEL;
use kvpick_scheduler::scorers::ScorerSpec;
use kvpick_scheduler::{
    BlockSize, Candidate, Endpoint, EndpointId, EndpointPickerConfig, EngineProfile, EventsState,
    KvIndex, PodSignals, Prompt, Request, ReservationId, Scheduler, SloAction, SloMiss, SloVerdict,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::PolicySpec;
use crate::clock::SimTime;
use crate::error::SimError;
use crate::trace::Objective;

enum Kind {
    Random,
    RoundRobin(usize),
    Scheduled {
        scheduler: Box<Scheduler>,
        /// Whether the profile reads the KV index, so the engines' events must feed it.
        precise: bool,
    },
}

/// A policy's routing state for one run.
pub struct Router {
    kind: Kind,
    endpoints: Vec<Endpoint>,
    model: Arc<str>,
    rng: SmallRng,
    /// Each routed request's reservation, by request index, until it completes.
    reservations: Vec<Option<ReservationId>>,
}

/// Where a request went and what the router expected there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Routed {
    /// The engine.
    pub engine: usize,
    /// The latency model's TTFT on that engine (µs), for policies that have one.
    pub predicted_ttft_us: Option<f64>,
    /// No engine was predicted to meet its objectives: it went best-effort.
    pub slo_unattainable: bool,
    /// P/D: the engine that prefills it first, when its policy disaggregates it (`engine`
    /// decodes it).
    pub prefill: Option<usize>,
}

/// What [`Router::pick`] did with a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Picked {
    /// Routed and reserved.
    Routed(Routed),
    /// Predicted to miss its objectives everywhere, and it may wait for them.
    Queue(SloMiss),
    /// Predicted to miss them everywhere, and sheddable.
    Shed(SloMiss),
}

/// One request as a router is asked to place it.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    /// Its index in the trace (its reservation's key).
    pub request: usize,
    /// Its prompt.
    pub tokens: &'a [u32],
    /// Its LoRA adapter.
    pub lora: Option<&'a str>,
    /// Its session id.
    pub session: Option<&'a str>,
    /// Output tokens it asks for.
    pub output: u32,
    /// Its priority and objectives.
    pub objective: Objective,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

/// What a router needs to know about the pool.
#[derive(Clone, Debug)]
pub struct PoolShape {
    /// Number of engines.
    pub engines: usize,
    /// Their served model.
    pub model: Arc<str>,
    /// Their KV block size, which the index keys at.
    pub block_size: BlockSize,
    /// Their profile: what `predicted-latency` prices work with.
    pub profile: EngineProfile,
    /// P/D: the first this many engines are labelled `llm-d.ai/role: prefill`, the rest
    /// `decode`; 0 labels none (an aggregated pool).
    pub prefill_engines: usize,
}

impl Router {
    /// A router for `spec` over a pool of `shape`, seeded with `seed`.
    pub fn new(spec: &PolicySpec, shape: &PoolShape, seed: u64) -> Result<Self, SimError> {
        let endpoints = (0..shape.engines)
            .map(|i| {
                let id = EndpointId::new(i as u32)
                    .ok_or_else(|| SimError::InvalidConfig(format!("too many engines: {i}")))?;
                let ip = Ipv4Addr::from(0x0a00_0000u32 + 1 + i as u32);
                Ok(Endpoint {
                    id,
                    address: SocketAddr::V4(SocketAddrV4::new(ip, 8000)),
                    model: shape.model.clone(),
                    labels: match shape.prefill_engines {
                        0 => Default::default(),
                        p => {
                            let role = if i < p { "prefill" } else { "decode" };
                            [(ROLE_LABEL.to_owned(), role.to_owned())].into()
                        }
                    },
                    rank: 0,
                })
            })
            .collect::<Result<Vec<_>, SimError>>()?;
        let config = spec.picker_config(shape)?;
        let kind = match (spec, config) {
            (PolicySpec::Random, _) => Kind::Random,
            (PolicySpec::RoundRobin, _) => Kind::RoundRobin(0),
            (_, None) => Kind::Random,
            (_, Some(mut config)) => {
                config.profile.picker.spec.seed ^= seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                // A P/D decider reads the index too.
                let precise = config.disaggregation.is_some()
                    || config.profile.scorers.iter().any(|s| {
                        matches!(
                            s.spec,
                            ScorerSpec::PrecisePrefix | ScorerSpec::PredictedLatency(_)
                        )
                    });
                let index = Arc::new(KvIndex::new(config.index.clone()));
                Kind::Scheduled {
                    scheduler: Box::new(Scheduler::with_config(config, index)?),
                    precise,
                }
            }
        };
        Ok(Self {
            kind,
            endpoints,
            model: shape.model.clone(),
            rng: SmallRng::seed_from_u64(seed ^ 0x00c0_ffee_d00d_f00d),
            reservations: Vec::new(),
        })
    }

    fn scheduler(&self) -> Option<&Scheduler> {
        match &self.kind {
            Kind::Scheduled { scheduler, .. } => Some(scheduler),
            _ => None,
        }
    }

    /// Its picker's in-flight accounting (`None` for `random` and `round-robin`).
    pub fn inflight(&self) -> Option<&kvpick_scheduler::InFlight> {
        self.scheduler().map(Scheduler::inflight)
    }

    /// Folds `engine`'s fresh scrape into the in-flight accounting.
    pub fn observe_signals(&self, engine: usize, signals: &PodSignals) {
        if let (Some(s), Some(ep)) = (self.scheduler(), self.endpoints.get(engine)) {
            s.reconcile(ep.id, signals);
        }
    }

    /// Request `request` produced its first token: its prefill reservation is released.
    pub fn first_token(&self, request: usize, now: SimTime) {
        if let (Some(s), Some(Some(id))) = (self.scheduler(), self.reservations.get(request)) {
            s.first_token(*id, now.timestamp());
        }
    }

    /// Request `request` completed (or was refused by its engine): its reservation is released.
    pub fn release(&mut self, request: usize, now: SimTime) {
        let id = self.reservations.get_mut(request).and_then(Option::take);
        if let (Some(s), Some(id)) = (self.scheduler(), id) {
            s.release(id, now.timestamp());
        }
    }

    /// The picker config of a config-driven policy (`None` for `random` and `round-robin`).
    pub fn picker_config(&self) -> Option<&EndpointPickerConfig> {
        match &self.kind {
            Kind::Scheduled { scheduler, .. } => Some(scheduler.config()),
            _ => None,
        }
    }

    /// Whether the engines' KV events must be delivered to [`Router::apply_events`].
    pub fn wants_events(&self) -> bool {
        matches!(&self.kind, Kind::Scheduled { precise: true, .. })
    }

    /// Applies one batch of `engine`'s KV events to the precise index.
    pub fn apply_events(&mut self, engine: usize, batch: &EventBatch) {
        if let (
            Kind::Scheduled {
                scheduler,
                precise: true,
            },
            Some(ep),
        ) = (&self.kind, self.endpoints.get(engine))
        {
            scheduler.index().apply(ep.id, &ep.model, batch);
        }
    }

    /// Entries the precise index holds per engine, for checking it against the engines' caches.
    pub fn index_entries(&self) -> Option<Vec<usize>> {
        match &self.kind {
            Kind::Scheduled {
                scheduler,
                precise: true,
            } => Some(
                self.endpoints
                    .iter()
                    .map(|e| scheduler.index().endpoint_entries(e.id))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Picks the engine for `ask` given the latest scraped signals and reserves its cost there;
    /// or, when no engine is predicted to meet its objectives, says what the picker would do
    /// instead ([`kvpick_scheduler::SloVerdict::action`]; `may_wait`: it may still wait in flow
    /// control for them), reserving nothing.
    pub fn pick(
        &mut self,
        ask: &Ask<'_>,
        may_wait: bool,
        signals: &[PodSignals],
        now: SimTime,
    ) -> Result<Picked, SimError> {
        let n = self.endpoints.len();
        if n == 0 || signals.len() != n {
            return Err(SimError::InvalidConfig("no engines".into()));
        }
        let baseline = |engine| {
            Picked::Routed(Routed {
                engine,
                predicted_ttft_us: None,
                slo_unattainable: false,
                prefill: None,
            })
        };
        Ok(match &mut self.kind {
            Kind::Random => baseline(self.rng.random_range(0..n)),
            Kind::RoundRobin(next) => {
                let i = *next % n;
                *next = (i + 1) % n;
                baseline(i)
            }
            Kind::Scheduled { scheduler, precise } => {
                let events = if *precise {
                    EventsState::Live
                } else {
                    EventsState::Absent
                };
                let candidates: Vec<Candidate<'_>> = self
                    .endpoints
                    .iter()
                    .zip(signals)
                    .map(|(endpoint, signals)| Candidate {
                        endpoint,
                        signals,
                        events,
                    })
                    .collect();
                let mut req =
                    Request::new(ask.lora.unwrap_or(&self.model), Prompt::Tokens(ask.tokens));
                req.session = ask.session;
                req.max_tokens = Some(ask.output);
                req.slo = ask.objective.slo;
                req.priority = ask.objective.priority;
                let decision = scheduler.pick(&req, &candidates, now.timestamp())?;
                match decision.slo.action(req.priority, may_wait) {
                    SloAction::Route => {}
                    SloAction::Queue(miss) => return Ok(Picked::Queue(miss)),
                    SloAction::Shed(miss) => return Ok(Picked::Shed(miss)),
                }
                let engine = decision
                    .primary()
                    .ok_or(kvpick_scheduler::Error::NoEndpoint("empty decision"))?
                    .index();
                if let Some(id) = scheduler.reserve(&decision, now.timestamp()) {
                    if self.reservations.len() <= ask.request {
                        self.reservations.resize(ask.request + 1, None);
                    }
                    self.reservations[ask.request] = Some(id);
                }
                Picked::Routed(Routed {
                    engine,
                    predicted_ttft_us: decision.predicted.map(|p| p.ttft_us),
                    slo_unattainable: matches!(decision.slo, SloVerdict::Unattainable(_)),
                    prefill: (decision.pd.prefill())
                        .and_then(|p| p.primary())
                        .map(EndpointId::index),
                })
            }
        })
    }
}
