//! Per endpoint, the last batch applied to the index (sequence number and payload fingerprint):
//! what a peer's index dump is anchored at, and where a replica restored from that dump resumes.
//!
//! A worker publishes its endpoints' last batch after each turn, so a published anchor never runs
//! ahead of the index (a dump read after it holds at least that batch). A bootstrap leaves start
//! anchors, which the worker that opens the endpoint takes once: its sequencer then asks the
//! pod's replay from the anchor and proves continuity against its fingerprint before anything
//! more is applied.

use std::collections::HashMap;

use kvpick_scheduler::EndpointId;
use parking_lot::Mutex;

/// A batch applied: its sequence number, and its payload's length and xxh3.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub len: u64,
    pub hash: u64,
}

/// The anchors of every endpoint ingestion follows, and those a bootstrap left.
#[derive(Debug, Default)]
pub struct Anchors {
    applied: Mutex<HashMap<EndpointId, Anchor>>,
    start: Mutex<HashMap<EndpointId, Anchor>>,
}

impl Anchors {
    /// The last batch applied for `endpoint`, if the index holds a contiguous run ending there.
    pub fn applied(&self, endpoint: EndpointId) -> Option<Anchor> {
        self.applied.lock().get(&endpoint).copied()
    }

    pub(crate) fn publish(&self, endpoint: EndpointId, anchor: Option<Anchor>) {
        let mut applied = self.applied.lock();
        match anchor {
            Some(a) => applied.insert(endpoint, a),
            None => applied.remove(&endpoint),
        };
    }

    /// `endpoint`'s index was restored up to `anchor`: resume its events after it.
    pub fn set_start(&self, endpoint: EndpointId, anchor: Anchor) {
        self.start.lock().insert(endpoint, anchor);
    }

    /// Where a bootstrap left `endpoint`, until its worker opens it.
    pub fn start(&self, endpoint: EndpointId) -> Option<Anchor> {
        self.start.lock().get(&endpoint).copied()
    }

    /// Forgets every start anchor (a bootstrap that failed half-way).
    pub fn clear_starts(&self) {
        self.start.lock().clear();
    }

    pub(crate) fn take_start(&self, endpoint: EndpointId) -> Option<Anchor> {
        self.start.lock().remove(&endpoint)
    }

    pub(crate) fn forget(&self, endpoint: EndpointId) {
        self.applied.lock().remove(&endpoint);
        self.start.lock().remove(&endpoint);
    }
}
