//! Ingestion counters: kept in our own atomics (read by tests and by [`super::KvEventsHandle`])
//! and mirrored to the `metrics` facade, whose exporter the binary installs.
//!
//! Hot-path counters (batches, blocks) use handles registered once per endpoint; rare events
//! (gaps, resets, replays) are registered when they happen.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use kvpick_scheduler::EndpointId;
use kvpick_scheduler::EventsState;
use kvpick_scheduler::index::{ApplyReport, IndexStats};
use metrics::{Counter, Gauge, counter, gauge};
use parking_lot::RwLock;

use super::sequencer::{Note, Reset};

/// Why a message never reached the index.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// The endpoint's queue was full (the endpoint is then resynchronised).
    QueueFull,
    /// Not `[topic, seq(8 bytes), payload]`.
    Malformed,
    /// Bind mode: a topic that is not `kv@<ip[:port]>@<model>`.
    BadTopic,
    /// Bind mode: a topic (and rank) naming no known endpoint.
    UnknownTopic,
    /// Bind mode: a pod that kvpick also subscribes to in connect mode.
    DuplicateSource,
    /// A batch already applied (replay overlap).
    Duplicate,
    /// A peer announced a frame or message over the size limit; its connection was cut.
    Oversized,
    /// A peer broke ZMTP framing (greeting, flags, frame count); its connection was cut.
    BadFraming,
    /// Bind mode: too many peer connections at once, in all or from one address.
    TooManyConnections,
    /// Bind mode: a connection from an address that is no endpoint's; refused at once.
    UnknownPeer,
    /// Bind mode: a batch whose topic names another pod than the address it came from.
    SenderMismatch,
    /// Bind mode: a peer that did not finish its handshake, or stayed silent, in time.
    TimedOut,
}

impl DropReason {
    /// Every reason, in the order of [`DropReason::index`].
    pub const ALL: [DropReason; 12] = [
        DropReason::QueueFull,
        DropReason::Malformed,
        DropReason::BadTopic,
        DropReason::UnknownTopic,
        DropReason::DuplicateSource,
        DropReason::Duplicate,
        DropReason::Oversized,
        DropReason::BadFraming,
        DropReason::TooManyConnections,
        DropReason::UnknownPeer,
        DropReason::SenderMismatch,
        DropReason::TimedOut,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Malformed => "malformed",
            DropReason::BadTopic => "bad_topic",
            DropReason::UnknownTopic => "unknown_topic",
            DropReason::DuplicateSource => "duplicate_source",
            DropReason::Duplicate => "duplicate",
            DropReason::Oversized => "oversized",
            DropReason::BadFraming => "bad_framing",
            DropReason::TooManyConnections => "too_many_connections",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::SenderMismatch => "sender_mismatch",
            DropReason::TimedOut => "timed_out",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One endpoint's counters, as of one moment.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Batches applied to the index.
    pub batches: u64,
    /// (endpoint, block) entries added.
    pub blocks_stored: u64,
    /// Entries removed by `BlockRemoved`.
    pub blocks_removed: u64,
    /// Entries dropped by `AllBlocksCleared`.
    pub blocks_cleared: u64,
    /// Blocks the index refused (unknown parent, block size, non-prefix group, unknown hash).
    pub blocks_rejected: u64,
    /// Batches whose payload did not decode (the endpoint is reset).
    pub decode_errors: u64,
    /// Skipped sequence numbers seen.
    pub gaps: u64,
    /// Sequences that went back (pod restarts).
    pub restarts: u64,
    /// Batches dropped as already applied.
    pub duplicates: u64,
    /// Replays that ended with the end marker.
    pub replays_ok: u64,
    /// Replays that failed.
    pub replays_failed: u64,
    /// Times every block of the endpoint was dropped to resynchronise.
    pub resets: u64,
    /// Batches refused because its queue was full.
    pub overflows: u64,
    /// Connections made to its publisher.
    pub connects: u64,
}

/// The live counters behind [`EndpointStats`], field for field.
#[derive(Debug, Default)]
struct Atomics {
    batches: AtomicU64,
    blocks_stored: AtomicU64,
    blocks_removed: AtomicU64,
    blocks_cleared: AtomicU64,
    blocks_rejected: AtomicU64,
    decode_errors: AtomicU64,
    gaps: AtomicU64,
    restarts: AtomicU64,
    duplicates: AtomicU64,
    replays_ok: AtomicU64,
    replays_failed: AtomicU64,
    resets: AtomicU64,
    overflows: AtomicU64,
    connects: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

impl Atomics {
    fn snapshot(&self) -> EndpointStats {
        let v = |a: &AtomicU64| a.load(Relaxed);
        EndpointStats {
            batches: v(&self.batches),
            blocks_stored: v(&self.blocks_stored),
            blocks_removed: v(&self.blocks_removed),
            blocks_cleared: v(&self.blocks_cleared),
            blocks_rejected: v(&self.blocks_rejected),
            decode_errors: v(&self.decode_errors),
            gaps: v(&self.gaps),
            restarts: v(&self.restarts),
            duplicates: v(&self.duplicates),
            replays_ok: v(&self.replays_ok),
            replays_failed: v(&self.replays_failed),
            resets: v(&self.resets),
            overflows: v(&self.overflows),
            connects: v(&self.connects),
        }
    }
}

/// One endpoint's counters and its metric handles.
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    label: String,
    atomics: Atomics,
    batches: Counter,
    stored: Counter,
    removed: Counter,
    queue_depth: Gauge,
    state: Gauge,
}

impl EndpointMetrics {
    fn new(label: String) -> Self {
        let blocks = |op: &'static str| counter!("kvpick_kv_events_blocks_total", "endpoint" => label.clone(), "op" => op);
        Self {
            batches: counter!("kvpick_kv_events_batches_total", "endpoint" => label.clone()),
            stored: blocks("stored"),
            removed: blocks("removed"),
            queue_depth: gauge!("kvpick_kv_events_queue_depth", "endpoint" => label.clone()),
            state: gauge!("kvpick_kv_events_state", "endpoint" => label.clone()),
            atomics: Atomics::default(),
            label,
        }
    }

    #[cfg(test)]
    pub fn for_tests() -> Self {
        Self::new("test".into())
    }

    pub fn applied(&self, r: &ApplyReport) {
        let rejected = r.unknown_parent + r.block_size_mismatch + r.non_prefix_group;
        let a = &self.atomics;
        bump(&a.batches, 1);
        bump(&a.blocks_stored, r.stored);
        bump(&a.blocks_removed, r.removed);
        bump(&a.blocks_cleared, r.cleared);
        bump(
            &a.blocks_rejected,
            rejected + r.unknown_removed + r.overflow,
        );
        self.batches.increment(1);
        self.stored.increment(r.stored);
        self.removed.increment(r.removed);
        if r.cleared > 0 {
            self.blocks("cleared", r.cleared);
        }
        if rejected > 0 {
            self.blocks("rejected", rejected);
        }
        if r.overflow > 0 {
            // Blocks the index had no room for where their keys place them: colliding keys.
            self.blocks("overflow", r.overflow);
        }
    }

    fn blocks(&self, op: &'static str, n: u64) {
        counter!("kvpick_kv_events_blocks_total", "endpoint" => self.label.clone(), "op" => op)
            .increment(n);
    }

    pub fn decode_error(&self, label: &'static str) {
        bump(&self.atomics.decode_errors, 1);
        counter!("kvpick_kv_events_decode_errors_total", "endpoint" => self.label.clone(),
            "error" => label)
        .increment(1);
    }

    pub fn note(&self, what: Note) {
        let a = &self.atomics;
        let (field, name) = match what {
            Note::Gap => (&a.gaps, "kvpick_kv_events_gaps_total"),
            Note::Restart => (&a.restarts, "kvpick_kv_events_restarts_total"),
            Note::Duplicate => (&a.duplicates, "kvpick_kv_events_duplicates_total"),
        };
        bump(field, 1);
        counter!(name, "endpoint" => self.label.clone()).increment(1);
    }

    pub fn replay(&self, ok: bool) {
        let a = &self.atomics;
        bump(if ok { &a.replays_ok } else { &a.replays_failed }, 1);
        let outcome = if ok { "ok" } else { "failed" };
        counter!("kvpick_kv_events_replays_total", "endpoint" => self.label.clone(),
            "outcome" => outcome)
        .increment(1);
    }

    pub fn reset(&self, why: Reset) {
        bump(&self.atomics.resets, 1);
        // Visible at info: a pod restart ("restart") or a resynchronisation changes where traffic goes.
        tracing::info!(endpoint = %self.label, reason = why.label(), "KV-event index reset: the endpoint's blocks are forgotten and relearned");
        counter!("kvpick_kv_events_resets_total", "endpoint" => self.label.clone(),
            "reason" => why.label())
        .increment(1);
    }

    pub fn overflow(&self) {
        bump(&self.atomics.overflows, 1);
    }

    pub fn connected(&self) {
        bump(&self.atomics.connects, 1);
        counter!("kvpick_kv_events_connects_total", "endpoint" => self.label.clone()).increment(1);
    }

    pub fn queue_depth(&self, depth: usize) {
        self.queue_depth.set(depth as f64);
    }

    pub fn state(&self, state: EventsState) {
        self.state.set(match state {
            EventsState::Absent => 0.0,
            EventsState::Stale => 1.0,
            EventsState::Live => 2.0,
        });
    }

    pub fn snapshot(&self) -> EndpointStats {
        self.atomics.snapshot()
    }
}

/// Counters over all endpoints.
#[derive(Debug, Default)]
pub(crate) struct IngestMetrics {
    dropped: [AtomicU64; DropReason::ALL.len()],
    endpoints: RwLock<HashMap<EndpointId, Arc<EndpointMetrics>>>,
}

impl IngestMetrics {
    /// Registers (or replaces) an endpoint's counters, labelled by its address.
    pub fn register(&self, id: EndpointId, label: String) -> Arc<EndpointMetrics> {
        let m = Arc::new(EndpointMetrics::new(label));
        self.endpoints.write().insert(id, Arc::clone(&m));
        m
    }

    pub fn unregister(&self, id: EndpointId) {
        if let Some(m) = self.endpoints.write().remove(&id) {
            m.queue_depth.set(0.0);
            m.state(EventsState::Absent);
        }
    }

    pub fn endpoint(&self, id: EndpointId) -> Option<EndpointStats> {
        self.endpoints.read().get(&id).map(|m| m.snapshot())
    }

    /// Sums over the endpoints known now.
    pub fn total(&self) -> EndpointStats {
        let mut t = EndpointStats::default();
        for m in self.endpoints.read().values() {
            let s = m.snapshot();
            t.batches += s.batches;
            t.blocks_stored += s.blocks_stored;
            t.blocks_removed += s.blocks_removed;
            t.blocks_cleared += s.blocks_cleared;
            t.blocks_rejected += s.blocks_rejected;
            t.resets += s.resets;
        }
        t
    }

    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason.index()].fetch_add(1, Relaxed);
        counter!("kvpick_kv_events_dropped_total", "reason" => reason.label()).increment(1);
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].load(Relaxed)
    }

    /// Index sizes, exported as gauges.
    pub fn index(&self, stats: &IndexStats) {
        gauge!("kvpick_index_keys").set(stats.keys as f64);
        gauge!("kvpick_index_entries").set(stats.entries as f64);
        gauge!("kvpick_index_endpoints").set(stats.endpoints as f64);
    }
}

/// Registers the descriptions of every ingestion metric with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "kvpick_kv_events_batches_total",
        "KV-event batches applied to the index"
    );
    describe_counter!(
        "kvpick_kv_events_blocks_total",
        "Blocks applied, by op (stored, removed, cleared, rejected; overflow: refused by the index, colliding keys)"
    );
    describe_counter!(
        "kvpick_kv_events_decode_errors_total",
        "Batches whose payload did not decode"
    );
    describe_counter!(
        "kvpick_kv_events_gaps_total",
        "Skipped KV-event sequence numbers seen"
    );
    describe_counter!(
        "kvpick_kv_events_restarts_total",
        "KV-event sequences that went back (pod restarts)"
    );
    describe_counter!(
        "kvpick_kv_events_duplicates_total",
        "Batches dropped as already applied"
    );
    describe_counter!(
        "kvpick_kv_events_replays_total",
        "Replay requests, by outcome"
    );
    describe_counter!(
        "kvpick_kv_events_resets_total",
        "Endpoints cleared to resynchronise, by reason"
    );
    describe_counter!(
        "kvpick_kv_events_connects_total",
        "Connections made to KV-event publishers"
    );
    describe_counter!(
        "kvpick_kv_events_dropped_total",
        "KV-event messages dropped, by reason"
    );
    describe_gauge!(
        "kvpick_kv_events_queue_depth",
        "Batches queued per endpoint"
    );
    describe_gauge!(
        "kvpick_kv_events_state",
        "Endpoint KV-event state: 0 absent, 1 stale, 2 live"
    );
    describe_gauge!("kvpick_index_keys", "Distinct block keys in the index");
    describe_gauge!(
        "kvpick_index_entries",
        "(endpoint, block) entries in the index"
    );
    describe_gauge!(
        "kvpick_index_endpoints",
        "Endpoints holding at least one block"
    );
}
