//! Applying one endpoint's events: keys from tokens, re-chunking, groups, partitions, tiers.

use parking_lot::RwLockWriteGuard;

use super::edit::Removed;
use super::engine_map::EngineRef;
use super::holder::ALL_TIERS;
use super::position::{ChainPos, Slot};
use super::table::Table;
use super::{ApplyReport, EndpointState, KvIndex};
use crate::keys::BlockKey;
use crate::pods::EndpointId;

mod removed;
mod stored;

/// The chain so far: the last index block's key and position; `None` before block 0.
type Cursor = Option<(BlockKey, ChainPos)>;

/// One endpoint's writer for the span of a batch: holds its state and at most one shard lock.
pub(super) struct Writer<'a> {
    index: &'a KvIndex,
    endpoint: u16,
    state: &'a mut EndpointState,
    report: &'a mut ApplyReport,
    shard: Option<(usize, RwLockWriteGuard<'a, Table>)>,
}

impl<'a> Writer<'a> {
    pub(super) fn new(
        index: &'a KvIndex,
        endpoint: EndpointId,
        state: &'a mut EndpointState,
        report: &'a mut ApplyReport,
    ) -> Self {
        Self {
            index,
            // Ids are below EndpointId::MAX = 2^16.
            endpoint: endpoint.get() as u16,
            state,
            report,
            shard: None,
        }
    }

    /// The table of `shard`, write-locked (releasing the previously held shard first).
    fn table(&mut self, shard: usize) -> &mut Table {
        if self.shard.as_ref().is_none_or(|(s, _)| *s != shard) {
            self.shard = None;
            self.shard = Some((shard, self.index.shards[shard].write()));
        }
        match &mut self.shard {
            Some((_, guard)) => guard,
            None => unreachable!("locked just above"),
        }
    }

    /// Maps an engine ref to a block the endpoint holds (`added`: it did not before); if the ref
    /// named other content before, that reference goes. A new ref to a block the endpoint already
    /// held is another engine block containing it (e.g. two larger engine blocks that diverge
    /// after it): counted, so that the block stays held until its last container goes.
    fn put(&mut self, r: EngineRef, key: BlockKey, pos: ChainPos, added: bool) {
        let old = self.state.map.insert(r, key, pos);
        if let Some((k, p)) = old {
            if k == key {
                if (p.shard(), p.tag(), p.rank()) != (pos.shard(), pos.tag(), pos.rank()) {
                    // The same block in another record (a restored entry whose placement
                    // disagrees with where it sat): the old holding is named by no ref any
                    // more, and nothing would ever remove it.
                    let ep = self.endpoint;
                    let gone = self.table(p.shard()).remove(k, p, ep, ALL_TIERS);
                    self.report.removed += u64::from(gone == Removed::Entry);
                }
                return;
            }
            self.report.removed += u64::from(self.unref(k, p, ALL_TIERS) == Removed::Entry);
        }
        if !added {
            *self.state.extra.entry(key).or_default() += 1;
        }
    }

    /// Drops one reference to `key`: if others remain the holding stays, else `tiers` go.
    fn unref(&mut self, key: BlockKey, pos: ChainPos, tiers: u8) -> Removed {
        if let Some(n) = self.state.extra.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.state.extra.remove(&key);
            }
            return Removed::NotHeld;
        }
        let ep = self.endpoint;
        self.table(pos.shard()).remove(key, pos, ep, tiers)
    }

    /// Adds the endpoint's holding of `key`, the block after `cursor`, then lets `refs` map its
    /// engine refs (given the position and whether the holding is new); returns the position,
    /// or `None` when the table had no room for it (nothing changed).
    fn hold(
        &mut self,
        key: BlockKey,
        cursor: Cursor,
        tiers: u8,
        refs: impl FnOnce(&mut Self, ChainPos, bool),
    ) -> Option<ChainPos> {
        let ep = self.endpoint;
        let slot = Slot::after(&self.index.config.secret, cursor, key);
        let (tag, added) = self.table(slot.shard).add(key, &slot, ep, tiers)?;
        self.report.stored += u64::from(added);
        let pos = slot.at(tag);
        refs(self, pos, added);
        Some(pos)
    }

    /// Places a block from another index's dump (same secret) where its writer had it: in the
    /// record of `parent` when that is in the same record, else one of its own; then maps
    /// `engine` to it. `false` when the table had no room (nothing changed).
    pub(in crate::index) fn restore(
        &mut self,
        engine: u64,
        key: BlockKey,
        parent: Option<BlockKey>,
        place: ChainPos,
        tiers: u8,
    ) -> bool {
        let slot = Slot {
            shard: place.shard(),
            offset: place.offset(),
            parent: parent
                .filter(|_| place.rank() > 0)
                .map(|p| (place.tag(), p)),
        };
        let ep = self.endpoint;
        let Some((tag, added)) = self.table(slot.shard).add(key, &slot, ep, tiers) else {
            self.report.overflow += 1;
            return false;
        };
        self.report.stored += u64::from(added);
        // Extra references come separately (`restore_extras`): none is counted here.
        let pos = slot.at(tag).with_boundary(place.boundary());
        self.put(EngineRef(engine), key, pos, true);
        true
    }

    /// Drops every entry of the endpoint, shard by shard.
    pub(super) fn cleared(&mut self) {
        self.state.extra.clear();
        let mut all = self.state.map.drain();
        self.report.cleared += self.release(&mut all);
    }

    /// Removes the endpoint's holdings of `blocks` (all tiers), visiting each shard once and each
    /// record's blocks from the last (so that a nested record stays nested); returns how many
    /// entries went.
    pub(super) fn release(&mut self, blocks: &mut [(BlockKey, ChainPos)]) -> u64 {
        blocks.sort_unstable_by_key(|(_, pos)| {
            (pos.shard(), pos.tag(), std::cmp::Reverse(pos.rank()))
        });
        let ep = self.endpoint;
        let mut n = 0;
        for &(key, pos) in blocks.iter() {
            n += u64::from(
                self.table(pos.shard()).remove(key, pos, ep, ALL_TIERS) == Removed::Entry,
            );
        }
        n
    }

    /// The endpoint's engine map (for eviction).
    pub(super) fn state(&mut self) -> &mut EndpointState {
        self.state
    }
}
