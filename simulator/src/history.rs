//! Routing history: what an approximate prefix-cache policy believes each endpoint holds, learned
//! from its own routing decisions instead of from KV events.
//!
//! Every request routed to an endpoint is assumed to leave all of its prompt's blocks there. An LRU
//! per endpoint, sized like the endpoint's KV cache, forgets the least recently routed blocks. The
//! belief is kept in a [`KvIndex`] fed with synthetic `BlockStored`/`BlockRemoved` batches (engine
//! hash = block key), so the approximate policy scores through the very same index lookup and
//! `Scheduler::pick` as the precise one; only the source of truth differs.

use std::sync::Arc;

use kvpick_scheduler::events::{BlockRemoved, BlockStored, EngineHash, EventBatch, KvEvent};
use kvpick_scheduler::keys::block_keys;
use kvpick_scheduler::{BlockKey, EndpointId, KvIndex, Partition};

use crate::lru::LruSet;

/// The routing history of a pool of endpoints.
#[derive(Debug)]
pub struct RoutingHistory {
    index: Arc<KvIndex>,
    capacity_blocks: usize,
    lru: Vec<LruSet<BlockKey>>,
}

impl RoutingHistory {
    /// A history over `endpoints` endpoints, remembering up to `capacity_blocks` blocks each, kept
    /// in `index`.
    pub fn new(index: Arc<KvIndex>, endpoints: usize, capacity_blocks: usize) -> Self {
        Self {
            index,
            capacity_blocks: capacity_blocks.max(1),
            lru: (0..endpoints).map(|_| LruSet::default()).collect(),
        }
    }

    /// Records that a prompt of `tokens` in `partition` was sent to `endpoint`.
    pub fn record(&mut self, endpoint: EndpointId, partition: Partition<'_>, tokens: &[u32]) {
        let bs = self.index.block_size();
        let keys: Vec<BlockKey> = block_keys(partition.root(), tokens, bs).collect();
        if keys.is_empty() {
            return;
        }
        let Some(lru) = self.lru.get_mut(endpoint.index()) else {
            return;
        };
        // Touch the tail first so the prompt's head blocks, which others share, are the most recent.
        for &k in keys.iter().rev() {
            lru.touch(k);
        }
        let mut removed = Vec::new();
        while lru.len() > self.capacity_blocks {
            match lru.evict() {
                Some(k) => removed.push(EngineHash(k.get())),
                None => break,
            }
        }
        let full = keys.len() * bs.tokens();
        let mut events = vec![KvEvent::BlockStored(BlockStored {
            block_hashes: keys.iter().map(|k| EngineHash(k.get())).collect(),
            parent_block_hash: None,
            token_ids: tokens[..full].to_vec(),
            block_size: bs.get(),
            ..Default::default()
        })];
        if !removed.is_empty() {
            events.push(KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: removed,
                ..Default::default()
            }));
        }
        let batch = EventBatch {
            ts: 0.0,
            events,
            data_parallel_rank: None,
        };
        self.index.apply(endpoint, partition.model, &batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvpick_scheduler::{EndpointSet, IndexConfig, PrefixMatches};

    #[test]
    fn remembers_routed_prefixes_and_forgets_lru() {
        let index = Arc::new(KvIndex::new(IndexConfig::default()));
        let mut h = RoutingHistory::new(index.clone(), 2, 4);
        let ep = |i| EndpointId::new(i).unwrap();
        let p = Partition::model("m");
        let a: Vec<u32> = (0..48).collect();
        let b: Vec<u32> = (100..148).collect();
        h.record(ep(1), p, &a);
        let keys: Vec<_> = block_keys(p.root(), &a, index.block_size()).collect();
        let all: EndpointSet = [ep(0), ep(1)].into_iter().collect();
        let mut m = PrefixMatches::default();
        index.lookup(&keys, &all, &mut m);
        assert_eq!(m.get(ep(1)).map(|m| m.blocks), Some(3));
        assert!(m.get(ep(0)).is_none());
        // Capacity 4: routing b (3 blocks) evicts a's two least recent (its tail) blocks.
        h.record(ep(1), p, &b);
        index.lookup(&keys, &all, &mut m);
        assert_eq!(m.get(ep(1)).map(|m| m.blocks), Some(1));
        assert_eq!(index.endpoint_entries(ep(1)), 4);
    }
}
