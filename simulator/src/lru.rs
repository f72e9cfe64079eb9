//! A least-recently-used set with amortized O(1) touch and evict: a map from key to its last touch
//! stamp plus a queue of (stamp, key) in touch order whose stale entries are skipped lazily.

use std::collections::VecDeque;
use std::hash::Hash;

use crate::prehashed::PrehashedMap;

/// The LRU set (keys must be uniform hashes: see [`PrehashedMap`]).
#[derive(Debug)]
pub struct LruSet<K> {
    stamp: PrehashedMap<K, u64>,
    order: VecDeque<(u64, K)>,
    clock: u64,
}

impl<K> Default for LruSet<K> {
    fn default() -> Self {
        Self {
            stamp: PrehashedMap::default(),
            order: VecDeque::new(),
            clock: 0,
        }
    }
}

impl<K: Copy + Eq + Hash> LruSet<K> {
    /// Whether `key` is present.
    pub fn contains(&self, key: &K) -> bool {
        self.stamp.contains_key(key)
    }

    /// Keys present.
    pub fn len(&self) -> usize {
        self.stamp.len()
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.stamp.is_empty()
    }

    /// Inserts `key` or makes it the most recent.
    pub fn touch(&mut self, key: K) {
        self.clock += 1;
        self.stamp.insert(key, self.clock);
        self.order.push_back((self.clock, key));
        if self.order.len() > 4 * self.stamp.len() + 1024 {
            let stamp = &self.stamp;
            self.order.retain(|(t, k)| stamp.get(k) == Some(t));
        }
    }

    /// Removes and returns the least recently touched key.
    pub fn evict(&mut self) -> Option<K> {
        while let Some((t, k)) = self.order.pop_front() {
            if self.stamp.get(&k) == Some(&t) {
                self.stamp.remove(&k);
                return Some(k);
            }
        }
        None
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
        assert!(l.order.len() <= 4 * 7 + 1024 + 1);
    }
}
