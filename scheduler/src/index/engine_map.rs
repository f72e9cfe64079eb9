//! One endpoint's map from engine block hash to its block key and chain position.
//!
//! It resolves `BlockRemoved` hashes and `parent_block_hash`, and it is the endpoint's key set, so
//! clearing an endpoint costs O(its entries). 20 bytes per entry, stored column-wise (hash, key,
//! position) in buckets of 8 with an 8-bit overflow counter per bucket, as in the holder table: no
//! tombstones, 92% maximum load, growth by 1.125× (it is only read by its writer, so longer
//! probes cost little and memory counts more). vLLM's hashes are not guaranteed to be well
//! mixed, so the home bucket comes from a multiply-fold of the hash.

use super::position::ChainPos;
use crate::keys::BlockKey;

const BUCKET: usize = 8;
const MAX_LOAD_PERCENT: usize = 92;
const MIN_BUCKETS: usize = 2;

/// The engine-side name of an index block: the engine hash, or for the `i`-th index block cut
/// from a larger event block, the hash mixed with `i`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct EngineRef(pub(crate) u64);

impl EngineRef {
    /// The `part`-th index block of engine block `hash` (part 0 is the hash itself).
    #[inline]
    pub(crate) fn new(hash: u64, part: u32) -> Self {
        if part == 0 {
            Self(hash)
        } else {
            Self(hash ^ mix(u64::from(part) ^ 0x5bd1_e995_7a3c_9d01))
        }
    }
}

#[inline]
fn mix(x: u64) -> u64 {
    let m = u128::from(x) * 0x9E37_79B9_7F4A_7C15;
    (m as u64) ^ ((m >> 64) as u64)
}

/// An engine hash map with column storage.
#[derive(Debug)]
pub(crate) struct EngineMap {
    hashes: Vec<u64>,
    keys: Vec<u64>,
    pos: Vec<u32>,
    overflow: Vec<u8>,
    len: usize,
    hand: usize,
}

impl Default for EngineMap {
    fn default() -> Self {
        Self::with_buckets(MIN_BUCKETS)
    }
}

impl EngineMap {
    fn with_buckets(n: usize) -> Self {
        Self {
            hashes: vec![0; n * BUCKET],
            keys: vec![0; n * BUCKET],
            pos: vec![0; n * BUCKET],
            overflow: vec![0; n],
            len: 0,
            hand: 0,
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes of its columns.
    pub(crate) fn bytes(&self) -> usize {
        self.hashes.capacity() * 8
            + self.keys.capacity() * 8
            + self.pos.capacity() * 4
            + self.overflow.capacity()
    }

    #[inline]
    fn home(&self, r: EngineRef) -> usize {
        ((u128::from(mix(r.0)) * self.overflow.len() as u128) >> 64) as usize
    }

    #[inline]
    fn next(&self, b: usize) -> usize {
        if b + 1 == self.overflow.len() {
            0
        } else {
            b + 1
        }
    }

    fn find(&self, r: EngineRef) -> Option<usize> {
        self.seek(r).ok()
    }

    /// One walk from the home of `r`: its index, or the first free index on the way (if any).
    fn seek(&self, r: EngineRef) -> Result<usize, Option<usize>> {
        let mut b = self.home(r);
        let mut free = None;
        for _ in 0..self.overflow.len() {
            let base = b * BUCKET;
            for i in base..base + BUCKET {
                if self.hashes[i] == r.0 && self.pos[i] != 0 {
                    return Ok(i);
                }
            }
            if free.is_none() {
                free = (base..base + BUCKET).find(|&i| self.pos[i] == 0);
            }
            if self.overflow[b] == 0 {
                break;
            }
            b = self.next(b);
        }
        Err(free)
    }

    /// The key and position of `r`.
    pub(crate) fn get(&self, r: EngineRef) -> Option<(BlockKey, ChainPos)> {
        let i = self.find(r)?;
        Some((
            BlockKey::from_raw(self.keys[i]),
            ChainPos::from_raw(self.pos[i])?,
        ))
    }

    /// Maps `r` to (`key`, `pos`); returns what it mapped to before.
    pub(crate) fn insert(
        &mut self,
        r: EngineRef,
        key: BlockKey,
        pos: ChainPos,
    ) -> Option<(BlockKey, ChainPos)> {
        if (self.len + 1) * 100 > self.overflow.len() * BUCKET * MAX_LOAD_PERCENT {
            let n = self.overflow.len() + (self.overflow.len() / 8).max(1);
            self.rebuild(n);
        }
        match self.seek(r) {
            Ok(i) => {
                let old = (
                    BlockKey::from_raw(self.keys[i]),
                    ChainPos::from_raw(self.pos[i])?,
                );
                self.keys[i] = key.get();
                self.pos[i] = pos.raw();
                Some(old)
            }
            Err(Some(i)) => {
                let (home, at) = (self.home(r), i / BUCKET);
                let mut b = home;
                while b != at {
                    self.overflow[b] = self.overflow[b].saturating_add(1);
                    b = self.next(b);
                }
                self.hashes[i] = r.0;
                self.keys[i] = key.get();
                self.pos[i] = pos.raw();
                self.len += 1;
                None
            }
            Err(None) => {
                self.place(r.0, key.get(), pos.raw());
                self.len += 1;
                None
            }
        }
    }

    fn place(&mut self, hash: u64, key: u64, pos: u32) {
        let mut b = self.home(EngineRef(hash));
        loop {
            let base = b * BUCKET;
            if let Some(i) = (base..base + BUCKET).find(|&i| self.pos[i] == 0) {
                self.hashes[i] = hash;
                self.keys[i] = key;
                self.pos[i] = pos;
                return;
            }
            self.overflow[b] = self.overflow[b].saturating_add(1);
            b = self.next(b);
        }
    }

    /// Unmaps `r`; returns what it mapped to.
    pub(crate) fn remove(&mut self, r: EngineRef) -> Option<(BlockKey, ChainPos)> {
        let i = self.find(r)?;
        Some(self.take(i))
    }

    fn take(&mut self, i: usize) -> (BlockKey, ChainPos) {
        let pos = ChainPos::from_raw(self.pos[i]);
        let key = BlockKey::from_raw(self.keys[i]);
        self.pos[i] = 0;
        self.len -= 1;
        let (home, at) = (self.home(EngineRef(self.hashes[i])), i / BUCKET);
        let mut b = home;
        while b != at {
            if self.overflow[b] != u8::MAX {
                self.overflow[b] -= 1;
            }
            b = self.next(b);
        }
        // Occupied slots always hold a position, so `pos` is `Some`; fall back harmlessly.
        (key, pos.unwrap_or_else(|| ChainPos::first(key)))
    }

    /// Removes and returns the entry under the clock hand and moves the hand on (eviction).
    pub(crate) fn evict_next(&mut self) -> Option<(EngineRef, BlockKey, ChainPos)> {
        if self.len == 0 {
            return None;
        }
        let n = self.pos.len();
        for _ in 0..n {
            let i = self.hand % n;
            self.hand = (i + 1) % n;
            if self.pos[i] != 0 {
                let hash = EngineRef(self.hashes[i]);
                let (key, pos) = self.take(i);
                return Some((hash, key, pos));
            }
        }
        None
    }

    /// Every entry, emptying the map (and returning its memory).
    pub(crate) fn drain(&mut self) -> Vec<(BlockKey, ChainPos)> {
        let out = self
            .keys
            .iter()
            .zip(&self.pos)
            .filter_map(|(&k, &p)| Some((BlockKey::from_raw(k), ChainPos::from_raw(p)?)))
            .collect();
        *self = Self::default();
        out
    }

    /// Every entry, in storage order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (EngineRef, BlockKey, ChainPos)> + '_ {
        (0..self.pos.len()).filter_map(|i| {
            let pos = ChainPos::from_raw(self.pos[i])?;
            Some((
                EngineRef(self.hashes[i]),
                BlockKey::from_raw(self.keys[i]),
                pos,
            ))
        })
    }

    fn rebuild(&mut self, buckets: usize) {
        let old = std::mem::replace(self, Self::with_buckets(buckets));
        for i in 0..old.pos.len() {
            if old.pos[i] != 0 {
                self.place(old.hashes[i], old.keys[i], old.pos[i]);
            }
        }
        self.len = old.len;
        self.hand = old.hand % self.pos.len().max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove_evict_with_badly_mixed_hashes() {
        let mut m = EngineMap::default();
        let pos = |k: u64| ChainPos::first(BlockKey::from_raw(k));
        // Sequential hashes: vLLM's int hashes need not be uniform.
        for h in 0..5000u64 {
            assert_eq!(
                m.insert(EngineRef(h), BlockKey::from_raw(h + 1), pos(h)),
                None
            );
        }
        assert_eq!(m.len(), 5000);
        let old = m.insert(EngineRef(7), BlockKey::from_raw(99), pos(7));
        assert_eq!(old, Some((BlockKey::from_raw(8), pos(7))));
        for h in (0..5000u64).step_by(3) {
            assert!(m.remove(EngineRef(h)).is_some());
            assert!(m.remove(EngineRef(h)).is_none());
        }
        for h in 0..5000u64 {
            assert_eq!(m.get(EngineRef(h)).is_some(), h % 3 != 0, "hash {h}");
        }
        let before = m.len();
        let evicted: Vec<_> = (0..10).filter_map(|_| m.evict_next()).collect();
        assert_eq!(evicted.len(), 10);
        assert_eq!(m.len(), before - 10);
        for (r, _, _) in &evicted {
            assert!(m.get(*r).is_none());
        }
        assert_eq!(m.iter().count(), m.len());
        assert_eq!(m.drain().len(), before - 10);
        assert_eq!(m.len(), 0);
        assert!(m.overflow.iter().all(|&c| c == 0));
    }

    #[test]
    fn parts_of_a_hash_are_distinct() {
        let a = EngineRef::new(42, 0);
        assert_eq!(a, EngineRef(42));
        assert_ne!(EngineRef::new(42, 1), a);
        assert_ne!(EngineRef::new(42, 1), EngineRef::new(42, 2));
    }
}
