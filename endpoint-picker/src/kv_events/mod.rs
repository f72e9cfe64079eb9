//! KV-event ingestion: keeps the [`KvIndex`] in step with the blocks every vLLM pod holds,
//! from the pods' own ZMQ KV-event streams.
//!
//! ```text
//! connect mode: pod PUB ─tcp─▶ guard ─▶ SUB (one per endpoint) ─┐
//! bind mode:    pod PUB ─tcp─▶ guard ─▶ SUB (one per rank port) ─┼─▶ mailbox (bounded, per endpoint)
//!                                   topic + rank → endpoint ─────┘        │
//!                      worker (endpoint id mod N): sequencer → decode → KvIndex::apply
//!                                   gaps, restarts ─▶ replay (DEALER ▶ pod ROUTER)
//! ```
//!
//! - [`guard`]: every peer connection passes a frame-checking relay, because `zeromq` 0.7 would
//!   otherwise buffer (or abort on) whatever frame length a peer announces.
//! - [`subscriber`] / [`bind`]: the two ways batches arrive.
//! - [`mailbox`] / [`workers`]: bounded per-endpoint queues drained fairly by a small pool.
//! - [`sequencer`]: ordering, gap and restart handling, replay merge (pure).
//! - [`replay`]: the replay client. [`metrics`]: counters and gauges.
//!
//! The seam for the binary: [`KvEvents::start_for`] with the server's [`crate::Ingestion`] (pool
//! views in, each member's `Live` events state out), or [`KvEvents::start`] with a `watch` of
//! anything implementing [`KvSourceView`] (then read states with [`KvEventsHandle::state`]);
//! [`KvEvents::join`] after the shutdown token fired. Flags: [`KvEventsArgs`]. A [`Hold`] keeps
//! ingestion from opening any endpoint until an index bootstrap has left its [`Anchors`].

mod anchors;
mod batch;
mod bind;
mod config;
mod guard;
mod hold;
mod ingestion;
mod mailbox;
mod manager;
mod metrics;
mod replay;
mod sequencer;
mod subscriber;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use kvpick_scheduler::EventsState;
use kvpick_scheduler::{EndpointId, KvIndex};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use anchors::{Anchor, Anchors};
pub use config::{
    DEFAULT_PUBLISHER_PORT, KvEventsArgs, KvEventsConfig, parse_tcp_address, parse_tier_weights,
};
pub use hold::{Hold, Release, hold};
pub use metrics::{DropReason, EndpointStats, describe as describe_metrics};

use crate::error::Error;
use guard::Limits;
use ingestion::StateSink;
use metrics::IngestMetrics;
use replay::ReplayBounds;

/// One endpoint as ingestion needs it. (Discovery's own types implement [`KvSourceView`] to
/// produce these.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvSource {
    /// The dense id the index knows it by.
    pub endpoint: EndpointId,
    /// `ip:port` the gateway sends requests to; its IP is what bind-mode topics name.
    pub address: SocketAddr,
    /// The base model it serves (the cache partition of blocks stored without a LoRA name).
    pub model: Arc<str>,
    /// Its KV-event publisher, `tcp://ip[:port]` (connect mode); without a port, 5557 + rank.
    pub kv_events: Option<String>,
    /// Its replay endpoint, `tcp://ip:port`.
    pub kv_replay: Option<String>,
    /// Its data-parallel rank within its pod (0 without data parallelism).
    pub rank: u32,
}

impl KvSource {
    /// The publisher to connect to, if any (an explicit address, else the configured port).
    fn publisher(&self, config: &KvEventsConfig) -> Option<SocketAddr> {
        let default = port_plus(DEFAULT_PUBLISHER_PORT, self.rank);
        self.resolve(self.kv_events.as_deref(), default, config.publisher_port)
    }

    /// The replay endpoint, if any.
    fn replay(&self, config: &KvEventsConfig) -> Option<SocketAddr> {
        self.resolve(self.kv_replay.as_deref(), None, config.replay_port)
    }

    fn resolve(
        &self,
        url: Option<&str>,
        default: Option<u16>,
        port: Option<u16>,
    ) -> Option<SocketAddr> {
        match url {
            Some(url) => match parse_tcp_address(url, default) {
                Ok(addr) => Some(addr),
                Err(e) => {
                    tracing::warn!(endpoint = %self.address, error = %e, "ignoring KV-event address");
                    None
                }
            },
            None => Some(SocketAddr::new(
                self.address.ip(),
                port_plus(port?, self.rank)?,
            )),
        }
    }
}

fn port_plus(port: u16, rank: u32) -> Option<u16> {
    u16::try_from(u32::from(port) + rank).ok()
}

/// Something that lists the endpoints to ingest from: the endpoint set's snapshot type.
pub trait KvSourceView {
    /// Every endpoint now, ids unique.
    fn kv_sources(&self) -> Vec<KvSource>;
}

impl KvSourceView for [KvSource] {
    fn kv_sources(&self) -> Vec<KvSource> {
        self.to_vec()
    }
}

impl KvSourceView for Vec<KvSource> {
    fn kv_sources(&self) -> Vec<KvSource> {
        self.clone()
    }
}

impl<T: KvSourceView + ?Sized> KvSourceView for Arc<T> {
    fn kv_sources(&self) -> Vec<KvSource> {
        T::kv_sources(self)
    }
}

/// Each endpoint's [`EventsState`], lock-free, indexed by id; changes go to the sink, if any.
#[derive(Debug)]
struct StateTable {
    states: Box<[AtomicU8]>,
    sink: Option<StateSink>,
}

impl StateTable {
    fn new(sink: Option<StateSink>) -> Self {
        Self {
            states: (0..EndpointId::MAX).map(|_| AtomicU8::new(0)).collect(),
            sink,
        }
    }

    fn set(&self, id: EndpointId, state: EventsState) {
        let v = match state {
            EventsState::Absent => 0,
            EventsState::Stale => 1,
            EventsState::Live => 2,
        };
        let Some(slot) = self.states.get(id.index()) else {
            return;
        };
        if slot.swap(v, Ordering::Relaxed) != v
            && let Some(sink) = &self.sink
        {
            sink.call(id, state);
        }
    }

    fn get(&self, id: EndpointId) -> EventsState {
        match self
            .states
            .get(id.index())
            .map(|s| s.load(Ordering::Relaxed))
        {
            Some(2) => EventsState::Live,
            Some(1) => EventsState::Stale,
            _ => EventsState::Absent,
        }
    }
}

/// What every ingestion task shares.
#[derive(Debug)]
struct Shared {
    config: KvEventsConfig,
    index: Arc<KvIndex>,
    anchors: Arc<Anchors>,
    states: StateTable,
    metrics: IngestMetrics,
    replay_slots: Semaphore,
    /// Payload bytes of batches queued, held and being replayed, over all endpoints.
    budget: Arc<crate::budget::Part>,
}

impl Shared {
    fn limits(&self) -> Limits {
        Limits::new(self.config.max_message_bytes)
    }

    fn replay_bounds(&self) -> ReplayBounds {
        ReplayBounds {
            connect_timeout: self.config.connect_timeout,
            timeout: self.config.replay_timeout,
            max_bytes: self.config.max_replay_bytes,
            limits: self.limits(),
            budget: Arc::clone(&self.budget),
        }
    }
}

/// Read access to ingestion's state, for scheduling, health and tests. Cheap to clone.
#[derive(Clone, Debug)]
pub struct KvEventsHandle {
    shared: Arc<Shared>,
}

impl KvEventsHandle {
    /// Whether `endpoint`'s prefix scores can be trusted now (Absent for unknown endpoints).
    pub fn state(&self, endpoint: EndpointId) -> EventsState {
        self.shared.states.get(endpoint)
    }

    /// `endpoint`'s counters, while it is known.
    pub fn endpoint_stats(&self, endpoint: EndpointId) -> Option<EndpointStats> {
        self.shared.metrics.endpoint(endpoint)
    }

    /// Batches and blocks applied, summed over the endpoints known now.
    pub fn totals(&self) -> EndpointStats {
        self.shared.metrics.total()
    }

    /// Messages dropped for `reason` since start.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.shared.metrics.dropped_count(reason)
    }
}

/// How the picker's ingestion starts, beyond [`KvEvents::start`]'s.
struct Start {
    anchors: Arc<Anchors>,
    sink: Option<StateSink>,
    hold: Option<Hold>,
}

/// Running ingestion.
#[derive(Debug)]
pub struct KvEvents {
    handle: KvEventsHandle,
    bound: Vec<SocketAddr>,
    tasks: JoinSet<()>,
}

impl KvEvents {
    /// Binds (bind mode), then runs ingestion for the endpoints `sources` lists, following its
    /// changes, until `shutdown` fires. Fails only on configuration and bind errors. `V` is the
    /// endpoint set's snapshot type, e.g. `Vec<KvSource>` or `Arc<PoolView>`.
    pub async fn start<V>(
        config: KvEventsConfig,
        index: Arc<KvIndex>,
        sources: watch::Receiver<V>,
        shutdown: CancellationToken,
    ) -> Result<Self, Error>
    where
        V: KvSourceView + Send + Sync + 'static,
    {
        let start = Start {
            anchors: Arc::default(),
            sink: None,
            hold: None,
        };
        Self::start_with(config, index, sources, shutdown, start).await
    }

    async fn start_with<V>(
        config: KvEventsConfig,
        index: Arc<KvIndex>,
        sources: watch::Receiver<V>,
        shutdown: CancellationToken,
        start: Start,
    ) -> Result<Self, Error>
    where
        V: KvSourceView + Send + Sync + 'static,
    {
        config.validate()?;
        let shared = Arc::new(Shared {
            replay_slots: Semaphore::new(config.max_replays_in_flight),
            budget: crate::budget::Part::new("kv_event_bytes", config.budget_bytes),
            config,
            index,
            anchors: start.anchors,
            states: StateTable::new(start.sink),
            metrics: IngestMetrics::default(),
        });
        let mut tasks = JoinSet::new();
        let routes = bind::SharedRoutes::default();
        let bound = bind::start(&shared, &routes, &mut tasks, &shutdown).await?;
        let manager = manager::Manager::new(Arc::clone(&shared), routes, &mut tasks, &shutdown);
        tasks.spawn(manager.run(sources, shutdown, start.hold));
        Ok(Self {
            handle: KvEventsHandle { shared },
            bound,
            tasks,
        })
    }

    /// The handle for state and counters.
    pub fn handle(&self) -> KvEventsHandle {
        self.handle.clone()
    }

    /// Bind mode: the addresses listened on, one per rank port (ports resolved).
    pub fn bound(&self) -> &[SocketAddr] {
        &self.bound
    }

    /// Waits for every task to end (after the shutdown token fired).
    pub async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(kv_events: Option<&str>, kv_replay: Option<&str>, rank: u32) -> KvSource {
        KvSource {
            endpoint: EndpointId::new(0).unwrap_or_else(|| unreachable!()),
            address: SocketAddr::from(([10, 0, 0, 5], 8000 + rank as u16)),
            model: "m".into(),
            kv_events: kv_events.map(String::from),
            kv_replay: kv_replay.map(String::from),
            rank,
        }
    }

    #[test]
    fn publisher_and_replay_addresses() {
        let none = KvEventsConfig::default();
        let ports = KvEventsConfig {
            publisher_port: Some(6000),
            replay_port: Some(7000),
            ..KvEventsConfig::default()
        };
        let addr = |s: &str| s.parse::<SocketAddr>().ok();
        // Explicit addresses win; a missing port is vLLM's default plus the rank.
        let explicit = src(Some("tcp://10.0.0.9:5600"), Some("tcp://10.0.0.9:5700"), 2);
        assert_eq!(explicit.publisher(&ports), addr("10.0.0.9:5600"));
        assert_eq!(explicit.replay(&ports), addr("10.0.0.9:5700"));
        assert_eq!(
            src(Some("tcp://10.0.0.9"), None, 2).publisher(&none),
            addr("10.0.0.9:5559")
        );
        // Configured ports apply to the endpoint's IP, offset by its rank.
        assert_eq!(src(None, None, 3).publisher(&ports), addr("10.0.0.5:6003"));
        assert_eq!(src(None, None, 3).replay(&ports), addr("10.0.0.5:7003"));
        assert_eq!(src(None, None, 0).publisher(&none), None);
        assert_eq!(
            src(Some("tcp://pod-name:1"), None, 0).publisher(&none),
            None
        );
        assert_eq!(src(None, Some("tcp://10.0.0.9"), 0).replay(&none), None);
    }

    #[test]
    fn states_round_trip() {
        let t = StateTable::new(None);
        let id = EndpointId::new(EndpointId::MAX as u32 - 1).unwrap_or_else(|| unreachable!());
        assert_eq!(t.get(id), EventsState::Absent);
        for s in [EventsState::Live, EventsState::Stale, EventsState::Absent] {
            t.set(id, s);
            assert_eq!(t.get(id), s);
        }
    }
}
