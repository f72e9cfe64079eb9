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

use super::holder::{self, GPU_ONLY};
use super::position::GROUP;
use super::sets::{INLINE_WORDS, Sets};

mod small;
#[cfg(test)]
mod tests;

pub(crate) use small::{decode, encode, release_sets};

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
