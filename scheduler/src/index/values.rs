//! The values the index hands out: what applying a batch did, its sizes, a lookup's matches, and
//! the media an endpoint holds a block in.

use crate::events::Medium;
use crate::pods::EndpointId;

/// What applying one batch did, for counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// (endpoint, block) entries added.
    pub stored: u64,
    /// (endpoint, block) entries removed by `BlockRemoved` (or by a hash re-stored with other
    /// content).
    pub removed: u64,
    /// Entries dropped by `AllBlocksCleared`.
    pub cleared: u64,
    /// Blocks dropped because their parent was unknown for the endpoint.
    pub unknown_parent: u64,
    /// Event blocks dropped because their block size neither divides nor is a multiple of the
    /// index's, or because they do not complete an aligned index block after re-chunking.
    pub block_size_mismatch: u64,
    /// Blocks ignored because they belong to a group that cannot prove a prefix (sliding window).
    pub non_prefix_group: u64,
    /// `BlockRemoved` hashes the endpoint did not hold.
    pub unknown_removed: u64,
    /// Entries evicted to stay within capacity.
    pub evicted: u64,
    /// Blocks dropped because they name a LoRA adapter only by id: their cache partition is
    /// unknown.
    pub unknown_lora: u64,
    /// Block hashes without their tokens in the event.
    pub malformed: u64,
    /// Blocks dropped because the table had no room where their keys place them (only many
    /// keys colliding under the index's secret do this), with the rest of their event.
    pub overflow: u64,
}

/// Sizes, for gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Distinct block keys held by at least one endpoint.
    pub keys: usize,
    /// (endpoint, block) entries.
    pub entries: usize,
    /// Endpoints with at least one entry.
    pub endpoints: usize,
}

/// One candidate's match for a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrefixMatch {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Consecutive blocks from block 0 it holds.
    pub blocks: u32,
    /// Sum over those blocks of the weight of the best medium holding each.
    pub weighted: f32,
}

/// The result of a lookup: every candidate holding at least block 0, in endpoint id order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrefixMatches {
    /// Full blocks in the request.
    pub total_blocks: u32,
    /// Candidates with at least one matched block.
    pub matches: Vec<PrefixMatch>,
}

impl PrefixMatches {
    /// The match of `endpoint`, if it holds at least block 0.
    pub fn get(&self, endpoint: EndpointId) -> Option<&PrefixMatch> {
        self.matches.iter().find(|m| m.endpoint == endpoint)
    }

    /// The longest match over all candidates, in blocks.
    pub fn longest(&self) -> u32 {
        self.matches.iter().map(|m| m.blocks).max().unwrap_or(0)
    }
}

/// The media an endpoint holds a block in, as a bit per [`Medium::tier`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Tiers(pub(super) u8);

impl Tiers {
    /// The set with only `medium`.
    pub const fn of(medium: Medium) -> Self {
        Self(1 << medium.tier())
    }

    /// From a raw mask (bit `i` = tier `i`; unknown bits are refused where it is used).
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    /// The raw mask (bit `i` = tier `i`).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether `medium` is in the set.
    pub const fn contains(self, medium: Medium) -> bool {
        self.0 & (1 << medium.tier()) != 0
    }
}
