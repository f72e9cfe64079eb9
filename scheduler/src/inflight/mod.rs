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
//! Bounded: at most `max_reservations` at once (the oldest goes first when full), and per-endpoint
//! state is a few counters plus that endpoint's prefill queue. Pure: callers pass `now`.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;

use crate::pods::{EndpointId, PodSignals};
use crate::time::Timestamp;

/// What one request is expected to cost the endpoint it goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Of those, tokens expected to hit the endpoint's prefix cache (tier-weighted).
    pub cached_tokens: u32,
    /// Tokens it is expected to generate (`max_tokens`, or a configured expectation).
    pub output_tokens: u32,
}

impl Cost {
    /// Prompt tokens the endpoint must compute: at least one, as vLLM always computes one.
    pub fn uncached_tokens(&self) -> u32 {
        self.prompt_tokens.saturating_sub(self.cached_tokens).max(1)
    }

    /// KV tokens it holds while decoding, on average over its decode (prompt + half its output).
    fn mean_context(&self) -> u64 {
        u64::from(self.prompt_tokens) + u64::from(self.output_tokens) / 2
    }

    /// KV tokens it adds to the endpoint's cache at its peak: its cached prefix is shared with
    /// whoever holds it, the rest of the prompt and its output are its own.
    pub fn kv_tokens(&self) -> u64 {
        u64::from(self.uncached_tokens()) + u64::from(self.output_tokens)
    }
}

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
}

impl Default for InFlightConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(600),
            max_reservations: 1 << 16,
        }
    }
}

/// One endpoint's load as the accounting sees it at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EndpointLoad {
    /// Reserved requests not yet past their first token.
    pub prefill_requests: u32,
    /// Their uncached prompt tokens, summed.
    pub prefill_tokens: u64,
    /// Uncached tokens of the oldest of them (the one the engine is most likely computing).
    pub head_tokens: u64,
    /// How long the oldest has been the one computed (since it was picked, or since the previous
    /// one's first token).
    pub head_elapsed: Duration,
    /// Reserved requests decoding.
    pub decode_requests: u32,
    /// Their mean KV context (prompt + half the output), summed.
    pub decode_context: u64,
    /// KV tokens all reservations add at their peak (uncached prompt + output), summed.
    pub kv_tokens: u64,
    /// Waiting requests the last scrape showed beyond the reservations (other pickers' traffic).
    pub external_waiting: u32,
    /// Running requests the last scrape showed beyond the reservations.
    pub external_running: u32,
    /// Mean uncached prompt tokens of recent reservations anywhere: the guess for external work.
    pub typical_uncached: u64,
    /// Mean context of recent reservations anywhere.
    pub typical_context: u64,
    /// Picks per second over the whole pool, averaged over the last [`RATE_WINDOW`].
    pub pick_rate: f64,
}

/// The time constant of the pick-rate average: long enough that a burst reads as a burst (a
/// few picks over the window), not as a sustained rate.
pub const RATE_WINDOW: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
struct Entry {
    endpoint: EndpointId,
    cost: Cost,
    at: Timestamp,
    decoding: bool,
}

#[derive(Clone, Debug, Default)]
struct PerEndpoint {
    /// Prefill reservations by id (ids grow with time: the first is the oldest).
    prefill: BTreeMap<u64, u32>,
    prefill_tokens: u64,
    head_since: Timestamp,
    decode_requests: u32,
    decode_context: u64,
    kv_tokens: u64,
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
            state: Mutex::default(),
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
        e.prefill.insert(id, uncached);
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
        if let Some(uncached) = e.prefill.remove(&id.0) {
            e.prefill_tokens -= u64::from(uncached);
        }
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
    /// `signals.scraped_at` is external load, kept until the next scrape. A scrape already
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
        let decode = e.decode_requests;
        let total = (signals.waiting + signals.running).saturating_sub(before + decode);
        e.external_waiting = signals.waiting.saturating_sub(before).min(total);
        e.external_running = total - e.external_waiting;
    }

    /// `endpoint`'s load at `now`.
    pub fn load(&self, endpoint: EndpointId, now: Timestamp) -> EndpointLoad {
        let s = self.state.lock();
        s.load(endpoint, now)
    }

    /// Each of `endpoints`' load at `now`, in order, under one lock.
    pub fn loads(
        &self,
        endpoints: impl Iterator<Item = EndpointId>,
        now: Timestamp,
    ) -> Vec<EndpointLoad> {
        let s = self.state.lock();
        endpoints.map(|e| s.load(e, now)).collect()
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
        } else if let Some(uncached) = e.prefill.remove(&id) {
            e.prefill_tokens -= u64::from(uncached);
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

    fn load(&self, endpoint: EndpointId, now: Timestamp) -> EndpointLoad {
        let typical_uncached = self.typical_uncached.round() as u64;
        let typical_context = self.typical_context.round() as u64;
        let pick_rate = self.rate_now(now);
        let Some(e) = self.endpoints.get(endpoint.index()) else {
            return EndpointLoad {
                typical_uncached,
                typical_context,
                pick_rate,
                ..EndpointLoad::default()
            };
        };
        EndpointLoad {
            prefill_requests: e.prefill.len() as u32,
            prefill_tokens: e.prefill_tokens,
            head_tokens: e
                .prefill
                .first_key_value()
                .map_or(0, |(_, &t)| u64::from(t)),
            head_elapsed: now.saturating_since(e.head_since),
            decode_requests: e.decode_requests,
            decode_context: e.decode_context,
            kv_tokens: e.kv_tokens,
            external_waiting: e.external_waiting,
            external_running: e.external_running,
            typical_uncached,
            typical_context,
            pick_rate,
        }
    }
}

#[cfg(test)]
mod tests;
