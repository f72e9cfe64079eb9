//! Lookup: for each candidate, the longest run of consecutive blocks from block 0 it holds.
//!
//! The request is walked 128 blocks (one [`WINDOW`], one shard, one read lock) at a time, in
//! three passes so that cache misses overlap instead of queueing behind each other: first every
//! line of the 16 home buckets is touched, then each group is probed (16 compares, no scan), then
//! the holder sets of the window's shared blocks are touched, and only then are the blocks
//! stepped. Candidates are a bitset; each block intersects the live ones with its holders, and
//! those that drop out write the depth they reached straight into their result entry (found by a
//! rank in the block-0 bitset, so results come out in endpoint order without a sort). The walk
//! ends at the first block no live candidate holds. When a single candidate is left (the common
//! case past the shared part of a prompt), a block costs one AND and one compare. Tier weights
//! cost nothing unless a holder is off-GPU: a run is worth `blocks × w(GPU)` minus the
//! endpoint's deficits.

use super::holders::{self, GPU_ONLY, Holder, Kind, Sets};
use super::position::{GROUP, WINDOW, shard_of, tag_of};
use super::table::Table;
use super::{KvIndex, PrefixMatch, PrefixMatches};
use crate::keys::BlockKey;
use crate::pods::{EndpointId, EndpointSet};

/// Groups per window.
const GROUPS: usize = WINDOW / GROUP;

/// The walk's state, for candidate ids below `64 * N`.
struct Walk<'a, const N: usize> {
    /// Candidates holding every block so far; only words `lo..hi` may be non-zero.
    alive: [u64; N],
    lo: usize,
    hi: usize,
    /// Who held block 0, and per word the number of block-0 holders in the words before it: the
    /// index of an endpoint's entry in the result.
    first: [u64; N],
    base: [u32; N],
    /// (endpoint, weight below `blocks × w(GPU)`), for endpoints that held a block off-GPU.
    deficits: Vec<(u16, f64)>,
    weights: &'a [f32; 8],
    /// Tier masks whose weight differs from GPU-only's (bit per mask).
    off_base: u8,
    out: &'a mut Vec<PrefixMatch>,
    /// Blocks in the request: a run that never ends is this long.
    total: u32,
}

impl<const N: usize> Walk<'_, N> {
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
    fn alive(&self, e: usize) -> bool {
        self.alive
            .get(e / 64)
            .is_some_and(|w| w & (1 << (e % 64)) != 0)
    }

    /// Ends the runs of the endpoints in `dead` (bits of word `w`) at `depth`.
    #[inline]
    fn bury(&mut self, w: usize, mut dead: u64, depth: u32) {
        let (Some(&first), Some(&base)) = (self.first.get(w), self.base.get(w)) else {
            return;
        };
        while dead != 0 {
            let below = first & ((1u64 << dead.trailing_zeros()) - 1);
            if let Some(m) = self
                .out
                .get_mut(base as usize + below.count_ones() as usize)
            {
                m.blocks = depth;
            }
            dead &= dead - 1;
        }
    }

    /// Keeps the live candidates whose bit is set in `holds[w]`; ends the others' runs at `depth`
    /// (none before block 0's holders have entries). Returns whether any is left.
    #[inline]
    fn keep(&mut self, depth: u32, holds: &[u64; N]) -> bool {
        let (lo, hi) = (self.lo, self.hi.min(N));
        let mut dying = 0;
        for (a, h) in self.alive[lo..hi].iter().zip(&holds[lo..hi]) {
            dying |= a & !h;
        }
        if dying == 0 {
            return true;
        }
        let started = !self.out.is_empty();
        for (w, &h) in holds.iter().enumerate().take(hi).skip(lo) {
            let a = self.alive[w];
            let n = a & h;
            if n != a && started {
                self.bury(w, a ^ n, depth);
            }
            self.alive[w] = n;
        }
        while self.lo < self.hi && self.alive[self.lo] == 0 {
            self.lo += 1;
        }
        while self.hi > self.lo && self.alive[self.hi - 1] == 0 {
            self.hi -= 1;
        }
        self.lo < self.hi
    }

    /// Intersects the live candidates with the holders of a block at `depth`, charging off-GPU
    /// holdings. Returns whether any candidate is left.
    fn step(&mut self, depth: u32, word: u64, sets: &Sets) -> bool {
        let mut holds = [0u64; N];
        match holders::kind(word) {
            Kind::Empty => {}
            Kind::One(a) => return self.keep_holders(depth, &[a]),
            Kind::Two(a, b) => return self.keep_holders(depth, &[a, b]),
            Kind::Set(i) => {
                let set = sets.get(i);
                match set.small() {
                    Some(small) => {
                        for (h, b) in holds.iter_mut().zip(small) {
                            *h = *b;
                        }
                    }
                    None => {
                        for (h, b) in holds.iter_mut().zip(set.bits()) {
                            *h = *b;
                        }
                    }
                }
                let left = self.keep(depth, &holds);
                for &h in set.mixed() {
                    if self.alive(usize::from(holders::holder_endpoint(h))) {
                        self.charge(holders::holder_endpoint(h), holders::holder_tiers(h));
                    }
                }
                return left;
            }
        }
        self.keep(depth, &holds)
    }

    fn keep_holders(&mut self, depth: u32, hs: &[Holder]) -> bool {
        let bit = |h: Holder| usize::from(holders::holder_endpoint(h));
        let mut holds = [0u64; N];
        for &h in hs {
            if let Some(w) = holds.get_mut(bit(h) / 64) {
                *w |= 1 << (bit(h) % 64);
            }
        }
        let left = self.keep(depth, &holds);
        for &h in hs {
            if self.alive(bit(h)) {
                self.charge(holders::holder_endpoint(h), holders::holder_tiers(h));
            }
        }
        left
    }

    /// Block 0: the candidates holding it start their runs, one result entry each, in endpoint
    /// order. Returns whether any did.
    fn start(&mut self, word: u64, sets: &Sets) -> bool {
        if !self.step(0, word, sets) {
            return false;
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
        true
    }

    /// The only live candidate, if exactly one is left.
    #[inline]
    fn single(&self) -> Option<u16> {
        (self.hi == self.lo + 1 && self.alive[self.lo].is_power_of_two())
            .then(|| (self.lo * 64 + self.alive[self.lo].trailing_zeros() as usize) as u16)
    }

    /// Steps over `words`, the blocks from `depth`; returns whether any candidate is still alive
    /// after them.
    fn blocks(&mut self, mut depth: u32, words: &[u64], sets: &Sets) -> bool {
        let mut i = 0;
        while i < words.len() {
            if let Some(e) = self.single() {
                // Blocks held by `e` alone, on GPU only: one AND and one compare each.
                let alone = holders::only(holders::holder(e, GPU_ONLY));
                let run = words[i..]
                    .iter()
                    .take_while(|&&w| w & holders::HOLDERS_MASK == alone)
                    .count();
                i += run;
                depth += run as u32;
                let Some(&word) = words.get(i) else { break };
                if !self.step(depth, word, sets) {
                    return false;
                }
            } else if !self.step(depth, words[i], sets) {
                return false;
            }
            i += 1;
            depth += 1;
        }
        true
    }

    /// Walks the request window by window, then fills in the weights.
    fn run(&mut self, index: &KvIndex, keys: &[BlockKey]) {
        for (w, window) in keys.chunks(WINDOW).enumerate() {
            let table = index.shards[shard_of(window[0])].read();
            if !self.window(&table, window, (w * WINDOW) as u32) {
                break;
            }
        }
        let base = f64::from(self.weights[usize::from(GPU_ONLY)]);
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

    /// Walks one window of up to 128 blocks starting at `depth`: touches every home bucket,
    /// probes every group, touches the holder sets, then steps. Returns whether any candidate is
    /// alive after it.
    fn window(&mut self, table: &Table, window: &[BlockKey], depth: u32) -> bool {
        let mut homes = [0usize; GROUPS];
        let mut sink = 0u64;
        // Home buckets first (their addresses need nothing from memory), then the buckets the
        // overflow counters point to.
        for (home, group) in homes.iter_mut().zip(window.chunks(GROUP)) {
            *home = table.home(tag_of(group[0]));
            sink ^= table.touch_home(*home);
        }
        for &home in &homes[..window.len().div_ceil(GROUP)] {
            sink ^= table.touch(home);
        }
        std::hint::black_box(sink);
        let mut words = [[0u64; GROUP]; GROUPS];
        for (g, group) in window.chunks(GROUP).enumerate() {
            table.probe(homes[g], group, &mut words[g]);
            if depth == 0 && g == 0 && !holders::occupied(words[0][0]) {
                // Nobody holds block 0: nothing else matters.
                return false;
            }
        }
        let words = &words.as_flattened()[..window.len()];
        let sets = table.sets();
        if words.iter().fold(0, |m, &w| m | holders::set_bit(w)) != 0 {
            let mut sink = 0u64;
            for &word in words {
                if let Kind::Set(s) = holders::kind(word) {
                    sink ^= sets.get(s).bits().first().copied().unwrap_or(0);
                }
            }
            std::hint::black_box(sink);
        }
        if depth == 0 {
            return self.start(words[0], sets) && self.blocks(1, &words[1..], sets);
        }
        self.blocks(depth, words, sets)
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
        match hi {
            0..=4 => self.walk::<4>(keys, cand, &mut out.matches),
            5..=16 => self.walk::<16>(keys, cand, &mut out.matches),
            _ => self.walk::<{ EndpointId::MAX / 64 }>(keys, cand, &mut out.matches),
        }
    }

    fn walk<const N: usize>(&self, keys: &[BlockKey], cand: &[u64], out: &mut Vec<PrefixMatch>) {
        let mut alive = [0u64; N];
        for (a, c) in alive.iter_mut().zip(cand) {
            *a = *c;
        }
        let hi = alive.iter().rposition(|&w| w != 0).map_or(0, |i| i + 1);
        let lo = alive.iter().position(|&w| w != 0).unwrap_or(hi);
        let gpu = self.weights[usize::from(GPU_ONLY)];
        let off_base = (0..8).fold(0u8, |m, t| m | (u8::from(self.weights[t] != gpu) << t));
        Walk::<N> {
            alive,
            lo,
            hi,
            first: [0; N],
            base: [0; N],
            deficits: Vec::new(),
            weights: &self.weights,
            off_base,
            out,
            total: keys.len() as u32,
        }
        .run(self, keys);
    }
}
