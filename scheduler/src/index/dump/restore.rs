//! What a restoring index accepts from a dump, and what restoring a chunk did.

use super::{DumpEntry, TIER_MASK};
use crate::keys::BlockKey;

/// What restoring one chunk did.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Entries in the chunk.
    pub entries: u64,
    /// (endpoint, block) holdings that are new.
    pub added: u64,
    /// Entries the table had no room for.
    pub dropped: u64,
    /// Entries evicted to stay within capacity.
    pub evicted: u64,
}

/// An endpoint's writer state beyond its entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointFacts {
    /// Index blocks per event block, last seen (what a `BlockRemoved` hash expands to).
    pub split: u32,
    /// KV-cache groups that are not full attention (their events are ignored).
    pub non_prefix_groups: Vec<u32>,
    /// Blocks several engine blocks contain, with the references beyond the first.
    pub extras: Vec<(BlockKey, u32)>,
}

/// Most re-chunking a restored endpoint may claim (an event block of this many index blocks).
const MAX_SPLIT: u32 = 1 << 12;
/// Most KV-cache groups a restored endpoint may list.
const MAX_GROUPS: usize = 256;

/// Why `facts` cannot be restored, if they cannot.
pub(super) fn check_facts(facts: &EndpointFacts) -> Result<(), &'static str> {
    if facts.split > MAX_SPLIT {
        return Err("re-chunking past the largest event block");
    }
    if facts.non_prefix_groups.len() > MAX_GROUPS {
        return Err("too many KV-cache groups");
    }
    Ok(())
}

/// Why `e` cannot be restored, if it cannot: key 0 marks an unused record slot, so neither a
/// block nor its parent may have it, and a holding needs a known medium.
pub(super) fn check(e: &DumpEntry) -> Result<(), &'static str> {
    if e.key.get() == 0 || e.parent.is_some_and(|p| p.get() == 0) {
        return Err("block key 0");
    }
    if e.tiers.0 == 0 || e.tiers.0 & !TIER_MASK != 0 {
        return Err("no medium or an unknown one");
    }
    Ok(())
}
