//! Per-candidate longest prefix: a walk over the request's blocks, a window of 32 at a time.
//!
//! Per window: one shard read lock; first the home bucket of each of its 4 groups is touched, so
//! the cache misses overlap; then each group's bucket is probed for its 8 keys (branch-free); then
//! the candidates still alive are intersected with each block's holders (`alive &= holders(i)`, a
//! bitset AND) and those that drop out record the depth they reached. The walk ends at the first
//! block no live candidate holds, so a miss at block 0 costs one window. Once a single candidate
//! is left (the common case past the shared part of a prompt), the walk only checks that one
//! holder per block. Results come out in endpoint order from the block-0 holder set: no sort.
//! Tier weights cost nothing unless a holder is off-GPU: a run is worth `blocks × w(GPU)` minus
//! the endpoint's deficits.

use super::holders::{self, GPU_ONLY, Holder, Kind, Sets};
use super::position::{GROUP, WINDOW, shard_of, tag_of};
use super::table::Table;
use super::{KvIndex, PrefixMatch, PrefixMatches};
use crate::keys::BlockKey;
use crate::pods::{EndpointId, EndpointSet};
use parking_lot::RwLockReadGuard;

/// Windows whose shards are locked together (128 blocks).
const SPAN: usize = 4;

/// Candidate bitsets up to this many words (512 endpoints) live on the stack.
const INLINE_WORDS: usize = 8;

/// The walk's state.
struct Walk<'a> {
    /// Candidates holding every block so far; words `lo..hi` may be non-zero.
    alive: &'a mut [u64],
    lo: usize,
    hi: usize,
    /// Who held block 0 (the result set).
    first: &'a mut [u64],
    /// Per endpoint id (below `64 * hi`): the depth its run ended at, 0 while running.
    ends: &'a mut [u32],
    /// (endpoint, weight below `blocks × w(GPU)`), for endpoints that held a block off-GPU.
    deficits: Vec<(u16, f64)>,
    weights: &'a [f32; 8],
    /// Tier masks whose weight differs from GPU-only's (bit per mask).
    off_base: u8,
}

impl Walk<'_> {
    #[inline]
    fn charge(&mut self, endpoint: u16, tiers: u8) {
        if self.off_base & (1 << (tiers & 7)) == 0 {
            return;
        }
        let base = self.weights[usize::from(GPU_ONLY)];
        let d = f64::from(base) - f64::from(self.weights[usize::from(tiers & 7)]);
        match self.deficits.iter_mut().find(|(e, _)| *e == endpoint) {
            Some((_, acc)) => *acc += d,
            None => self.deficits.push((endpoint, d)),
        }
    }

    #[inline]
    fn bit(words: &[u64], e: usize) -> bool {
        words.get(e / 64).is_some_and(|w| w & (1 << (e % 64)) != 0)
    }

    /// `alive & holders(word)` into `next` (words `lo..hi`), charging off-GPU holders.
    #[inline]
    fn intersect(&mut self, word: u64, sets: &Sets, next: &mut [u64]) {
        for w in &mut next[self.lo..self.hi] {
            *w = 0;
        }
        let mut keep = |walk: &mut Self, h: Holder| {
            let e = holders::holder_endpoint(h);
            let i = usize::from(e);
            if Self::bit(walk.alive, i) {
                next[i / 64] |= 1 << (i % 64);
                walk.charge(e, holders::holder_tiers(h));
            }
        };
        match holders::kind(word) {
            Kind::Empty => {}
            Kind::One(a) => keep(self, a),
            Kind::Two(a, b) => {
                keep(self, a);
                keep(self, b);
            }
            Kind::Set(i) => {
                let set = sets.get(i);
                let bits = set.bits();
                let hi = self.hi.min(bits.len());
                if self.lo < hi {
                    let alive = &self.alive[self.lo..hi];
                    for ((n, a), b) in next[self.lo..hi]
                        .iter_mut()
                        .zip(alive)
                        .zip(&bits[self.lo..hi])
                    {
                        *n = a & b;
                    }
                }
                self.charge_mixed(set.mixed(), next);
            }
        }
    }

    fn charge_mixed(&mut self, mixed: &[Holder], alive: &[u64]) {
        for &h in mixed {
            if Self::bit(alive, usize::from(holders::holder_endpoint(h))) {
                self.charge(holders::holder_endpoint(h), holders::holder_tiers(h));
            }
        }
    }

    /// Block 0: the candidates holding it start their runs.
    fn start(&mut self, word: u64, sets: &Sets, next: &mut [u64]) -> bool {
        self.intersect(word, sets, next);
        self.alive[self.lo..self.hi].copy_from_slice(&next[self.lo..self.hi]);
        self.first[self.lo..self.hi].copy_from_slice(&next[self.lo..self.hi]);
        self.shrink()
    }

    /// Block `depth` > 0: candidates that do not hold it end their run at `depth`.
    #[inline]
    fn step(&mut self, depth: u32, word: u64, sets: &Sets, next: &mut [u64]) -> bool {
        if let Kind::Set(i) = holders::kind(word) {
            // The common shared case: usually every live candidate holds the block.
            let set = sets.get(i);
            let bits = set.bits();
            let word_of = |w: usize| bits.get(w).copied().unwrap_or(0);
            let mut dying = 0;
            for w in self.lo..self.hi {
                dying |= self.alive[w] & !word_of(w);
            }
            if dying != 0 {
                for w in self.lo..self.hi {
                    let a = self.alive[w];
                    let n = a & word_of(w);
                    let mut dead = a ^ n;
                    while dead != 0 {
                        self.ends[w * 64 + dead.trailing_zeros() as usize] = depth;
                        dead &= dead - 1;
                    }
                    self.alive[w] = n;
                }
            }
            if !set.mixed().is_empty() {
                let alive = std::mem::take(&mut self.alive);
                self.charge_mixed(set.mixed(), alive);
                self.alive = alive;
            }
            return dying == 0 || self.shrink();
        }
        self.intersect(word, sets, next);
        let lo = self.lo;
        for (w, &n) in next.iter().enumerate().take(self.hi).skip(lo) {
            let mut dead = self.alive[w] & !n;
            while dead != 0 {
                self.ends[w * 64 + dead.trailing_zeros() as usize] = depth;
                dead &= dead - 1;
            }
            self.alive[w] = n;
        }
        self.shrink()
    }

    /// Narrows `lo..hi` to the non-zero words; returns whether any candidate is alive.
    #[inline]
    fn shrink(&mut self) -> bool {
        while self.lo < self.hi && self.alive[self.lo] == 0 {
            self.lo += 1;
        }
        while self.hi > self.lo && self.alive[self.hi - 1] == 0 {
            self.hi -= 1;
        }
        self.lo < self.hi
    }

    /// The only live candidate, if exactly one is left.
    #[inline]
    fn single(&self) -> Option<u16> {
        (self.hi == self.lo + 1 && self.alive[self.lo].is_power_of_two())
            .then(|| (self.lo * 64 + self.alive[self.lo].trailing_zeros() as usize) as u16)
    }

    /// One candidate left: follows it through `words` from `depth`; returns whether it is alive
    /// after them.
    fn follow(&mut self, e: u16, depth: u32, words: &[u64], sets: &Sets) -> bool {
        // Fast path: blocks held by `e` alone, on GPU only (one AND and one compare per block).
        let alone = holders::only(holders::holder(e, GPU_ONLY));
        let mut i = 0;
        while i < words.len() {
            let run = words[i..]
                .iter()
                .take_while(|&&w| w & holders::HOLDERS_MASK == alone)
                .count();
            i += run;
            let Some(&word) = words.get(i) else { break };
            let tiers = match holders::kind(word) {
                Kind::Empty => 0,
                Kind::One(a) => tiers_of(a, e),
                Kind::Two(a, b) => tiers_of(a, e) | tiers_of(b, e),
                Kind::Set(s) => sets.get(s).tiers(e),
            };
            if tiers == 0 {
                self.ends[usize::from(e)] = depth + i as u32;
                self.alive[self.lo] = 0;
                self.hi = self.lo;
                return false;
            }
            self.charge(e, tiers);
            i += 1;
        }
        true
    }

    /// Steps over one window's blocks starting at depth `start`; returns whether any candidate
    /// is still alive.
    fn window(&mut self, start: usize, words: &[u64], sets: &Sets, next: &mut [u64]) -> bool {
        let mut i = 0;
        if start == 0 {
            if !self.start(words[0], sets, next) {
                return false;
            }
            i = 1;
        }
        while i < words.len() {
            if let Some(e) = self.single() {
                return self.follow(e, (start + i) as u32, &words[i..], sets);
            }
            if !self.step((start + i) as u32, words[i], sets, next) {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Writes the result: every block-0 holder in endpoint order, with its run and weight.
    fn finish(&self, total: u32, out: &mut Vec<PrefixMatch>) {
        let base = f64::from(self.weights[usize::from(GPU_ONLY)]);
        for (w, &word) in self.first.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let e = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let Some(endpoint) = EndpointId::new(e as u32) else {
                    continue;
                };
                let blocks = match self.ends[e] {
                    0 => total,
                    d => d,
                };
                let deficit = self
                    .deficits
                    .iter()
                    .find(|(x, _)| usize::from(*x) == e)
                    .map_or(0.0, |(_, d)| *d);
                out.push(PrefixMatch {
                    endpoint,
                    blocks,
                    weighted: (f64::from(blocks) * base - deficit) as f32,
                });
            }
        }
    }
}

#[inline]
fn tiers_of(h: Holder, e: u16) -> u8 {
    if holders::holder_endpoint(h) == e {
        holders::holder_tiers(h)
    } else {
        0
    }
}

impl KvIndex {
    /// For each candidate, the longest run of consecutive blocks from block 0 it holds.
    pub fn lookup(&self, keys: &[BlockKey], candidates: &EndpointSet, out: &mut PrefixMatches) {
        out.total_blocks = keys.len() as u32;
        out.matches.clear();
        let cand = candidates.words();
        let Some(hi) = cand.iter().rposition(|&w| w != 0).map(|i| i + 1) else {
            return;
        };
        if keys.is_empty() {
            return;
        }
        let lo = cand.iter().position(|&w| w != 0).unwrap_or(0);
        let mut stack = (
            [0u64; INLINE_WORDS],
            [0u64; INLINE_WORDS],
            [0u64; INLINE_WORDS],
        );
        let mut stack_ends = [0u32; INLINE_WORDS * 64];
        let mut heap: (Vec<u64>, Vec<u64>, Vec<u64>, Vec<u32>) = Default::default();
        let (alive, next, first, ends): (&mut [u64], &mut [u64], &mut [u64], &mut [u32]) =
            if hi <= INLINE_WORDS {
                (
                    &mut stack.0[..hi],
                    &mut stack.1[..hi],
                    &mut stack.2[..hi],
                    &mut stack_ends[..hi * 64],
                )
            } else {
                heap.0.resize(hi, 0);
                heap.1.resize(hi, 0);
                heap.2.resize(hi, 0);
                heap.3.resize(hi * 64, 0);
                (&mut heap.0, &mut heap.1, &mut heap.2, &mut heap.3)
            };
        alive.copy_from_slice(&cand[..hi]);
        let base = self.weights[usize::from(GPU_ONLY)];
        let off_base = (0..8).fold(0u8, |m, t| m | (u8::from(self.weights[t] != base) << t));
        let mut walk = Walk {
            alive,
            lo,
            hi,
            first,
            ends,
            deficits: Vec::new(),
            weights: &self.weights,
            off_base,
        };
        self.walk(keys, &mut walk, next);
        walk.finish(keys.len() as u32, &mut out.matches);
    }

    /// Walks the request, [`SPAN`] windows at a time: their shards are read-locked up front (in
    /// shard order; writers hold one shard at a time, so this cannot deadlock) and all their home
    /// buckets touched before any probe, so the misses of 16 groups overlap and no lock
    /// instruction waits on an outstanding miss.
    fn walk(&self, keys: &[BlockKey], walk: &mut Walk<'_>, next: &mut [u64]) {
        let mut words = [[0u64; GROUP]; SPAN * WINDOW / GROUP];
        for (sp, span) in keys.chunks(SPAN * WINDOW).enumerate() {
            let mut shards = [usize::MAX; SPAN];
            for (w, window) in span.chunks(WINDOW).enumerate() {
                shards[w] = shard_of(window[0]);
            }
            let mut order = shards;
            order.sort_unstable();
            let mut guards: [Option<(usize, RwLockReadGuard<'_, Table>)>; SPAN] =
                Default::default();
            let mut last = usize::MAX;
            for (slot, &shard) in guards.iter_mut().zip(&order) {
                if shard != last && shard != usize::MAX {
                    *slot = Some((shard, self.shards[shard].read()));
                    last = shard;
                }
            }
            let table = |shard: usize| {
                guards
                    .iter()
                    .flatten()
                    .find(|(s, _)| *s == shard)
                    .map(|(_, t)| &**t)
            };
            let mut homes = [0usize; SPAN * WINDOW / GROUP];
            let mut sink = 0u64;
            for (g, group) in span.chunks(GROUP).enumerate() {
                if let Some(t) = table(shards[g * GROUP / WINDOW]) {
                    homes[g] = t.home(tag_of(group[0]));
                    sink ^= t.touch(homes[g]);
                }
            }
            std::hint::black_box(sink);
            // Probe every group of the span (a request missing at block 0 stops after one),
            // then start the holder-set misses of all its blocks together, then step.
            for (g, group) in span.chunks(GROUP).enumerate() {
                let Some(t) = table(shards[g * GROUP / WINDOW]) else {
                    return;
                };
                t.probe(homes[g], group, &mut words[g]);
                if sp == 0 && g == 0 && !holders::occupied(words[0][0]) {
                    return;
                }
            }
            let flat = &words.as_flattened()[..span.len()];
            let mut sink = 0u64;
            for (i, &word) in flat.iter().enumerate() {
                if let (Kind::Set(s), Some(t)) = (holders::kind(word), table(shards[i / WINDOW])) {
                    sink ^= t.sets().get(s).bits().first().copied().unwrap_or(0);
                }
            }
            std::hint::black_box(sink);
            for (w, window) in flat.chunks(WINDOW).enumerate() {
                let Some(t) = table(shards[w]) else { return };
                let start = sp * SPAN * WINDOW + w * WINDOW;
                if !walk.window(start, window, t.sets(), next) {
                    return;
                }
            }
        }
    }
}
