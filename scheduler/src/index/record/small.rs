//! A record's holders in the form the writer edits ([`Small`]: a bitset per slot), read from either
//! of the record's forms and written back in the smaller one that fits.

use super::super::holder::{self, GPU_ONLY, Holder, Kind, holder_endpoint, holder_tiers};
use super::super::position::GROUP;
use super::super::sets::{HolderSet, INLINE_WORDS, Sets};
use super::{
    COUNT_SHIFT, END_BITS, ENDS_PER_WORD, LAST_SHIFT, MAX_ENDS, NESTED, Record, ends, keys,
    last_used, members, nested, slot_word,
};

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
