//! One shard of the key → holders table: open addressing over 256-byte buckets of 16 slots.
//!
//! A slot is 16 bytes, the block key and a word (holders, group tag, rank; see
//! [`super::holders`]). A block goes into the first bucket with a free slot starting at its group's
//! home bucket, so the 8 blocks of a group usually share one bucket. Every bucket keeps an 8-bit
//! overflow counter (in a side array, 1 byte per 256): how many blocks whose home is at or before it
//! were placed after it. A search stops at the first bucket whose counter is 0, and a removal
//! decrements the counters it had incremented, so there are no tombstones (F14's scheme). The
//! table grows by 1.25× at 85% load, so it never sits half empty after a doubling.

use super::holders::{self, Kind, Sets};
use super::position::{ChainPos, GROUP, TAG_BITS};
use crate::keys::BlockKey;

/// Slots per bucket.
pub(crate) const BUCKET: usize = 16;
const MAX_LOAD_PERCENT: usize = 85;
const MIN_BUCKETS: usize = 4;
const SATURATED: u8 = u8::MAX;

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
    fn free_slot(&self) -> Option<usize> {
        self.0.iter().position(|s| !holders::occupied(s.word))
    }
}

/// Where a key is, or where it would be placed.
enum Seek {
    Found(usize, usize),
    Absent {
        home: usize,
        free: Option<(usize, usize)>,
    },
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

/// One shard: buckets, their overflow counters, the holder-set slab, and counts.
#[derive(Debug)]
pub(crate) struct Table {
    buckets: Vec<Bucket>,
    /// Per bucket: keys homed at or before it that were placed after it (saturating).
    overflow: Vec<u8>,
    sets: Sets,
    keys: usize,
    entries: usize,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            buckets: vec![Bucket::default(); MIN_BUCKETS],
            overflow: vec![0; MIN_BUCKETS],
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

    /// Reads one word per cache line of the home bucket (and of the next bucket when keys
    /// overflowed into it), so that every line a probe will need is on its way before the probe
    /// runs; returns them combined so the reads are not optimised away.
    #[inline]
    pub(crate) fn touch(&self, home: usize) -> u64 {
        let line = |b: &Bucket| b.0[0].word ^ b.0[4].word ^ b.0[8].word ^ b.0[12].word;
        let Some(bucket) = self.buckets.get(home) else {
            return 0;
        };
        let mut sink = line(bucket);
        if self.overflow.get(home).is_some_and(|&c| c != 0) {
            sink ^= self.buckets.get(self.next(home)).map_or(0, line);
        }
        sink
    }

    /// Finds the words of a group's keys (`keys[r]` is the key of rank `r`), starting at `home`;
    /// `out[r]` is the word of `keys[r]`, or 0 where it is absent (entries past `keys.len()` are
    /// 0 too).
    #[inline]
    pub(crate) fn probe(&self, home: usize, keys: &[BlockKey], out: &mut [u64; GROUP]) {
        let n = keys.len().min(GROUP);
        let mut want = [0u64; GROUP];
        for (w, k) in want.iter_mut().zip(keys) {
            *w = k.get();
        }
        *out = [0; GROUP];
        let mut b = home;
        for _ in 0..self.buckets.len() {
            let Some(bucket) = self.buckets.get(b) else {
                return;
            };
            // Branch-free; a slot matches at most one rank since keys are unique in a table. An
            // empty slot has key 0 and word 0 (but for the counter bit): if it "matches" a key 0
            // it contributes nothing.
            for s in &bucket.0 {
                let r = holders::rank(s.word) & (GROUP - 1);
                let hit = u64::from(s.key == want[r]).wrapping_neg();
                out[r] |= s.word & hit;
            }
            if out[..n].iter().all(|&w| holders::occupied(w)) || self.overflow[b] == 0 {
                break;
            }
            b = self.next(b);
        }
        for w in out.iter_mut().skip(n) {
            *w = 0;
        }
    }

    fn find(&self, key: BlockKey, tag: u32) -> Option<(usize, usize)> {
        match self.seek(key, tag) {
            Seek::Found(b, s) => Some((b, s)),
            Seek::Absent { .. } => None,
        }
    }

    /// One walk from the key's home: where it is, or where it would go.
    fn seek(&self, key: BlockKey, tag: u32) -> Seek {
        let home = self.home(tag);
        let mut b = home;
        let mut free = None;
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[b];
            for (s, slot) in bucket.0.iter().enumerate() {
                if slot.key == key.get() && holders::occupied(slot.word) {
                    return Seek::Found(b, s);
                }
                if free.is_none() && !holders::occupied(slot.word) {
                    free = Some((b, s));
                }
            }
            if self.overflow[b] == 0 {
                break;
            }
            b = self.next(b);
        }
        Seek::Absent { home, free }
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
        if (self.keys + 1) * 100 > self.buckets.len() * BUCKET * MAX_LOAD_PERCENT {
            self.grow();
        }
        match self.seek(key, pos.tag()) {
            Seek::Found(b, s) => {
                let slot = &mut self.buckets[b].0[s];
                let (kind, added) = self.sets.add(holders::kind(slot.word), endpoint, tiers);
                slot.word = holders::word(pos.tag(), pos.rank(), kind);
                self.entries += usize::from(added);
                added
            }
            Seek::Absent { home, free } => {
                let (kind, _) = self.sets.add(Kind::Empty, endpoint, tiers);
                let word = holders::word(pos.tag(), pos.rank(), kind);
                match free {
                    Some((b, s)) => {
                        self.bump(home, b);
                        self.buckets[b].0[s] = Slot {
                            key: key.get(),
                            word,
                        };
                    }
                    None => self.place(key.get(), word),
                }
                self.keys += 1;
                self.entries += 1;
                true
            }
        }
    }

    /// Counts a key homed at `home` and placed in bucket `at` as overflowing the buckets between.
    fn bump(&mut self, home: usize, at: usize) {
        let mut b = home;
        while b != at {
            self.overflow[b] = self.overflow[b].saturating_add(1);
            b = self.next(b);
        }
    }

    /// Places a new key at the first free slot from its home.
    fn place(&mut self, key: u64, word: u64) {
        let home = self.home(holders::tag(word));
        let mut b = home;
        loop {
            if let Some(s) = self.buckets[b].free_slot() {
                self.bump(home, b);
                self.buckets[b].0[s] = Slot { key, word };
                return;
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
        slot.word = holders::word(tag, holders::rank(slot.word), kind);
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
            if self.overflow[b] != SATURATED {
                self.overflow[b] -= 1;
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
        self.overflow = vec![0; n];
        for bucket in &old {
            for s in &bucket.0 {
                if holders::occupied(s.word) {
                    self.place(s.key, s.word);
                }
            }
        }
    }

    /// Heap bytes of the buckets (the slab is counted by the allocator).
    pub(crate) fn bucket_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>() + self.overflow.capacity()
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
        let pos = |i: u64| ChainPos::first(key(i % 61));
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
        assert!(t.overflow.iter().all(|&c| c == 0), "counters unwound");
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
        let mut short = [0u64; 8];
        t.probe(
            t.home(ChainPos::first(keys[0]).tag()),
            &keys[..3],
            &mut short,
        );
        assert!(short[..3].iter().all(|&w| holders::occupied(w)));
        assert!(short[3..].iter().all(|&w| w == 0));
        for (i, w) in out.iter().enumerate() {
            assert_eq!(holders::occupied(*w), i != 5, "rank {i}");
        }
    }
}
