//! Applying a `BlockRemoved`: the engine refs it names, in an order that keeps records nested.

use super::super::edit::Removed;
use super::super::engine_map::{EngineRef, Found};
use super::super::position::ChainPos;
use super::super::table::WARM;
use crate::events::BlockRemoved;
use crate::keys::BlockKey;

use super::Writer;

/// Most blocks of one removal compared pairwise to see whether their order matters.
const MAX_REORDERED: usize = 64;

impl Writer<'_> {
    pub(in crate::index) fn removed(&mut self, ev: &BlockRemoved) {
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
}
