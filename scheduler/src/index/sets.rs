//! Holder sets of three or more holders, kept in a per-shard slab and shared by reference count.
//!
//! A set is a bitset over endpoint ids (ids are dense, so 256 endpoints cost 32 bytes) plus a
//! short list of the holders whose tiers are not "GPU only", which lookups need for tier weights.
//! Consecutive blocks of a record with the same holders share one set, so a lookup reads its
//! line once for all of them.

use super::holder::{GPU_ONLY, Holder, Kind, holder, holder_endpoint, holder_tiers};

/// Words of a holder bitset kept inside the set itself (endpoint ids below 256).
pub(crate) const INLINE_WORDS: usize = 4;

/// What rarely exists: a bitset past id 255, and holders that are not GPU-only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Spill {
    /// The whole bitset once an id of 256 or more holds the block.
    bits: Vec<u64>,
    mixed: Vec<Holder>,
}

/// Three or more holders: one aligned 64-byte line in the common case (ids below 256).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[repr(C, align(64))]
pub(crate) struct HolderSet {
    /// The bitset while it fits (`words` of them used).
    inline: [u64; INLINE_WORDS],
    spill: Option<Box<Spill>>,
    len: u32,
    /// Slots referring to the set.
    refs: u32,
    words: u8,
    /// Whether `spill` holds the bitset (else `inline` does).
    spilled: bool,
}

impl HolderSet {
    /// The GPU-only holders of `bits` plus the `mixed` holders (which must be among `bits`).
    pub(crate) fn from_bits(bits: &[u64; INLINE_WORDS], mixed: &[Holder]) -> Self {
        let mut set = Self {
            inline: *bits,
            len: bits.iter().map(|w| w.count_ones()).sum(),
            words: INLINE_WORDS as u8,
            ..Self::default()
        };
        if !mixed.is_empty() {
            set.spill = Some(Box::new(Spill {
                bits: Vec::new(),
                mixed: mixed.to_vec(),
            }));
        }
        set
    }

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
                let e = ((w * 64) as u32 + rest.trailing_zeros()) as u16;
                rest &= rest - 1;
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
    /// The set at `index` (an empty one for an index no slot holds, which never happens).
    #[inline]
    pub(crate) fn get(&self, index: u32) -> &HolderSet {
        static EMPTY: HolderSet = HolderSet {
            inline: [0; INLINE_WORDS],
            spill: None,
            len: 0,
            refs: 0,
            words: 0,
            spilled: false,
        };
        self.sets.get(index as usize).unwrap_or(&EMPTY)
    }

    /// Stores `set` for one referring slot; returns its index.
    pub(crate) fn alloc(&mut self, mut set: HolderSet) -> u32 {
        set.refs = 1;
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

    /// One more slot refers to `index`.
    pub(crate) fn retain(&mut self, index: u32) {
        if let Some(s) = self.sets.get_mut(index as usize) {
            s.refs += 1;
        }
    }

    /// One slot less refers to `index`; the set goes with the last.
    pub(crate) fn release(&mut self, index: u32) {
        if let Some(s) = self.sets.get_mut(index as usize) {
            s.refs -= 1;
            if s.refs == 0 {
                *s = HolderSet::default();
                self.free.push(index);
            }
        }
    }

    /// Adds `tiers` for `endpoint` to the holders of `kind`; returns the new kind and whether the
    /// endpoint is a new holder. A shared set is copied first.
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
                    set.set(holder_endpoint(h), holder_tiers(h));
                }
                (Kind::Set(self.alloc(set)), true)
            }
            Kind::Set(i) => {
                let old = self.get(i).tiers(endpoint);
                if old | tiers == old {
                    return (kind, false);
                }
                let i = self.unique(i);
                if let Some(s) = self.sets.get_mut(i as usize) {
                    s.set(endpoint, old | tiers);
                }
                (Kind::Set(i), old == 0)
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
                let old = self.get(i).tiers(endpoint);
                if old == 0 {
                    return (kind, false, false);
                }
                let new = old & !tiers;
                if new == old {
                    return (kind, true, false);
                }
                let i = self.unique(i);
                let Some(set) = self.sets.get_mut(i as usize) else {
                    return (kind, false, false);
                };
                set.set(endpoint, new);
                if set.len() > 2 {
                    return (Kind::Set(i), true, new == 0);
                }
                let rest: Vec<Holder> = set.holders().collect();
                self.release(i);
                let kind = match rest[..] {
                    [a, b] => Kind::Two(a, b),
                    [a] => Kind::One(a),
                    _ => Kind::Empty,
                };
                (kind, true, new == 0)
            }
            _ => (kind, false, false),
        }
    }

    /// `index`, or a private copy of it if other slots share it.
    fn unique(&mut self, index: u32) -> u32 {
        let set = self.get(index);
        if set.refs <= 1 {
            return index;
        }
        let copy = set.clone();
        self.release(index);
        self.alloc(copy)
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

    /// Number of holders of `kind`.
    pub(crate) fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Empty => 0,
            Kind::One(_) => 1,
            Kind::Two(..) => 2,
            Kind::Set(i) => self.get(i).len(),
        }
    }

    /// Sets in use.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.sets.len() - self.free.len()
    }

    /// Bytes of the slab.
    pub(crate) fn bytes(&self) -> usize {
        self.sets.capacity() * std::mem::size_of::<HolderSet>() + self.free.capacity() * 4
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
        let (k3, held, gone) = sets.remove(k2, 5, 0b111);
        assert!(held && gone);
        assert_eq!(k3, Kind::Two(holder(9, 1), holder(300, 2)));
        assert_eq!(sets.live(), 0);
        let (k4, held, gone) = sets.remove(k3, 9, 0b010);
        assert!(held && !gone, "GPU tier stays");
        let (k5, _, gone) = sets.remove(k4, 9, GPU_ONLY);
        assert!(gone);
        assert_eq!(k5, Kind::One(holder(300, 2)));
        assert_eq!(sets.remove(k5, 300, 0b111).0, Kind::Empty);
        assert_eq!(sets.remove(Kind::Empty, 1, 1), (Kind::Empty, false, false));
    }

    #[test]
    fn shared_sets_are_copied_before_a_change() {
        let mut sets = Sets::default();
        let bits = [0b111u64, 0, 0, 0];
        let i = sets.alloc(HolderSet::from_bits(&bits, &[]));
        sets.retain(i);
        let (k, added) = sets.add(Kind::Set(i), 3, GPU_ONLY);
        assert!(added);
        let Kind::Set(j) = k else {
            panic!("still a set")
        };
        assert_ne!(i, j);
        assert_eq!(sets.get(i).len(), 3);
        assert_eq!(sets.get(j).len(), 4);
        assert_eq!(sets.live(), 2);
        sets.release(i);
        sets.release(j);
        assert_eq!(sets.live(), 0);
    }
}
