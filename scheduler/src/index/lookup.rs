//! Per-candidate longest prefix: a walk over the request's blocks, a window of 32 at a time.
//!
//! Per window: one shard read lock; first the home bucket of each of its 4 groups is touched, so
//! the cache misses overlap; then each group's bucket is probed for its 8 keys; then the
//! candidates still alive are intersected with each block's holders (`alive &= holders(i)`, a
//! bitset AND), and those that drop out get their run length. The walk ends at the first block no
//! live candidate holds, so a miss at block 0 costs one window. Tier weights cost nothing unless
//! a holder is off-GPU: a run is worth `blocks × w(GPU)` minus per-endpoint deficits.

use super::holders::{self, GPU_ONLY, Holder, Kind};
use super::position::{GROUP, WINDOW, shard_of, tag_of};
use super::{KvIndex, PrefixMatch, PrefixMatches};
use crate::keys::BlockKey;
use crate::pods::{EndpointId, EndpointSet};

/// Candidate bitsets up to this many words (512 endpoints) live on the stack.
const INLINE_WORDS: usize = 8;

/// The walk's state: live candidates and weight deficits.
struct Walk<'a> {
    alive: &'a mut [u64],
    next: &'a mut [u64],
    /// Words `lo..hi` may be non-zero.
    lo: usize,
    hi: usize,
    /// (endpoint, weight below `blocks × w(GPU)`), for endpoints that held a block off-GPU.
    deficits: Vec<(u16, f64)>,
    weights: &'a [f32; 8],
    out: &'a mut Vec<PrefixMatch>,
}

impl Walk<'_> {
    #[inline]
    fn emit(&mut self, endpoint: u32, blocks: usize) {
        let Some(id) = EndpointId::new(endpoint) else {
            return;
        };
        let deficit = self
            .deficits
            .iter()
            .find(|(e, _)| u32::from(*e) == endpoint)
            .map_or(0.0, |(_, d)| *d);
        let weighted = blocks as f64 * f64::from(self.weights[usize::from(GPU_ONLY)]) - deficit;
        self.out.push(PrefixMatch {
            endpoint: id,
            blocks: blocks as u32,
            weighted: weighted as f32,
        });
    }

    /// Emits every live candidate with a run of `blocks` (when > 0).
    fn emit_alive(&mut self, blocks: usize) {
        if blocks == 0 {
            return;
        }
        for w in self.lo..self.hi {
            let mut bits = self.alive[w];
            while bits != 0 {
                let e = (w * 64) as u32 + bits.trailing_zeros();
                bits &= bits - 1;
                self.emit(e, blocks);
            }
        }
    }

    #[inline]
    fn is_alive(&self, endpoint: u16) -> bool {
        let e = usize::from(endpoint);
        self.alive
            .get(e / 64)
            .is_some_and(|w| w & (1 << (e % 64)) != 0)
    }

    /// Keeps `h` in `next` if it is alive; records its deficit if it is off-GPU.
    #[inline]
    fn keep(&mut self, h: Holder) {
        let e = holders::holder_endpoint(h);
        if self.is_alive(e) {
            let i = usize::from(e);
            self.next[i / 64] |= 1 << (i % 64);
            self.charge(e, holders::holder_tiers(h));
        }
    }

    #[inline]
    fn charge(&mut self, endpoint: u16, tiers: u8) {
        let base = self.weights[usize::from(GPU_ONLY)];
        let w = self.weights[usize::from(tiers & 7)];
        if w == base {
            return;
        }
        let d = f64::from(base) - f64::from(w);
        match self.deficits.iter_mut().find(|(e, _)| *e == endpoint) {
            Some((_, acc)) => *acc += d,
            None => self.deficits.push((endpoint, d)),
        }
    }

    /// Steps over block `depth` held per `word`; returns whether any candidate is still alive.
    fn step(&mut self, depth: usize, word: u64, sets: &holders::Sets) -> bool {
        for w in &mut self.next[self.lo..self.hi] {
            *w = 0;
        }
        match holders::kind(word) {
            Kind::Empty => {}
            Kind::One(a) => self.keep(a),
            Kind::Two(a, b) => {
                self.keep(a);
                self.keep(b);
            }
            Kind::Set(i) => {
                let set = sets.get(i);
                let bits = set.bits();
                let hi = self.hi.min(bits.len());
                if self.lo < hi {
                    let (next, alive) = (&mut self.next[self.lo..hi], &self.alive[self.lo..hi]);
                    for ((n, a), b) in next.iter_mut().zip(alive).zip(&bits[self.lo..hi]) {
                        *n = a & b;
                    }
                }
                for &h in set.mixed() {
                    let e = usize::from(holders::holder_endpoint(h));
                    if self
                        .next
                        .get(e / 64)
                        .is_some_and(|w| w & (1 << (e % 64)) != 0)
                    {
                        self.charge(holders::holder_endpoint(h), holders::holder_tiers(h));
                    }
                }
            }
        }
        // Candidates that do not hold this block end their run here.
        for w in self.lo..self.hi {
            let mut dead = self.alive[w] & !self.next[w];
            while dead != 0 {
                let e = (w * 64) as u32 + dead.trailing_zeros();
                dead &= dead - 1;
                if depth > 0 {
                    self.emit(e, depth);
                }
            }
        }
        std::mem::swap(&mut self.alive, &mut self.next);
        while self.lo < self.hi && self.alive[self.lo] == 0 {
            self.lo += 1;
        }
        while self.hi > self.lo && self.alive[self.hi - 1] == 0 {
            self.hi -= 1;
        }
        self.lo < self.hi
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
        let (mut a, mut b) = ([0u64; INLINE_WORDS], [0u64; INLINE_WORDS]);
        let (mut heap_a, mut heap_b) = (Vec::new(), Vec::new());
        let (alive, next): (&mut [u64], &mut [u64]) = if hi <= INLINE_WORDS {
            a[..hi].copy_from_slice(&cand[..hi]);
            (&mut a[..hi], &mut b[..hi])
        } else {
            heap_a.extend_from_slice(&cand[..hi]);
            heap_b.resize(hi, 0);
            (&mut heap_a, &mut heap_b)
        };
        let lo = cand.iter().position(|&w| w != 0).unwrap_or(0);
        let mut walk = Walk {
            alive,
            next,
            lo,
            hi,
            deficits: Vec::new(),
            weights: &self.weights,
            out: &mut out.matches,
        };
        let done = self.walk(keys, &mut walk);
        walk.emit_alive(done);
        out.matches.sort_unstable_by_key(|m| m.endpoint);
    }

    /// Walks the windows; returns the depth reached by the candidates still alive at the end.
    fn walk(&self, keys: &[BlockKey], walk: &mut Walk<'_>) -> usize {
        let mut words = [0u64; WINDOW];
        for (w, window) in keys.chunks(WINDOW).enumerate() {
            let start = w * WINDOW;
            let table = self.shards[shard_of(window[0])].read();
            let mut homes = [0usize; WINDOW / GROUP];
            let mut sink = 0u64;
            for (g, group) in window.chunks(GROUP).enumerate() {
                homes[g] = table.home(tag_of(group[0]));
                sink ^= table.touch(homes[g]);
            }
            std::hint::black_box(sink);
            words.fill(0);
            for (g, group) in window.chunks(GROUP).enumerate() {
                let at = g * GROUP;
                table.probe(homes[g], group, &mut words[at..at + group.len()]);
            }
            for (i, &word) in words[..window.len()].iter().enumerate() {
                if !walk.step(start + i, word, table.sets()) {
                    return 0;
                }
            }
        }
        keys.len()
    }
}
