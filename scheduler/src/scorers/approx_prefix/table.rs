//! What was routed where: per endpoint, the block keys of the requests sent to it, in a bounded
//! LRU; per key, the endpoints it was sent to.
//!
//! Every (endpoint, key) pair is one 24-byte node of an [`LruSlab`]: linked into its endpoint's
//! recency list (for eviction) and into a singly linked chain of the key's holders (for lookup).
//! A hash map from key to the first holder's node completes it. Matching a request then costs one
//! map probe per block plus a walk over that block's holders, like the KV index; recording costs
//! the same plus O(1) list work per block. Memory is bounded by `capacity` nodes per endpoint.

use std::collections::HashMap;

use crate::keys::BlockKey;
use crate::lru::{BuildKeyHasher, LruList, LruSlab};
use crate::pods::EndpointId;

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Holder {
    key: BlockKey,
    /// The next node holding the same key.
    next: u32,
    endpoint: EndpointId,
}

/// Routing history, bounded per endpoint.
#[derive(Debug)]
pub(crate) struct RoutedBlocks {
    slab: LruSlab<Holder>,
    /// Recency list per endpoint index.
    lists: Vec<LruList>,
    /// First holder node of each key.
    heads: HashMap<BlockKey, u32, BuildKeyHasher>,
    capacity: usize,
}

impl RoutedBlocks {
    /// An empty history keeping at most `capacity` keys per endpoint.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            slab: LruSlab::default(),
            lists: Vec::new(),
            heads: HashMap::default(),
            capacity: capacity.max(1),
        }
    }

    /// (endpoint, key) pairs held.
    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    /// Keys held for `endpoint`.
    #[cfg(test)]
    pub(crate) fn endpoint_len(&self, endpoint: EndpointId) -> usize {
        self.lists.get(endpoint.index()).map_or(0, LruList::len)
    }

    /// For each endpoint `position` maps to a slot, writes to `runs[slot]` how many consecutive
    /// keys from `keys[0]` were routed to it. Stops at the first key no slot advances on.
    pub(crate) fn match_runs(
        &self,
        keys: &[BlockKey],
        position: impl Fn(EndpointId) -> Option<usize>,
        runs: &mut [u32],
    ) {
        runs.fill(0);
        for (i, key) in keys.iter().enumerate() {
            let Some(&head) = self.heads.get(key) else {
                return;
            };
            let mut advanced = false;
            let mut at = head;
            while at != NIL {
                let h = self.slab.get(at);
                if let Some(slot) = position(h.endpoint)
                    && runs[slot] as usize == i
                {
                    runs[slot] += 1;
                    advanced = true;
                }
                at = h.next;
            }
            if !advanced {
                return;
            }
        }
    }

    /// Records that a request with `keys` went to `endpoint`. Keys are inserted last first, so
    /// that block 0 ends up the most recent: eviction then trims a prefix from its tail, as the
    /// engine's own cache does, and never leaves a tail without its head.
    pub(crate) fn record(&mut self, endpoint: EndpointId, keys: &[BlockKey]) {
        if self.lists.len() <= endpoint.index() {
            self.lists.resize(endpoint.index() + 1, LruList::default());
        }
        for &key in keys.iter().rev() {
            if let Some(at) = self.find(key, endpoint) {
                self.slab.touch(&mut self.lists[endpoint.index()], at);
                continue;
            }
            while self.lists[endpoint.index()].len() >= self.capacity {
                let Some(old) = self.slab.back(&self.lists[endpoint.index()]) else {
                    break;
                };
                self.evict(endpoint, old);
            }
            let next = self.heads.get(&key).copied().unwrap_or(NIL);
            let holder = Holder {
                key,
                next,
                endpoint,
            };
            let Some(at) = self
                .slab
                .push_front(&mut self.lists[endpoint.index()], holder)
            else {
                return; // out of node handles: remember less rather than corrupt the chains
            };
            self.heads.insert(key, at);
        }
    }

    /// Drops everything recorded for `endpoint`.
    pub(crate) fn forget(&mut self, endpoint: EndpointId) {
        let Some(list) = self.lists.get(endpoint.index()) else {
            return;
        };
        let mut list = *list;
        while let Some(old) = self.slab.back(&list) {
            self.unchain(old);
            self.slab.remove(&mut list, old);
        }
        self.lists[endpoint.index()] = list;
    }

    fn find(&self, key: BlockKey, endpoint: EndpointId) -> Option<u32> {
        let mut at = *self.heads.get(&key)?;
        while at != NIL {
            let h = self.slab.get(at);
            if h.endpoint == endpoint {
                return Some(at);
            }
            at = h.next;
        }
        None
    }

    fn evict(&mut self, endpoint: EndpointId, old: u32) {
        self.unchain(old);
        self.slab.remove(&mut self.lists[endpoint.index()], old);
    }

    /// Takes node `old` out of its key's holder chain.
    fn unchain(&mut self, old: u32) {
        let Holder { key, next, .. } = *self.slab.get(old);
        let Some(&head) = self.heads.get(&key) else {
            return;
        };
        if head == old {
            if next == NIL {
                self.heads.remove(&key);
            } else {
                self.heads.insert(key, next);
            }
            return;
        }
        let mut at = head;
        while at != NIL {
            let h = *self.slab.get(at);
            if h.next == old {
                self.slab.get_mut(at).next = next;
                return;
            }
            at = h.next;
        }
    }

    /// Distinct keys held, for tests of the chains' consistency.
    #[cfg(test)]
    pub(crate) fn distinct_keys(&self) -> usize {
        self.heads.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> EndpointId {
        EndpointId::new(n).unwrap()
    }

    fn keys(range: std::ops::Range<u64>) -> Vec<BlockKey> {
        range.map(BlockKey::from_raw).collect()
    }

    fn runs(t: &RoutedBlocks, k: &[BlockKey], endpoints: u32) -> Vec<u32> {
        let mut out = vec![9; endpoints as usize];
        let n = out.len();
        t.match_runs(k, |e| Some(e.index()).filter(|&i| i < n), &mut out);
        out
    }

    #[test]
    fn runs_are_consecutive_from_block_zero() {
        let mut t = RoutedBlocks::new(100);
        t.record(id(0), &keys(0..8));
        t.record(id(1), &keys(0..3));
        t.record(id(2), &keys(1..8)); // lacks key 0: never matches a request starting there
        assert_eq!(runs(&t, &keys(0..8), 4), [8, 3, 0, 0]);
        assert_eq!(runs(&t, &keys(0..2), 4), [2, 2, 0, 0]);
        assert_eq!(runs(&t, &keys(5..8), 4), [3, 0, 3, 0]);
        assert_eq!(runs(&t, &keys(9..10), 4), [0, 0, 0, 0]);
        // Only endpoints the caller maps are counted.
        let mut out = vec![0; 1];
        t.match_runs(&keys(0..8), |e| (e == id(1)).then_some(0), &mut out);
        assert_eq!(out, [3]);
    }

    #[test]
    fn recording_again_does_not_duplicate() {
        let mut t = RoutedBlocks::new(100);
        t.record(id(0), &keys(0..4));
        t.record(id(0), &keys(0..6));
        assert_eq!(
            (t.len(), t.endpoint_len(id(0)), t.distinct_keys()),
            (6, 6, 6)
        );
    }

    #[test]
    fn capacity_evicts_tails_first_and_keeps_chains_consistent() {
        let mut t = RoutedBlocks::new(4);
        t.record(id(1), &keys(0..4));
        t.record(id(0), &keys(0..6));
        // Recorded last-first: the 4 kept are blocks 0..4.
        assert_eq!(t.endpoint_len(id(0)), 4);
        assert_eq!(runs(&t, &keys(0..6), 2), [4, 4]);
        t.record(id(0), &keys(100..102));
        assert_eq!(runs(&t, &keys(0..6), 2), [2, 4]);
        assert_eq!(runs(&t, &keys(100..102), 2), [2, 0]);
        assert_eq!(t.len(), 8);
        t.forget(id(1));
        assert_eq!(runs(&t, &keys(0..6), 2), [2, 0]);
        assert_eq!((t.len(), t.distinct_keys()), (4, 4));
        t.forget(id(0));
        t.forget(id(7));
        assert_eq!((t.len(), t.distinct_keys()), (0, 0));
    }

    #[test]
    fn memory_is_bounded_under_a_flood() {
        let mut t = RoutedBlocks::new(64);
        for i in 0..10_000u64 {
            t.record(id((i % 3) as u32), &keys(i * 10..i * 10 + 10));
        }
        assert_eq!(t.len(), 3 * 64);
        assert_eq!(t.distinct_keys(), 3 * 64);
    }

    /// The same history kept naively: per endpoint, keys most recent first.
    #[derive(Default)]
    struct Model {
        lists: Vec<Vec<BlockKey>>,
    }

    impl Model {
        fn record(&mut self, e: usize, keys: &[BlockKey], cap: usize) {
            let list = &mut self.lists[e];
            for &k in keys.iter().rev() {
                if let Some(p) = list.iter().position(|&x| x == k) {
                    list.remove(p);
                } else if list.len() >= cap {
                    list.pop();
                }
                list.insert(0, k);
            }
        }

        fn runs(&self, keys: &[BlockKey]) -> Vec<u32> {
            self.lists
                .iter()
                .map(|l| keys.iter().take_while(|k| l.contains(k)).count() as u32)
                .collect()
        }
    }

    proptest::proptest! {
        #[test]
        fn matches_a_naive_model(
            cap in 1usize..12,
            ops in proptest::collection::vec((0usize..4, 0u64..6, 0u64..6, proptest::bool::weighted(0.1)), 1..60),
        ) {
            let mut t = RoutedBlocks::new(cap);
            let mut m = Model { lists: vec![Vec::new(); 4] };
            for (e, a, len, forget) in ops {
                if forget {
                    t.forget(id(e as u32));
                    m.lists[e].clear();
                } else {
                    t.record(id(e as u32), &keys(a..a + len));
                    m.record(e, &keys(a..a + len), cap);
                }
                for q in [keys(0..6), keys(1..5), keys(3..6)] {
                    proptest::prop_assert_eq!(runs(&t, &q, 4), m.runs(&q));
                }
                let total: usize = m.lists.iter().map(Vec::len).sum();
                proptest::prop_assert_eq!(t.len(), total);
            }
        }
    }
}
