//! A least-recently-used set: the core's recency list ([`kvpick_scheduler::lru`]) plus a map from
//! key to its node.

use std::hash::Hash;

use kvpick_scheduler::lru::{LruList, LruSlab};
use kvpick_scheduler::prehashed::PrehashedMap;

/// The LRU set (keys must be uniform hashes: see [`PrehashedMap`]).
#[derive(Debug)]
pub struct LruSet<K> {
    nodes: PrehashedMap<K, u32>,
    slab: LruSlab<K>,
    list: LruList,
}

impl<K> Default for LruSet<K> {
    fn default() -> Self {
        Self {
            nodes: PrehashedMap::default(),
            slab: LruSlab::default(),
            list: LruList::default(),
        }
    }
}

impl<K: Copy + Eq + Hash> LruSet<K> {
    /// Whether `key` is present.
    pub fn contains(&self, key: &K) -> bool {
        self.nodes.contains_key(key)
    }

    /// Keys present.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Inserts `key` or makes it the most recent.
    pub fn touch(&mut self, key: K) {
        if let Some(&at) = self.nodes.get(&key) {
            self.slab.touch(&mut self.list, at);
        } else if let Some(at) = self.slab.push_front(&mut self.list, key) {
            self.nodes.insert(key, at);
        }
    }

    /// Removes and returns the least recently touched key.
    pub fn evict(&mut self) -> Option<K> {
        let at = self.slab.back(&self.list)?;
        let key = *self.slab.get(at);
        self.slab.remove(&mut self.list, at);
        self.nodes.remove(&key);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recent() {
        let mut l = LruSet::default();
        for k in [1, 2, 3, 1] {
            l.touch(k);
        }
        assert_eq!(l.len(), 3);
        assert_eq!(l.evict(), Some(2));
        assert_eq!(l.evict(), Some(3));
        assert_eq!(l.evict(), Some(1));
        assert_eq!(l.evict(), None);
        for k in 0..10_000 {
            l.touch(k % 7);
        }
        assert_eq!(l.len(), 7);
        assert_eq!(l.slab.len(), 7, "touching a present key allocates nothing");
        assert_eq!(l.evict(), Some(9_993 % 7));
    }
}
