//! Where a block is stored in the holder tables, derived from its place in its chain.
//!
//! A lookup knows all of a request's keys before it touches memory, and its cost is the number of
//! cache lines it misses. So blocks are not placed by their own key (128 random lines for a
//! 128-block request) but by their chain position:
//!
//! - every [`WINDOW`] consecutive blocks of a chain (depths `128w..128w+127`) live in one shard,
//!   chosen by the key of the window's first block: one shard lock per 128 blocks;
//! - every [`GROUP`] consecutive blocks (depths `8g..8g+7`) share one home bucket, chosen by a tag
//!   taken from the key of the group's first block, each block in the slot of its rank: one
//!   256-byte bucket per 8 blocks, found without scanning.
//!
//! A 128-block lookup therefore touches 16 buckets under one lock instead of 128 random slots. Both a
//! request and an event can derive the placement: the request from its own keys, an event from its
//! parent's [`ChainPos`], which the endpoint's engine-hash map keeps next to each key.

use crate::keys::BlockKey;

/// Consecutive blocks of a chain kept in one shard (one lock per window at lookup).
pub(crate) const WINDOW: usize = 128;
/// Consecutive blocks of a chain sharing one home bucket.
pub(crate) const GROUP: usize = 8;
/// Bits of a group tag: enough to spread homes over 2^19 buckets (2^23 blocks) per shard.
pub(crate) const TAG_BITS: u32 = 19;
/// Bits choosing a shard.
pub(crate) const SHARD_BITS: u32 = 4;
/// Number of holder-table shards.
pub(crate) const SHARDS: usize = 1 << SHARD_BITS;

const TAG_MASK: u32 = (1 << TAG_BITS) - 1;
const OFFSET_SHIFT: u32 = TAG_BITS;
const OFFSET_BITS: u32 = WINDOW.trailing_zeros();
const SHARD_SHIFT: u32 = OFFSET_SHIFT + OFFSET_BITS;
const BOUNDARY: u32 = 1 << 30;
const OCCUPIED: u32 = 1 << 31;

const _: () = assert!(
    WINDOW.is_power_of_two()
        && WINDOW.is_multiple_of(GROUP)
        && GROUP.is_power_of_two()
        && GROUP <= 8
);
const _: () = assert!(SHARD_SHIFT + SHARD_BITS <= 30);

/// The shard of the window starting with `key`.
#[inline]
pub(crate) fn shard_of(key: BlockKey) -> usize {
    (key.get() >> (64 - SHARD_BITS)) as usize
}

/// The home tag of the group starting with `key` (bits disjoint from the shard bits).
#[inline]
pub(crate) fn tag_of(key: BlockKey) -> u32 {
    (key.get() >> 20) as u32 & TAG_MASK
}

/// A block's placement: its shard, its group's tag, its depth modulo [`WINDOW`], and whether it
/// ends an index block (always, except for the leading parts of a re-chunked block).
///
/// Packed into 32 bits because one is stored per (endpoint, block) entry. Never zero.
#[derive(Copy, Clone, PartialEq, Eq)]
pub(crate) struct ChainPos(u32);

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

impl ChainPos {
    /// The position of block 0 of a chain whose key is `key`.
    #[inline]
    pub(crate) fn first(key: BlockKey) -> Self {
        Self(OCCUPIED | BOUNDARY | ((shard_of(key) as u32) << SHARD_SHIFT) | tag_of(key))
    }

    /// The position of the block after `self`, whose key is `key`.
    #[inline]
    pub(crate) fn next(self, key: BlockKey) -> Self {
        let offset = (self.offset() + 1) % WINDOW;
        if offset == 0 {
            return Self::first(key);
        }
        let shard = (self.shard() as u32) << SHARD_SHIFT;
        let tag = if offset.is_multiple_of(GROUP) {
            tag_of(key)
        } else {
            self.tag()
        };
        Self(OCCUPIED | BOUNDARY | shard | ((offset as u32) << OFFSET_SHIFT) | tag)
    }

    /// The same position, marked as ending (or not ending) an index block.
    #[inline]
    pub(crate) fn with_boundary(self, boundary: bool) -> Self {
        if boundary {
            Self(self.0 | BOUNDARY)
        } else {
            Self(self.0 & !BOUNDARY)
        }
    }

    /// Rebuilds a position from [`ChainPos::raw`]; `None` for the empty value 0.
    #[inline]
    pub(crate) fn from_raw(raw: u32) -> Option<Self> {
        (raw & OCCUPIED != 0).then_some(Self(raw))
    }

    /// The packed value (never 0).
    #[inline]
    pub(crate) fn raw(self) -> u32 {
        self.0
    }

    /// The shard holding the block.
    #[inline]
    pub(crate) fn shard(self) -> usize {
        ((self.0 >> SHARD_SHIFT) as usize) & (SHARDS - 1)
    }

    /// The home tag of the block's group.
    #[inline]
    pub(crate) fn tag(self) -> u32 {
        self.0 & TAG_MASK
    }

    /// Depth modulo [`WINDOW`].
    #[inline]
    pub(crate) fn offset(self) -> usize {
        ((self.0 >> OFFSET_SHIFT) as usize) & (WINDOW - 1)
    }

    /// Depth modulo [`GROUP`]: which key of its group the block is.
    #[inline]
    pub(crate) fn rank(self) -> usize {
        self.offset() % GROUP
    }

    /// Whether a chain may continue after this entry (false for the leading parts of a block
    /// re-chunked from smaller event blocks).
    #[inline]
    pub(crate) fn boundary(self) -> bool {
        self.0 & BOUNDARY != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_the_request_side_rules() {
        let keys: Vec<BlockKey> = (0..300u64)
            .map(|i| BlockKey::from_raw(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x1234_5678))
            .collect();
        let mut pos = ChainPos::first(keys[0]);
        for (depth, key) in keys.iter().enumerate() {
            if depth > 0 {
                pos = pos.next(*key);
            }
            let window = keys[depth - depth % WINDOW];
            let group = keys[depth - depth % GROUP];
            assert_eq!(pos.shard(), shard_of(window), "depth {depth}");
            assert_eq!(pos.tag(), tag_of(group), "depth {depth}");
            assert_eq!(pos.offset(), depth % WINDOW);
            assert_eq!(pos.rank(), depth % GROUP);
            assert!(pos.boundary());
            assert_eq!(ChainPos::from_raw(pos.raw()), Some(pos));
        }
        assert!(!pos.with_boundary(false).boundary());
        assert_eq!(ChainPos::from_raw(0), None);
    }
}
