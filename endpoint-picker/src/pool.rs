//! The live endpoint pool: who the endpoints are (from discovery), their ids, and what is known of
//! them now (scraped signals, KV-event state).
//!
//! Readers take an `Arc<PoolView>` snapshot (one `watch` borrow) and read each member's latest
//! signals through its [`Live`] cell, so a scrape never rebuilds the view and a request never waits
//! on discovery. The `watch` channel of views is also the seam for the KV-event subscriber manager
//! ([`Pool::subscribe`]).
//!
//! Removal order matters for the index: a leaving endpoint's entries are cleared at once, its id is
//! held back for [`DRAIN_GRACE`] (so a subscriber still finishing a batch cannot write under an id
//! that already names someone else), cleared again, and only then released.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use kvpick_scheduler::EventsState;
use kvpick_scheduler::pods::EndpointIds;
use kvpick_scheduler::{Endpoint, EndpointId, KvIndex, PodSignals, Timestamp};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::discovery::{Discovered, EndpointSpec};
use crate::error::Error;

/// How long a removed endpoint's id stays reserved before reuse.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What is known of one endpoint now; shared by the scraper (writer) and requests (readers).
#[derive(Debug)]
pub struct Live {
    signals: RwLock<Option<Arc<PodSignals>>>,
    events: AtomicU8,
    /// Until when (ms since the clock's epoch) the endpoint is avoided after answering a 5xx;
    /// 0 = not failing. Passive health: a pod that fails requests while its `/metrics` still
    /// looks healthy (restarting, overloaded engine) stops receiving traffic at once.
    failing_until_ms: AtomicU64,
}

impl Live {
    fn new(events: EventsState) -> Self {
        Self {
            signals: RwLock::new(None),
            events: AtomicU8::new(events_code(events)),
            failing_until_ms: AtomicU64::new(0),
        }
    }

    /// Avoids the endpoint until `until` (a 5xx answer was seen).
    pub fn mark_failing(&self, until: Timestamp) {
        let ms = u64::try_from(until.since_epoch().as_millis()).unwrap_or(u64::MAX);
        self.failing_until_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Whether the endpoint is in its failure cool-down at `now`.
    pub fn failing(&self, now: Timestamp) -> bool {
        let until = self.failing_until_ms.load(Ordering::Relaxed);
        until != 0 && u128::from(until) > now.since_epoch().as_millis()
    }

    /// The latest scraped signals, if any scrape has succeeded yet.
    pub fn signals(&self) -> Option<Arc<PodSignals>> {
        self.signals.read().clone()
    }

    /// Records a successful scrape.
    pub fn set_signals(&self, signals: PodSignals) {
        *self.signals.write() = Some(Arc::new(signals));
    }

    /// Whether the endpoint's KV events can be trusted (set by the KV-event subscriber).
    pub fn events(&self) -> EventsState {
        match self.events.load(Ordering::Relaxed) {
            0 => EventsState::Live,
            1 => EventsState::Stale,
            _ => EventsState::Absent,
        }
    }

    /// Updates the KV-event state.
    pub fn set_events(&self, state: EventsState) {
        self.events.store(events_code(state), Ordering::Relaxed);
    }
}

fn events_code(state: EventsState) -> u8 {
    match state {
        EventsState::Live => 0,
        EventsState::Stale => 1,
        EventsState::Absent => 2,
    }
}

/// Whether an endpoint's signals are recent enough to trust.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Scraped within the staleness threshold.
    Fresh,
    /// Last scraped longer ago than the threshold (or its scrapes fail).
    Stale,
    /// Never scraped successfully.
    Unknown,
}

/// One endpoint of a view.
#[derive(Clone, Debug)]
pub struct Member {
    /// Identity, as the scheduler knows it.
    pub endpoint: Endpoint,
    /// What discovery said about it.
    pub spec: Arc<EndpointSpec>,
    /// What is known of it now.
    pub live: Arc<Live>,
}

impl Member {
    /// Whether its signals at `now` are younger than `threshold`.
    pub fn freshness(&self, now: Timestamp, threshold: Duration) -> Freshness {
        match self.live.signals() {
            None => Freshness::Unknown,
            Some(s) if s.age(now) <= threshold => Freshness::Fresh,
            Some(_) => Freshness::Stale,
        }
    }
}

/// An immutable snapshot of the pool.
#[derive(Debug, Default)]
pub struct PoolView {
    /// Bumped on every change.
    pub generation: u64,
    /// Members in id order.
    pub members: Vec<Member>,
    by_addr: HashMap<SocketAddr, usize>,
}

impl PoolView {
    fn new(generation: u64, mut members: Vec<Member>) -> Self {
        members.sort_by_key(|m| m.endpoint.id);
        let by_addr = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.endpoint.address, i))
            .collect();
        Self {
            generation,
            members,
            by_addr,
        }
    }

    /// The member at `address`.
    pub fn by_address(&self, address: &SocketAddr) -> Option<&Member> {
        self.by_addr.get(address).map(|&i| &self.members[i])
    }

    /// The member with `id`.
    pub fn by_id(&self, id: EndpointId) -> Option<&Member> {
        self.members
            .binary_search_by_key(&id, |m| m.endpoint.id)
            .ok()
            .map(|i| &self.members[i])
    }
}

/// What one reconcile changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolChange {
    /// Endpoints that joined.
    pub added: Vec<EndpointId>,
    /// Endpoints that left (ids held back for [`DRAIN_GRACE`]).
    pub removed: Vec<EndpointId>,
    /// Endpoints whose description changed (labels, URLs, model).
    pub updated: Vec<EndpointId>,
}

impl PoolChange {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.updated.is_empty()
    }
}

#[derive(Debug, Default)]
struct Ids {
    alloc: EndpointIds,
    draining: Vec<(EndpointId, Timestamp)>,
}

/// The pool: reconciles discovery into a published view.
#[derive(Debug)]
pub struct Pool {
    index: Arc<KvIndex>,
    clock: Clock,
    ids: Mutex<Ids>,
    tx: watch::Sender<Arc<PoolView>>,
}

impl Pool {
    /// An empty pool whose leaving endpoints are cleared from `index`.
    pub fn new(index: Arc<KvIndex>, clock: Clock) -> Self {
        Self {
            index,
            clock,
            ids: Mutex::new(Ids::default()),
            tx: watch::Sender::new(Arc::new(PoolView::default())),
        }
    }

    /// The current view.
    pub fn view(&self) -> Arc<PoolView> {
        self.tx.borrow().clone()
    }

    /// Views as they change (the KV-event subscriber manager's input).
    pub fn subscribe(&self) -> watch::Receiver<Arc<PoolView>> {
        self.tx.subscribe()
    }

    /// Makes the pool match `found`: new addresses get ids, gone ones are cleared from the index
    /// and drained, changed ones keep their id (and lose their index entries if the model changed).
    pub fn reconcile(&self, found: &Discovered) -> Result<PoolChange, Error> {
        let mut ids = self.ids.lock();
        let old = self.view();
        let mut change = PoolChange::default();
        let mut members = Vec::with_capacity(found.endpoints.len());
        for spec in &found.endpoints {
            match old.by_address(&spec.address) {
                Some(m) if *m.spec == *spec => members.push(m.clone()),
                Some(m) => {
                    if m.spec.model != spec.model {
                        self.index.clear_endpoint(m.endpoint.id);
                    }
                    change.updated.push(m.endpoint.id);
                    members.push(Member {
                        endpoint: endpoint(m.endpoint.id, spec),
                        spec: Arc::new(spec.clone()),
                        live: m.live.clone(),
                    });
                }
                None => {
                    let id = ids.alloc.allocate().ok_or(Error::TooManyEndpoints {
                        max: EndpointId::MAX,
                    })?;
                    change.added.push(id);
                    let events = if spec.kv_events.is_some() {
                        EventsState::Stale
                    } else {
                        EventsState::Absent
                    };
                    members.push(Member {
                        endpoint: endpoint(id, spec),
                        spec: Arc::new(spec.clone()),
                        live: Arc::new(Live::new(events)),
                    });
                }
            }
        }
        let now = self.clock.now();
        for m in &old.members {
            if !found
                .endpoints
                .iter()
                .any(|s| s.address == m.endpoint.address)
            {
                self.index.clear_endpoint(m.endpoint.id);
                ids.draining.push((m.endpoint.id, now));
                change.removed.push(m.endpoint.id);
            }
        }
        if !change.is_empty() {
            self.tx
                .send_replace(Arc::new(PoolView::new(old.generation + 1, members)));
        }
        Ok(change)
    }

    /// Releases ids drained for longer than [`DRAIN_GRACE`], clearing their entries once more.
    pub fn release_drained(&self) {
        let now = self.clock.now();
        let mut ids = self.ids.lock();
        let Ids { alloc, draining } = &mut *ids;
        draining.retain(|&(id, since)| {
            if now - since < DRAIN_GRACE {
                return true;
            }
            self.index.clear_endpoint(id);
            alloc.release(id);
            false
        });
    }
}

fn endpoint(id: EndpointId, spec: &EndpointSpec) -> Endpoint {
    Endpoint {
        id,
        address: spec.address,
        model: spec.model.clone(),
        labels: spec.labels.clone(),
        rank: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvpick_scheduler::IndexConfig;

    fn spec(addr: &str, model: &str) -> EndpointSpec {
        EndpointSpec::serving(addr.parse().unwrap(), model)
    }

    fn found(specs: &[EndpointSpec]) -> Discovered {
        Discovered {
            block_size: None,
            endpoints: specs.to_vec(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ids_are_stable_and_drained_before_reuse() {
        let pool = Pool::new(Arc::new(KvIndex::new(IndexConfig::default())), Clock::new());
        let (a, b) = (spec("10.0.0.1:80", "m"), spec("10.0.0.2:80", "m"));
        let c = pool.reconcile(&found(&[a.clone(), b.clone()])).unwrap();
        assert_eq!(c.added.len(), 2);
        let id_b = pool.view().by_address(&b.address).unwrap().endpoint.id;
        assert!(
            pool.reconcile(&found(&[a.clone(), b.clone()]))
                .unwrap()
                .is_empty()
        );

        let c = pool.reconcile(&found(std::slice::from_ref(&a))).unwrap();
        assert_eq!(c.removed, vec![id_b]);
        let n = spec("10.0.0.3:80", "m");
        pool.reconcile(&found(&[a.clone(), n.clone()])).unwrap();
        let id_n = pool.view().by_address(&n.address).unwrap().endpoint.id;
        assert_ne!(id_n, id_b, "a draining id is not reused");

        tokio::time::advance(DRAIN_GRACE).await;
        pool.release_drained();
        let m = spec("10.0.0.4:80", "m");
        pool.reconcile(&found(&[a, n, m.clone()])).unwrap();
        assert_eq!(
            pool.view().by_address(&m.address).unwrap().endpoint.id,
            id_b
        );
    }

    #[tokio::test(start_paused = true)]
    async fn updates_keep_id_and_live_state() {
        let pool = Pool::new(Arc::new(KvIndex::new(IndexConfig::default())), Clock::new());
        let a = spec("10.0.0.1:80", "m");
        pool.reconcile(&found(std::slice::from_ref(&a))).unwrap();
        let before = pool.view().members[0].clone();
        before.live.set_signals(PodSignals::idle(Timestamp::ZERO));
        let mut a2 = a.clone();
        a2.labels.insert("role".into(), "decode".into());
        let c = pool.reconcile(&found(&[a2])).unwrap();
        assert_eq!(c.updated, vec![before.endpoint.id]);
        let after = pool.view().members[0].clone();
        assert_eq!(after.endpoint.labels["role"], "decode");
        assert!(after.live.signals().is_some());
        assert_eq!(pool.view().generation, 2);
    }
}
