//! Other picker replicas' in-flight load, folded in beside this replica's own reservations.
//!
//! Replicas behind one gateway each know only what they sent, so N of them herd onto the same
//! "best" pod N times between two scrapes. Each replica publishes its totals per endpoint
//! ([`super::InFlight::report`]) and folds in the others' ([`super::InFlight::fold_peer`]); the
//! latency model then sees them exactly as it sees local reservations (queued prefill, decode
//! batch, KV demand, pick rate). A report older than the staleness bound is not counted: a
//! replica that stops publishing (crashed, cut off) drops out after that long.
//!
//! Reports come from outside (a shared store): every value is clamped to what one replica could
//! hold on one endpoint, duplicates are merged, a report dated in the future counts as of now, and
//! at most `max_peers` replicas are held, so a corrupt or hostile report can neither overflow the
//! sums nor grow memory, and counts for at most the staleness bound.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::pods::EndpointId;
use crate::time::Timestamp;

/// A picker replica's name as its peers know it: 1 to [`ReplicaId::MAX_LEN`] bytes of ASCII
/// letters, digits and `.-_:` (a pod name, a host name, a random id).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaId(Arc<str>);

impl ReplicaId {
    /// The longest name accepted.
    pub const MAX_LEN: usize = 64;

    /// `None` unless `name` is a valid replica name.
    pub fn new(name: &str) -> Option<Self> {
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
        ok.then(|| Self(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "replica:{}", self.0)
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One replica's reservations on one endpoint, summed: what it publishes, and what the others
/// fold in ([`super::EndpointLoad`]'s fields of the same names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlightTotals {
    /// Reserved requests not yet past their first token.
    pub prefill_requests: u32,
    /// Their uncached prompt tokens.
    pub prefill_tokens: u64,
    /// Reserved requests decoding.
    pub decode_requests: u32,
    /// Their mean KV context, summed.
    pub decode_context: u64,
    /// KV tokens all of them add at their peak.
    pub kv_tokens: u64,
}

/// Requests one replica may claim on one endpoint (beyond any engine's queue and batch).
pub const MAX_PEER_REQUESTS: u32 = 1 << 16;
/// Tokens one request may account for (prompt or context): beyond any model's context window.
const MAX_REQUEST_TOKENS: u64 = 1 << 22;
/// Picks per second one replica may claim.
const MAX_PICK_RATE: f64 = 1e6;
/// Replicas held at most, whatever the config says: keeps every sum far from overflowing
/// (2^10 × 2^16 requests, 2^10 × 2^38 tokens).
const MAX_PEERS: usize = 1 << 10;

impl InFlightTotals {
    /// Whether nothing is reserved.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// Requests, prefill and decode.
    pub fn requests(&self) -> u32 {
        self.prefill_requests.saturating_add(self.decode_requests)
    }

    /// The same totals held to what one replica could have on one endpoint: at most
    /// [`MAX_PEER_REQUESTS`] of each kind, and tokens no more than their requests could hold.
    pub fn clamped(self) -> Self {
        let prefill = self.prefill_requests.min(MAX_PEER_REQUESTS);
        let decode = self.decode_requests.min(MAX_PEER_REQUESTS);
        let cap = |requests: u32| u64::from(requests) * MAX_REQUEST_TOKENS;
        Self {
            prefill_requests: prefill,
            prefill_tokens: self.prefill_tokens.min(cap(prefill)),
            decode_requests: decode,
            decode_context: self.decode_context.min(cap(decode)),
            kv_tokens: self.kv_tokens.min(2 * cap(prefill + decode)),
        }
    }

    fn add(&mut self, o: &Self) {
        self.prefill_requests += o.prefill_requests;
        self.prefill_tokens += o.prefill_tokens;
        self.decode_requests += o.decode_requests;
        self.decode_context += o.decode_context;
        self.kv_tokens += o.kv_tokens;
    }

    fn sub(&mut self, o: &Self) {
        self.prefill_requests -= o.prefill_requests;
        self.prefill_tokens -= o.prefill_tokens;
        self.decode_requests -= o.decode_requests;
        self.decode_context -= o.decode_context;
        self.kv_tokens -= o.kv_tokens;
    }
}

/// What one replica reports: its totals per endpoint as of one moment (in the receiver's time
/// base), and its picks per second over the pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerReport {
    /// When the totals were taken.
    pub as_of: Timestamp,
    /// Its pick rate ([`super::EndpointLoad::pick_rate`]).
    pub pick_rate: f64,
    /// Its totals by endpoint; endpoints it holds nothing on may be left out.
    pub endpoints: Vec<(EndpointId, InFlightTotals)>,
}

/// What [`super::InFlight::fold_peer`] did with a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerFold {
    /// It replaced the replica's previous report and counts until it goes stale.
    Counted,
    /// It was already older than the staleness bound: not counted.
    Stale,
    /// The replica's report held is newer: not counted (reports arrived out of order).
    Superseded,
    /// `max_peers` other replicas are fresh: not counted.
    Full,
}

/// How peers' reports are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerLimits {
    /// A report older than this no longer counts.
    pub staleness: Duration,
    /// Replicas held at most (capped at 1024).
    pub max_peers: usize,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self {
            staleness: Duration::from_secs(2),
            max_peers: 64,
        }
    }
}

/// The fresh reports and their sums per endpoint.
#[derive(Debug, Default)]
pub(super) struct Peers {
    limits: PeerLimits,
    reports: BTreeMap<ReplicaId, PeerReport>,
    /// Σ over `reports` per endpoint index.
    sums: Vec<InFlightTotals>,
    /// Σ of the reports' pick rates.
    rate: f64,
}

impl Peers {
    pub(super) fn new(limits: PeerLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    pub(super) fn set_limits(&mut self, limits: PeerLimits) {
        self.limits = limits;
    }

    pub(super) fn fold(
        &mut self,
        replica: &ReplicaId,
        mut report: PeerReport,
        now: Timestamp,
    ) -> PeerFold {
        let limits = self.limits;
        report.as_of = report.as_of.min(now);
        if now.saturating_since(report.as_of) > limits.staleness {
            return PeerFold::Stale;
        }
        self.expire(now);
        match self.reports.get(replica) {
            Some(held) if held.as_of > report.as_of => return PeerFold::Superseded,
            Some(_) => {}
            None if self.reports.len() >= limits.max_peers.min(MAX_PEERS) => {
                return PeerFold::Full;
            }
            None => {}
        }
        report.pick_rate = if report.pick_rate.is_finite() {
            report.pick_rate.clamp(0.0, MAX_PICK_RATE)
        } else {
            0.0
        };
        report.endpoints = merged(report.endpoints);
        self.remove(replica);
        for (endpoint, totals) in &report.endpoints {
            self.sum_mut(*endpoint).add(totals);
        }
        self.reports.insert(replica.clone(), report);
        self.recount_rate();
        PeerFold::Counted
    }

    /// Stops counting `replica`'s report.
    pub(super) fn remove(&mut self, replica: &ReplicaId) {
        let Some(old) = self.reports.remove(replica) else {
            return;
        };
        for (endpoint, totals) in &old.endpoints {
            self.sum_mut(*endpoint).sub(totals);
        }
        self.recount_rate();
    }

    /// Drops the reports older than the staleness bound at `now`.
    pub(super) fn expire(&mut self, now: Timestamp) {
        let staleness = self.limits.staleness;
        let stale: Vec<ReplicaId> = self
            .reports
            .iter()
            .filter(|(_, r)| now.saturating_since(r.as_of) > staleness)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &stale {
            self.remove(id);
        }
    }

    /// Forgets `endpoint` in every report (it went away; its id may be reused).
    pub(super) fn forget(&mut self, endpoint: EndpointId) {
        for report in self.reports.values_mut() {
            report.endpoints.retain(|(e, _)| *e != endpoint);
        }
        if let Some(sum) = self.sums.get_mut(endpoint.index()) {
            *sum = InFlightTotals::default();
        }
    }

    /// The fresh reports' totals on `endpoint`.
    pub(super) fn on(&self, endpoint: EndpointId) -> InFlightTotals {
        self.sums.get(endpoint.index()).copied().unwrap_or_default()
    }

    /// The fresh reports' picks per second.
    pub(super) fn rate(&self) -> f64 {
        self.rate
    }

    /// Replicas whose reports count.
    pub(super) fn len(&self) -> usize {
        self.reports.len()
    }

    fn sum_mut(&mut self, endpoint: EndpointId) -> &mut InFlightTotals {
        let i = endpoint.index();
        if self.sums.len() <= i {
            self.sums.resize_with(i + 1, InFlightTotals::default);
        }
        &mut self.sums[i]
    }

    fn recount_rate(&mut self) {
        self.rate = self.reports.values().map(|r| r.pick_rate).sum();
    }
}

/// One entry per endpoint (duplicates added, then clamped), zero totals left out.
fn merged(mut endpoints: Vec<(EndpointId, InFlightTotals)>) -> Vec<(EndpointId, InFlightTotals)> {
    endpoints.sort_by_key(|(e, _)| *e);
    let mut out: Vec<(EndpointId, InFlightTotals)> = Vec::with_capacity(endpoints.len());
    for (endpoint, totals) in endpoints {
        let totals = totals.clamped();
        match out.last_mut() {
            Some((last, held)) if *last == endpoint => {
                held.add(&totals);
                *held = held.clamped();
            }
            _ => out.push((endpoint, totals)),
        }
    }
    out.retain(|(_, t)| !t.is_zero());
    out
}
