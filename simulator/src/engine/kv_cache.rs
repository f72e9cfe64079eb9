//! A paged KV cache with automatic prefix caching, shaped like vLLM's block pool.
//!
//! Blocks are reference counted. A full block computed by a request is *cached* under its chained
//! engine hash, so a later request whose prompt starts with the same blocks takes them instead of
//! recomputing them. A block whose last holder finishes goes to the back of the free queue but keeps
//! its hash: it can still be hit until it reaches the front and is reused, which evicts it (and emits
//! `BlockRemoved`). The free queue is a doubly linked list over block ids, so taking a cached free
//! block out of the middle on a hit is O(1), as in vLLM.

use kvpick_scheduler::events::{BlockRemoved, EngineHash, KvEvent, Medium};

use kvpick_scheduler::prehashed::PrehashedMap;

/// A block's index in the pool.
pub type BlockId = u32;

const NIL: u32 = u32::MAX;

/// The engine's block pool.
#[derive(Debug)]
pub struct KvCache {
    pub(super) refs: Vec<u32>,
    /// Engine hash of a cached block, `None` when the block holds no cached content.
    pub(super) hash: Vec<Option<u64>>,
    pub(super) prev: Vec<u32>,
    pub(super) next: Vec<u32>,
    pub(super) head: u32,
    tail: u32,
    pub(super) free: u32,
    pub(super) cached: PrehashedMap<u64, BlockId>,
}

impl KvCache {
    /// A pool of `blocks` free, empty blocks.
    pub fn new(blocks: u32) -> Self {
        let n = blocks as usize;
        let mut c = Self {
            refs: vec![0; n],
            hash: vec![None; n],
            prev: vec![NIL; n],
            next: vec![NIL; n],
            head: NIL,
            tail: NIL,
            free: 0,
            cached: PrehashedMap::default(),
        };
        for b in 0..blocks {
            c.push_back(b);
        }
        c
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> u32 {
        self.refs.len() as u32
    }

    /// Blocks with no holder (empty or cached-evictable).
    pub fn free_blocks(&self) -> u32 {
        self.free
    }

    /// Blocks with at least one holder.
    pub fn used_blocks(&self) -> u32 {
        self.capacity() - self.free
    }

    /// vLLM's `kv_cache_usage_perc`: the share of blocks not in the free queue.
    pub fn usage(&self) -> f64 {
        if self.refs.is_empty() {
            return 0.0;
        }
        self.used_blocks() as f64 / self.capacity() as f64
    }

    /// Blocks currently cached (with or without holders).
    pub fn cached_blocks(&self) -> usize {
        self.cached.len()
    }

    /// How many of `hashes`, from the first, are cached.
    pub fn prefix_hits(&self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.cached.contains_key(h))
            .count()
    }

    /// The cached block for `hash`.
    pub fn lookup(&self, hash: u64) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// Whether `block` has no holder (a hit on it costs a free block).
    pub fn is_free(&self, block: BlockId) -> bool {
        self.refs[block as usize] == 0
    }

    /// Adds a holder to `block`, taking it out of the free queue if it was free.
    pub fn acquire(&mut self, block: BlockId) {
        if self.refs[block as usize] == 0 {
            self.unlink(block);
        }
        self.refs[block as usize] += 1;
    }

    /// Takes the least recently freed block, evicting its cached content (recorded in `events`).
    pub fn allocate(&mut self, events: &mut Vec<KvEvent>) -> Option<BlockId> {
        let b = self.head;
        if b == NIL {
            return None;
        }
        self.unlink(b);
        self.refs[b as usize] = 1;
        if let Some(h) = self.hash[b as usize].take() {
            self.cached.remove(&h);
            push_removed(events, h);
        }
        Some(b)
    }

    /// Drops one holder of each of `blocks`, last block first, so that a request's tail blocks are
    /// evicted before its head blocks (which other requests are likelier to share).
    pub fn release(&mut self, blocks: &[BlockId]) {
        for &b in blocks.iter().rev() {
            let r = &mut self.refs[b as usize];
            debug_assert!(*r > 0, "block {b} released twice");
            *r = r.saturating_sub(1);
            if *r == 0 {
                // Like vLLM, empty blocks too go to the back of the queue.
                self.push_back(b);
            }
        }
    }

    /// Caches `block` (held, full) under `hash`. Returns `false` when another block already caches
    /// that content (two requests computed it concurrently): then this one stays uncached.
    pub fn register(&mut self, block: BlockId, hash: u64) -> bool {
        if self.cached.contains_key(&hash) || self.hash[block as usize].is_some() {
            return false;
        }
        self.cached.insert(hash, block);
        self.hash[block as usize] = Some(hash);
        true
    }

    /// Holders of `block` (for invariant checks).
    pub fn refs(&self, block: BlockId) -> u32 {
        self.refs[block as usize]
    }

    fn unlink(&mut self, b: BlockId) {
        let (p, n) = (self.prev[b as usize], self.next[b as usize]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[b as usize] = NIL;
        self.next[b as usize] = NIL;
        self.free -= 1;
    }

    fn push_back(&mut self, b: BlockId) {
        self.prev[b as usize] = self.tail;
        self.next[b as usize] = NIL;
        if self.tail == NIL {
            self.head = b;
        } else {
            self.next[self.tail as usize] = b;
        }
        self.tail = b;
        self.free += 1;
    }
}

/// Appends an evicted hash as its own `BlockRemoved` in KV-cache group 0, as vLLM's block pool
/// emits one event per removed block.
fn push_removed(events: &mut Vec<KvEvent>, hash: u64) {
    events.push(KvEvent::BlockRemoved(BlockRemoved {
        block_hashes: vec![EngineHash(hash)],
        medium: Some(Medium::Gpu),
        group_idx: Some(0),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_blocks_stay_cached_until_reused_lru() {
        let mut c = KvCache::new(3);
        let mut ev = Vec::new();
        let a = c.allocate(&mut ev).unwrap();
        let b = c.allocate(&mut ev).unwrap();
        assert!(c.register(a, 100) && c.register(b, 200));
        c.release(&[a, b]); // b freed first (tail first), then a
        assert_eq!((c.free_blocks(), c.cached_blocks()), (3, 2));
        assert_eq!(c.prefix_hits(&[100, 200, 300]), 2);
        // The never-used block goes first, then b (freed before a).
        let x = c.allocate(&mut ev).unwrap();
        assert!(x != a && x != b && ev.is_empty());
        assert_eq!(c.allocate(&mut ev), Some(b));
        assert_eq!(ev.len(), 1);
        assert_eq!(c.prefix_hits(&[100, 200]), 1);
        // A hit on a free cached block takes it out of the queue.
        c.acquire(a);
        assert_eq!(c.free_blocks(), 0);
        assert_eq!(c.allocate(&mut ev), None);
        assert!(!c.register(b, 100), "content already cached elsewhere");
    }
}
