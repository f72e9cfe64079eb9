//! Flow control: where requests wait while the pool is saturated, and the order they leave in.
//!
//! The pure half of kvpick's flow control; the endpoint picker owns the waiting streams and the
//! dispatch loop. Requests queue by priority band, highest first. Within a band, flows (one per
//! fairness id, the `x-gateway-inference-fairness-id` header) take turns one request at a time,
//! each flow first in, first out, so one tenant's burst cannot starve another's trickle. The
//! queue holds at most `max_requests` requests and `max_bytes` of request bodies: a request that
//! does not fit displaces requests of strictly lower bands (the newest of the longest flow
//! first) when that makes room, else it is refused. Nobody waits longer than `ttl`.
//!
//! Requests wait for one of two things ([`Wait`]): room in the pool, or an endpoint predicted to
//! meet their latency objectives ([`crate::SloAction::Queue`]). The second kind is let out like
//! the first (each look costs a dispatch, which paces the looks to the pool's room) and, when it
//! is still predicted to miss, queued again at the back of its flow with its first queueing time,
//! so its `ttl` runs once; past it, displaced, or refused a place, it goes best-effort instead of
//! being refused: it is not sheddable, and it is not waiting for room.
//!
//! How fast the queue drains is [`Pacer`]'s: the room the last scrapes show
//! ([`crate::PoolSaturation::slots`]) less what was dispatched since those scrapes, so a burst
//! of capacity is not answered with a stampede before the pods' signals catch up. [`FlowGate`]
//! puts queue and pacer together into the two decisions both the endpoint picker and the
//! simulator make: whether an arriving request goes at once, and what a dispatch round lets out.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use crate::time::Timestamp;

mod gate;
mod wait;
pub use gate::{Arrival, FlowGate, Pacer};
pub use wait::{Leaving, Wait};

/// The `flowControl` section of the picker config; on with the `flowControl` feature gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowConfig {
    /// Whether requests wait in kvpick while the pool is saturated. Off: the legacy rule
    /// (sheddable requests get 429, the rest are scheduled at once).
    pub enabled: bool,
    /// Requests that may wait at once (`maxRequests`).
    pub max_requests: usize,
    /// Request-body bytes that may wait at once (`maxBytes`).
    pub max_bytes: u64,
    /// Longest wait before a request gets 429 (`queueTTL`).
    pub ttl: Duration,
}

impl FlowConfig {
    /// Whether a request no endpoint is predicted to serve within its objectives may wait
    /// (more) for one at `now`: flow control is on and it has not waited `ttl` since it first
    /// queued for them at `since` (`None`: it has not yet).
    pub fn may_wait_for_objective(&self, since: Option<Timestamp>, now: Timestamp) -> bool {
        self.enabled && since.is_none_or(|s| now - s < self.ttl)
    }
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_requests: 1024,
            max_bytes: 256 << 20,
            ttl: Duration::from_secs(30),
        }
    }
}

/// A fairness id, as far as kvpick tells flows apart: the first [`FlowId::MAX_LEN`] bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowId(Box<str>);

impl FlowId {
    /// Longer ids are cut here (at a character boundary): ids are labels, not payloads.
    pub const MAX_LEN: usize = 128;

    /// The flow of a request with this fairness id (`None`: the default flow).
    pub fn new(id: Option<&str>) -> Self {
        let id = id.unwrap_or_default();
        let mut end = id.len().min(Self::MAX_LEN);
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        Self(id[..end].into())
    }
}

/// A waiting request's place in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

/// Why a request cannot wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Larger than the whole queue may hold.
    TooLarge,
    /// No room, and nothing of a lower priority to displace.
    Full,
}

/// A request let into the queue, and what it displaced to get in.
#[derive(Debug)]
pub struct Queued<T> {
    /// Its place, to [`FlowQueue::cancel`] it.
    pub ticket: Ticket,
    /// Requests of lower bands pushed out to make room.
    pub displaced: Leaving<T>,
}

/// A request leaving the queue to be scheduled.
#[derive(Debug, PartialEq)]
pub struct Dispatched<T> {
    /// What was queued.
    pub value: T,
    /// How long it waited (since it first queued).
    pub waited: Duration,
    /// What it waited for.
    pub wait: Wait,
}

#[derive(Debug)]
struct Waiting<T> {
    value: T,
    priority: i32,
    flow: FlowId,
    bytes: u64,
    since: Timestamp,
    wait: Wait,
}

/// One priority band: its flows' queues, and whose turn is next.
#[derive(Debug, Default)]
struct Band {
    turns: VecDeque<FlowId>,
    flows: HashMap<FlowId, VecDeque<Ticket>>,
    len: usize,
    bytes: u64,
}

impl Band {
    /// Takes `ticket` out of `flow`'s queue, ending the flow's turns when it empties.
    fn take(&mut self, flow: &FlowId, ticket: Ticket, bytes: u64) {
        let Some(q) = self.flows.get_mut(flow) else {
            return;
        };
        if let Some(i) = q.iter().position(|t| *t == ticket) {
            q.remove(i);
            self.len -= 1;
            self.bytes -= bytes;
        }
        if q.is_empty() {
            self.flows.remove(flow);
            self.turns.retain(|f| f != flow);
        }
    }
}

/// The waiting requests, by band and flow. `T` is what the caller needs to wake a request.
#[derive(Debug)]
pub struct FlowQueue<T> {
    config: FlowConfig,
    bands: BTreeMap<Reverse<i32>, Band>,
    waiting: HashMap<Ticket, Waiting<T>>,
    bytes: u64,
    /// Of the waiting, those waiting for their objectives.
    for_objective: usize,
    next: u64,
}

impl<T> FlowQueue<T> {
    /// An empty queue with `config`'s limits.
    pub fn new(config: FlowConfig) -> Self {
        Self {
            config,
            bands: BTreeMap::new(),
            waiting: HashMap::new(),
            bytes: 0,
            for_objective: 0,
            next: 0,
        }
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Request-body bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Requests waiting for room (not for their objectives).
    pub fn waiting_for_room(&self) -> usize {
        self.waiting.len() - self.for_objective
    }

    /// Queues a request of `priority` in `flow`, `bytes` long, at `now`, to wait for room.
    pub fn push(
        &mut self,
        priority: i32,
        flow: FlowId,
        bytes: u64,
        value: T,
        now: Timestamp,
    ) -> Result<Queued<T>, Refusal> {
        self.push_for(Wait::Room, priority, flow, bytes, value, now)
    }

    /// Queues a request to wait for `wait`, at the back of its flow; its `ttl` runs from
    /// `since` (when it first queued: a request looked at and queued again keeps it).
    pub fn push_for(
        &mut self,
        wait: Wait,
        priority: i32,
        flow: FlowId,
        bytes: u64,
        value: T,
        since: Timestamp,
    ) -> Result<Queued<T>, Refusal> {
        if bytes > self.config.max_bytes || self.config.max_requests == 0 {
            return Err(Refusal::TooLarge);
        }
        let displaced = self.make_room(priority, bytes)?;
        let ticket = Ticket(self.next);
        self.next += 1;
        let band = self.bands.entry(Reverse(priority)).or_default();
        let q = band.flows.entry(flow.clone()).or_default();
        if q.is_empty() {
            band.turns.push_back(flow.clone());
        }
        q.push_back(ticket);
        band.len += 1;
        band.bytes += bytes;
        self.bytes += bytes;
        if wait == Wait::Objective {
            self.for_objective += 1;
        }
        self.waiting.insert(
            ticket,
            Waiting {
                value,
                priority,
                flow,
                bytes,
                since,
                wait,
            },
        );
        Ok(Queued { ticket, displaced })
    }

    /// Displaces requests of bands below `priority` until one more request of `bytes` fits.
    fn make_room(&mut self, priority: i32, bytes: u64) -> Result<Leaving<T>, Refusal> {
        let over = |len: usize, queued: u64, c: &FlowConfig| {
            len + 1 > c.max_requests || queued + bytes > c.max_bytes
        };
        let mut displaced = Leaving::default();
        if !over(self.len(), self.bytes, &self.config) {
            return Ok(displaced);
        }
        // Feasible only if displacing every lower request would do.
        let (lower_len, lower_bytes) = self
            .bands
            .range(Reverse(priority.saturating_sub(1))..)
            .fold((0, 0), |(n, b), (_, band)| (n + band.len, b + band.bytes));
        if priority == i32::MIN
            || over(
                self.len() - lower_len,
                self.bytes - lower_bytes,
                &self.config,
            )
        {
            return Err(Refusal::Full);
        }
        while over(self.len(), self.bytes, &self.config) {
            let Some(victim) = self.lowest_victim() else {
                break;
            };
            if let Some(w) = self.remove(victim) {
                displaced.push(w);
            }
        }
        Ok(displaced)
    }

    /// The newest request of the longest flow of the lowest band.
    fn lowest_victim(&self) -> Option<Ticket> {
        let (_, band) = self.bands.iter().next_back()?;
        let (_, q) = band.flows.iter().max_by_key(|(_, q)| q.len())?;
        q.back().copied()
    }

    fn remove(&mut self, ticket: Ticket) -> Option<Waiting<T>> {
        let w = self.waiting.remove(&ticket)?;
        self.bytes -= w.bytes;
        if w.wait == Wait::Objective {
            self.for_objective -= 1;
        }
        let key = Reverse(w.priority);
        if let Some(band) = self.bands.get_mut(&key) {
            band.take(&w.flow, ticket, w.bytes);
            if band.len == 0 {
                self.bands.remove(&key);
            }
        }
        Some(w)
    }

    /// Takes a request out (its client went away); `None` when it already left.
    pub fn cancel(&mut self, ticket: Ticket) -> Option<T> {
        self.remove(ticket).map(|w| w.value)
    }

    /// The next request to schedule: the highest band's next flow in turn, oldest first.
    pub fn pop(&mut self, now: Timestamp) -> Option<Dispatched<T>> {
        let (&key, band) = self.bands.iter_mut().next()?;
        let flow = band.turns.pop_front()?;
        let q = band.flows.get_mut(&flow)?;
        let ticket = q.pop_front()?;
        if q.is_empty() {
            band.flows.remove(&flow);
        } else {
            band.turns.push_back(flow);
        }
        let w = self.waiting.remove(&ticket)?;
        band.len -= 1;
        band.bytes -= w.bytes;
        if band.len == 0 {
            self.bands.remove(&key);
        }
        self.bytes -= w.bytes;
        if w.wait == Wait::Objective {
            self.for_objective -= 1;
        }
        Some(Dispatched {
            value: w.value,
            waited: now - w.since,
            wait: w.wait,
        })
    }

    /// Takes out every request that has waited `ttl` or longer at `now`. A flow is in order of
    /// first queueing but for requests queued again after a look, so all of it is checked.
    pub fn expire(&mut self, now: Timestamp) -> Leaving<T> {
        let ttl = self.config.ttl;
        let expired: Vec<Ticket> = self
            .bands
            .values()
            .flat_map(|b| b.flows.values())
            .flatten()
            .filter(|t| self.waiting.get(t).is_some_and(|w| now - w.since >= ttl))
            .copied()
            .collect();
        let mut out = Leaving::default();
        for t in expired {
            if let Some(w) = self.remove(t) {
                out.push(w);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
