//! Bookkeeping checks for tests and debugging: what must hold between any two steps.

use std::collections::HashSet;

use super::Engine;
use super::kv_cache::KvCache;

impl KvCache {
    /// Free queue, reference counts and cached map agree with each other.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = 0u32;
        let mut b = self.head;
        let mut prev = u32::MAX;
        while b != u32::MAX {
            if self.refs[b as usize] != 0 {
                return Err(format!("block {b} is in the free queue with holders"));
            }
            if self.prev[b as usize] != prev {
                return Err(format!("free queue broken at block {b}"));
            }
            seen += 1;
            if seen > self.capacity() {
                return Err("free queue has a cycle".into());
            }
            prev = b;
            b = self.next[b as usize];
        }
        let unheld = self.refs.iter().filter(|&&r| r == 0).count() as u32;
        if seen != self.free || unheld != self.free {
            return Err(format!(
                "free count {} but {seen} queued and {unheld} without holders",
                self.free
            ));
        }
        for (&h, &blk) in &self.cached {
            if self.hash[blk as usize] != Some(h) {
                return Err(format!(
                    "cached hash {h:x} points at block {blk} holding another"
                ));
            }
        }
        let hashed = self.hash.iter().filter(|h| h.is_some()).count();
        if hashed != self.cached.len() {
            return Err(format!(
                "{hashed} hashed blocks but {} cached",
                self.cached.len()
            ));
        }
        Ok(())
    }
}

impl Engine {
    /// Every block's holder count equals the sequences holding it; no sequence holds a block twice
    /// or more blocks than its tokens need; queues partition the live sequences; usage ≤ capacity.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.cache.check()?;
        let cap = self.cache.capacity() as usize;
        let mut holders = vec![0u32; cap];
        let bs = self.block_size.get();
        for seq in self.seqs.iter().flatten() {
            let mut mine = HashSet::new();
            for &b in &seq.blocks {
                if !mine.insert(b) {
                    return Err(format!("request {:?} holds block {b} twice", seq.id));
                }
                holders[b as usize] += 1;
            }
            if seq.blocks.len() as u32 > seq.tokens.len().div_ceil(bs as usize) as u32 {
                return Err(format!(
                    "request {:?} holds more blocks than tokens",
                    seq.id
                ));
            }
            if seq.computed > seq.tokens.len() as u32 {
                return Err(format!("request {:?} computed past its tokens", seq.id));
            }
        }
        for (b, &h) in holders.iter().enumerate() {
            if self.cache.refs(b as u32) != h {
                return Err(format!(
                    "block {b}: {} references but {h} holders",
                    self.cache.refs(b as u32)
                ));
            }
        }
        let live = self.seqs.iter().filter(|s| s.is_some()).count();
        let queued: HashSet<usize> = self.waiting.iter().chain(&self.running).copied().collect();
        if queued.len() != live || self.waiting.len() + self.running.len() != live {
            return Err(format!(
                "{live} live requests but {} waiting + {} running",
                self.waiting.len(),
                self.running.len()
            ));
        }
        if self.running.len() > self.profile.max_num_seqs as usize {
            return Err("more running than max_num_seqs".into());
        }
        if self.cache.usage() > 1.0 {
            return Err("KV usage above capacity".into());
        }
        Ok(())
    }
}
