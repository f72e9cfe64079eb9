//! One shard of the key → holders table: records (see [`super::record`]) found through a
//! directory of one-byte fingerprints.
//!
//! Records sit in buckets of 8. A record of tag `t` may sit in either of two buckets chosen by
//! `t`; the directory keeps, per bucket, one `u64` with the fingerprint of each record's tag (0 for
//! a free record). A lookup reads the two directory words of a group (small enough to stay in L2)
//! and then touches only the record whose fingerprint matches: two lines per 8 blocks, addressed
//! from the request's keys alone. A new record goes to the emptier of its buckets; when both are
//! full, one record in them moves to its other bucket (one cuckoo step), and failing that the
//! table grows by 1.25× (in whole huge pages once it fills one), as it does past 90% of its
//! records.
//!
//! No input makes a claim loop or the table grow without bound. A tag's records can only be in
//! its two buckets, so at most 16 records share a tag; tags come from a keyed mix of the keys
//! (see [`super::secret`]), so that only chance puts many records on one tag, but the table does
//! not rely on it: a claim grows the table at most once (and only when growing can help: the
//! table is past half full or small, and the two buckets are not all one fingerprint), a growth
//! tries a bounded number of sizes and otherwise keeps the table as it was, and a record that
//! still does not fit is refused. The writer drops that block and counts it.

use super::pages::{HUGE, Words};
use super::position::tag_of;
use super::record::{self, CELLS, Record};
use super::secret::IndexSecret;
use super::sets::Sets;

/// Records per bucket (one fingerprint byte each in a directory word).
const BUCKET: usize = 8;
const MAX_LOAD_PERCENT: usize = 90;
const MIN_BUCKETS: usize = 2;
/// Below this many buckets a failed claim may grow the table at any load.
const SMALL_BUCKETS: usize = 64;
/// Most sizes one growth tries (each 1.25× the last) before giving up.
const GROW_TRIES: usize = 4;
/// Buckets per huge page.
const HUGE_BUCKETS: usize = HUGE / (BUCKET * CELLS * 8);
/// Most tags [`Table::warm`] takes at once.
pub(crate) const WARM: usize = 8;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const ONES: u64 = 0x0101_0101_0101_0101;

/// Where a tag's records may be.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cand {
    pub(crate) b1: usize,
    pub(crate) b2: usize,
    pub(crate) fp: u8,
}

/// The high bit of every byte of `word` equal to `fp` (exact: no carries between bytes).
#[inline]
pub(crate) fn byte_matches(word: u64, fp: u8) -> u64 {
    let x = word ^ (u64::from(fp) * ONES);
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// The table.
#[derive(Debug)]
pub(crate) struct Table {
    cells: Words,
    buckets: usize,
    directory: Vec<u64>,
    pub(super) secret: IndexSecret,
    /// Records in use when a growth last failed: no growth is tried again until there are an
    /// eighth more (a failed growth costs a rebuild; it must not be repeated per claim).
    stuck: Option<usize>,
    pub(super) sets: Sets,
    /// Records in use.
    records: usize,
    /// Slots with at least one holder.
    pub(super) keys: usize,
    /// (endpoint, key) holdings.
    pub(super) entries: usize,
}

impl Table {
    /// An empty table placing records by `secret`.
    pub(crate) fn new(secret: IndexSecret) -> Self {
        Self::with_buckets(MIN_BUCKETS, secret)
    }

    fn with_buckets(n: usize, secret: IndexSecret) -> Self {
        Self {
            cells: Words::zeroed(n * BUCKET * CELLS),
            buckets: n,
            directory: vec![0; n],
            secret,
            stuck: None,
            sets: Sets::default(),
            records: 0,
            keys: 0,
            entries: 0,
        }
    }

    /// Distinct keys held.
    pub(crate) fn keys(&self) -> usize {
        self.keys
    }

    /// (endpoint, key) holdings.
    pub(crate) fn entries(&self) -> usize {
        self.entries
    }

    /// The holder-set slab.
    #[inline]
    pub(crate) fn sets(&self) -> &Sets {
        &self.sets
    }

    /// Record `i` (all zeroes past the end, which a found index never is).
    #[inline]
    pub(crate) fn record(&self, i: usize) -> &Record {
        self.records().get(i).unwrap_or(&[0; CELLS])
    }

    /// All records.
    #[inline]
    pub(crate) fn records(&self) -> &[Record] {
        self.cells.get().as_chunks::<CELLS>().0
    }

    #[inline]
    pub(super) fn record_mut(&mut self, i: usize) -> &mut Record {
        &mut self.cells.get_mut().as_chunks_mut::<CELLS>().0[i]
    }

    /// The two buckets and the fingerprint of tag `tag`.
    #[inline]
    pub(crate) fn cand(&self, tag: u32) -> Cand {
        let mut h = (u64::from(tag) ^ 0x243f_6a88_85a3_08d3).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let n = self.buckets as u64;
        let fp = (tag.wrapping_mul(0x9e37_79b1) >> 24) as u8;
        Cand {
            b1: (((h & 0xffff_ffff) * n) >> 32) as usize,
            b2: (((h >> 32) * n) >> 32) as usize,
            fp: fp | u8::from(fp == 0),
        }
    }

    /// Records of the candidates of `c` whose fingerprint matches, as a mask: bit `8j + 7` of the
    /// first word for record `j` of bucket `b1`, of the second for `b2` (the second is 0 when
    /// both buckets are the same).
    #[inline]
    pub(crate) fn candidates(&self, c: Cand) -> (u64, u64) {
        let d = |b: usize| self.directory.get(b).copied().unwrap_or(0);
        let m2 = byte_matches(d(c.b2), c.fp) & 0u64.wrapping_sub(u64::from(c.b2 != c.b1));
        (byte_matches(d(c.b1), c.fp), m2)
    }

    /// Whether any record of tag `tag` may exist (one directory read per bucket; false
    /// positives by fingerprint only).
    #[inline]
    pub(crate) fn may_hold(&self, tag: u32) -> bool {
        let (m1, m2) = self.candidates(self.cand(tag));
        m1 | m2 != 0
    }

    /// The record of tag `tag` whose slot `rank` holds `key`, if any. Exactly that tag's: a
    /// record of another tag may share its buckets and fingerprint, and a writer's position must
    /// name one record (else a holding could outlive every position naming it).
    #[inline]
    pub(crate) fn find(&self, tag: u32, rank: usize, key: u64) -> Option<usize> {
        self.first_of(tag, |i| {
            self.record(i)[rank] == key && self.tag_of_record(i) == tag
        })
    }

    /// Like [`Table::find`], but any record of the tag's fingerprint will do: for reads, where a
    /// look-alike costs a wrong answer at worst, never an unreachable holding.
    #[inline]
    pub(crate) fn find_like(&self, tag: u32, rank: usize, key: u64) -> Option<usize> {
        self.first_of(tag, |i| self.record(i)[rank] == key)
    }

    /// In one pass over the records of tag `tag`: the one whose slot `rank` holds `parent`, and
    /// the one whose next slot holds `key` (what [`Table::find`] gives for each).
    #[inline]
    pub(crate) fn find_pair(
        &self,
        tag: u32,
        rank: usize,
        parent: u64,
        key: u64,
    ) -> (Option<usize>, Option<usize>) {
        let (mut p, mut q) = (None, None);
        self.first_of(tag, |i| {
            let rec = self.record(i);
            let (is_p, is_q) = (rec[rank] == parent, rec[rank + 1] == key);
            if (is_p || is_q) && self.tag_of_record(i) == tag {
                p = p.or(is_p.then_some(i));
                q = q.or(is_q.then_some(i));
            }
            p.is_some() && q.is_some()
        });
        (p, q)
    }

    /// The first record of tag `tag`'s fingerprint, in probe order, for which `stop` is true.
    #[inline]
    fn first_of(&self, tag: u32, mut stop: impl FnMut(usize) -> bool) -> Option<usize> {
        let c = self.cand(tag);
        let (m1, m2) = self.candidates(c);
        for (b, mut m) in [(c.b1, m1), (c.b2, m2)] {
            while m != 0 {
                let i = b * BUCKET + (m.trailing_zeros() / 8) as usize;
                m &= m - 1;
                if stop(i) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Touches, for each of `tags`, its directory words and then the record a writer will use
    /// (the first whose fingerprint matches, else the one a claim would take), in two tight
    /// passes so that all their misses overlap instead of each waiting for the one before; a
    /// writer calls it before editing a batch's records one by one. Returns a fold of what it
    /// read, for `black_box`.
    pub(crate) fn warm(&self, tags: &[u32]) -> u64 {
        let mut at = [usize::MAX; WARM];
        for (&tag, i) in tags.iter().zip(at.iter_mut()) {
            let c = self.cand(tag);
            let (m1, m2) = self.candidates(c);
            let (b, m) = match (m1, m2) {
                (0, 0) => {
                    let d = |b: usize| self.directory.get(b).map_or(0, |&w| byte_matches(w, 0));
                    let (f1, f2) = (d(c.b1), d(c.b2));
                    if f1.count_ones() >= f2.count_ones() {
                        (c.b1, f1)
                    } else {
                        (c.b2, f2)
                    }
                }
                (0, m2) => (c.b2, m2),
                (m1, _) => (c.b1, m1),
            };
            *i = b * BUCKET + (m.trailing_zeros() / 8) as usize;
        }
        let all = self.records();
        at.iter()
            .fold(0, |s, &i| all.get(i).map_or(s, |r| s ^ r[0] ^ r[CELLS / 2]))
    }

    /// Touches the directory words of `tags` (whose records, if any, a writer will look for),
    /// in one tight loop. Returns a fold of what it read, for `black_box`.
    pub(crate) fn warm_directory(&self, tags: impl Iterator<Item = u32>) -> u64 {
        tags.fold(0, |s, tag| {
            let (m1, m2) = self.candidates(self.cand(tag));
            s ^ m1 ^ m2
        })
    }

    /// A free record for tag `tag`, fingerprint set, growing the table if that can help; `None`
    /// when its two buckets stay full (the caller drops the block). Bounded work and memory
    /// whatever the tags.
    pub(super) fn claim(&mut self, tag: u32) -> Option<usize> {
        if (self.records + 1) * 100 > self.buckets * BUCKET * MAX_LOAD_PERCENT {
            self.grow();
        }
        let i = match self.try_claim(tag) {
            Some(i) => i,
            None => {
                let loaded = self.records * 2 >= self.buckets * BUCKET;
                if !(loaded || self.buckets < SMALL_BUCKETS) || self.one_fingerprint(tag) {
                    return None;
                }
                if !self.grow() {
                    return None;
                }
                self.try_claim(tag)?
            }
        };
        self.records += 1;
        Some(i)
    }

    /// Whether both buckets of `tag` are distinct and hold only records of its fingerprint:
    /// growing keeps them together, so it cannot make room.
    fn one_fingerprint(&self, tag: u32) -> bool {
        let c = self.cand(tag);
        let all = |b: usize| byte_matches(self.directory[b], c.fp) == 0x8080_8080_8080_8080;
        c.b1 != c.b2 && all(c.b1) && all(c.b2)
    }

    fn free_in(&self, b: usize) -> u64 {
        byte_matches(self.directory[b], 0)
    }

    fn take(&mut self, b: usize, fp: u8) -> usize {
        let j = (self.free_in(b).trailing_zeros() / 8) as usize;
        self.directory[b] |= u64::from(fp) << (8 * j);
        b * BUCKET + j
    }

    /// The tag of a live record: that of its first used slot's key (which started the record).
    #[inline]
    fn tag_of_record(&self, i: usize) -> u32 {
        let keys = record::keys(self.record(i));
        tag_of(
            &self.secret,
            crate::keys::BlockKey::from_raw(keys.iter().copied().find(|&k| k != 0).unwrap_or(0)),
        )
    }

    fn try_claim(&mut self, tag: u32) -> Option<usize> {
        let c = self.cand(tag);
        let (f1, f2) = (self.free_in(c.b1), self.free_in(c.b2));
        if f1 != 0 || f2 != 0 {
            let b = if f1.count_ones() >= f2.count_ones() {
                c.b1
            } else {
                c.b2
            };
            return Some(self.take(b, c.fp));
        }
        // One cuckoo step: move a record of either bucket to its other bucket.
        for b in [c.b1, c.b2] {
            for j in 0..BUCKET {
                let i = b * BUCKET + j;
                let other = self.cand(self.tag_of_record(i));
                let alt = if other.b1 == b { other.b2 } else { other.b1 };
                if alt == b || self.free_in(alt) == 0 {
                    continue;
                }
                let to = self.take(alt, other.fp);
                let moved = *self.record(i);
                *self.record_mut(to) = moved;
                *self.record_mut(i) = [0; CELLS];
                self.directory[b] &= !(0xff << (8 * j));
                self.directory[b] |= u64::from(c.fp) << (8 * j);
                return Some(i);
            }
        }
        None
    }

    /// Frees record `i` (it has no holder left).
    pub(super) fn free(&mut self, i: usize) {
        let rec = *self.record(i);
        record::release_sets(&rec, &mut self.sets);
        *self.record_mut(i) = [0; CELLS];
        let (b, j) = (i / BUCKET, i % BUCKET);
        self.directory[b] &= !(0xff << (8 * j));
        self.records -= 1;
    }

    /// Rebuilds into about 1.25× the buckets, in whole huge pages once the table fills one;
    /// tries [`GROW_TRIES`] sizes, else keeps the table as it was and returns false (and tries
    /// no more until an eighth more records are in use).
    fn grow(&mut self) -> bool {
        if self
            .stuck
            .is_some_and(|at| self.records < at + at / 8 + BUCKET)
        {
            return false;
        }
        let mut n = self.buckets + (self.buckets / 4).max(1);
        for _ in 0..GROW_TRIES {
            if n > HUGE_BUCKETS {
                n = n.div_ceil(HUGE_BUCKETS) * HUGE_BUCKETS;
            }
            let mut new = Self::with_buckets(n, self.secret);
            let moved = (0..self.buckets * BUCKET)
                .filter(|&i| self.directory[i / BUCKET] >> (8 * (i % BUCKET)) & 0xff != 0)
                .all(|i| {
                    let Some(to) = new.try_claim(self.tag_of_record(i)) else {
                        return false;
                    };
                    *new.record_mut(to) = *self.record(i);
                    true
                });
            if moved {
                self.cells = new.cells;
                self.directory = new.directory;
                self.buckets = n;
                self.stuck = None;
                return true;
            }
            n += n / 4;
        }
        self.stuck = Some(self.records);
        false
    }

    /// Bytes of the records and the directory (the slab is counted by the allocator).
    pub(crate) fn bucket_bytes(&self) -> usize {
        self.buckets * BUCKET * CELLS * 8 + self.directory.capacity() * 8
    }

    /// Bytes of the records mapped outside the global allocator.
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.cells.mapped_bytes()
    }

    /// Records in use and their capacity (for tests and the load gauge).
    #[cfg(test)]
    pub(crate) fn load(&self) -> (usize, usize) {
        (self.records, self.buckets * BUCKET)
    }
}
