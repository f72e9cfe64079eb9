//! Routing policies under test.
//!
//! Baselines that are not scorer pipelines live here (random, round-robin, least-loaded). The
//! prefix-aware ones run kvpick's own `Scheduler::pick`, unchanged: `precise-prefix` over a
//! [`KvIndex`] fed only by the engines' KV events (through `KvIndex::apply`, after the configured
//! event latency), `approx-prefix` over an index fed by the router's own routing history
//! ([`RoutingHistory`]).
//!
//! PROVISIONAL: until the scoring pipeline (scorers, pickers, `config` parsing an
//! `EndpointPickerConfig` YAML) lands in `kvpick-scheduler`, `Scheduler` is the provisional one
//! (prefix ×2 + queue) and `config:FILE` is refused; ties among the best-scored endpoints are
//! broken at random here, as the real max-score picker will.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use kvpick_scheduler::events::EventBatch;
use kvpick_scheduler::scheduler::EventsState;
use kvpick_scheduler::{
    BlockSize, Candidate, Endpoint, EndpointId, IndexConfig, KvIndex, PodSignals, Prompt, Request,
    Scheduler,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::clock::SimTime;
use crate::error::SimError;
use crate::history::RoutingHistory;

/// A policy as named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySpec {
    /// Uniformly random endpoint.
    Random,
    /// Endpoints in turn.
    RoundRobin,
    /// Fewest waiting requests in the latest scrape (then fewest running, then lowest KV usage).
    LeastLoaded,
    /// `Scheduler::pick` over an index learned from routing history.
    ApproxPrefix,
    /// `Scheduler::pick` over an index fed by the engines' KV events.
    PrecisePrefix,
    /// `Scheduler` built from an `EndpointPickerConfig` YAML file, the endpoint picker's format.
    Config(PathBuf),
}

/// Every built-in policy, in the order reports list them.
pub const BUILTIN: [&str; 5] = [
    "random",
    "round-robin",
    "least-loaded",
    "approx-prefix",
    "precise-prefix",
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
            PolicySpec::Config(p) => format!(
                "config:{}",
                p.file_stem()
                    .map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into())
            ),
        }
    }
}

enum Kind {
    Random,
    RoundRobin(usize),
    LeastLoaded,
    Scored {
        scheduler: Scheduler,
        history: Option<RoutingHistory>,
    },
}

/// A policy's routing state for one run.
pub struct Router {
    kind: Kind,
    endpoints: Vec<Endpoint>,
    model: Arc<str>,
    rng: SmallRng,
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
    /// Their KV capacity in blocks (sizes the routing history).
    pub kv_blocks: usize,
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
        let index = || {
            Arc::new(KvIndex::new(IndexConfig {
                block_size: shape.block_size,
                ..IndexConfig::default()
            }))
        };
        let kind = match spec {
            PolicySpec::Random => Kind::Random,
            PolicySpec::RoundRobin => Kind::RoundRobin(0),
            PolicySpec::LeastLoaded => Kind::LeastLoaded,
            PolicySpec::PrecisePrefix => Kind::Scored {
                scheduler: Scheduler::new(index()),
                history: None,
            },
            PolicySpec::ApproxPrefix => {
                let idx = index();
                Kind::Scored {
                    history: Some(RoutingHistory::new(
                        idx.clone(),
                        shape.engines,
                        shape.kv_blocks,
                    )),
                    scheduler: Scheduler::new(idx),
                }
            }
            PolicySpec::Config(path) => {
                return Err(SimError::InvalidConfig(format!(
                    "policy config:{}: picker configs need kvpick-scheduler's `config` module, which \
                     is not on main yet",
                    path.display()
                )));
            }
        };
        Ok(Self {
            kind,
            endpoints,
            model: shape.model.clone(),
            rng: SmallRng::seed_from_u64(seed ^ 0x00c0_ffee_d00d_f00d),
        })
    }

    /// Whether the engines' KV events must be delivered to [`Router::apply_events`].
    pub fn wants_events(&self) -> bool {
        matches!(&self.kind, Kind::Scored { history: None, .. })
    }

    /// Applies one batch of `engine`'s KV events to the precise index.
    pub fn apply_events(&mut self, engine: usize, batch: &EventBatch) {
        if let (
            Kind::Scored {
                scheduler,
                history: None,
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
            Kind::Scored {
                scheduler,
                history: None,
            } => Some(
                self.endpoints
                    .iter()
                    .map(|e| scheduler.index().endpoint_entries(e.id))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Picks the engine for a request of `tokens` (LoRA `lora`), given the latest scraped signals.
    pub fn pick(
        &mut self,
        tokens: &[u32],
        lora: Option<&str>,
        session: Option<&str>,
        signals: &[PodSignals],
        now: SimTime,
    ) -> Result<usize, SimError> {
        let n = self.endpoints.len();
        if n == 0 || signals.len() != n {
            return Err(SimError::InvalidConfig("no engines".into()));
        }
        Ok(match &mut self.kind {
            Kind::Random => self.rng.random_range(0..n),
            Kind::RoundRobin(next) => {
                let i = *next % n;
                *next = (i + 1) % n;
                i
            }
            Kind::LeastLoaded => {
                let key = |s: &PodSignals| (s.waiting, s.running, (s.kv_usage * 1e6) as u64);
                let best = signals.iter().map(key).min().unwrap_or_default();
                let ties: Vec<usize> = (0..n).filter(|&i| key(&signals[i]) == best).collect();
                ties[self.rng.random_range(0..ties.len())]
            }
            Kind::Scored { scheduler, history } => {
                let candidates: Vec<Candidate<'_>> = self
                    .endpoints
                    .iter()
                    .zip(signals)
                    .map(|(endpoint, signals)| Candidate {
                        endpoint,
                        signals,
                        events: EventsState::Live,
                    })
                    .collect();
                let mut request = Request::new(lora.unwrap_or(&self.model), Prompt::Tokens(tokens));
                request.session = session;
                let decision = scheduler.pick(&request, &candidates, now.timestamp())?;
                let top = decision.ranked.first().map_or(0.0, |r| r.score);
                let ties: Vec<EndpointId> = decision
                    .ranked
                    .iter()
                    .take_while(|r| r.score >= top - 1e-9)
                    .map(|r| r.endpoint)
                    .collect();
                let chosen = *ties
                    .get(self.rng.random_range(0..ties.len().max(1)))
                    .ok_or(kvpick_scheduler::Error::NoEndpoint("empty decision"))?;
                if let Some(h) = history {
                    h.record(chosen, request.partition(), tokens);
                }
                chosen.index()
            }
        })
    }
}
