//! Applying one endpoint's events: keys from tokens, re-chunking, groups, partitions, tiers.

use parking_lot::RwLockWriteGuard;

use super::edit::Removed;
use super::engine_map::{EngineRef, Found};
use super::holder::ALL_TIERS;
use super::partition::{block_extras, fold_key};
use super::position::{ChainPos, GROUP, Slot, WINDOW, shard_of, tag_of};
use super::table::{Table, WARM};
use super::{ApplyReport, EndpointState, KvIndex};
use crate::events::{BlockRemoved, BlockStored, ExtraKey, FULL_ATTENTION};
use crate::keys::{BlockKey, Partition};
use crate::pods::EndpointId;

/// How event blocks map onto index blocks.
#[derive(Copy, Clone, Debug)]
enum Shape {
    /// Each event block is `k` index blocks (k = 1: same size).
    Split(u32),
    /// `k` event blocks make one index block.
    Merge(u32),
}

/// Most keys whose buffer an endpoint keeps between events (a larger one is freed).
const MAX_KEPT_KEYS: usize = 4096;

/// Most blocks of one removal compared pairwise to see whether their order matters.
const MAX_REORDERED: usize = 64;

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

    pub(super) fn stored(&mut self, model: &str, ev: &BlockStored) {
        let n = ev.block_hashes.len() as u64;
        if !self.prefix_group(ev) {
            self.report.non_prefix_group += n;
            return;
        }
        let index_size = self.index.config.block_size.get();
        let size = ev.block_size;
        let shape = if size == index_size {
            Shape::Split(1)
        } else if size > index_size && size.is_multiple_of(index_size) {
            Shape::Split(size / index_size)
        } else if size > 0 && size < index_size && index_size.is_multiple_of(size) {
            Shape::Merge(index_size / size)
        } else {
            self.report.block_size_mismatch += n;
            return;
        };
        let lora = match (ev.lora_name.as_deref(), ev.lora_id) {
            (Some(name), _) => Some(name),
            (None, Some(_)) => {
                self.report.unknown_lora += n;
                return;
            }
            (None, None) => None,
        };
        let complete = ev
            .block_hashes
            .len()
            .min(ev.token_ids.len() / size as usize);
        let parent = ev.parent_block_hash.map(|parent| {
            let part = match shape {
                Shape::Split(k) => k - 1,
                Shape::Merge(_) => 0,
            };
            EngineRef::new(parent.0, part)
        });
        // The parent and the new blocks: their engine-map lines are cold; start all the misses
        // at once.
        std::hint::black_box(
            self.state.map.warm(
                parent.into_iter().chain(
                    ev.block_hashes[..complete]
                        .iter()
                        .map(|h| EngineRef::new(h.0, 0)),
                ),
            ),
        );
        self.report.malformed += n - complete as u64;
        let cursor: Cursor = match parent {
            None => None,
            Some(parent) => {
                match self.state.map.get(parent) {
                    Some((key, pos)) if pos.boundary() => Some((key, pos)),
                    Some(_) => {
                        // The parent ends mid-way through an index block: its tokens are gone.
                        self.report.block_size_mismatch += complete as u64;
                        return;
                    }
                    None => {
                        self.report.unknown_parent += complete as u64;
                        return;
                    }
                }
            }
        };
        let ctx = Stored {
            ev,
            root_model: lora.unwrap_or(model),
            tiers: 1 << ev.medium.unwrap_or_default().tier(),
            complete,
        };
        match shape {
            Shape::Split(k) => {
                self.state.split = k;
                self.split(&ctx, k, cursor);
            }
            Shape::Merge(k) => self.merge(&ctx, k, cursor),
        }
    }

    /// Whether the event's KV-cache group proves prefixes; learns the group's kind on the way.
    fn prefix_group(&mut self, ev: &BlockStored) -> bool {
        let groups = &mut self.state.non_prefix_groups;
        match (ev.kv_cache_spec_kind.as_deref(), ev.group_idx) {
            (Some(kind), group) if kind != FULL_ATTENTION => {
                if let Some(g) = group
                    && !groups.contains(&g)
                {
                    groups.push(g);
                }
                false
            }
            (Some(_), Some(g)) => {
                groups.retain(|&x| x != g);
                true
            }
            (_, group) => !group.is_some_and(|g| groups.contains(&g)),
        }
    }

    /// Event blocks of `k` index blocks each (k = 1: same size).
    fn split(&mut self, ctx: &Stored<'_>, k: u32, mut cursor: Cursor) {
        let index_size = self.index.config.block_size.tokens();
        let size = ctx.ev.block_size as usize;
        // All the keys first: the records they go to can then be warmed together.
        let mut keys = std::mem::take(&mut self.state.keys);
        keys.clear();
        let mut prev = cursor.map(|(key, _)| key);
        for j in 0..ctx.complete {
            let extras = ctx.extras(j, prev.is_none());
            let mut parent = prev.unwrap_or_else(|| ctx.root(extras.salt));
            let tokens = &ctx.ev.token_ids[j * size..(j + 1) * size];
            for (part, chunk) in tokens.chunks_exact(index_size).enumerate() {
                let mut key = parent.chain(chunk);
                if part == 0
                    && let Some(f) = extras.fold
                {
                    key = fold_key(key, f);
                }
                keys.push(key);
                parent = key;
            }
            prev = Some(parent);
        }
        self.warm_stored(cursor, &keys);
        let parts = (size / index_size).max(1);
        for (i, &key) in keys.iter().enumerate() {
            let (j, part) = (i / parts, i % parts);
            debug_assert!(part < k as usize);
            let hash = ctx.ev.block_hashes[j];
            let Some(pos) = self.hold(key, cursor, ctx.tiers, |w, pos, added| {
                w.put(EngineRef::new(hash.0, part as u32), key, pos, added);
            }) else {
                // No room for it: it and the rest of the event (its descendants) are dropped.
                self.report.overflow += (ctx.complete - j) as u64;
                break;
            };
            cursor = Some((key, pos));
        }
        if keys.capacity() <= MAX_KEPT_KEYS {
            self.state.keys = keys;
        }
    }

    /// Warms the records that the blocks `keys`, stored after `cursor`, will go to: the
    /// parent's and one per group they start (those of the first block's shard).
    fn warm_stored(&mut self, cursor: Cursor, keys: &[BlockKey]) {
        let mut tags = [0u32; WARM];
        let mut n = 0;
        let mut warm_shard = None;
        let mut shard = cursor.map_or(0, |(_, pos)| pos.shard());
        let mut offset = cursor.map(|(_, pos)| pos.offset());
        if let Some((_, pos)) = cursor
            && (pos.offset() + 1) % GROUP != 0
        {
            tags[0] = pos.tag();
            n = 1;
            warm_shard = Some(shard);
        }
        for &key in keys {
            let at = match offset {
                Some(o) if (o + 1) % WINDOW != 0 => o + 1,
                _ => {
                    shard = shard_of(&self.index.config.secret, key);
                    0
                }
            };
            offset = Some(at);
            if at % GROUP == 0 && n < WARM && *warm_shard.get_or_insert(shard) == shard {
                tags[n] = tag_of(&self.index.config.secret, key);
                n += 1;
            }
        }
        if let Some(s) = warm_shard {
            // A new block is looked for in a record of its own tag first (a branch stored
            // earlier), so its directory words are read too.
            let secret = self.index.config.secret;
            let table = self.table(s);
            let dirs = table.warm_directory(keys.iter().map(|&k| tag_of(&secret, k)));
            std::hint::black_box(table.warm(&tags[..n]) ^ dirs);
        }
    }

    /// `k` event blocks per index block: only complete groups aligned on the parent form blocks.
    fn merge(&mut self, ctx: &Stored<'_>, k: u32, mut cursor: Cursor) {
        let k = k as usize;
        let size = ctx.ev.block_size as usize;
        let groups = ctx.complete / k;
        self.report.block_size_mismatch += (ctx.complete % k) as u64;
        for g in 0..groups {
            let first = g * k;
            let start = cursor.is_none();
            let mut key = match cursor {
                Some((key, _)) => key,
                None => ctx.root(ctx.extras(first, true).salt),
            };
            key = key.chain(&ctx.ev.token_ids[first * size..(first + k) * size]);
            for j in first..first + k {
                if let Some(f) = ctx.extras(j, start && j == first).fold {
                    key = fold_key(key, f);
                }
            }
            let Some(pos) = self.hold(key, cursor, ctx.tiers, |w, pos, _| {
                // The parts of one index block: none is a copy of it, so none counts as an
                // extra reference.
                for (i, hash) in ctx.ev.block_hashes[first..first + k].iter().enumerate() {
                    w.put(
                        EngineRef::new(hash.0, 0),
                        key,
                        pos.with_boundary(i + 1 == k),
                        true,
                    );
                }
            }) else {
                self.report.overflow += ((groups - g) * k) as u64;
                break;
            };
            cursor = Some((key, pos));
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

    pub(super) fn removed(&mut self, ev: &BlockRemoved) {
        if ev
            .group_idx
            .is_some_and(|g| self.state.non_prefix_groups.contains(&g))
        {
            self.report.non_prefix_group += ev.block_hashes.len() as u64;
            return;
        }
        let tiers = 1 << ev.medium.unwrap_or_default().tier();
        let parts = self.state.split.max(1);
        std::hint::black_box(
            self.state
                .map
                .warm(ev.block_hashes.iter().map(|h| EngineRef::new(h.0, 0))),
        );
        if parts == 1 && ev.block_hashes.len() <= MAX_REORDERED {
            let found: Vec<_> = ev
                .block_hashes
                .iter()
                .map(|h| self.state.map.find(EngineRef::new(h.0, 0)))
                .collect();
            self.warm_removed(found.iter().flatten().map(|&(_, _, pos)| pos));
            let keys = || found.iter().flatten().map(|&(_, key, _)| key);
            if keys()
                .enumerate()
                .all(|(i, k)| keys().take(i).all(|other| other != k))
            {
                // Distinct blocks are independent, so their order changes nothing; last first,
                // a chain's run shrinks from its end, which a record edits in place.
                for f in found.into_iter().rev() {
                    match f {
                        Some((at, key, pos)) => self.remove_ref(at, key, pos, tiers),
                        None => self.report.unknown_removed += 1,
                    }
                }
                return;
            }
        }
        for hash in &ev.block_hashes {
            let mut known = false;
            for part in 0..parts {
                let Some((at, key, pos)) = self.state.map.find(EngineRef::new(hash.0, part)) else {
                    continue;
                };
                known = true;
                self.remove_ref(at, key, pos, tiers);
            }
            if !known {
                self.report.unknown_removed += 1;
            }
        }
    }

    /// Warms the records of the blocks at `positions` (up to [`WARM`] distinct ones, in the
    /// first one's shard).
    fn warm_removed(&mut self, positions: impl Iterator<Item = ChainPos>) {
        let mut tags = [0u32; WARM];
        let mut n = 0;
        let mut shard = None;
        for pos in positions {
            let here = *shard.get_or_insert(pos.shard());
            if here == pos.shard() && !tags[..n].contains(&pos.tag()) {
                tags[n] = pos.tag();
                n += 1;
                if n == WARM {
                    break;
                }
            }
        }
        if let Some(s) = shard {
            std::hint::black_box(self.table(s).warm(&tags[..n]));
        }
    }

    /// Removes `tiers` of the block an engine ref names (found at `at`), and the ref unless the
    /// endpoint still holds the block in other tiers.
    fn remove_ref(&mut self, at: Found, key: BlockKey, pos: ChainPos, tiers: u8) {
        if self.state.extra.contains_key(&key) {
            // Another engine block still contains it: only this reference goes.
            self.unref(key, pos, tiers);
            self.state.map.remove_found(at);
            return;
        }
        let ep = self.endpoint;
        match self.table(pos.shard()).remove(key, pos, ep, tiers) {
            Removed::Reduced => {}
            Removed::Entry => {
                self.report.removed += 1;
                self.state.map.remove_found(at);
            }
            Removed::NotHeld => {
                self.state.map.remove_found(at);
            }
        }
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

/// One `BlockStored` being applied.
struct Stored<'e> {
    ev: &'e BlockStored,
    root_model: &'e str,
    tiers: u8,
    /// Event blocks that have their tokens.
    complete: usize,
}

impl<'e> Stored<'e> {
    fn extras(&self, block: usize, chain_start: bool) -> super::partition::BlockExtras<'e> {
        let extra: Option<&'e [ExtraKey]> = self
            .ev
            .extra_keys
            .as_ref()
            .and_then(|all| all.get(block))
            .and_then(|keys| keys.as_deref());
        block_extras(
            self.ev.lora_name.as_deref(),
            self.ev.lora_id,
            extra,
            chain_start,
        )
    }

    fn root(&self, salt: Option<&str>) -> BlockKey {
        Partition {
            model: self.root_model,
            cache_salt: salt,
        }
        .root()
    }
}
