//! One shard of the key → holders table: open addressing over 256-byte buckets of 16 slots.
//!
//! A slot is 16 bytes, the block key and a word (holders, group tag, rank; see
//! [`super::holders`]). A block goes into the first bucket with a free slot starting at its group's
//! home bucket, so the 8 blocks of a group usually share one bucket. Every bucket keeps a 16-bit
//! overflow counter (one bit in each slot's word): how many blocks whose home is at or before it
//! were placed after it. A search stops at the first bucket whose counter is 0, and a removal
//! decrements the counters it had incremented, so there are no tombstones (F14's scheme). The
//! table grows by 1.25× at 90% load, so it never sits half empty after a doubling.

use super::holders::{self, COUNTER_BIT, Kind, Sets};
use super::position::{ChainPos, TAG_BITS};
use crate::keys::BlockKey;

/// Slots per bucket.
pub(crate) const BUCKET: usize = 16;
const MAX_LOAD_PERCENT: usize = 90;
const MIN_BUCKETS: usize = 4;
const SATURATED: u16 = u16::MAX;

#[derive(Copy, Clone, Default, Debug)]
struct Slot {
    key: u64,
    word: u64,
}

/// 16 slots, aligned so that a bucket is two adjacent-line prefetch pairs.
#[derive(Copy, Clone, Default, Debug)]
#[repr(C, align(128))]
struct Bucket([Slot; BUCKET]);

impl Bucket {
    #[inline]
    fn counter(&self) -> u16 {
        let mut c = 0u16;
        for (i, s) in self.0.iter().enumerate() {
            c |= ((s.word >> 63) as u16) << i;
        }
        c
    }

    fn set_counter(&mut self, c: u16) {
        for (i, s) in self.0.iter_mut().enumerate() {
            s.word = (s.word & !COUNTER_BIT) | (u64::from((c >> i) & 1) << 63);
        }
    }

    fn free_slot(&self) -> Option<usize> {
        self.0.iter().position(|s| !holders::occupied(s.word))
    }
}

/// What removing tiers from a holding did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Removed {
    /// The endpoint did not hold the key.
    NotHeld,
    /// Some tier remains.
    Reduced,
    /// The (endpoint, key) entry is gone.
    Entry,
}

/// One shard: buckets, the holder-set slab, and counts.
#[derive(Debug)]
pub(crate) struct Table {
    buckets: Vec<Bucket>,
    sets: Sets,
    keys: usize,
    entries: usize,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            buckets: vec![Bucket::default(); MIN_BUCKETS],
            sets: Sets::default(),
            keys: 0,
            entries: 0,
        }
    }
}

impl Table {
    /// Distinct keys held.
    pub(crate) fn keys(&self) -> usize {
        self.keys
    }

    /// (endpoint, key) entries.
    pub(crate) fn entries(&self) -> usize {
        self.entries
    }

    /// The holder-set slab, to resolve [`Kind::Set`] words.
    #[inline]
    pub(crate) fn sets(&self) -> &Sets {
        &self.sets
    }

    /// The home bucket of a group tag.
    #[inline]
    pub(crate) fn home(&self, tag: u32) -> usize {
        ((u64::from(tag) * self.buckets.len() as u64) >> TAG_BITS) as usize
    }

    #[inline]
    fn next(&self, b: usize) -> usize {
        if b + 1 == self.buckets.len() {
            0
        } else {
            b + 1
        }
    }

    /// Reads one word of the home bucket, so that its cache lines are on their way before the
    /// probe needs them; returns it so the read is not optimised away.
    #[inline]
    pub(crate) fn touch(&self, home: usize) -> u64 {
        self.buckets.get(home).map_or(0, |b| b.0[0].word)
    }

    /// Finds the words of a group's keys (`keys[r]` is the key of rank `r`), starting at `home`;
    /// `out[r]` is the word of `keys[r]`, or 0 where it is absent.
    #[inline]
    pub(crate) fn probe(&self, home: usize, keys: &[BlockKey], out: &mut [u64]) {
        let n = keys.len().min(out.len());
        let mut want = [0u64; 8];
        for (w, k) in want.iter_mut().zip(keys) {
            *w = k.get();
        }
        let mut missing: u32 = (1 << n) - 1;
        let mut b = home;
        for _ in 0..self.buckets.len() {
            let Some(bucket) = self.buckets.get(b) else {
                return;
            };
            for s in &bucket.0 {
                let r = holders::rank(s.word);
                let hit = r < n && s.key == want[r] && holders::occupied(s.word);
                if hit {
                    out[r] = s.word;
                    missing &= !(1 << r);
                }
            }
            if missing == 0 || bucket.counter() == 0 {
                return;
            }
            b = self.next(b);
        }
    }

    fn find(&self, key: BlockKey, tag: u32) -> Option<(usize, usize)> {
        let mut b = self.home(tag);
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[b];
            if let Some(s) = bucket
                .0
                .iter()
                .position(|s| s.key == key.get() && holders::occupied(s.word))
            {
                return Some((b, s));
            }
            if bucket.counter() == 0 {
                return None;
            }
            b = self.next(b);
        }
        None
    }

    /// The tiers `endpoint` holds `key` in (0 if none).
    pub(crate) fn tiers(&self, key: BlockKey, pos: ChainPos, endpoint: u16) -> u8 {
        self.find(key, pos.tag()).map_or(0, |(b, s)| {
            let kind = holders::kind(self.buckets[b].0[s].word);
            self.sets.tiers(kind, endpoint)
        })
    }

    /// Adds `tiers` to `endpoint`'s holding of `key`; returns whether the entry is new.
    pub(crate) fn add(&mut self, key: BlockKey, pos: ChainPos, endpoint: u16, tiers: u8) -> bool {
        if let Some((b, s)) = self.find(key, pos.tag()) {
            let slot = &mut self.buckets[b].0[s];
            let (kind, added) = self.sets.add(holders::kind(slot.word), endpoint, tiers);
            slot.word = (slot.word & COUNTER_BIT) | holders::word(pos.tag(), pos.rank(), kind);
            self.entries += usize::from(added);
            return added;
        }
        if (self.keys + 1) * 100 > self.buckets.len() * BUCKET * MAX_LOAD_PERCENT {
            self.grow();
        }
        let (kind, _) = self.sets.add(Kind::Empty, endpoint, tiers);
        self.place(key.get(), holders::word(pos.tag(), pos.rank(), kind));
        self.keys += 1;
        self.entries += 1;
        true
    }

    /// Places a new key (counter bit of `word` clear) at the first free slot from its home.
    fn place(&mut self, key: u64, word: u64) {
        let mut b = self.home(holders::tag(word));
        loop {
            let bucket = &mut self.buckets[b];
            if let Some(s) = bucket.free_slot() {
                let slot = &mut bucket.0[s];
                slot.key = key;
                slot.word = (slot.word & COUNTER_BIT) | word;
                return;
            }
            let c = bucket.counter();
            if c != SATURATED {
                bucket.set_counter(c + 1);
            }
            b = self.next(b);
        }
    }

    /// Clears `tiers` from `endpoint`'s holding of `key`.
    pub(crate) fn remove(
        &mut self,
        key: BlockKey,
        pos: ChainPos,
        endpoint: u16,
        tiers: u8,
    ) -> Removed {
        let Some((b, s)) = self.find(key, pos.tag()) else {
            return Removed::NotHeld;
        };
        let slot = &mut self.buckets[b].0[s];
        let old = holders::kind(slot.word);
        let (kind, held, gone) = self.sets.remove(old, endpoint, tiers);
        if !held {
            return Removed::NotHeld;
        }
        let tag = holders::tag(slot.word);
        slot.word = (slot.word & COUNTER_BIT) | holders::word(tag, holders::rank(slot.word), kind);
        if gone {
            self.entries -= 1;
        }
        if kind == Kind::Empty {
            slot.key = 0;
            self.keys -= 1;
            self.unplace(self.home(tag), b);
        }
        if gone {
            Removed::Entry
        } else {
            Removed::Reduced
        }
    }

    /// Undoes the counter increments of a key placed in bucket `at` from home `home`.
    fn unplace(&mut self, home: usize, at: usize) {
        let mut b = home;
        while b != at {
            let bucket = &mut self.buckets[b];
            let c = bucket.counter();
            if c != SATURATED && c > 0 {
                bucket.set_counter(c - 1);
            }
            b = self.next(b);
        }
    }

    /// Rebuilds into 1.25× the buckets (tags in the words give every key's home).
    fn grow(&mut self) {
        let n = self.buckets.len() + (self.buckets.len() / 4).max(1);
        self.rebuild(n);
    }

    fn rebuild(&mut self, n: usize) {
        let old = std::mem::replace(&mut self.buckets, vec![Bucket::default(); n]);
        for bucket in &old {
            for s in &bucket.0 {
                if holders::occupied(s.word) {
                    self.place(s.key, s.word & !COUNTER_BIT);
                }
            }
        }
    }

    /// Heap bytes of the buckets (the slab is counted by the allocator).
    pub(crate) fn bucket_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::holders::GPU_ONLY;

    fn key(i: u64) -> BlockKey {
        BlockKey::from_raw(i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17))
    }

    #[test]
    fn add_find_remove_through_growth_and_collisions() {
        let mut t = Table::default();
        // Few distinct tags force long overflow chains.
        let pos = |i: u64| ChainPos::first(key(i % 7));
        for i in 0..2000u64 {
            assert!(t.add(key(i), pos(i), (i % 5) as u16, GPU_ONLY));
            assert!(!t.add(key(i), pos(i), (i % 5) as u16, 0b10));
        }
        assert_eq!((t.keys(), t.entries()), (2000, 2000));
        for i in 0..2000u64 {
            assert_eq!(t.tiers(key(i), pos(i), (i % 5) as u16), 0b11);
        }
        for i in (0..2000u64).step_by(2) {
            let e = (i % 5) as u16;
            assert_eq!(t.remove(key(i), pos(i), e, GPU_ONLY), Removed::Reduced);
            assert_eq!(t.remove(key(i), pos(i), e, 0b10), Removed::Entry);
            assert_eq!(t.remove(key(i), pos(i), e, 0b10), Removed::NotHeld);
        }
        assert_eq!((t.keys(), t.entries()), (1000, 1000));
        for i in 0..2000u64 {
            let want = if i % 2 == 0 { 0 } else { 0b11 };
            assert_eq!(t.tiers(key(i), pos(i), (i % 5) as u16), want, "key {i}");
        }
        for i in (1..2000u64).step_by(2) {
            t.remove(key(i), pos(i), (i % 5) as u16, 0b111);
        }
        assert_eq!((t.keys(), t.entries()), (0, 0));
        assert!(
            t.buckets.iter().all(|b| b.counter() == 0),
            "counters unwound"
        );
    }

    #[test]
    fn probe_finds_a_group_by_rank() {
        let mut t = Table::default();
        let keys: Vec<BlockKey> = (0..8).map(key).collect();
        let mut pos = ChainPos::first(keys[0]);
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                pos = pos.next(*k);
            }
            if i != 5 {
                t.add(*k, pos, 3, GPU_ONLY);
            }
        }
        let mut out = [0u64; 8];
        t.probe(t.home(ChainPos::first(keys[0]).tag()), &keys, &mut out);
        for (i, w) in out.iter().enumerate() {
            assert_eq!(holders::occupied(*w), i != 5, "rank {i}");
        }
    }
}
