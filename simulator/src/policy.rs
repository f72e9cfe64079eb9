//! Routing policies under test.
//!
//! Two baselines are not scorer pipelines and live here: `random` and `round-robin`. Every other
//! policy is kvpick's own `Scheduler`, unchanged, built from an `EndpointPickerConfig` YAML exactly
//! as the endpoint picker builds it: `least-loaded` (queue scorer), `approx-prefix` (the
//! routing-history `prefix-cache-scorer`, KV utilization and queue, as llm-d's default profile),
//! `precise-prefix` (kvpick's
//! previous default profile: `precise-prefix-cache-scorer` over a [`KvIndex`] fed only by the engines' KV
//! events through `KvIndex::apply`, KV utilization and queue), `predicted-latency` (kvpick's
//! default profile, the `predicted-latency-scorer`, priced with the engines' own profile), and `config:FILE` (any
//! picker config file). `--seed` reseeds each config's picker so that runs differ by seed only.
//!
//! Config-driven policies run the core's in-flight accounting as the endpoint picker does: each
//! pick reserves its cost on the chosen engine, released at the request's first token (prefill)
//! and completion (decode), and every scrape is reconciled with it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use kvpick_scheduler::events::EventBatch;
use kvpick_scheduler::scorers::ScorerSpec;
use kvpick_scheduler::{
    BlockSize, Candidate, Endpoint, EndpointId, EndpointPickerConfig, EngineProfile, EventsState,
    KvIndex, PodSignals, Prompt, Request, ReservationId, Scheduler,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::clock::SimTime;
use crate::error::SimError;

/// A policy as named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySpec {
    /// Uniformly random endpoint.
    Random,
    /// Endpoints in turn.
    RoundRobin,
    /// `Scheduler` with the queue scorer alone ([`LEAST_LOADED_YAML`]).
    LeastLoaded,
    /// `Scheduler` with routing-history prefix scoring ([`APPROX_PREFIX_YAML`]).
    ApproxPrefix,
    /// `Scheduler` with kvpick's previous default profile ([`EndpointPickerConfig::precise_prefix`]):
    /// precise prefix scoring from KV events, KV utilization, queue.
    PrecisePrefix,
    /// `Scheduler` with kvpick's default profile, `predicted-latency-scorer`
    /// ([`PREDICTED_LATENCY_YAML`]), priced with the engines' profile.
    PredictedLatency,
    /// `Scheduler` built from an `EndpointPickerConfig` YAML file, the endpoint picker's format.
    Config(PathBuf),
    /// `Scheduler` built from an `EndpointPickerConfig` YAML text (the tuner's candidates).
    Inline {
        /// The name reports use.
        name: String,
        /// The config, as the endpoint picker would read it from a file.
        yaml: Arc<str>,
    },
}

/// `least-loaded`: fewest waiting requests, random among equals.
pub const LEAST_LOADED_YAML: &str = "
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: max-score-picker
";

/// `approx-prefix`: llm-d's default ("estimated") profile, the Inference Gateway's: the
/// routing-history `prefix-cache-scorer` (64-token blocks, 256 blocks matched, 31,250 blocks
/// remembered per endpoint), KV utilization and queue, equal weights. (`configs/kvpick-approx.yaml`
/// is kvpick's default profile with the history scorer instead, to compare evidence sources alone.)
pub const APPROX_PREFIX_YAML: &str = "
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
  parameters:
    blockSize: 64
    maxPrefixBlocksToMatch: 256
    lruCapacityPerServer: 31250
- type: kv-cache-utilization-scorer
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 1
  - pluginRef: kv-cache-utilization-scorer
    weight: 1
  - pluginRef: queue-scorer
    weight: 1
  - pluginRef: max-score-picker
";
/// `predicted-latency`: each engine's predicted TTFT for the request (queued and reserved
/// prefill, its uncached tokens there, the decode batch; [`kvpick_scheduler::latency`]); the
/// simulator puts the engines' own profile into the scorer's parameters.
pub const PREDICTED_LATENCY_YAML: &str = "
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: predicted-latency-scorer
  - pluginRef: max-score-picker
";

/// Every built-in policy, in the order reports list them.
pub const BUILTIN: [&str; 6] = [
    "random",
    "round-robin",
    "least-loaded",
    "approx-prefix",
    "precise-prefix",
    "predicted-latency",
];

impl FromStr for PolicySpec {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, SimError> {
        Ok(match s {
            "random" => PolicySpec::Random,
            "round-robin" => PolicySpec::RoundRobin,
            "least-loaded" => PolicySpec::LeastLoaded,
            "approx-prefix" => PolicySpec::ApproxPrefix,
            "precise-prefix" => PolicySpec::PrecisePrefix,
            "predicted-latency" => PolicySpec::PredictedLatency,
            _ => match s.strip_prefix("config:") {
                Some(path) if !path.is_empty() => PolicySpec::Config(path.into()),
                _ => {
                    return Err(SimError::InvalidConfig(format!(
                        "unknown policy {s:?}: expected one of {} or config:FILE",
                        BUILTIN.join(", ")
                    )));
                }
            },
        })
    }
}

impl PolicySpec {
    /// The name reports use.
    pub fn name(&self) -> String {
        match self {
            PolicySpec::Random => "random".into(),
            PolicySpec::RoundRobin => "round-robin".into(),
            PolicySpec::LeastLoaded => "least-loaded".into(),
            PolicySpec::ApproxPrefix => "approx-prefix".into(),
            PolicySpec::PrecisePrefix => "precise-prefix".into(),
            PolicySpec::PredictedLatency => "predicted-latency".into(),
            PolicySpec::Config(p) => format!(
                "config:{}",
                p.file_stem()
                    .map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into())
            ),
            PolicySpec::Inline { name, .. } => name.clone(),
        }
    }
}

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
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

/// A built-in profile's YAML (without an `index` section) over the engines' block size.
fn builtin(yaml: &str, block_size: BlockSize) -> Result<EndpointPickerConfig, SimError> {
    let mut c = EndpointPickerConfig::parse(yaml)?;
    c.index.block_size = block_size;
    Ok(c)
}

/// A picker config's text, checked against the engines' block size; `what` names it in errors.
fn parse_config(
    text: &str,
    what: &str,
    shape: &PoolShape,
) -> Result<EndpointPickerConfig, SimError> {
    let c = EndpointPickerConfig::parse(text)
        .map_err(|e| SimError::InvalidConfig(format!("{what}: {e}")))?;
    if c.index.block_size != shape.block_size {
        return Err(SimError::InvalidConfig(format!(
            "{what}: index.blockSize {} differs from the engines' block size {} (--block-size)",
            c.index.block_size, shape.block_size
        )));
    }
    Ok(c)
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
                    labels: Default::default(),
                    rank: 0,
                })
            })
            .collect::<Result<Vec<_>, SimError>>()?;
        let config = match spec {
            PolicySpec::Random | PolicySpec::RoundRobin => None,
            PolicySpec::LeastLoaded => Some(builtin(LEAST_LOADED_YAML, shape.block_size)?),
            PolicySpec::ApproxPrefix => Some(builtin(APPROX_PREFIX_YAML, shape.block_size)?),
            PolicySpec::PrecisePrefix => {
                let mut c = EndpointPickerConfig::precise_prefix();
                c.index.block_size = shape.block_size;
                Some(c)
            }
            PolicySpec::PredictedLatency => {
                let mut c = builtin(PREDICTED_LATENCY_YAML, shape.block_size)?;
                for s in &mut c.profile.scorers {
                    if let ScorerSpec::PredictedLatency(p) = &mut s.spec {
                        p.profile = shape.profile.clone();
                    }
                }
                Some(c)
            }
            PolicySpec::Config(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| SimError::io(path, e))?;
                Some(parse_config(&text, &path.display().to_string(), shape)?)
            }
            PolicySpec::Inline { name, yaml } => Some(parse_config(yaml, name, shape)?),
        };
        let kind = match (spec, config) {
            (PolicySpec::Random, _) => Kind::Random,
            (PolicySpec::RoundRobin, _) => Kind::RoundRobin(0),
            (_, None) => Kind::Random,
            (_, Some(mut config)) => {
                config.profile.picker.spec.seed ^= seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let precise = config.profile.scorers.iter().any(|s| {
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

    /// Picks the engine for request `request` of `tokens` (LoRA `lora`, `output` tokens asked
    /// for), given the latest scraped signals, and reserves its cost there.
    #[allow(clippy::too_many_arguments)]
    pub fn pick(
        &mut self,
        request: usize,
        tokens: &[u32],
        lora: Option<&str>,
        session: Option<&str>,
        output: u32,
        signals: &[PodSignals],
        now: SimTime,
    ) -> Result<Routed, SimError> {
        let n = self.endpoints.len();
        if n == 0 || signals.len() != n {
            return Err(SimError::InvalidConfig("no engines".into()));
        }
        Ok(match &mut self.kind {
            Kind::Random => Routed {
                engine: self.rng.random_range(0..n),
                predicted_ttft_us: None,
            },
            Kind::RoundRobin(next) => {
                let i = *next % n;
                *next = (i + 1) % n;
                Routed {
                    engine: i,
                    predicted_ttft_us: None,
                }
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
                let mut req = Request::new(lora.unwrap_or(&self.model), Prompt::Tokens(tokens));
                req.session = session;
                req.max_tokens = Some(output);
                let decision = scheduler.pick(&req, &candidates, now.timestamp())?;
                let engine = decision
                    .primary()
                    .ok_or(kvpick_scheduler::Error::NoEndpoint("empty decision"))?
                    .index();
                if let Some(id) = scheduler.reserve(&decision, now.timestamp()) {
                    if self.reservations.len() <= request {
                        self.reservations.resize(request + 1, None);
                    }
                    self.reservations[request] = Some(id);
                }
                Routed {
                    engine,
                    predicted_ttft_us: decision.predicted.map(|p| p.ttft_us),
                }
            }
        })
    }
}
