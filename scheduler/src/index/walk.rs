//! The state of a lookup's walk: which candidates still hold every block so far, and where the
//! others' runs ended.
//!
//! Candidates are a fixed-width bitset. A candidate that drops out records the depth it reached:
//! for ids below 256 in a per-id array that `finish` turns into the results, else straight into
//! its result entry, found by its rank among the holders of block 0; either way results come out
//! in endpoint order without a sort. Tier weights cost nothing unless a holder is off-GPU: a run
//! is worth `blocks × w(GPU)` minus the endpoint's deficits.

use super::holder::{self, GPU_ONLY, Holder, Kind};
use super::record::{self, Record};
use super::sets::{INLINE_WORDS, Sets};
use super::{KvIndex, PrefixMatch};
use crate::pods::EndpointId;

/// The walk's state, for candidate ids below `64 * N`.
pub(super) struct Walk<'a, const N: usize> {
    /// Candidates holding every block so far; only words `lo..hi` may be non-zero.
    alive: [u64; N],
    lo: usize,
    hi: usize,
    /// Who held block 0, and per word the number of block-0 holders in the words before it: the
    /// index of an endpoint's entry in the result.
    first: [u64; N],
    base: [u32; N],
    /// When `N` covers ids below 256 only: where each endpoint's run ended (0: it has not), by
    /// id; the results are written from it at the end instead of entry by entry (no rank to
    /// count: that is a dozen instructions without a `popcnt` target feature).
    ended: [u32; 64 * INLINE_WORDS],
    started: bool,
    /// The last per-slot word stepped over, and whether it had off-GPU holders.
    last: u64,
    /// (endpoint, weight below `blocks × w(GPU)`), for endpoints that held a block off-GPU.
    deficits: Vec<(u16, f64)>,
    weights: &'a [f32; 8],
    /// Tier masks whose weight differs from GPU-only's (bit per mask).
    off_base: u8,
    out: &'a mut Vec<PrefixMatch>,
    /// Blocks in the request: a run that never ends is this long.
    total: u32,
}

impl<'a, const N: usize> Walk<'a, N> {
    pub(super) fn new(
        index: &'a KvIndex,
        cand: &[u64],
        total: u32,
        out: &'a mut Vec<PrefixMatch>,
    ) -> Self {
        let mut alive = [0u64; N];
        for (a, c) in alive.iter_mut().zip(cand) {
            *a = *c;
        }
        let hi = alive.iter().rposition(|&w| w != 0).map_or(0, |i| i + 1);
        let lo = alive.iter().position(|&w| w != 0).unwrap_or(hi);
        Self {
            alive,
            lo,
            hi,
            first: [0; N],
            base: [0; N],
            ended: [0; 64 * INLINE_WORDS],
            started: false,
            last: u64::MAX,
            deficits: Vec::new(),
            weights: &index.weights,
            off_base: index.off_base,
            out,
            total,
        }
    }

    /// Ends the runs of the endpoints in `dead` (bits of word `w`) at `depth`.
    #[inline]
    fn bury(&mut self, w: usize, mut dead: u64, depth: u32) {
        if !self.started {
            return;
        }
        if N <= INLINE_WORDS {
            while dead != 0 {
                let e = (w * 64) | dead.trailing_zeros() as usize;
                self.ended[e % (64 * INLINE_WORDS)] = depth;
                dead &= dead - 1;
            }
            return;
        }
        let (first, base) = (self.first[w], self.base[w] as usize);
        while dead != 0 {
            let below = first & ((1u64 << dead.trailing_zeros()) - 1);
            if let Some(m) = self.out.get_mut(base + below.count_ones() as usize) {
                m.blocks = depth;
            }
            dead &= dead - 1;
        }
    }

    /// Keeps the live candidates in `holds` (words past its end hold nobody); the others' runs
    /// end at `depth`. Returns whether any is left.
    #[inline(always)]
    fn keep(&mut self, depth: u32, holds: &[u64]) -> bool {
        let (lo, hi) = (self.lo, self.hi);
        let mut changed = false;
        for w in lo..hi {
            let a = self.alive[w];
            let n = a & holds.get(w).copied().unwrap_or(0);
            if n != a {
                self.bury(w, a ^ n, depth);
                self.alive[w] = n;
                changed = true;
            }
        }
        if changed {
            return self.trim();
        }
        self.lo < self.hi
    }

    /// [`Walk::keep`] for a bitset of ids below 256: branch-free unless a run ends.
    #[inline(always)]
    fn keep_small(&mut self, depth: u32, holds: &[u64; INLINE_WORDS]) -> bool {
        if N > INLINE_WORDS {
            return self.keep(depth, holds);
        }
        let (mut dead, mut left) = (0, 0);
        for (&a, &h) in self.alive.iter().zip(holds) {
            dead |= a & !h;
            left |= a & h;
        }
        if dead != 0 {
            return self.keep(depth, holds);
        }
        left != 0
    }

    /// Ends every live run at `depth` (the block there is held by nobody).
    pub(super) fn stop(&mut self, depth: u32) {
        self.keep(depth, &[]);
    }

    #[inline]
    fn is_alive(&self, e: u16) -> bool {
        let e = usize::from(e);
        self.alive
            .get(e / 64)
            .is_some_and(|w| w & (1 << (e % 64)) != 0)
    }

    /// Ends the run of `e` at `depth` if it is live.
    #[inline]
    fn drop_one(&mut self, e: u16, depth: u32) {
        if N <= INLINE_WORDS {
            // Before `start` only depth 0 can end a run, which `ended` reads as "not ended".
            let (e, bit) = (usize::from(e) % (64 * INLINE_WORDS), 1u64 << (e % 64));
            if let Some(a) = self.alive.get_mut(e / 64)
                && *a & bit != 0
            {
                *a &= !bit;
                self.ended[e] = depth;
            }
            return;
        }
        if self.is_alive(e) {
            let (w, bit) = (usize::from(e) / 64, 1u64 << (e % 64));
            self.bury(w, bit, depth);
            self.alive[w] &= !bit;
        }
    }

    fn charge(&mut self, h: Holder) {
        let (endpoint, tiers) = (holder::holder_endpoint(h), holder::holder_tiers(h));
        if self.off_base & (1 << tiers) == 0 || !self.is_alive(endpoint) {
            return;
        }
        let base = self.weights[usize::from(GPU_ONLY)];
        let d = f64::from(base) - f64::from(self.weights[usize::from(tiers)]);
        match self.deficits.iter_mut().find(|(e, _)| *e == endpoint) {
            Some((_, acc)) => *acc += d,
            None => self.deficits.push((endpoint, d)),
        }
    }

    /// Walks slots `from..to` of a record whose slot 0 is at depth `at`, all of whose keys match
    /// the request. Returns whether any candidate is left.
    #[inline(always)]
    pub(super) fn segment(
        &mut self,
        rec: &Record,
        from: usize,
        to: usize,
        at: u32,
        sets: &Sets,
    ) -> bool {
        if record::nested(rec) {
            self.nested(rec, from, to, at)
        } else {
            self.per_slot(rec, from, to, at, sets)
        }
    }

    /// A nested record: the holders of slot r are U minus the members whose run ended before r
    /// (and nobody past the last used slot).
    #[inline(always)]
    pub(super) fn nested(&mut self, rec: &Record, from: usize, to: usize, at: u32) -> bool {
        let end = record::last_used(rec) + 1;
        if from >= end {
            self.stop(at + from as u32);
            return false;
        }
        if !self.keep_small(at + from as u32, record::members(rec)) {
            return false;
        }
        if record::has_ends(rec) {
            // Word by word, each entry shifted out of its word: a loop of a few instructions
            // per run end (there is one per holder whose run ends in this group).
            let (words, mut left) = record::end_words(rec);
            'ends: for &word in words {
                let here = left.min(record::ENDS_PER_WORD);
                if here == 0 {
                    break;
                }
                left -= here;
                let mut word = word;
                for _ in 0..here {
                    let (e, last) = record::end_entry(word);
                    if last + 1 >= to {
                        break 'ends;
                    }
                    self.drop_one(e, at + (last + 1).max(from) as u32);
                    word >>= record::END_BITS;
                }
            }
        }
        if to > end {
            self.stop(at + end as u32);
            return false;
        }
        self.lo < self.hi
    }

    #[inline(never)]
    fn per_slot(&mut self, rec: &Record, from: usize, to: usize, at: u32, sets: &Sets) -> bool {
        (from..to).all(|r| self.step(record::slot_word(rec, r), at + r as u32, sets))
    }

    /// Keeps the live candidates among `hs`; the others' runs end at `depth`.
    fn keep_few(&mut self, depth: u32, hs: &[Holder]) -> bool {
        for w in self.lo..self.hi {
            let a = self.alive[w];
            let keep = hs.iter().fold(0u64, |m, &h| {
                let e = usize::from(holder::holder_endpoint(h));
                m | (u64::from(e / 64 == w) << (e % 64))
            });
            let n = a & keep;
            if n != a {
                self.bury(w, a ^ n, depth);
                self.alive[w] = n;
            }
        }
        self.trim()
    }

    fn trim(&mut self) -> bool {
        while self.lo < self.hi && self.alive[self.lo] == 0 {
            self.lo += 1;
        }
        while self.hi > self.lo && self.alive[self.hi - 1] == 0 {
            self.hi -= 1;
        }
        self.lo < self.hi
    }

    /// Starts a window (set indices and words are per shard).
    pub(super) fn new_window(&mut self) {
        self.last = u64::MAX;
    }

    /// Intersects the live candidates with the holders in a per-slot word at `depth`.
    fn step(&mut self, word: u64, depth: u32, sets: &Sets) -> bool {
        let same = word == self.last;
        self.last = word;
        match holder::kind(word) {
            Kind::Empty => {
                self.stop(depth);
                false
            }
            Kind::One(a) => {
                let left = same || self.keep_few(depth, &[a]);
                self.charge(a);
                left
            }
            Kind::Two(a, b) => {
                let left = same || self.keep_few(depth, &[a, b]);
                self.charge(a);
                self.charge(b);
                left
            }
            Kind::Set(i) => {
                let set = sets.get(i);
                let left = same || self.keep(depth, set.bits());
                for &h in set.mixed() {
                    self.charge(h);
                }
                left
            }
        }
    }

    /// After block 0: its holders among the candidates start their runs, one result entry each,
    /// in endpoint order. Returns whether any did.
    pub(super) fn start(&mut self) -> bool {
        self.started = true;
        if N <= INLINE_WORDS {
            // The entries are written by `finish`.
            self.first = self.alive;
            return self.lo < self.hi;
        }
        let mut count = 0u32;
        for w in 0..N {
            self.first[w] = self.alive[w];
            self.base[w] = count;
            count += self.alive[w].count_ones();
            let mut bits = self.alive[w];
            while bits != 0 {
                let e = w as u32 * 64 + bits.trailing_zeros();
                bits &= bits - 1;
                if let Some(endpoint) = EndpointId::new(e) {
                    self.out.push(PrefixMatch {
                        endpoint,
                        blocks: self.total,
                        weighted: 0.0,
                    });
                }
            }
        }
        count > 0
    }

    /// Writes the results (for ids below 256) and fills in the weights. By reference: the walk
    /// is over 1 KB, which a by-value call would copy.
    pub(super) fn finish(&mut self) {
        let base = f64::from(self.weights[usize::from(GPU_ONLY)]);
        if N <= INLINE_WORDS
            && self.started
            && let Some(zero) = EndpointId::new(0)
        {
            // One entry per holder of block 0, written into a slice sized up front: pushing
            // entry by entry stores the vector's length back each time.
            let count = self
                .first
                .iter()
                .map(|w| w.count_ones() as usize)
                .sum::<usize>();
            let start = self.out.len();
            let blank = PrefixMatch {
                endpoint: zero,
                blocks: 0,
                weighted: 0.0,
            };
            self.out.resize(start + count, blank);
            let mut slots = self.out.iter_mut().skip(start);
            for (w, &bits) in self.first.iter().enumerate() {
                let mut bits = bits;
                while bits != 0 {
                    let e = (w * 64) | bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let (Some(m), Some(endpoint)) = (slots.next(), EndpointId::new(e as u32))
                    else {
                        continue;
                    };
                    let ended = self.ended[e % (64 * INLINE_WORDS)];
                    let blocks = if ended == 0 { self.total } else { ended };
                    *m = PrefixMatch {
                        endpoint,
                        blocks,
                        weighted: (f64::from(blocks) * base) as f32,
                    };
                }
            }
            if self.deficits.is_empty() {
                return;
            }
        }
        for m in self.out.iter_mut() {
            let e = m.endpoint.get() as u16;
            let deficit = self
                .deficits
                .iter()
                .find(|(x, _)| *x == e)
                .map_or(0.0, |(_, d)| *d);
            m.weighted = (f64::from(m.blocks) * base - deficit) as f32;
        }
    }
}

const _: () = assert!(INLINE_WORDS == 4);
