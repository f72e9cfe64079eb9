//! Where a block is stored in the holder tables, derived from its place in its chain.
//!
//! A lookup knows all of a request's keys before it touches memory, and its cost is the number of
//! cache lines it misses. So blocks are not placed by their own key (128 random lines for a
//! 128-block request) but by their chain position:
//!
//! - every [`WINDOW`] consecutive blocks of a chain (depths `128w..128w+127`) live in one shard,
//!   chosen by the key of the window's first block: one shard lock per 128 blocks;
//! - every [`GROUP`] consecutive blocks (depths `8g..8g+7`) live in one 128-byte record (see
//!   [`super::record`]), each in the slot of its rank (depth mod 8). The record of a group is
//!   found from the tag of its first key. Where chains diverge inside a group, the first block of
//!   the branch starts a record of its own (found from its own key's tag), and its descendants
//!   in the group follow it there.
//!
//! A 128-block lookup therefore reads 16 records (32 lines) under one lock. The writer learns
//! which record a block went to from the table and keeps it in the block's [`ChainPos`], next to
//! its key in the endpoint's engine-hash map, to find it again on removal.

use super::secret::IndexSecret;
use crate::keys::BlockKey;

/// Consecutive blocks of a chain kept in one shard (one lock per window at lookup).
pub(crate) const WINDOW: usize = 128;
/// Consecutive blocks of a chain sharing one record.
pub(crate) const GROUP: usize = 8;
/// Bits of a record tag: distinct tags for ~2^26 records per shard, so that two records sharing
/// a tag (and so their two candidate buckets and their fingerprint) stay rare.
pub(crate) const TAG_BITS: u32 = 26;
/// Bits choosing a shard.
pub(crate) const SHARD_BITS: u32 = 4;
/// Number of holder-table shards.
pub(crate) const SHARDS: usize = 1 << SHARD_BITS;

const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const OFFSET_SHIFT: u32 = TAG_BITS;
const OFFSET_BITS: u32 = WINDOW.trailing_zeros();
const SHARD_SHIFT: u32 = OFFSET_SHIFT + OFFSET_BITS;
const BOUNDARY_SHIFT: u32 = SHARD_SHIFT + SHARD_BITS;
/// Bits a [`ChainPos`] uses (the engine map stores exactly these).
pub(crate) const POS_BITS: u32 = BOUNDARY_SHIFT + 1;

const _: () = assert!(
    WINDOW.is_power_of_two()
        && WINDOW.is_multiple_of(GROUP)
        && GROUP.is_power_of_two()
        && GROUP == 8
        && POS_BITS <= 39
);

/// The lane of [`IndexSecret::mix`] that places blocks.
const PLACE: u64 = 0;

/// The shard of the window starting with `key` (the top bits of its keyed mix).
#[inline]
pub(crate) fn shard_of(secret: &IndexSecret, key: BlockKey) -> usize {
    (secret.mix(key.get(), PLACE) >> (64 - SHARD_BITS)) as usize
}

/// The tag of the record whose first block is `key` (bits of its keyed mix disjoint from the
/// shard bits): keys that share a tag can only be found with the secret.
#[inline]
pub(crate) fn tag_of(secret: &IndexSecret, key: BlockKey) -> u32 {
    ((secret.mix(key.get(), PLACE) >> 20) & TAG_MASK) as u32
}

/// A block's placement: its shard, the tag of its record, its depth modulo [`WINDOW`], and
/// whether it ends an index block (always, except for the leading parts of a block re-chunked
/// from smaller event blocks). Packed into [`POS_BITS`] bits.
#[derive(Copy, Clone, PartialEq, Eq)]
pub(crate) struct ChainPos(u64);

impl std::fmt::Debug for ChainPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainPos")
            .field("shard", &self.shard())
            .field("tag", &self.tag())
            .field("offset", &self.offset())
            .field("boundary", &self.boundary())
            .finish()
    }
}

/// Where the next block of a chain goes, before the table has chosen its record.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Its shard.
    pub(crate) shard: usize,
    /// Its depth modulo [`WINDOW`].
    pub(crate) offset: usize,
    /// Its parent's record tag and key, when the parent is in the same group (rank > 0).
    pub(crate) parent: Option<(u32, BlockKey)>,
}

impl Slot {
    /// The slot of the block after `parent` (whose key is `parent_key`), or of block 0 when
    /// there is no parent; `key` is the block's own key.
    #[inline]
    pub(crate) fn after(
        secret: &IndexSecret,
        parent: Option<(BlockKey, ChainPos)>,
        key: BlockKey,
    ) -> Self {
        match parent {
            Some((pkey, pos)) if (pos.offset() + 1) % WINDOW != 0 => {
                let offset = pos.offset() + 1;
                Self {
                    shard: pos.shard(),
                    offset,
                    parent: (offset % GROUP != 0).then_some((pos.tag(), pkey)),
                }
            }
            _ => Self {
                shard: shard_of(secret, key),
                offset: 0,
                parent: None,
            },
        }
    }

    /// Its rank in its group.
    #[inline]
    pub(crate) fn rank(&self) -> usize {
        self.offset % GROUP
    }

    /// The position of the block once the table has put it in a record of tag `tag`.
    #[inline]
    pub(crate) fn at(&self, tag: u32) -> ChainPos {
        ChainPos(
            (1 << BOUNDARY_SHIFT)
                | ((self.shard as u64) << SHARD_SHIFT)
                | ((self.offset as u64) << OFFSET_SHIFT)
                | (u64::from(tag) & TAG_MASK),
        )
    }
}

impl ChainPos {
    /// The same position, marked as ending (or not ending) an index block.
    #[inline]
    pub(crate) fn with_boundary(self, boundary: bool) -> Self {
        Self((self.0 & !(1 << BOUNDARY_SHIFT)) | (u64::from(boundary) << BOUNDARY_SHIFT))
    }

    /// Rebuilds a position from [`ChainPos::raw`].
    #[inline]
    pub(crate) fn from_raw(raw: u64) -> Self {
        Self(raw & ((1 << POS_BITS) - 1))
    }

    /// The packed value ([`POS_BITS`] bits).
    #[inline]
    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    /// The shard holding the block.
    #[inline]
    pub(crate) fn shard(self) -> usize {
        ((self.0 >> SHARD_SHIFT) as usize) & (SHARDS - 1)
    }

    /// The tag of the block's record.
    #[inline]
    pub(crate) fn tag(self) -> u32 {
        (self.0 & TAG_MASK) as u32
    }

    /// Depth modulo [`WINDOW`].
    #[inline]
    pub(crate) fn offset(self) -> usize {
        ((self.0 >> OFFSET_SHIFT) as usize) & (WINDOW - 1)
    }

    /// Depth modulo [`GROUP`]: the block's slot in its record.
    #[inline]
    pub(crate) fn rank(self) -> usize {
        self.offset() % GROUP
    }

    /// Whether a chain may continue after this entry (false for the leading parts of a block
    /// re-chunked from smaller event blocks).
    #[inline]
    pub(crate) fn boundary(self) -> bool {
        self.0 & (1 << BOUNDARY_SHIFT) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_request_side_rules() {
        let keys: Vec<BlockKey> = (0..300u64)
            .map(|i| BlockKey::from_raw(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x1234_5678))
            .collect();
        let mut parent: Option<(BlockKey, ChainPos)> = None;
        let s = IndexSecret::FIXED;
        for (depth, key) in keys.iter().enumerate() {
            let slot = Slot::after(&s, parent, *key);
            assert_eq!(
                slot.shard,
                shard_of(&s, keys[depth - depth % WINDOW]),
                "{depth}"
            );
            assert_eq!(slot.offset, depth % WINDOW);
            assert_eq!(slot.rank(), depth % GROUP);
            assert_eq!(slot.parent.is_some(), depth % GROUP != 0);
            let pos = slot.at(tag_of(&s, *key) ^ depth as u32);
            assert_eq!(pos.shard(), slot.shard);
            assert_eq!(pos.offset(), slot.offset);
            assert_eq!(
                pos.tag(),
                (tag_of(&s, *key) ^ depth as u32) & TAG_MASK as u32
            );
            assert!(pos.boundary());
            assert_eq!(ChainPos::from_raw(pos.raw()), pos);
            assert!(!pos.with_boundary(false).boundary());
            assert!(pos.raw() < 1 << POS_BITS);
            parent = Some((*key, pos));
        }
    }
}
