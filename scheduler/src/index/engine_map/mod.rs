//! One endpoint's map from engine block hash to its block key and chain position.
//!
//! It resolves `BlockRemoved` hashes and `parent_block_hash`, and it is the endpoint's key set, so
//! clearing an endpoint costs O(its entries). An entry is 20 bytes plus 7 bits, and three of them
//! fill one 64-byte line with its header (occupancy, an overflow counter, the positions' high
//! bits): an insert or a lookup reads one line, rarely its neighbour. Open addressing over lines
//! with an 8-bit overflow counter per line (how many entries homed at or before it were placed
//! after it), so a search stops at the first line whose counter is 0 and removals leave no
//! tombstones. Up to 90% load, growth by 1.25×: each growth re-places every entry, and at
//! 1.125× an entry was re-placed ~8 times over its map's life, a quarter of the build's time
//! (1.25×: +25% store rate, +1.4 B/entry; BENCHMARKS.md). Engine hashes come from pods (and need not be well mixed), so the
//! home line comes from a mix keyed by the index's secret: a pod cannot pick hashes that share
//! a probe run. Its entries count toward the index's capacity, so it is bounded too.
//!
//! ```text
//! words 0..6  hash 0, key 0, hash 1, key 1, hash 2, key 2
//! word 6      position 0 (low 32 bits) | position 1 (low 32 bits) << 32
//! word 7      position 2 (low 32 bits) | header << 32
//! header      bits 0..3 occupied slots, 3..11 overflow counter, 11..32 positions' bits 32..39
//! ```

use std::collections::HashSet;

use super::pages::Words;
use super::position::ChainPos;
use super::secret::IndexSecret;
use crate::keys::BlockKey;

const SLOTS: usize = 3;
const LINE: usize = 8;
const MAX_LOAD_PERCENT: usize = 90;
const MIN_LINES: usize = 2;
const OVERFLOW_SHIFT: u32 = 3;
const EXT_SHIFT: u32 = 11;
const EXT_BITS: u32 = 7;
/// The lane of [`IndexSecret::mix`] that places engine hashes.
const HOME: u64 = 0x6a09_e667_f3bc_c908;

/// The engine-side name of an index block: the engine hash, or for the `i`-th index block cut
/// from a larger event block, the hash mixed with `i`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct EngineRef(pub(crate) u64);

impl EngineRef {
    /// The `part`-th index block of engine block `hash` (part 0 is the hash itself).
    #[inline]
    pub(crate) fn new(hash: u64, part: u32) -> Self {
        if part == 0 {
            Self(hash)
        } else {
            Self(hash ^ mix(u64::from(part) ^ 0x5bd1_e995_7a3c_9d01))
        }
    }
}

#[inline]
fn mix(x: u64) -> u64 {
    let m = u128::from(x) * 0x9E37_79B9_7F4A_7C15;
    (m as u64) ^ ((m >> 64) as u64)
}

/// An engine hash map, one line per three entries.
#[derive(Debug)]
pub(crate) struct EngineMap {
    lines: Words,
    /// Lines in `lines` (kept: the hot paths would otherwise re-derive it from the storage).
    n_lines: usize,
    len: usize,
    hand: usize,
    secret: IndexSecret,
}

/// An entry's place: line and slot.
type At = (usize, usize);

/// Where [`EngineMap::find`] found an entry.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Found(At);

impl EngineMap {
    /// An empty map placing hashes by `secret`.
    pub(crate) fn new(secret: IndexSecret) -> Self {
        Self::with_lines(MIN_LINES, secret)
    }

    fn with_lines(n: usize, secret: IndexSecret) -> Self {
        Self {
            lines: Words::zeroed(n * LINE),
            n_lines: n,
            len: 0,
            hand: 0,
            secret,
        }
    }

    #[inline]
    fn n_lines(&self) -> usize {
        self.n_lines
    }

    #[inline]
    fn line(&self, l: usize) -> &[u64; LINE] {
        &self.lines.get().as_chunks::<LINE>().0[l]
    }

    #[inline]
    fn line_mut(&mut self, l: usize) -> &mut [u64; LINE] {
        &mut self.lines.get_mut().as_chunks_mut::<LINE>().0[l]
    }

    #[inline]
    fn header(line: &[u64; LINE]) -> u32 {
        (line[7] >> 32) as u32
    }

    #[inline]
    fn set_header(line: &mut [u64; LINE], h: u32) {
        line[7] = (line[7] & 0xffff_ffff) | (u64::from(h) << 32);
    }

    #[inline]
    fn occupied(line: &[u64; LINE], s: usize) -> bool {
        Self::header(line) & (1 << s) != 0
    }

    #[inline]
    fn overflow(line: &[u64; LINE]) -> u32 {
        (Self::header(line) >> OVERFLOW_SHIFT) & 0xff
    }

    fn entry(line: &[u64; LINE], s: usize) -> (u64, BlockKey, ChainPos) {
        let low = (line[6 + s / 2] >> (32 * (s % 2))) & 0xffff_ffff;
        let ext = (Self::header(line) >> (EXT_SHIFT + EXT_BITS * s as u32)) & ((1 << EXT_BITS) - 1);
        let pos = ChainPos::from_raw(low | (u64::from(ext) << 32));
        (line[2 * s], BlockKey::from_raw(line[2 * s + 1]), pos)
    }

    fn write(line: &mut [u64; LINE], s: usize, hash: u64, key: BlockKey, pos: ChainPos) {
        line[2 * s] = hash;
        line[2 * s + 1] = key.get();
        let (w, shift) = (6 + s / 2, 32 * (s % 2) as u32);
        line[w] = (line[w] & !(0xffff_ffff << shift)) | ((pos.raw() & 0xffff_ffff) << shift);
        let ext_shift = EXT_SHIFT + EXT_BITS * s as u32;
        let mut h = Self::header(line) | (1 << s);
        h = (h & !(((1 << EXT_BITS) - 1) << ext_shift)) | (((pos.raw() >> 32) as u32) << ext_shift);
        Self::set_header(line, h);
    }

    /// Adds `delta` (±1) to the overflow counter of line `l` (saturating at 255 going up; a
    /// saturated counter stays).
    fn bump(&mut self, l: usize, up: bool) {
        let line = self.line_mut(l);
        let h = Self::header(line);
        let c = (h >> OVERFLOW_SHIFT) & 0xff;
        let c = match (up, c) {
            (true, 255) | (false, 255) => 255,
            (true, c) => c + 1,
            (false, c) => c.saturating_sub(1),
        };
        Self::set_header(
            line,
            (h & !(0xff << OVERFLOW_SHIFT)) | (c << OVERFLOW_SHIFT),
        );
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of its lines.
    pub(crate) fn bytes(&self) -> usize {
        self.n_lines() * LINE * 8
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        ((u128::from(self.secret.mix(hash, HOME)) * self.n_lines() as u128) >> 64) as usize
    }

    #[inline]
    fn next(&self, l: usize) -> usize {
        if l + 1 == self.n_lines() { 0 } else { l + 1 }
    }

    /// One walk from the home of `r`: where it is, or the first free place on the way (if any).
    #[inline]
    fn seek(&self, r: EngineRef) -> Result<At, Option<At>> {
        let mut l = self.home(r.0);
        let mut free = None;
        for _ in 0..self.n_lines() {
            let line = self.line(l);
            for s in 0..SLOTS {
                if Self::occupied(line, s) {
                    if line[2 * s] == r.0 {
                        return Ok((l, s));
                    }
                } else if free.is_none() {
                    free = Some((l, s));
                }
            }
            if Self::overflow(line) == 0 {
                break;
            }
            l = self.next(l);
        }
        Err(free)
    }

    /// Reads the home line of each of `refs` and folds their headers: a batch's misses then
    /// overlap instead of each waiting for the one before (the caller hands the fold to
    /// `black_box` so the loads are kept). Only worth it for refs not already cached.
    pub(crate) fn warm(&self, refs: impl Iterator<Item = EngineRef>) -> u64 {
        refs.fold(0, |acc, r| {
            let l = self.home(r.0);
            acc ^ self.line(l)[7] ^ self.line(self.next(l))[7]
        })
    }

    /// The key and position of `r`.
    pub(crate) fn get(&self, r: EngineRef) -> Option<(BlockKey, ChainPos)> {
        let (l, s) = self.seek(r).ok()?;
        let (_, key, pos) = Self::entry(self.line(l), s);
        Some((key, pos))
    }

    /// The key and position of `r`, with where it is (for [`Self::remove_found`]).
    pub(crate) fn find(&self, r: EngineRef) -> Option<(Found, BlockKey, ChainPos)> {
        let (l, s) = self.seek(r).ok()?;
        let (_, key, pos) = Self::entry(self.line(l), s);
        Some((Found((l, s)), key, pos))
    }

    /// Unmaps the entry `find` found (the map unchanged since), without searching again.
    pub(crate) fn remove_found(&mut self, at: Found) {
        self.take(at.0);
    }

    /// Maps `r` to (`key`, `pos`); returns what it mapped to before.
    pub(crate) fn insert(
        &mut self,
        r: EngineRef,
        key: BlockKey,
        pos: ChainPos,
    ) -> Option<(BlockKey, ChainPos)> {
        if (self.len + 1) * 100 > self.n_lines() * SLOTS * MAX_LOAD_PERCENT {
            let n = self.n_lines() + (self.n_lines() / 4).max(1);
            self.rebuild(n);
        }
        match self.seek(r) {
            Ok((l, s)) => {
                let (_, old_key, old_pos) = Self::entry(self.line(l), s);
                Self::write(self.line_mut(l), s, r.0, key, pos);
                Some((old_key, old_pos))
            }
            Err(Some((l, s))) => {
                self.place_at(r.0, l, s, key, pos);
                None
            }
            Err(None) => {
                self.place(r.0, key, pos);
                None
            }
        }
    }

    /// Puts a new entry at (`at`, `s`), counting it as overflowing the lines from its home.
    fn place_at(&mut self, hash: u64, at: usize, s: usize, key: BlockKey, pos: ChainPos) {
        let mut l = self.home(hash);
        while l != at {
            self.bump(l, true);
            l = self.next(l);
        }
        Self::write(self.line_mut(at), s, hash, key, pos);
        self.len += 1;
    }

    /// Puts a new entry at the first free slot from its home.
    fn place(&mut self, hash: u64, key: BlockKey, pos: ChainPos) {
        let mut l = self.home(hash);
        loop {
            let h = Self::header(self.line(l));
            if h & 0b111 != 0b111 {
                let s = (!h & 0b111).trailing_zeros() as usize;
                self.place_at(hash, l, s, key, pos);
                return;
            }
            l = self.next(l);
        }
    }

    /// Unmaps `r`; returns what it mapped to.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, r: EngineRef) -> Option<(BlockKey, ChainPos)> {
        let at = self.seek(r).ok()?;
        let (_, key, pos) = self.take(at);
        Some((key, pos))
    }

    fn take(&mut self, (at, s): At) -> (u64, BlockKey, ChainPos) {
        let entry = Self::entry(self.line(at), s);
        let line = self.line_mut(at);
        Self::set_header(line, Self::header(line) & !(1 << s));
        self.len -= 1;
        let mut l = self.home(entry.0);
        while l != at {
            self.bump(l, false);
            l = self.next(l);
        }
        entry
    }

    /// Removes and returns the entry under the clock hand and moves the hand on (eviction).
    pub(crate) fn evict_next(&mut self) -> Option<(EngineRef, BlockKey, ChainPos)> {
        if self.len == 0 {
            return None;
        }
        let n = self.n_lines() * SLOTS;
        for _ in 0..n {
            let i = self.hand % n;
            self.hand = (i + 1) % n;
            if Self::occupied(self.line(i / SLOTS), i % SLOTS) {
                let (hash, key, pos) = self.take((i / SLOTS, i % SLOTS));
                return Some((EngineRef(hash), key, pos));
            }
        }
        None
    }

    /// Removes every entry whose key is in `keys`, in one pass; returns how many went.
    pub(crate) fn remove_keys(&mut self, keys: &HashSet<BlockKey>) -> usize {
        let found: Vec<At> = (0..self.n_lines() * SLOTS)
            .map(|i| (i / SLOTS, i % SLOTS))
            .filter(|&(l, s)| {
                let line = self.line(l);
                Self::occupied(line, s) && keys.contains(&BlockKey::from_raw(line[2 * s + 1]))
            })
            .collect();
        for &at in &found {
            self.take(at);
        }
        found.len()
    }

    /// Every entry, emptying the map (and returning its memory).
    pub(crate) fn drain(&mut self) -> Vec<(BlockKey, ChainPos)> {
        let out = self.iter().map(|(_, k, p)| (k, p)).collect();
        *self = Self::new(self.secret);
        out
    }

    /// Lines of storage (a resumable export walks them by number).
    pub(crate) fn line_count(&self) -> usize {
        self.n_lines()
    }

    /// The entries of line `l` (none past the end).
    pub(crate) fn line_entries(
        &self,
        l: usize,
    ) -> impl Iterator<Item = (EngineRef, BlockKey, ChainPos)> + '_ {
        (0..SLOTS).filter_map(move |s| {
            let line = self.lines.get().as_chunks::<LINE>().0.get(l)?;
            Self::occupied(line, s).then(|| {
                let (hash, key, pos) = Self::entry(line, s);
                (EngineRef(hash), key, pos)
            })
        })
    }

    /// Every entry, in storage order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (EngineRef, BlockKey, ChainPos)> + '_ {
        (0..self.n_lines() * SLOTS).filter_map(|i| {
            let line = self.line(i / SLOTS);
            Self::occupied(line, i % SLOTS).then(|| {
                let (hash, key, pos) = Self::entry(line, i % SLOTS);
                (EngineRef(hash), key, pos)
            })
        })
    }

    fn rebuild(&mut self, lines: usize) {
        let old = std::mem::replace(self, Self::with_lines(lines, self.secret));
        for (r, key, pos) in old.iter() {
            self.place(r.0, key, pos);
        }
        self.hand = old.hand % (lines * SLOTS);
    }
}

#[cfg(test)]
mod tests;
