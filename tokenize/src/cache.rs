//! A content-addressed cache of token ids with a byte budget and LRU eviction.
//!
//! Keys are 128-bit seeded hashes of (tokenizer, segment text), so a segment's text is never stored:
//! a collision would need 2^64 work, and the seed is drawn per process so it cannot be planned
//! offline (a collision would only mis-route a request, never change what the pod computes).
//! Sharded so that concurrent requests rarely meet on a lock; each shard is the core's recency list
//! over a slab ([`kvpick_scheduler::lru`]), so a hit is a hash lookup and two index swaps, with no
//! allocation.

use std::sync::Arc;

use kvpick_scheduler::lru::{LruList, LruSlab};
use kvpick_scheduler::prehashed::PrehashedMap;
use parking_lot::Mutex;

const SHARDS: usize = 16;
/// Bytes charged per entry besides its ids: key, links, Arc header, map slot.
pub const ENTRY_OVERHEAD: usize = 96;

/// A segment's cache key: 128 bits of seeded xxh3 (so a uniform hash no outsider can choose: the
/// map uses its low bits as they are).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentKey(pub u128);

#[derive(Debug)]
struct Entry {
    key: SegmentKey,
    ids: Arc<[u32]>,
}

#[derive(Debug, Default)]
struct Shard {
    map: PrehashedMap<SegmentKey, u32>,
    slab: LruSlab<Entry>,
    recency: LruList,
    bytes: usize,
}

impl Shard {
    fn get(&mut self, key: SegmentKey) -> Option<Arc<[u32]>> {
        let at = *self.map.get(&key)?;
        self.slab.touch(&mut self.recency, at);
        Some(self.slab.get(at).ids.clone())
    }

    fn evict_lru(&mut self) {
        let Some(at) = self.slab.back(&self.recency) else {
            return;
        };
        let entry = self.slab.get_mut(at);
        self.map.remove(&entry.key);
        // The freed node keeps its value until reused: drop the ids now, they are what the
        // budget counts.
        let ids = std::mem::replace(&mut entry.ids, Arc::from(Vec::new()));
        self.bytes -= charge(ids.len());
        self.slab.remove(&mut self.recency, at);
    }

    fn insert(&mut self, key: SegmentKey, ids: Arc<[u32]>, budget: usize) {
        let cost = charge(ids.len());
        if cost > budget {
            return;
        }
        if let Some(&at) = self.map.get(&key) {
            // Same content, same ids: just refresh.
            self.slab.touch(&mut self.recency, at);
            return;
        }
        while self.bytes + cost > budget && !self.recency.is_empty() {
            self.evict_lru();
        }
        if let Some(at) = self.slab.push_front(&mut self.recency, Entry { key, ids }) {
            self.map.insert(key, at);
            self.bytes += cost;
        }
    }
}

fn charge(len: usize) -> usize {
    len * std::mem::size_of::<u32>() + ENTRY_OVERHEAD
}

/// Token ids by segment content, shared by all requests and models.
#[derive(Debug)]
pub struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
    shard_budget: usize,
}

impl TokenCache {
    /// A cache holding at most `budget_bytes` (ids plus per-entry overhead). Zero disables it.
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_budget: budget_bytes / SHARDS,
        }
    }

    /// Whether the cache can hold anything.
    pub fn is_enabled(&self) -> bool {
        self.shard_budget > ENTRY_OVERHEAD
    }

    fn shard(&self, key: SegmentKey) -> &Mutex<Shard> {
        &self.shards[(key.0 >> 64) as usize % SHARDS]
    }

    /// The ids cached for `key`, marking them most recently used.
    pub fn get(&self, key: SegmentKey) -> Option<Arc<[u32]>> {
        if !self.is_enabled() {
            return None;
        }
        self.shard(key).lock().get(key)
    }

    /// Caches `ids` for `key`, evicting least recently used entries of its shard to fit.
    pub fn insert(&self, key: SegmentKey, ids: Arc<[u32]>) {
        if !self.is_enabled() {
            return;
        }
        self.shard(key).lock().insert(key, ids, self.shard_budget);
    }

    /// Bytes charged now (ids plus overhead), at most the budget.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn key(shard: u128, n: u128) -> SegmentKey {
        SegmentKey((shard << 64) | n)
    }

    #[test]
    fn evicts_least_recently_used_first() {
        // One shard's budget fits exactly three 1-id entries.
        let cache = TokenCache::new(SHARDS * 3 * charge(1));
        for n in 0..3 {
            cache.insert(key(0, n), Arc::from(vec![n as u32]));
        }
        assert!(cache.get(key(0, 0)).is_some()); // 0 is now the most recent
        cache.insert(key(0, 3), Arc::from(vec![3]));
        assert!(cache.get(key(0, 1)).is_none(), "1 was least recently used");
        for n in [0, 2, 3] {
            assert_eq!(cache.get(key(0, n)).as_deref(), Some(&[n as u32][..]));
        }
        assert_eq!(cache.bytes(), 3 * charge(1));
    }

    #[test]
    fn disabled_and_oversized() {
        let off = TokenCache::new(0);
        off.insert(key(0, 1), Arc::from(vec![1]));
        assert!(off.get(key(0, 1)).is_none());
        let small = TokenCache::new(SHARDS * charge(2));
        small.insert(key(0, 1), Arc::from(vec![0; 100]));
        assert!(
            small.is_empty(),
            "an entry larger than a shard is not cached"
        );
    }

    proptest! {
        #[test]
        fn stays_within_budget_and_returns_what_was_stored(
            ops in proptest::collection::vec((0u128..40, 0usize..30, any::<bool>()), 1..400),
            budget in 0usize..20_000,
        ) {
            let cache = TokenCache::new(budget);
            let mut model: HashMap<u128, usize> = HashMap::new();
            for (k, len, is_insert) in ops {
                let sk = SegmentKey(k.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
                if is_insert {
                    let len = model.get(&k).copied().unwrap_or(len);
                    model.insert(k, len);
                    cache.insert(sk, Arc::from(vec![k as u32; len]));
                } else if let Some(ids) = cache.get(sk) {
                    prop_assert_eq!(Some(&ids.len()), model.get(&k));
                    prop_assert!(ids.iter().all(|&i| i == k as u32));
                }
                prop_assert!(cache.bytes() <= budget);
            }
        }
    }
}
