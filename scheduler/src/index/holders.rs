//! Who holds a block: up to two holders inline in the slot's word, a bitset beyond.
//!
//! A holder is an endpoint id and the tiers (GPU/CPU/storage) it holds the block in, packed into
//! 19 bits. The slot word of the holder table carries, besides the holders, the block's group tag
//! and rank (see [`super::position`]), so that the table can be rebuilt without the endpoints:
//!
//! ```text
//! bits 43..62 group tag (19)          bits 40..43 rank in group (3)
//! bits 38..40 kind: 0 empty, 1 one holder, 2 two holders, 3 overflow set
//! bits 0..38  payload: holder 0 (19) | holder 1 (19), or the overflow set's index
//! ```
//!
//! Sets of three or more holders live in a per-shard slab as a bitset over endpoint ids (ids are
//! dense, so 256 endpoints cost 32 bytes) plus a short list of the holders whose tiers are not
//! "GPU only", which lookups need for tier weights.

use super::position::{GROUP, TAG_BITS};

/// A holder packed as `endpoint << 3 | tiers`.
pub(crate) type Holder = u32;

/// Tier mask of a block held only on GPU, the common case.
pub(crate) const GPU_ONLY: u8 = 1;
/// All tiers.
pub(crate) const ALL_TIERS: u8 = 0b111;

const HOLDER_BITS: u32 = 19;
const HOLDER_MASK: u64 = (1 << HOLDER_BITS) - 1;
const KIND_SHIFT: u32 = 38;
const RANK_SHIFT: u32 = 40;
const TAG_SHIFT: u32 = 43;
const PAYLOAD_MASK: u64 = (1 << KIND_SHIFT) - 1;

const _: () = assert!(TAG_SHIFT + TAG_BITS <= 63 && GROUP <= 8);

/// Packs a holder.
#[inline]
pub(crate) fn holder(endpoint: u16, tiers: u8) -> Holder {
    (u32::from(endpoint) << 3) | u32::from(tiers & ALL_TIERS)
}

/// The endpoint of a holder.
#[inline]
pub(crate) fn holder_endpoint(h: Holder) -> u16 {
    (h >> 3) as u16
}

/// The tiers of a holder.
#[inline]
pub(crate) fn holder_tiers(h: Holder) -> u8 {
    (h & 7) as u8
}

/// What a slot word says about its holders.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Empty,
    One(Holder),
    Two(Holder, Holder),
    Set(u32),
}

/// Decodes the holder part of a slot word.
#[inline]
pub(crate) fn kind(word: u64) -> Kind {
    let payload = word & PAYLOAD_MASK;
    match (word >> KIND_SHIFT) & 3 {
        0 => Kind::Empty,
        1 => Kind::One((payload & HOLDER_MASK) as Holder),
        2 => Kind::Two(
            (payload & HOLDER_MASK) as Holder,
            ((payload >> HOLDER_BITS) & HOLDER_MASK) as Holder,
        ),
        _ => Kind::Set(payload as u32),
    }
}

/// The holder part of a word (kind and payload), without tag and rank.
pub(crate) const HOLDERS_MASK: u64 = (1 << RANK_SHIFT) - 1;

/// The holder part of a word held by exactly `h`: lets a lookup test "held by this endpoint on GPU
/// only" with one AND and one compare.
#[inline]
pub(crate) fn only(h: Holder) -> u64 {
    (1 << KIND_SHIFT) | u64::from(h)
}

/// 1 if `word` refers to a holder set, else 0 (branch-free, for folding over many words).
#[inline]
pub(crate) fn set_bit(word: u64) -> u64 {
    (word >> KIND_SHIFT) & (word >> (KIND_SHIFT + 1)) & 1
}

/// Whether the slot holding `word` is occupied.
#[inline]
pub(crate) fn occupied(word: u64) -> bool {
    (word >> KIND_SHIFT) & 3 != 0
}

/// The rank in its group of the block in the slot.
#[inline]
pub(crate) fn rank(word: u64) -> usize {
    ((word >> RANK_SHIFT) & 7) as usize
}

/// The group tag of the block in the slot.
#[inline]
pub(crate) fn tag(word: u64) -> u32 {
    ((word >> TAG_SHIFT) as u32) & ((1 << TAG_BITS) - 1)
}

/// A word for an occupied slot (counter bit clear).
#[inline]
pub(crate) fn word(tag: u32, rank: usize, kind: Kind) -> u64 {
    let (k, payload) = match kind {
        Kind::Empty => (0, 0),
        Kind::One(a) => (1, u64::from(a)),
        Kind::Two(a, b) => (2, u64::from(a) | (u64::from(b) << HOLDER_BITS)),
        Kind::Set(i) => (3, u64::from(i)),
    };
    if k == 0 {
        return 0;
    }
    (u64::from(tag) << TAG_SHIFT) | ((rank as u64) << RANK_SHIFT) | (k << KIND_SHIFT) | payload
}

/// Words of a holder bitset kept inside the set itself (endpoint ids below 256): a lookup then
/// reaches the bits with one memory access instead of two.
pub(crate) const INLINE_WORDS: usize = 4;

/// What rarely exists: a bitset past id 255, and holders that are not GPU-only.
#[derive(Clone, Debug, Default)]
struct Spill {
    /// The whole bitset once an id of 256 or more holds the block.
    bits: Vec<u64>,
    mixed: Vec<Holder>,
}

/// Three or more holders: a bitset over endpoint ids, plus the holders that are not GPU-only.
/// One aligned 64-byte line in the common case (ids below 256), so a lookup pays one cache miss
/// per shared block.
#[derive(Clone, Debug, Default)]
#[repr(C, align(64))]
pub(crate) struct HolderSet {
    /// The bitset while it fits (`words` of them used).
    inline: [u64; INLINE_WORDS],
    spill: Option<Box<Spill>>,
    len: u32,
    words: u8,
    /// Whether `spill` holds the bitset (else `inline` does).
    spilled: bool,
}

impl HolderSet {
    /// Endpoints holding the block, as bitset words from id 0.
    #[inline]
    pub(crate) fn bits(&self) -> &[u64] {
        match &self.spill {
            Some(spill) if self.spilled => &spill.bits,
            _ => &self.inline[..usize::from(self.words).min(INLINE_WORDS)],
        }
    }

    /// The whole bitset as [`INLINE_WORDS`] words, while no id of 256 or more holds the block.
    #[inline]
    pub(crate) fn small(&self) -> Option<&[u64; INLINE_WORDS]> {
        (!self.spilled).then_some(&self.inline)
    }

    fn bits_mut(&mut self, need: usize) -> &mut [u64] {
        if !self.spilled && need <= INLINE_WORDS {
            self.words = self.words.max(need as u8);
            return &mut self.inline[..usize::from(self.words)];
        }
        let spill = self.spill.get_or_insert_with(Box::default);
        if !self.spilled {
            spill.bits = self.inline[..usize::from(self.words)].to_vec();
            self.inline = [0; INLINE_WORDS];
            self.spilled = true;
        }
        if spill.bits.len() < need {
            spill.bits.resize(need, 0);
        }
        &mut spill.bits
    }

    /// Holders whose tiers are not exactly GPU (for tier weights).
    #[inline]
    pub(crate) fn mixed(&self) -> &[Holder] {
        self.spill.as_ref().map_or(&[], |s| &s.mixed)
    }

    /// Number of holders.
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    /// The tiers `endpoint` holds the block in (0 if none).
    pub(crate) fn tiers(&self, endpoint: u16) -> u8 {
        let e = usize::from(endpoint);
        if self
            .bits()
            .get(e / 64)
            .is_none_or(|w| w & (1 << (e % 64)) == 0)
        {
            return 0;
        }
        self.mixed()
            .iter()
            .find(|&&h| holder_endpoint(h) == endpoint)
            .map_or(GPU_ONLY, |&h| holder_tiers(h))
    }

    /// Adds `tiers` to `endpoint`'s holding; returns whether the endpoint is a new holder.
    pub(crate) fn add(&mut self, endpoint: u16, tiers: u8) -> bool {
        let old = self.tiers(endpoint);
        self.set(endpoint, old | tiers);
        old == 0
    }

    /// Clears `tiers` from `endpoint`'s holding; returns (held before, holds no tier now).
    pub(crate) fn remove(&mut self, endpoint: u16, tiers: u8) -> (bool, bool) {
        let old = self.tiers(endpoint);
        if old == 0 {
            return (false, false);
        }
        let new = old & !tiers;
        self.set(endpoint, new);
        (true, new == 0)
    }

    fn set(&mut self, endpoint: u16, tiers: u8) {
        let e = usize::from(endpoint);
        let (w, bit) = (e / 64, 1u64 << (e % 64));
        if let Some(spill) = &mut self.spill {
            spill.mixed.retain(|&h| holder_endpoint(h) != endpoint);
        }
        if tiers == 0 {
            if self.bits().get(w).is_some_and(|word| word & bit != 0) {
                self.bits_mut(w + 1)[w] &= !bit;
                self.len -= 1;
            }
            return;
        }
        let bits = self.bits_mut(w + 1);
        if bits[w] & bit == 0 {
            bits[w] |= bit;
            self.len += 1;
        }
        if tiers != GPU_ONLY {
            let spill = self.spill.get_or_insert_with(Box::default);
            spill.mixed.push(holder(endpoint, tiers));
        }
    }

    /// All holders, in endpoint order.
    pub(crate) fn holders(&self) -> impl Iterator<Item = Holder> + '_ {
        self.bits().iter().enumerate().flat_map(move |(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let e = (w * 64) as u32 + rest.trailing_zeros();
                rest &= rest - 1;
                let e = e as u16;
                Some(holder(e, self.tiers(e)))
            })
        })
    }
}

/// A shard's slab of holder sets, reusing freed slots.
#[derive(Debug, Default)]
pub(crate) struct Sets {
    sets: Vec<HolderSet>,
    free: Vec<u32>,
}

impl Sets {
    /// The set at `index` (an empty one for a stale index, which a torn-free table never has).
    #[inline]
    pub(crate) fn get(&self, index: u32) -> &HolderSet {
        static EMPTY: HolderSet = HolderSet {
            inline: [0; INLINE_WORDS],
            spill: None,
            len: 0,
            words: 0,
            spilled: false,
        };
        self.sets.get(index as usize).unwrap_or(&EMPTY)
    }

    fn alloc(&mut self, set: HolderSet) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.sets[i as usize] = set;
                i
            }
            None => {
                self.sets.push(set);
                (self.sets.len() - 1) as u32
            }
        }
    }

    fn release(&mut self, index: u32) -> HolderSet {
        self.free.push(index);
        std::mem::take(&mut self.sets[index as usize])
    }

    /// Adds `tiers` for `endpoint` to the holders of `kind`; returns the new kind and whether the
    /// endpoint is a new holder.
    pub(crate) fn add(&mut self, kind: Kind, endpoint: u16, tiers: u8) -> (Kind, bool) {
        let new = holder(endpoint, tiers);
        let same = |h: Holder| holder_endpoint(h) == endpoint;
        match kind {
            Kind::Empty => (Kind::One(new), true),
            Kind::One(a) if same(a) => (Kind::One(a | new), false),
            Kind::One(a) => (Kind::Two(a, new), true),
            Kind::Two(a, b) if same(a) => (Kind::Two(a | new, b), false),
            Kind::Two(a, b) if same(b) => (Kind::Two(a, b | new), false),
            Kind::Two(a, b) => {
                let mut set = HolderSet::default();
                for h in [a, b, new] {
                    set.add(holder_endpoint(h), holder_tiers(h));
                }
                (Kind::Set(self.alloc(set)), true)
            }
            Kind::Set(i) => {
                let added = self
                    .sets
                    .get_mut(i as usize)
                    .is_some_and(|s| s.add(endpoint, tiers));
                (kind, added)
            }
        }
    }

    /// Clears `tiers` of `endpoint` from the holders of `kind`; returns the new kind, whether the
    /// endpoint held the block, and whether it holds no tier of it now.
    pub(crate) fn remove(&mut self, kind: Kind, endpoint: u16, tiers: u8) -> (Kind, bool, bool) {
        let same = |h: Holder| holder_endpoint(h) == endpoint;
        let strip = |h: Holder| h & !u32::from(tiers);
        match kind {
            Kind::One(a) if same(a) => match strip(a) {
                r if holder_tiers(r) == 0 => (Kind::Empty, true, true),
                r => (Kind::One(r), true, false),
            },
            Kind::Two(a, b) if same(a) || same(b) => {
                let (hit, other) = if same(a) { (a, b) } else { (b, a) };
                let r = strip(hit);
                if holder_tiers(r) == 0 {
                    (Kind::One(other), true, true)
                } else if same(a) {
                    (Kind::Two(r, b), true, false)
                } else {
                    (Kind::Two(a, r), true, false)
                }
            }
            Kind::Set(i) => {
                let Some(set) = self.sets.get_mut(i as usize) else {
                    return (kind, false, false);
                };
                let (held, gone) = set.remove(endpoint, tiers);
                if set.len() > 2 {
                    return (kind, held, gone);
                }
                let mut rest = self.release(i).holders().collect::<Vec<_>>().into_iter();
                let kind = match (rest.next(), rest.next()) {
                    (Some(a), Some(b)) => Kind::Two(a, b),
                    (Some(a), None) => Kind::One(a),
                    _ => Kind::Empty,
                };
                (kind, held, gone)
            }
            _ => (kind, false, false),
        }
    }

    /// Number of holders of `kind`.
    #[cfg(test)]
    pub(crate) fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Empty => 0,
            Kind::One(_) => 1,
            Kind::Two(..) => 2,
            Kind::Set(i) => self.get(i).len(),
        }
    }

    /// The tiers `endpoint` holds in `kind` (0 if none).
    pub(crate) fn tiers(&self, kind: Kind, endpoint: u16) -> u8 {
        let of = |h: Holder| {
            if holder_endpoint(h) == endpoint {
                holder_tiers(h)
            } else {
                0
            }
        };
        match kind {
            Kind::Empty => 0,
            Kind::One(a) => of(a),
            Kind::Two(a, b) => of(a) | of(b),
            Kind::Set(i) => self.get(i).tiers(endpoint),
        }
    }

    /// Sets in use.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.sets.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<HolderSet>(), 64);
        assert_eq!(std::mem::align_of::<HolderSet>(), 64);
    }

    #[test]
    fn word_round_trips() {
        for kind in [
            Kind::One(holder(65535, 7)),
            Kind::Two(holder(3, 1), holder(65000, 2)),
            Kind::Set(u32::MAX),
        ] {
            let w = word((1 << TAG_BITS) - 1, 7, kind);
            assert_eq!(super::kind(w), kind);
            assert_eq!(rank(w), 7);
            assert_eq!(tag(w), (1 << TAG_BITS) - 1);
            assert!(occupied(w));
        }
        assert!(!occupied(0));
    }

    #[test]
    fn holders_grow_into_a_set_and_shrink_back_inline() {
        let mut sets = Sets::default();
        let mut k = Kind::Empty;
        for e in [5u16, 9, 300, 9] {
            let (next, added) = sets.add(k, e, GPU_ONLY);
            assert_eq!(added, !(e == 9 && matches!(k, Kind::Set(_))));
            k = next;
        }
        assert!(matches!(k, Kind::Set(_)));
        assert_eq!(sets.count(k), 3);
        (k, _) = sets.add(k, 300, 0b010);
        assert_eq!(sets.tiers(k, 300), 0b011);
        assert_eq!(sets.tiers(k, 5), GPU_ONLY);
        let (k2, held, gone) = sets.remove(k, 300, GPU_ONLY);
        assert!(held && !gone);
        assert_eq!(sets.tiers(k2, 300), 0b010);
        let (k3, held, gone) = sets.remove(k2, 5, ALL_TIERS);
        assert!(held && gone);
        assert_eq!(k3, Kind::Two(holder(9, 1), holder(300, 2)));
        assert_eq!(sets.live(), 0);
        let (k4, held, gone) = sets.remove(k3, 9, 0b010);
        assert!(held && !gone, "GPU tier stays");
        let (k5, _, gone) = sets.remove(k4, 9, GPU_ONLY);
        assert!(gone);
        assert_eq!(k5, Kind::One(holder(300, 2)));
        assert_eq!(sets.remove(k5, 300, ALL_TIERS).0, Kind::Empty);
        assert_eq!(sets.remove(Kind::Empty, 1, 1), (Kind::Empty, false, false));
    }
}
