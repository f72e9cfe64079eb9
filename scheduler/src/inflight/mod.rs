//! In-flight accounting: what the picker has sent to each endpoint and the endpoint has not yet
//! finished, so that the next pick sees it before any scrape does.
//!
//! Every pick reserves its cost on the chosen endpoint ([`InFlight::reserve`]): the prompt, the
//! tokens expected to hit the cache there (from the index lookup) and a decode slot with the
//! output it is expected to generate. The reservation is in *prefill* until its first token
//! ([`InFlight::first_token`]), then in *decode* until it ends ([`InFlight::release`]: response
//! end, client gone, error); reservations older than the TTL are dropped on the next call, so a
//! lost release costs at most that long. Scraped gauges are reconciled with it
//! ([`InFlight::reconcile`]): what the pod reports beyond the reservations made before the scrape
//! is *external* load (other pickers, requests sent before this one started), counted once.
//!
//! Other replicas of the picker may report their own totals ([`InFlight::fold_peer`],
//! [`peers`]): they count as reservations do, and a scrape folded in is external only beyond both
//! as they stood then, so a request a peer sent is counted once (give or take the requests
//! reported or ended between the scrape and its folding in).
//!
//! Bounded: at most `max_reservations` at once (the oldest goes first when full), and per-endpoint
//! state is a few counters plus that endpoint's prefill queue. Pure: callers pass `now`.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;

use crate::pods::{EndpointId, PodSignals};
use crate::time::Timestamp;

mod cost;
mod load;
pub mod peers;

pub use cost::Cost;
pub use load::{EndpointLoad, RATE_WINDOW};
use peers::Peers;
pub use peers::{InFlightTotals, PeerFold, PeerLimits, PeerReport, ReplicaId};

/// A reservation's handle, returned by a pick and given back to release it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId(u64);

impl ReservationId {
    /// The raw id (for logs).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Limits of the accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlightConfig {
    /// A reservation not released after this long is dropped (a lost end-of-stream).
    pub ttl: Duration,
    /// Reservations held at most; the oldest is dropped to make room.
    pub max_reservations: usize,
    /// How other replicas' reports are held.
    pub peers: PeerLimits,
}

impl Default for InFlightConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(600),
            max_reservations: 1 << 16,
            peers: PeerLimits::default(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    endpoint: EndpointId,
    cost: Cost,
    at: Timestamp,
    decoding: bool,
}

#[derive(Clone, Debug, Default)]
struct PerEndpoint {
    /// Prefill reservations by id (ids grow with time: the first is the oldest): uncached
    /// tokens and attention pairs.
    prefill: BTreeMap<u64, (u32, u64)>,
    prefill_tokens: u64,
    head_since: Timestamp,
    decode_requests: u32,
    decode_context: u64,
    kv_tokens: u64,
    /// What the last scrape showed beyond this replica's reservations and its peers' reports
    /// at the time it was folded in.
    external_waiting: u32,
    external_running: u32,
    /// `scraped_at` of the scrape last folded in.
    reconciled: Option<Timestamp>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    entries: BTreeMap<u64, Entry>,
    endpoints: Vec<PerEndpoint>,
    /// Exponential means over reservations (×1, f64 for smoothness).
    typical_uncached: f64,
    typical_context: f64,
    /// Exponentially decaying pick count / window (picks per second), as of `rate_at`.
    rate: f64,
    rate_at: Timestamp,
    peers: Peers,
}

/// The accounting, shared by every pick (`Send + Sync`).
#[derive(Debug, Default)]
pub struct InFlight {
    config: InFlightConfig,
    state: Mutex<State>,
}

/// Weight of a new reservation in the running means.
const MEAN_WEIGHT: f64 = 1.0 / 64.0;

impl InFlight {
    /// Empty accounting with `config`'s limits.
    pub fn new(config: InFlightConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State {
                peers: Peers::new(config.peers),
                ..State::default()
            }),
        }
    }

    /// Reserves `cost` on `endpoint` at `now`.
    pub fn reserve(&self, endpoint: EndpointId, cost: Cost, now: Timestamp) -> ReservationId {
        let mut s = self.state.lock();
        s.expire(now, self.config.ttl);
        while s.entries.len() >= self.config.max_reservations.max(1) {
            let Some((id, _)) = s.entries.first_key_value().map(|(k, v)| (*k, *v)) else {
                break;
            };
            s.remove(id);
        }
        let id = s.next;
        s.next += 1;
        let window = RATE_WINDOW.as_secs_f64();
        s.rate = s.rate_now(now) + 1.0 / window;
        s.rate_at = now;
        let uncached = cost.uncached_tokens();
        let first = s.typical_uncached == 0.0;
        let blend = |mean: f64, x: f64| {
            if first {
                x
            } else {
                mean + MEAN_WEIGHT * (x - mean)
            }
        };
        s.typical_uncached = blend(s.typical_uncached, f64::from(uncached));
        s.typical_context = blend(s.typical_context, cost.mean_context() as f64);
        let e = s.endpoint_mut(endpoint);
        if e.prefill.is_empty() {
            e.head_since = now;
        }
        let pairs = cost.attention_pairs();
        e.prefill.insert(id, (uncached, pairs));
        e.prefill_tokens += u64::from(uncached);
        e.kv_tokens += cost.kv_tokens();
        s.entries.insert(
            id,
            Entry {
                endpoint,
                cost,
                at: now,
                decoding: false,
            },
        );
        ReservationId(id)
    }

    /// The request produced its first token: its prefill is done, its decode slot stays.
    pub fn first_token(&self, id: ReservationId, now: Timestamp) {
        let mut s = self.state.lock();
        let Some(entry) = s.entries.get_mut(&id.0) else {
            return;
        };
        if entry.decoding {
            return;
        }
        entry.decoding = true;
        let entry = *entry;
        let e = s.endpoint_mut(entry.endpoint);
        e.take_prefill(id.0);
        e.head_since = now;
        e.decode_requests += 1;
        e.decode_context += entry.cost.mean_context();
    }

    /// The request ended (response end, client gone, error): everything it reserved is released.
    pub fn release(&self, id: ReservationId, now: Timestamp) {
        let mut s = self.state.lock();
        if let Some(endpoint) = s
            .entries
            .get(&id.0)
            .filter(|e| !e.decoding)
            .map(|e| e.endpoint)
        {
            s.endpoint_mut(endpoint).head_since = now;
        }
        s.remove(id.0);
    }

    /// Folds a scrape of `endpoint` in: what it reports beyond the reservations made before
    /// `signals.scraped_at` and the peers' reports held now is external load, kept until the
    /// next scrape (so fold a scrape in soon after it is taken, before later peer reports). A scrape already
    /// folded in (same `scraped_at`) is skipped, so callers may pass every snapshot they see.
    pub fn reconcile(&self, endpoint: EndpointId, signals: &PodSignals) {
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let e = s.endpoint_mut(endpoint);
        if e.reconciled == Some(signals.scraped_at) {
            return;
        }
        e.reconciled = Some(signals.scraped_at);
        let (entries, e) = (&s.entries, &mut s.endpoints[endpoint.index()]);
        let before = e
            .prefill
            .keys()
            .filter(|id| entries.get(id).is_some_and(|x| x.at <= signals.scraped_at))
            .count() as u32;
        // Peers' requests as last reported: those the scrape shows (bar the few reported or
        // ended within one round of it). Peers' later picks count on top of it.
        let peers = s.peers.on(endpoint);
        let explained = before + e.decode_requests + peers.requests();
        let total = (signals.waiting + signals.running).saturating_sub(explained);
        e.external_waiting = signals
            .waiting
            .saturating_sub(before + peers.prefill_requests)
            .min(total);
        e.external_running = total - e.external_waiting;
    }

    /// `endpoint`'s load at `now`.
    pub fn load(&self, endpoint: EndpointId, now: Timestamp) -> EndpointLoad {
        let mut s = self.state.lock();
        s.peers.expire(now);
        s.load(endpoint, now)
    }

    /// Each of `endpoints`' load at `now`, in order, under one lock.
    pub fn loads(
        &self,
        endpoints: impl Iterator<Item = EndpointId>,
        now: Timestamp,
    ) -> Vec<EndpointLoad> {
        let mut s = self.state.lock();
        s.peers.expire(now);
        endpoints.map(|e| s.load(e, now)).collect()
    }

    /// Counts `replica`'s `report` in place of its previous one, until it is older than the
    /// staleness bound ([`PeerLimits`]). Its values are clamped and merged ([`peers`]).
    pub fn fold_peer(&self, replica: &ReplicaId, report: PeerReport, now: Timestamp) -> PeerFold {
        self.state.lock().peers.fold(replica, report, now)
    }

    /// Holds peers' reports to `limits` from now on (the live side learns them from its flags
    /// after the scheduler is built).
    pub fn set_peer_limits(&self, limits: PeerLimits) {
        self.state.lock().peers.set_limits(limits);
    }

    /// Stops counting `replica`'s report (it said goodbye, or its store is gone).
    pub fn drop_peer(&self, replica: &ReplicaId) {
        self.state.lock().peers.remove(replica);
    }

    /// Replicas whose reports count at `now`.
    pub fn peers(&self, now: Timestamp) -> usize {
        let mut s = self.state.lock();
        s.peers.expire(now);
        s.peers.len()
    }

    /// This replica's own totals per endpoint at `now` (peers' left out), with its pick rate:
    /// what it publishes for the others to fold in. Endpoints it holds nothing on are left out.
    pub fn report(&self, now: Timestamp) -> PeerReport {
        let s = self.state.lock();
        let endpoints = s
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let totals = e.totals();
                let id = EndpointId::new(u32::try_from(i).ok()?)?;
                (!totals.is_zero()).then_some((id, totals))
            })
            .collect();
        PeerReport {
            as_of: now,
            pick_rate: s.rate_now(now),
            endpoints,
        }
    }

    /// Reservations held.
    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// Whether no reservation is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops reservations past the TTL at `now`.
    pub fn expire(&self, now: Timestamp) {
        self.state.lock().expire(now, self.config.ttl);
    }

    /// Forgets `endpoint` (it went away; its id may be reused).
    pub fn forget(&self, endpoint: EndpointId) {
        let mut s = self.state.lock();
        let ids: Vec<u64> = s
            .entries
            .iter()
            .filter(|(_, e)| e.endpoint == endpoint)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            s.remove(id);
        }
        if let Some(e) = s.endpoints.get_mut(endpoint.index()) {
            *e = PerEndpoint::default();
        }
        s.peers.forget(endpoint);
    }
}

impl PerEndpoint {
    /// This replica's reservations here, summed.
    fn totals(&self) -> InFlightTotals {
        InFlightTotals {
            prefill_requests: self.prefill.len() as u32,
            prefill_tokens: self.prefill_tokens,
            decode_requests: self.decode_requests,
            decode_context: self.decode_context,
            kv_tokens: self.kv_tokens,
        }
    }

    /// Removes prefill reservation `id`, if it is one.
    fn take_prefill(&mut self, id: u64) {
        if let Some((uncached, _)) = self.prefill.remove(&id) {
            self.prefill_tokens -= u64::from(uncached);
        }
    }
}

impl State {
    fn endpoint_mut(&mut self, endpoint: EndpointId) -> &mut PerEndpoint {
        let i = endpoint.index();
        if self.endpoints.len() <= i {
            self.endpoints.resize_with(i + 1, PerEndpoint::default);
        }
        &mut self.endpoints[i]
    }

    fn remove(&mut self, id: u64) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        let e = self.endpoint_mut(entry.endpoint);
        if entry.decoding {
            e.decode_requests -= 1;
            e.decode_context -= entry.cost.mean_context();
        } else {
            e.take_prefill(id);
        }
        e.kv_tokens -= entry.cost.kv_tokens();
    }

    fn expire(&mut self, now: Timestamp, ttl: Duration) {
        while let Some((&id, entry)) = self.entries.first_key_value() {
            if now.saturating_since(entry.at) <= ttl {
                break;
            }
            self.remove(id);
        }
    }

    fn rate_now(&self, now: Timestamp) -> f64 {
        let elapsed = now.saturating_since(self.rate_at).as_secs_f64();
        self.rate * (-elapsed / RATE_WINDOW.as_secs_f64()).exp()
    }
}

#[cfg(test)]
mod tests;
