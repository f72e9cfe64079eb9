//! One block's holders in one 64-bit word: up to two inline, or the index of a shared set.
//!
//! A holder is an endpoint id and the tiers (GPU/CPU/storage) it holds the block in, packed into
//! 19 bits. A record in per-slot form (see [`super::record`]) keeps one such word per slot:
//!
//! ```text
//! bits 38..40 kind: 0 nobody, 1 one holder, 2 two holders, 3 a set in the shard's slab
//! bits 0..38  payload: holder 0 (19) | holder 1 (19), or the set's index
//! ```
//!
//! Bits 40..64 are always zero (the record uses bit 63 of its last word as its form flag).

/// A holder packed as `endpoint << 3 | tiers`.
pub(crate) type Holder = u32;

/// Tier mask of a block held only on GPU, the common case.
pub(crate) const GPU_ONLY: u8 = 1;
/// All tiers.
pub(crate) const ALL_TIERS: u8 = 0b111;

const HOLDER_BITS: u32 = 19;
const HOLDER_MASK: u64 = (1 << HOLDER_BITS) - 1;
const KIND_SHIFT: u32 = 38;
const PAYLOAD_MASK: u64 = (1 << KIND_SHIFT) - 1;

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

/// Decodes a slot word.
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

/// Encodes a slot word.
#[inline]
pub(crate) fn word(kind: Kind) -> u64 {
    let (k, payload) = match kind {
        Kind::Empty => (0, 0),
        Kind::One(a) => (1, u64::from(a)),
        Kind::Two(a, b) => (2, u64::from(a) | (u64::from(b) << HOLDER_BITS)),
        Kind::Set(i) => (3, u64::from(i) & PAYLOAD_MASK),
    };
    (k << KIND_SHIFT) | payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_leave_the_top_bits_free() {
        for k in [
            Kind::Empty,
            Kind::One(holder(65535, 7)),
            Kind::Two(holder(3, 1), holder(65000, 2)),
            Kind::Set(u32::MAX),
        ] {
            let w = word(k);
            assert_eq!(kind(w), k);
            assert_eq!(w >> 40, 0);
        }
        assert_eq!(word(Kind::Empty), 0);
        assert_eq!(holder_endpoint(holder(300, 5)), 300);
        assert_eq!(holder_tiers(holder(300, 5)), 5);
    }
}
