//! A record: one group's blocks (or a branch's, from where it leaves another record) with their
//! holders, in 128 bytes: two cache lines, the keys and then the holders.
//!
//! Slot `r` holds the block of rank `r` (depth mod 8); a slot whose key is 0 was never used. Once
//! used, a slot keeps its key while the record lives, even with no holder left, so that a key
//! never moves: the table finds a block in the record of its parent or in a record that starts
//! with it, and a record goes only when none of its blocks has a holder.
//!
//! The second line describes the holders in one of two forms, chosen on every write:
//!
//! - **nested** (flag bit 63 of the last word set): the usual shape of a prefix cache, where
//!   whoever holds a block holds its parent. Words 0–3 are a bitset `U` of the holders of the
//!   first used slot (endpoint ids below 256, GPU only), and up to [`MAX_ENDS`] entries
//!   `(endpoint, last)` list the members of `U` whose run ends at slot `last` before the record's
//!   last used slot (kept in the form too: a slot used later has no holder yet), sorted by
//!   `last`. A lookup intersects its candidates with `U` once and then
//!   only visits the entries: a whole group costs a few instructions, with no extra line.
//! - **per slot** (flag clear): one [`super::holder`] word per slot, for anything else (holes,
//!   other tiers, ids of 256 or more, too many ends).

use super::holder::{self, GPU_ONLY, Holder, Kind, holder_endpoint, holder_tiers};
use super::position::GROUP;
use super::sets::{HolderSet, INLINE_WORDS, Sets};

/// `u64`s per record: keys, then holders.
pub(crate) const CELLS: usize = 2 * GROUP;
/// A record's words.
pub(crate) type Record = [u64; CELLS];
/// Most run ends a nested record lists.
pub(crate) const MAX_ENDS: usize = 20;

const NESTED: u64 = 1 << 63;
const LAST_SHIFT: u32 = 55;
const COUNT_SHIFT: u32 = 58;
/// Bits per run-end entry `(endpoint: 8, last slot: 3)`.
pub(crate) const END_BITS: u32 = 11;
/// Run-end entries per word.
pub(crate) const ENDS_PER_WORD: usize = 5;
const _: () =
    assert!(ENDS_PER_WORD * 4 == MAX_ENDS && ENDS_PER_WORD as u32 * END_BITS <= LAST_SHIFT);

/// The holders of each slot of a record whose holder ids are all below 256, for editing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Small {
    /// A bitset of holders per slot.
    pub(crate) bits: [[u64; INLINE_WORDS]; GROUP],
    /// Holdings that are not GPU-only: (slot, holder).
    pub(crate) off: Vec<(usize, Holder)>,
}

impl Small {
    /// The tiers `endpoint` holds slot `r` in.
    pub(crate) fn tiers(&self, r: usize, endpoint: u16) -> u8 {
        let e = usize::from(endpoint);
        if self.bits[r][e / 64] & (1 << (e % 64)) == 0 {
            return 0;
        }
        self.off
            .iter()
            .find(|&&(s, h)| s == r && holder_endpoint(h) == endpoint)
            .map_or(GPU_ONLY, |&(_, h)| holder_tiers(h))
    }

    /// Sets the tiers `endpoint` (below 256) holds slot `r` in (0: none).
    pub(crate) fn set(&mut self, r: usize, endpoint: u16, tiers: u8) {
        let e = usize::from(endpoint);
        self.off
            .retain(|&(s, h)| s != r || holder_endpoint(h) != endpoint);
        let bit = 1u64 << (e % 64);
        if tiers == 0 {
            self.bits[r][e / 64] &= !bit;
        } else {
            self.bits[r][e / 64] |= bit;
            if tiers != GPU_ONLY {
                self.off.push((r, holder::holder(endpoint, tiers)));
            }
        }
    }

    /// Holders of slot `r`.
    pub(crate) fn count(&self, r: usize) -> u32 {
        self.bits[r].iter().map(|w| w.count_ones()).sum()
    }
}

/// The keys line.
#[inline]
pub(crate) fn keys(rec: &Record) -> &[u64; GROUP] {
    rec.first_chunk().unwrap_or(&[0; GROUP])
}

/// Whether the record is in nested form.
#[inline]
pub(crate) fn nested(rec: &Record) -> bool {
    rec[CELLS - 1] & NESTED != 0
}

/// The nested form's `U`.
#[inline]
pub(crate) fn members(rec: &Record) -> &[u64; INLINE_WORDS] {
    rec[GROUP..].first_chunk().unwrap_or(&[0; INLINE_WORDS])
}

/// The nested form's last used slot: members with no listed end hold every used slot up to it.
#[inline]
pub(crate) fn last_used(rec: &Record) -> usize {
    ((rec[CELLS - 1] >> LAST_SHIFT) & 7) as usize
}

/// Whether the nested form lists run ends.
#[inline]
pub(crate) fn has_ends(rec: &Record) -> bool {
    rec[CELLS - 1] & (0x1f << COUNT_SHIFT) != 0
}

/// The nested form's run-end words and the number of entries they hold ([`ENDS_PER_WORD`] a
/// word, the first in the low bits; [`end_entry`] decodes one).
#[inline]
pub(crate) fn end_words(rec: &Record) -> (&[u64; INLINE_WORDS], usize) {
    let n = ((rec[CELLS - 1] >> COUNT_SHIFT) & 0x1f) as usize;
    let words = rec[GROUP + INLINE_WORDS..]
        .first_chunk()
        .unwrap_or(&[0; INLINE_WORDS]);
    (words, n.min(MAX_ENDS))
}

/// The run-end entry in the low bits of `word`: `(endpoint, last slot)`.
#[inline(always)]
pub(crate) fn end_entry(word: u64) -> (u16, usize) {
    ((word & 0xff) as u16, ((word >> 8) & 7) as usize)
}

/// The nested form's run ends: `(endpoint, last slot)`, by slot.
#[inline]
pub(crate) fn ends(rec: &Record) -> Ends {
    let n = ((rec[CELLS - 1] >> COUNT_SHIFT) & 0x1f) as usize;
    Ends {
        words: rec[GROUP + INLINE_WORDS..]
            .first_chunk()
            .copied()
            .unwrap_or([0; INLINE_WORDS]),
        next: 0,
        word: 0,
        in_word: 0,
        left: n.min(MAX_ENDS),
    }
}

/// The iterator of [`ends`]: each word is shifted along its entries (no division by the entries
/// per word; the lookup decodes an entry per holder whose run ends).
pub(crate) struct Ends {
    words: [u64; INLINE_WORDS],
    next: usize,
    word: u64,
    in_word: usize,
    left: usize,
}

impl Iterator for Ends {
    type Item = (u16, usize);

    #[inline(always)]
    fn next(&mut self) -> Option<(u16, usize)> {
        if self.left == 0 {
            return None;
        }
        if self.in_word == 0 {
            self.word = self.words[self.next % INLINE_WORDS];
            self.next += 1;
            self.in_word = ENDS_PER_WORD;
        }
        let e = self.word;
        self.word >>= END_BITS;
        self.in_word -= 1;
        self.left -= 1;
        Some(end_entry(e))
    }
}

/// The per-slot form's word of slot `r`.
#[inline]
pub(crate) fn slot_word(rec: &Record, r: usize) -> u64 {
    rec[GROUP + r] & !NESTED
}

/// Bit `r` set where the slot's key is `want[r]`.
#[inline]
pub(crate) fn matches(rec: &Record, want: &[u64; GROUP]) -> u32 {
    let mut m = 0;
    for (r, (&k, &w)) in keys(rec).iter().zip(want).enumerate() {
        m |= u32::from(k == w) << r;
    }
    m
}

/// The holders of every slot, if all have ids below 256.
pub(crate) fn decode(rec: &Record, sets: &Sets) -> Option<Small> {
    let mut small = Small::default();
    let keys = keys(rec);
    if nested(rec) {
        let u = *members(rec);
        for (r, bits) in small.bits.iter_mut().enumerate().take(last_used(rec) + 1) {
            if keys[r] != 0 {
                *bits = u;
            }
        }
        for (e, last) in ends(rec) {
            let (w, bit) = (usize::from(e) / 64, 1u64 << (e % 64));
            for bits in &mut small.bits[last + 1..] {
                bits[w] &= !bit;
            }
        }
        return Some(small);
    }
    for r in 0..GROUP {
        let mut put = |h: Holder| {
            let e = usize::from(holder_endpoint(h));
            if e >= 64 * INLINE_WORDS {
                return false;
            }
            small.bits[r][e / 64] |= 1 << (e % 64);
            if holder_tiers(h) != GPU_ONLY {
                small.off.push((r, h));
            }
            true
        };
        let ok = match holder::kind(slot_word(rec, r)) {
            Kind::Empty => true,
            Kind::One(a) => put(a),
            Kind::Two(a, b) => put(a) && put(b),
            Kind::Set(i) => {
                let set = sets.get(i);
                let bits = set.small()?;
                small.bits[r] = *bits;
                small.off.extend(set.mixed().iter().map(|&h| (r, h)));
                true
            }
        };
        if !ok {
            return None;
        }
    }
    Some(small)
}

/// Drops the record's references to holder sets (before it is rewritten or freed).
pub(crate) fn release_sets(rec: &Record, sets: &mut Sets) {
    if nested(rec) {
        return;
    }
    for r in 0..GROUP {
        if let Kind::Set(i) = holder::kind(slot_word(rec, r)) {
            sets.release(i);
        }
    }
}

/// Writes `small` as the record's holders, nested if it can be and `nested_ok` (the old holders'
/// sets must have been released).
pub(crate) fn encode(rec: &mut Record, small: &Small, sets: &mut Sets, nested_ok: bool) {
    let mut used = [0usize; GROUP];
    let mut n = 0;
    for r in (0..GROUP).filter(|&r| rec[r] != 0) {
        used[n] = r;
        n += 1;
    }
    if nested_ok && let Some(words) = nested_words(small, &used[..n]) {
        rec[GROUP..].copy_from_slice(&words);
        return;
    }
    let mut prev: Option<(usize, u32)> = None;
    for r in 0..GROUP {
        let bits = &small.bits[r];
        let holders = || {
            bits.iter().enumerate().flat_map(|(w, &word)| {
                let mut rest = word;
                std::iter::from_fn(move || {
                    (rest != 0).then(|| {
                        let e = (w * 64) as u32 + rest.trailing_zeros();
                        rest &= rest - 1;
                        e as u16
                    })
                })
            })
        };
        let with_tiers = |e: u16| holder::holder(e, small.tiers(r, e));
        let kind = match small.count(r) {
            0 => Kind::Empty,
            1 => holders()
                .next()
                .map_or(Kind::Empty, |e| Kind::One(with_tiers(e))),
            2 => {
                let mut it = holders();
                match (it.next(), it.next()) {
                    (Some(a), Some(b)) => Kind::Two(with_tiers(a), with_tiers(b)),
                    _ => Kind::Empty,
                }
            }
            _ => match prev {
                // Consecutive slots with the same holders share one set.
                Some((p, i)) if small.bits[p] == *bits && same_off(small, p, r) => {
                    sets.retain(i);
                    Kind::Set(i)
                }
                _ => {
                    let mixed: Vec<Holder> = small
                        .off
                        .iter()
                        .filter(|&&(s, _)| s == r)
                        .map(|&(_, h)| h)
                        .collect();
                    let i = sets.alloc(HolderSet::from_bits(bits, &mixed));
                    prev = Some((r, i));
                    Kind::Set(i)
                }
            },
        };
        if !matches!(kind, Kind::Set(_)) {
            prev = None;
        }
        rec[GROUP + r] = holder::word(kind);
    }
}

fn same_off(small: &Small, a: usize, b: usize) -> bool {
    let of = |r: usize| {
        small
            .off
            .iter()
            .filter(move |&&(s, _)| s == r)
            .map(|&(_, h)| h)
    };
    of(a).eq(of(b))
}

/// The nested form of `small` over the used slots, if it has one.
fn nested_words(small: &Small, used: &[usize]) -> Option<[u64; GROUP]> {
    if !small.off.is_empty() {
        return None;
    }
    let (&first, rest) = used.split_first()?;
    let mut words = [0u64; GROUP];
    words[..INLINE_WORDS].copy_from_slice(&small.bits[first]);
    let mut n = 0usize;
    let mut prev = first;
    for &r in rest {
        let (a, b) = (&small.bits[prev], &small.bits[r]);
        let mut gone = [0u64; INLINE_WORDS];
        for w in 0..INLINE_WORDS {
            if b[w] & !a[w] != 0 {
                return None;
            }
            gone[w] = a[w] & !b[w];
        }
        for (w, &g) in gone.iter().enumerate() {
            let mut rest = g;
            while rest != 0 {
                if n == MAX_ENDS {
                    return None;
                }
                let e = (w * 64) as u64 + u64::from(rest.trailing_zeros());
                rest &= rest - 1;
                let entry = e | ((prev as u64) << 8);
                words[INLINE_WORDS + n / ENDS_PER_WORD] |=
                    entry << ((n % ENDS_PER_WORD) as u32 * END_BITS);
                n += 1;
            }
        }
        prev = r;
    }
    words[GROUP - 1] |= NESTED | ((prev as u64) << LAST_SHIFT) | ((n as u64) << COUNT_SHIFT);
    Some(words)
}

/// Whether the record is nested, held by `endpoint` alone (GPU only) and lists no run ends: the
/// one-holder prefix shape, which the writer edits in place.
#[inline]
fn solo(rec: &Record, endpoint: u16) -> bool {
    let e = usize::from(endpoint);
    nested(rec)
        && !has_ends(rec)
        && members(rec)
            .iter()
            .enumerate()
            .all(|(w, &bits)| bits == if w == e / 64 { 1 << (e % 64) } else { 0 })
}

#[inline]
fn set_last(rec: &mut Record, last: usize) {
    rec[CELLS - 1] = (rec[CELLS - 1] & !(7 << LAST_SHIFT)) | ((last as u64) << LAST_SHIFT);
}

/// Extends a solo record's run (see [`solo`]) by slot `r`, the next used slot after its last;
/// returns false (and leaves it) if the record is not in that shape.
pub(crate) fn solo_extend(rec: &mut Record, r: usize, endpoint: u16) -> bool {
    let last = last_used(rec);
    if r <= last || r >= GROUP || rec[r] == 0 || !solo(rec, endpoint) {
        return false;
    }
    if rec[last + 1..r].iter().any(|&k| k != 0) {
        return false;
    }
    set_last(rec, r);
    true
}

/// Ends a solo record's run (see [`solo`]) one used slot before `r`, its last; returns false
/// (and leaves it) if the record is not in that shape. With no used slot before `r` the record
/// is left with no holder.
pub(crate) fn solo_truncate(rec: &mut Record, r: usize, endpoint: u16) -> bool {
    if r != last_used(rec) || rec[r] == 0 || !solo(rec, endpoint) {
        return false;
    }
    match rec[..r].iter().rposition(|&k| k != 0) {
        Some(p) => set_last(rec, p),
        None => rec[GROUP..GROUP + INLINE_WORDS].fill(0),
    }
    true
}

/// The tiers `endpoint` holds slot `r` in, in any form.
pub(crate) fn tiers(rec: &Record, r: usize, endpoint: u16, sets: &Sets) -> u8 {
    if !nested(rec) {
        return sets.tiers(holder::kind(slot_word(rec, r)), endpoint);
    }
    let e = usize::from(endpoint);
    let member = members(rec)
        .get(e / 64)
        .is_some_and(|w| w & (1 << (e % 64)) != 0);
    let ended = ends(rec).any(|(x, last)| x == endpoint && last < r);
    u8::from(member && !ended && rec[r] != 0 && r <= last_used(rec)) * GPU_ONLY
}

/// Whether no slot has a holder (the record can go).
pub(crate) fn is_empty(rec: &Record) -> bool {
    if nested(rec) {
        members(rec).iter().all(|&w| w == 0)
    } else {
        rec[GROUP..].iter().all(|&w| w == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec_with_keys(used: std::ops::Range<usize>) -> Record {
        let mut rec = [0u64; CELLS];
        for r in used {
            rec[r] = 100 + r as u64;
        }
        rec
    }

    #[test]
    fn nested_holders_round_trip_with_ends() {
        let mut sets = Sets::default();
        let mut rec = rec_with_keys(2..8);
        let mut small = Small::default();
        // Endpoint e holds slots 2..=(2 + e % 6); endpoint 200 holds all.
        for e in [0u16, 1, 2, 3, 4, 5, 70, 200] {
            for r in 2..=(2 + usize::from(e) % 6).max(if e == 200 { 7 } else { 0 }) {
                small.set(r, e, GPU_ONLY);
            }
        }
        encode(&mut rec, &small, &mut sets, true);
        assert!(nested(&rec));
        assert_eq!(decode(&rec, &sets), Some(small.clone()));
        let at7: Vec<u16> = (0..256)
            .filter(|&e| tiers(&rec, 7, e, &sets) != 0)
            .collect();
        assert_eq!(at7, [5, 200]);
        assert_eq!(tiers(&rec, 3, 1, &sets), GPU_ONLY);
        assert_eq!(tiers(&rec, 4, 1, &sets), 0);
        assert_eq!(sets.live(), 0);
        // A hole makes it per slot; filling it makes it nested again.
        small.set(4, 200, 0);
        release_sets(&rec, &mut sets);
        encode(&mut rec, &small, &mut sets, true);
        assert!(!nested(&rec));
        assert_eq!(decode(&rec, &sets), Some(small.clone()));
        assert!(sets.live() >= 1);
        small.set(4, 200, GPU_ONLY);
        release_sets(&rec, &mut sets);
        encode(&mut rec, &small, &mut sets, true);
        assert!(nested(&rec));
        assert_eq!(sets.live(), 0);
    }

    #[test]
    fn other_tiers_and_large_ids_go_per_slot_with_shared_sets() {
        let mut sets = Sets::default();
        let mut rec = rec_with_keys(0..8);
        let mut small = Small::default();
        for r in 0..8 {
            for e in 0..5u16 {
                small.set(r, e, if e == 4 { 0b011 } else { GPU_ONLY });
            }
        }
        encode(&mut rec, &small, &mut sets, true);
        assert!(!nested(&rec));
        assert_eq!(sets.live(), 1, "eight equal slots, one set");
        assert_eq!(decode(&rec, &sets), Some(small.clone()));
        assert_eq!(
            matches(&rec, &[100, 101, 0, 103, 1, 105, 106, 107]),
            0b1110_1011
        );
        assert_eq!(
            matches(&rec_with_keys(0..2), &[100, 101, 0, 0, 0, 0, 0, 0]),
            0xff
        );
        let mut big = rec;
        big[GROUP] = holder::word(Kind::One(holder::holder(300, 1)));
        assert_eq!(decode(&big, &sets), None);
        release_sets(&rec, &mut sets);
        assert_eq!(sets.live(), 0);
    }

    #[test]
    fn solo_runs_grow_and_shrink_in_place_as_decoded() {
        let mut sets = Sets::default();
        // Endpoint 9 holds slots 1 and 2; then slots 4 and 5 get keys (no holder yet).
        let mut rec = rec_with_keys(1..3);
        let mut small = Small::default();
        small.set(1, 9, GPU_ONLY);
        small.set(2, 9, GPU_ONLY);
        encode(&mut rec, &small, &mut sets, true);
        assert!(nested(&rec));
        rec[4] = 104;
        rec[5] = 105;
        assert_eq!(decode(&rec, &sets), Some(small.clone()));
        // Not the next used slot, or not the only holder: refused, unchanged.
        let before = rec;
        assert!(!solo_extend(&mut rec, 5, 9));
        assert!(!solo_extend(&mut rec, 4, 8));
        assert!(!solo_truncate(&mut rec, 1, 9));
        assert_eq!(rec, before);
        assert!(solo_extend(&mut rec, 4, 9));
        small.set(4, 9, GPU_ONLY);
        assert_eq!(decode(&rec, &sets), Some(small.clone()));
        for r in [4, 2, 1] {
            assert!(solo_truncate(&mut rec, r, 9));
            small.set(r, 9, 0);
            assert_eq!(decode(&rec, &sets), Some(small.clone()), "slot {r}");
        }
        assert!(is_empty(&rec));
        // Another member: not solo.
        let mut two = Small::default();
        two.set(1, 9, GPU_ONLY);
        two.set(1, 10, GPU_ONLY);
        let mut rec = rec_with_keys(1..3);
        encode(&mut rec, &two, &mut sets, true);
        assert!(!solo_extend(&mut rec, 2, 9));
    }

    #[test]
    fn too_many_ends_go_per_slot() {
        let mut sets = Sets::default();
        let mut rec = rec_with_keys(0..2);
        let mut small = Small::default();
        for e in 0..(MAX_ENDS as u16 + 1) {
            small.set(0, e, GPU_ONLY);
        }
        small.set(1, 250, GPU_ONLY);
        small.set(0, 250, GPU_ONLY);
        encode(&mut rec, &small, &mut sets, true);
        assert!(!nested(&rec));
        small.set(0, 0, 0);
        release_sets(&rec, &mut sets);
        encode(&mut rec, &small, &mut sets, true);
        assert!(nested(&rec));
        assert_eq!(ends(&rec).count(), MAX_ENDS);
        assert!(ends(&rec).all(|(_, last)| last == 0));
    }
}
