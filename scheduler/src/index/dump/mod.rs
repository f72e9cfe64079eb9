//! Exporting an endpoint's holdings so that another process can restore them: a replica that
//! starts loads its peers' view instead of waiting for pods to re-send blocks they cached long
//! ago (which they never do).
//!
//! A dump is what the engine-hash map holds: per engine hash, the block key, its placement and
//! tiers, plus the block before it in its record (the parent, for placing it the same way).
//! Placements are derived through the [`super::IndexSecret`], so a dump restores only into an
//! index with the same secret (callers compare [`super::IndexSecret::fingerprint`]); a block's
//! window shard cannot be recomputed without the chain's first key, which the index does not
//! keep.
//!
//! Export goes rank by rank (depth mod 8) so that a parent in the same record always comes
//! before its children: the restoring side then places each block in its parent's record, as
//! the writer did. Chunks are bounded and taken one endpoint lock at a time, so a dump never
//! stalls ingestion for long; the caller records the endpoint's last applied sequence number
//! *before* the first chunk and replays the pod from there (re-applying an event is harmless).

use std::collections::HashMap;

use super::apply::Writer;
use super::holder::ALL_TIERS;
use super::position::{ChainPos, GROUP, POS_BITS};
use super::record;
use super::{ApplyReport, KvIndex, Tiers};
use crate::error::Error;
use crate::keys::BlockKey;
use crate::pods::EndpointId;

mod restore;

pub use restore::{EndpointFacts, RestoreReport};

/// Where a block sits (shard, record tag, depth in its window, whether it ends an index block),
/// meaningful only under the secret of the index that wrote it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Placement(u64);

impl Placement {
    /// The packed value, for the wire.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// From the wire; `None` when bits beyond the packed fields are set.
    pub fn from_raw(raw: u64) -> Option<Self> {
        (raw >> POS_BITS == 0).then_some(Self(raw))
    }

    fn pos(self) -> ChainPos {
        ChainPos::from_raw(self.0)
    }
}

/// One engine hash of an endpoint and the block it names.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct DumpEntry {
    /// The engine's block hash (or, for a part of a larger engine block, the part's name).
    pub engine: u64,
    /// The index block.
    pub key: BlockKey,
    /// The block before it in its record, when it has one there.
    pub parent: Option<BlockKey>,
    pub place: Placement,
    /// The media the endpoint holds the block in.
    pub tiers: Tiers,
}

/// Where an endpoint's export resumes: a rank and a line of its engine-hash map.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpCursor {
    rank: usize,
    line: usize,
}

/// One bounded piece of an endpoint's export.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DumpChunk {
    pub entries: Vec<DumpEntry>,
    /// Where the next chunk starts; `None` after the last.
    pub next: Option<DumpCursor>,
}

impl KvIndex {
    /// Up to `max` (at least 1) of `endpoint`'s entries from `cursor` on. Lines of the map that
    /// grew or shrank between chunks may be seen twice or missed: the replay that follows a
    /// restore repairs both (a re-stored block is a no-op, a missed one is re-sent).
    pub fn dump_chunk(&self, endpoint: EndpointId, cursor: DumpCursor, max: usize) -> DumpChunk {
        let Some(slot) = self.existing(endpoint) else {
            return DumpChunk::default();
        };
        let id = endpoint.get() as u16;
        let state = slot.state.lock();
        let lines = state.map.line_count();
        let mut out = Vec::new();
        let DumpCursor { mut rank, mut line } = cursor;
        while rank < GROUP {
            while line < lines {
                if out.len() >= max.max(1) {
                    return DumpChunk {
                        entries: out,
                        next: Some(DumpCursor { rank, line }),
                    };
                }
                for (engine, key, pos) in state.map.line_entries(line) {
                    if pos.rank() != rank {
                        continue;
                    }
                    let table = self.shards[pos.shard()].read();
                    let Some(i) = table.find(pos.tag(), rank, key.get()) else {
                        continue;
                    };
                    let rec = table.record(i);
                    let tiers = record::tiers(rec, rank, id, table.sets());
                    let parent = rank
                        .checked_sub(1)
                        .map(|r| record::keys(rec)[r])
                        .filter(|&k| k != 0)
                        .map(BlockKey::from_raw);
                    if tiers != 0 {
                        out.push(DumpEntry {
                            engine: engine.0,
                            key,
                            parent,
                            place: Placement(pos.raw()),
                            tiers: Tiers(tiers),
                        });
                    }
                }
                line += 1;
            }
            rank += 1;
            line = 0;
        }
        DumpChunk {
            entries: out,
            next: None,
        }
    }

    /// What `endpoint`'s writer knows beyond its entries: re-chunking, groups, extra references.
    pub fn dump_facts(&self, endpoint: EndpointId) -> EndpointFacts {
        self.existing(endpoint)
            .map_or_else(EndpointFacts::default, |slot| {
                let state = slot.state.lock();
                let mut extras: Vec<_> = state.extra.iter().map(|(&k, &n)| (k, n)).collect();
                extras.sort_unstable();
                EndpointFacts {
                    split: state.split,
                    non_prefix_groups: state.non_prefix_groups.clone(),
                    extras,
                }
            })
    }

    /// Restores `entries` (a chunk of another index's dump, under the same secret) as
    /// `endpoint`'s. Checks the whole chunk before changing anything; past capacity, entries are
    /// evicted as for events.
    pub fn restore(
        &self,
        endpoint: EndpointId,
        entries: &[DumpEntry],
    ) -> Result<RestoreReport, Error> {
        for (i, e) in entries.iter().enumerate() {
            restore::check(e).map_err(|why| Error::Dump(format!("entry {i}: {why}")))?;
        }
        let mut report = ApplyReport::default();
        let slot = self.slot(endpoint);
        {
            let mut state = slot.state.lock();
            let mut writer = Writer::new(self, endpoint, &mut state, &mut report);
            for e in entries {
                writer.restore(e.engine, e.key, e.parent, e.place.pos(), e.tiers.0);
            }
            drop(writer);
            self.account(&slot, &state, &report);
        }
        if self.refs.load(std::sync::atomic::Ordering::Relaxed) > self.config.capacity {
            self.evict(&mut report);
        }
        Ok(RestoreReport {
            entries: entries.len() as u64,
            added: report.stored,
            dropped: report.overflow,
            evicted: report.evicted,
        })
    }

    /// Restores what [`KvIndex::dump_facts`] gave (after the endpoint's entries). Each extra
    /// reference count is capped by the engine hashes that name the block, so a made-up count
    /// cannot keep a block held past its last removal.
    pub fn restore_facts(&self, endpoint: EndpointId, facts: &EndpointFacts) -> Result<(), Error> {
        restore::check_facts(facts).map_err(|why| Error::Dump(why.into()))?;
        let slot = self.slot(endpoint);
        let mut state = slot.state.lock();
        if facts.extras.len() > state.map.len() {
            return Err(Error::Dump(format!(
                "{} extra references for {} entries",
                facts.extras.len(),
                state.map.len()
            )));
        }
        state.split = facts.split;
        state.non_prefix_groups.clone_from(&facts.non_prefix_groups);
        let mut named: HashMap<BlockKey, u32> = facts.extras.iter().map(|&(k, _)| (k, 0)).collect();
        for (_, key, pos) in state.map.iter() {
            if let Some(n) = named.get_mut(&key)
                && pos.boundary()
            {
                *n += 1;
            }
        }
        state.extra.clear();
        for &(key, n) in &facts.extras {
            let n = n.min(named.get(&key).map_or(0, |&refs| refs.saturating_sub(1)));
            if n > 0 {
                state.extra.insert(key, n);
            }
        }
        Ok(())
    }
}

/// The tier bits a holding may have.
const TIER_MASK: u8 = ALL_TIERS;

#[cfg(test)]
mod tests;
