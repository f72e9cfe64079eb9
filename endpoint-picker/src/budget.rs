//! One memory budget for the whole process (`--memory-budget`), split into fixed parts so that a
//! flood on one input cannot starve the others:
//!
//! | part | share | charged with | when spent |
//! |---|---|---|---|
//! | index | 1/2 | (endpoint, block) entries at [`INDEX_BYTES_PER_ENTRY`] | the index evicts (its `capacity` is capped) |
//! | requests | 1/4 | [`CONNECTION_BYTES`] for each of the `--max-connections` ext_proc connections and [`STREAM_BYTES`] for each of the `--max-streams` streams, set aside; the rest by request bodies (and gRPC messages past [`crate::server`]'s free bytes) as they arrive | the request gets a 503 (`memory_budget`); bodies over [`LARGE_BODY`] may only use 7/8 of the body bytes, so large slow bodies cannot starve ordinary requests |
//! | KV events | 1/4 | payload bytes of queued and held batches and of replies of running replays | the batch is refused and its endpoint resynchronised; a replay fails |
//!
//! Besides bytes, `--max-streams` caps the ext_proc streams open at once (503 `too-many-streams`).
//! What is left of the container's memory above the budget is for the binary, tokenizers (their
//! cache has its own `--tokenize-cache-bytes`), the runtime and allocator slack.
//!
//! A [`Charge`] holds bytes of a [`Part`] and gives them back when dropped, so every exit path
//! (answered, refused, stream cut, endpoint removed) releases what it took.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::telemetry as t;

/// Bytes one (endpoint, block) index entry is budgeted at: 43.8 bytes measured when every block
/// is unique to one endpoint (BENCHMARKS.md), plus room for a table grow (1.25×) in flight.
pub const INDEX_BYTES_PER_ENTRY: usize = 64;
/// Bytes set aside for each stream `--max-streams` allows, besides its body: the HTTP/2 send
/// buffer ([`SEND_BUFFER_BYTES`]), the first 16 KiB of the gRPC decoder's buffer (past that it
/// is charged as it grows), the encoder's buffer and the exchange itself.
pub const STREAM_BYTES: usize = 64 << 10;
/// HTTP/2 receive window of one ext_proc stream: what a peer may send that kvpick has not read.
pub const STREAM_WINDOW: u32 = 128 << 10;
/// HTTP/2 receive window of one ext_proc connection (all its streams together).
pub const CONNECTION_WINDOW: u32 = 256 << 10;
/// Streams open at once on one ext_proc connection (a gateway opens more connections for more).
pub const STREAMS_PER_CONNECTION: u32 = 128;
/// Largest HTTP/2 header list of one stream (gRPC's own headers; the HTTP request's headers
/// travel inside ext_proc messages).
pub const HEADER_LIST_BYTES: u32 = 4 << 10;
/// Response bytes HTTP/2 buffers per stream for a peer that does not read them.
pub const SEND_BUFFER_BYTES: usize = 16 << 10;
/// Bytes set aside for each ext_proc connection `--max-connections` allows: its receive window
/// and, for each stream it may open, a header list and the stream's HTTP/2 state (a stream over
/// `--max-streams` holds no stream share while it is refused).
pub const CONNECTION_BYTES: usize = CONNECTION_WINDOW as usize
    + STREAMS_PER_CONNECTION as usize * (HEADER_LIST_BYTES as usize + (4 << 10));
/// A body past this size counts as large: it may not take the last 1/8 of the body bytes.
pub const LARGE_BODY: usize = 64 << 10;
/// The default `--memory-budget`: 3 GiB, under the shipped 4 GiB container limit.
pub const DEFAULT_BUDGET: usize = 3 << 30;
/// The default `--max-streams`.
pub const DEFAULT_MAX_STREAMS: usize = 4096;

/// The budget's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Bytes for the whole process (`--memory-budget`).
    pub total: usize,
    /// ext_proc streams open at once (`--max-streams`).
    pub max_streams: usize,
    /// ext_proc connections open at once (`--max-connections`).
    pub max_connections: usize,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            total: DEFAULT_BUDGET,
            max_streams: DEFAULT_MAX_STREAMS,
            max_connections: Self::default_max_connections(DEFAULT_BUDGET),
        }
    }
}

impl BudgetConfig {
    /// `--max-connections` when not given: an eighth of the request share's worth of
    /// connections, between 4 and 256 (76 at the default budget).
    pub fn default_max_connections(total: usize) -> usize {
        (total / 4 / 8 / CONNECTION_BYTES).clamp(4, 256)
    }

    /// Bytes for the KV index.
    pub fn index_bytes(&self) -> usize {
        self.total / 2
    }

    /// The most index entries the budget holds.
    pub fn index_capacity(&self) -> usize {
        self.index_bytes() / INDEX_BYTES_PER_ENTRY
    }

    /// Bytes for open streams and their request bodies.
    pub fn request_bytes(&self) -> usize {
        self.total / 4
    }

    /// Of those, what is left for request bodies once every stream's and every connection's
    /// share is set aside.
    pub fn body_bytes(&self) -> usize {
        self.request_bytes()
            .saturating_sub(self.max_streams.saturating_mul(STREAM_BYTES))
            .saturating_sub(self.max_connections.saturating_mul(CONNECTION_BYTES))
    }

    /// Bytes for KV-event batches queued, held and replayed.
    pub fn kv_event_bytes(&self) -> usize {
        self.total / 4
    }
}

/// The process's budget: the parts charged at run time (the index's part is its capacity).
#[derive(Debug)]
pub struct Budget {
    /// Request bodies (the streams' own bytes are set aside, one share per allowed stream).
    pub requests: Arc<Part>,
    /// Open ext_proc streams, counted one each.
    pub streams: Arc<Part>,
    /// KV-event batches and replays.
    pub kv_events: Arc<Part>,
}

impl Budget {
    /// The parts of `config`, with their limits exported.
    pub fn new(config: &BudgetConfig) -> Self {
        Self {
            requests: Part::new("request_body_bytes", config.body_bytes()),
            streams: Part::new("streams", config.max_streams),
            kv_events: Part::new("kv_event_bytes", config.kv_event_bytes()),
        }
    }

    /// Exports every part's limit (again: after the metrics recorder is installed).
    pub fn export(&self) {
        for part in [&self.requests, &self.streams, &self.kv_events] {
            metrics::gauge!(t::BUDGET_LIMIT, "part" => part.name).set(part.limit as f64);
        }
    }
}

/// One share of the budget: a limit and what is charged against it now.
#[derive(Debug)]
pub struct Part {
    name: &'static str,
    limit: usize,
    used: AtomicUsize,
}

impl Part {
    /// A part named `name` (its metric label) holding at most `limit`.
    pub fn new(name: &'static str, limit: usize) -> Arc<Self> {
        metrics::gauge!(t::BUDGET_LIMIT, "part" => name).set(limit as f64);
        Arc::new(Self {
            name,
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// The part's metric label.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// What is charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` if it fits; else counts a refusal and returns `None`.
    pub fn try_charge(self: &Arc<Self>, n: usize) -> Option<Charge> {
        let mut charge = Charge::empty(self);
        charge.grow(n).then_some(charge)
    }

    fn take(&self, n: usize, ceiling: usize) -> bool {
        let ceiling = ceiling.min(self.limit);
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&after| after <= ceiling)
            })
            .is_ok();
        if taken {
            metrics::gauge!(t::BUDGET_USED, "part" => self.name).increment(n as f64);
        } else {
            metrics::counter!(t::BUDGET_REFUSED, "part" => self.name).increment(1);
        }
        taken
    }

    fn give_back(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
            metrics::gauge!(t::BUDGET_USED, "part" => self.name).decrement(n as f64);
        }
    }
}

/// Bytes (or streams) held against a [`Part`], released when dropped.
#[derive(Debug)]
pub struct Charge {
    part: Option<Arc<Part>>,
    held: usize,
}

impl Charge {
    /// Holds nothing and belongs to no part (test batches, work not subject to the budget).
    pub fn none() -> Self {
        Self {
            part: None,
            held: 0,
        }
    }

    /// Holds nothing yet against `part`.
    pub fn empty(part: &Arc<Part>) -> Self {
        Self {
            part: Some(part.clone()),
            held: 0,
        }
    }

    /// Takes `n` more if the part has room; on `false` nothing changed.
    pub fn grow(&mut self, n: usize) -> bool {
        self.grow_within(n, usize::MAX)
    }

    /// Takes `n` more if the part's use stays at or under `ceiling` (and its limit).
    pub fn grow_within(&mut self, n: usize, ceiling: usize) -> bool {
        match &self.part {
            None => true,
            Some(part) => {
                let taken = part.take(n, ceiling);
                if taken {
                    self.held += n;
                }
                taken
            }
        }
    }

    /// Gives everything back now (the charge stays usable).
    pub fn clear(&mut self) {
        if let Some(part) = &self.part {
            part.give_back(std::mem::take(&mut self.held));
        }
    }

    /// What it holds.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_the_limit_and_come_back_when_dropped() {
        let part = Part::new("test", 100);
        let a = part.try_charge(60);
        assert!(a.is_some());
        assert!(part.try_charge(41).is_none(), "60 + 41 > 100");
        let mut b = Charge::empty(&part);
        assert!(b.grow(40));
        assert!(!b.grow(1));
        assert_eq!((part.used(), b.held()), (100, 40));
        drop(a);
        assert_eq!(part.used(), 40);
        assert!(!b.grow_within(60, 99), "a ceiling under the limit holds");
        assert!(b.grow(60));
        b.clear();
        assert_eq!(part.used(), 0);
        assert!(
            b.grow(usize::MAX).eq(&false),
            "an overflowing charge is refused"
        );
        assert!(Charge::none().grow(usize::MAX));
    }

    #[test]
    fn the_default_budget_fits_the_shipped_limit() {
        let c = BudgetConfig::default();
        let parts = c.index_bytes() + c.request_bytes() + c.kv_event_bytes();
        assert!(parts <= c.total);
        // The manifests' container limit is 4 GiB: a quarter of it stays outside the budget.
        assert!(c.total <= 3 << 30);
        // 24 Mi entries at the default: the same order as the measured workloads (12.8M).
        assert_eq!(c.index_capacity(), 25_165_824);
        // 4096 streams set 256 MiB aside and 76 connections 95 MiB: 417 MiB for bodies, 26 of
        // the largest at once.
        assert_eq!(c.max_connections, 76);
        assert_eq!(CONNECTION_BYTES, 1280 << 10);
        assert_eq!(c.body_bytes(), (512 << 20) - 76 * (1280 << 10));
    }
}
