//! One shard of the key → holders table: open addressing over 256-byte buckets, rank-indexed.
//!
//! A bucket has 16 slots, two per rank: the block of rank `r` in its group (depth mod 8) can only
//! sit in slot `s` or `8 + s`, `s = (r + tag) mod 8`. (Rotating by the group tag keeps the ranks
//! balanced when chains are short: rank 0 is the most common, and without it every chain's first
//! block would compete for the same two slots.) Keys and words are stored apart, so a bucket is
//! four cache lines: the keys of slots 0–7, of slots 8–15, then their words (holders, group tag,
//! rank; see [`super::holders`]). A lookup of a group compares each of its 8 keys with the two
//! keys of its rank and picks the word of the one that matches: 16 compares, no scan, no branch.
//!
//! A block goes into the first bucket from its group's home with a free slot of its rank. Every
//! bucket keeps an 8-bit overflow counter (in a side array, 1 byte per 256, small enough to stay
//! cached): how many blocks whose home is at or before it were placed after it. A search stops at
//! the first bucket whose counter is 0, and a removal decrements the counters it had incremented,
//! so there are no tombstones (F14's scheme). The table grows by 1.25× when the slots of any rank
//! reach [`MAX_LOAD_PERCENT`], so it never sits half empty after a doubling, and a free slot of
//! every rank always exists; large tables grow in whole huge pages.

use super::holders::{self, Kind, Sets};
use super::pages::{HUGE, Words};
use super::position::{ChainPos, GROUP, TAG_BITS, tag_of};
use crate::keys::BlockKey;

/// Slots per bucket: two per rank.
const SLOTS: usize = 2 * GROUP;
/// `u64`s per bucket: keys, then words.
const CELLS: usize = 2 * SLOTS;
/// Buckets per huge page.
const HUGE_BUCKETS: usize = HUGE / (CELLS * 8);
const MAX_LOAD_PERCENT: usize = 75;
/// Buckets a lookup touches ahead per group, at most.
const TOUCH: usize = 3;
const MIN_BUCKETS: usize = 4;
const SATURATED: u8 = u8::MAX;

type Bucket = [u64; CELLS];

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
    cells: Words,
    buckets: usize,
    /// Per bucket: keys homed at or before it that were placed after it (saturating).
    overflow: Vec<u8>,
    sets: Sets,
    keys: usize,
    entries: usize,
    /// Keys per slot rank.
    per_rank: [usize; GROUP],
}

impl Default for Table {
    fn default() -> Self {
        Self::with_buckets(MIN_BUCKETS)
    }
}

/// The slot rank of the block of rank `rank` in the group of tag `tag`.
#[inline]
fn slot_rank(tag: u32, rank: usize) -> usize {
    (rank + tag as usize) % GROUP
}

/// ORs into `got[s]` the word of the slot of `bucket` of slot rank `s` that holds `want[s]`
/// (nothing if neither does). Keys are unique in a table, so at most one slot matches; an empty
/// slot has key 0 and word 0, so if it "matches" it contributes nothing. No branch; the four
/// lines are read as four arrays, which the compiler vectorises.
#[inline]
fn match_bucket(bucket: &Bucket, want: &[u64; GROUP], got: &mut [u64; GROUP]) {
    let (lines, _) = bucket.as_chunks::<GROUP>();
    let [keys0, keys1, words0, words1] = lines else {
        return;
    };
    for s in 0..GROUP {
        let m0 = u64::from(keys0[s] == want[s]).wrapping_neg();
        let m1 = u64::from(keys1[s] == want[s]).wrapping_neg();
        got[s] |= (words0[s] & m0) | (words1[s] & m1);
    }
}

#[inline]
fn key_of(bucket: &Bucket, slot: usize) -> u64 {
    bucket[slot]
}

#[inline]
fn word_of(bucket: &Bucket, slot: usize) -> u64 {
    bucket[SLOTS + slot]
}

impl Table {
    fn with_buckets(n: usize) -> Self {
        Self {
            cells: Words::zeroed(n * CELLS),
            buckets: n,
            overflow: vec![0; n],
            sets: Sets::default(),
            keys: 0,
            entries: 0,
            per_rank: [0; GROUP],
        }
    }

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

    #[inline]
    fn all(&self) -> &[Bucket] {
        self.cells.get().as_chunks().0
    }

    #[inline]
    fn all_mut(&mut self) -> &mut [Bucket] {
        self.cells.get_mut().as_chunks_mut().0
    }

    /// The home bucket of a group tag.
    #[inline]
    pub(crate) fn home(&self, tag: u32) -> usize {
        ((u64::from(tag) * self.buckets as u64) >> TAG_BITS) as usize
    }

    #[inline]
    fn next(&self, b: usize) -> usize {
        if b + 1 == self.buckets { 0 } else { b + 1 }
    }

    /// Reads one word per cache line of the home bucket.
    #[inline]
    pub(crate) fn touch_home(&self, home: usize) -> u64 {
        self.all()
            .get(home)
            .map_or(0, |b| b[0] ^ b[8] ^ b[16] ^ b[24])
    }

    /// Reads one word per cache line of the buckets after the home bucket that keys
    /// homed there may have overflowed into (up to [`TOUCH`] of them, as the counters say), so
    /// that every line a probe will need is on its way before the probe runs; returns them
    /// combined so the reads are not optimised away.
    #[inline]
    pub(crate) fn touch(&self, home: usize) -> u64 {
        let all = self.all();
        let lines = |b: &Bucket| b[0] ^ b[8] ^ b[16] ^ b[24];
        let mut sink = 0;
        let mut b = home;
        for _ in 0..TOUCH.min(self.buckets) {
            if self.overflow.get(b).is_none_or(|&c| c == 0) {
                break;
            }
            b = self.next(b);
            sink ^= all.get(b).map_or(0, lines);
        }
        sink
    }

    /// Finds the words of a group's keys (`keys[r]` is the key of rank `r`), starting at `home`;
    /// `out[r]` is the word of `keys[r]`, or 0 where it is absent (entries past `keys.len()` are
    /// 0 too).
    #[inline]
    pub(crate) fn probe(&self, home: usize, keys: &[BlockKey], out: &mut [u64; GROUP]) {
        let Some(first) = keys.first() else { return };
        // Slot order: `want[s]` is the key expected in slots `s` and `8 + s`, i.e. the keys
        // rotated by the tag, read out of a doubled copy (missing ranks stay 0).
        let turn = tag_of(*first) as usize % GROUP;
        let mut twice = [0u64; 2 * GROUP];
        for (r, k) in keys.iter().enumerate().take(GROUP) {
            twice[r] = k.get();
            twice[r + GROUP] = k.get();
        }
        let mut want = [0u64; GROUP];
        want.copy_from_slice(&twice[GROUP - turn..2 * GROUP - turn]);
        let mut got = [0u64; GROUP];
        let all = self.all();
        let mut b = home;
        for _ in 0..self.buckets {
            let Some(bucket) = all.get(b) else { break };
            match_bucket(bucket, &want, &mut got);
            if self.overflow[b] == 0
                || got
                    .iter()
                    .zip(&want)
                    .all(|(&w, &k)| k == 0 || holders::occupied(w))
            {
                break;
            }
            b = self.next(b);
        }
        // Back to rank order.
        twice[..GROUP].copy_from_slice(&got);
        twice[GROUP..].copy_from_slice(&got);
        out.copy_from_slice(&twice[turn..turn + GROUP]);
        for w in out.iter_mut().skip(keys.len()) {
            *w = 0;
        }
    }

    /// One walk from the key's home: where it is, or where it would go.
    fn seek(&self, key: BlockKey, pos: ChainPos) -> Seek {
        let (home, rank) = (self.home(pos.tag()), slot_rank(pos.tag(), pos.rank()));
        let all = self.all();
        let mut b = home;
        let mut free = None;
        for _ in 0..self.buckets {
            let bucket = &all[b];
            for s in [rank, GROUP + rank] {
                let occupied = holders::occupied(word_of(bucket, s));
                if occupied && key_of(bucket, s) == key.get() {
                    return Seek::Found(b, s);
                }
                if free.is_none() && !occupied {
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
        match self.seek(key, pos) {
            Seek::Found(b, s) => {
                let kind = holders::kind(word_of(&self.all()[b], s));
                self.sets.tiers(kind, endpoint)
            }
            Seek::Absent { .. } => 0,
        }
    }

    fn set(&mut self, b: usize, s: usize, key: u64, word: u64) {
        let bucket = &mut self.all_mut()[b];
        bucket[s] = key;
        bucket[SLOTS + s] = word;
    }

    /// Adds `tiers` to `endpoint`'s holding of `key`; returns whether the entry is new.
    pub(crate) fn add(&mut self, key: BlockKey, pos: ChainPos, endpoint: u16, tiers: u8) -> bool {
        let rank = slot_rank(pos.tag(), pos.rank());
        if (self.per_rank[rank] + 1) * 100 > self.buckets * 2 * MAX_LOAD_PERCENT {
            self.grow();
        }
        match self.seek(key, pos) {
            Seek::Found(b, s) => {
                let old = holders::kind(word_of(&self.all()[b], s));
                let (kind, added) = self.sets.add(old, endpoint, tiers);
                self.set(b, s, key.get(), holders::word(pos.tag(), pos.rank(), kind));
                self.entries += usize::from(added);
                added
            }
            Seek::Absent { home, free } => {
                let (kind, _) = self.sets.add(Kind::Empty, endpoint, tiers);
                let word = holders::word(pos.tag(), pos.rank(), kind);
                match free {
                    Some((b, s)) => {
                        self.bump(home, b);
                        self.set(b, s, key.get(), word);
                    }
                    None => self.place(key.get(), word),
                }
                self.keys += 1;
                self.per_rank[rank] += 1;
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

    /// Places a new key at the first free slot of its rank from its home.
    fn place(&mut self, key: u64, word: u64) {
        let tag = holders::tag(word);
        let (home, rank) = (self.home(tag), slot_rank(tag, holders::rank(word)));
        let mut b = home;
        loop {
            let bucket = &self.all()[b];
            if let Some(s) = [rank, GROUP + rank]
                .into_iter()
                .find(|&s| !holders::occupied(word_of(bucket, s)))
            {
                self.bump(home, b);
                self.set(b, s, key, word);
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
        let Seek::Found(b, s) = self.seek(key, pos) else {
            return Removed::NotHeld;
        };
        let word = word_of(&self.all()[b], s);
        let (kind, held, gone) = self.sets.remove(holders::kind(word), endpoint, tiers);
        if !held {
            return Removed::NotHeld;
        }
        let tag = holders::tag(word);
        if kind == Kind::Empty {
            self.set(b, s, 0, 0);
            self.keys -= 1;
            self.per_rank[s % GROUP] -= 1;
            self.unplace(self.home(tag), b);
        } else {
            self.set(
                b,
                s,
                key.get(),
                holders::word(tag, holders::rank(word), kind),
            );
        }
        if gone {
            self.entries -= 1;
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

    /// Rebuilds into about 1.25× the buckets (tags in the words give every key's home), in whole
    /// huge pages once the table fills more than one.
    fn grow(&mut self) {
        let mut n = self.buckets + (self.buckets / 4).max(1);
        if n > HUGE_BUCKETS {
            n = n.div_ceil(HUGE_BUCKETS) * HUGE_BUCKETS;
        }
        let mut new = Self::with_buckets(n);
        for bucket in self.all() {
            for s in 0..SLOTS {
                let word = word_of(bucket, s);
                if holders::occupied(word) {
                    new.place(key_of(bucket, s), word);
                }
            }
        }
        self.cells = new.cells;
        self.buckets = new.buckets;
        self.overflow = new.overflow;
    }

    /// Bytes of the buckets and counters (the slab is counted by the allocator).
    pub(crate) fn bucket_bytes(&self) -> usize {
        self.buckets * CELLS * 8 + self.overflow.capacity()
    }

    /// Bytes of the buckets mapped outside the global allocator.
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.cells.mapped_bytes()
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
        // Few distinct tags, all of rank 0, force overflow chains.
        let pos = |i: u64| ChainPos::first(key(i % 1499));
        for i in 0..3000u64 {
            assert!(t.add(key(i), pos(i), (i % 5) as u16, GPU_ONLY));
            assert!(!t.add(key(i), pos(i), (i % 5) as u16, 0b10));
        }
        assert_eq!((t.keys(), t.entries()), (3000, 3000));
        for i in 0..3000u64 {
            assert_eq!(t.tiers(key(i), pos(i), (i % 5) as u16), 0b11);
        }
        for i in (0..3000u64).step_by(2) {
            let e = (i % 5) as u16;
            assert_eq!(t.remove(key(i), pos(i), e, GPU_ONLY), Removed::Reduced);
            assert_eq!(t.remove(key(i), pos(i), e, 0b10), Removed::Entry);
            assert_eq!(t.remove(key(i), pos(i), e, 0b10), Removed::NotHeld);
        }
        assert_eq!((t.keys(), t.entries()), (1500, 1500));
        for i in 0..3000u64 {
            let want = if i % 2 == 0 { 0 } else { 0b11 };
            assert_eq!(t.tiers(key(i), pos(i), (i % 5) as u16), want, "key {i}");
        }
        for i in (1..3000u64).step_by(2) {
            t.remove(key(i), pos(i), (i % 5) as u16, 0b111);
        }
        assert_eq!((t.keys(), t.entries()), (0, 0));
        assert!(
            t.overflow.iter().all(|&c| c == 0),
            "counters unwound: {:?} {:?}",
            t.overflow.iter().filter(|&&c| c != 0).collect::<Vec<_>>(),
            t.per_rank
        );
    }

    #[test]
    fn probe_finds_a_group_by_rank_past_full_buckets() {
        let mut t = Table::default();
        // Three groups with one home: the third overflows into the next bucket.
        let mut groups = Vec::new();
        for g in 0..3u64 {
            let mut keys: Vec<BlockKey> = (0..8).map(|i| key(g * 100 + i)).collect();
            keys[0] = BlockKey::from_raw(keys[0].get() & !(((1 << TAG_BITS) - 1) << 20));
            let lead = keys[0];
            let mut pos = ChainPos::first(lead);
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    pos = pos.next(*k);
                }
                if !(g == 2 && i == 5) {
                    t.add(*k, pos, g as u16, GPU_ONLY);
                }
            }
            groups.push((t.home(ChainPos::first(lead).tag()), keys));
        }
        for (g, (home, keys)) in groups.iter().enumerate() {
            let mut out = [0u64; 8];
            t.probe(*home, keys, &mut out);
            for (i, w) in out.iter().enumerate() {
                assert_eq!(
                    holders::occupied(*w),
                    !(g == 2 && i == 5),
                    "group {g} rank {i}"
                );
            }
            let mut short = [0u64; 8];
            t.probe(*home, &keys[..3], &mut short);
            assert!(short[..3].iter().all(|&w| holders::occupied(w)));
            assert!(short[3..].iter().all(|&w| w == 0));
        }
    }

    #[test]
    fn large_tables_grow_in_whole_huge_pages() {
        let mut t = Table::with_buckets(HUGE_BUCKETS);
        assert_eq!(t.mapped_bytes(), HUGE);
        t.grow();
        assert_eq!(t.buckets, 2 * HUGE_BUCKETS);
        assert_eq!(t.mapped_bytes(), 2 * HUGE);
    }
}
