//! Writes to a shard: where a block goes, and changing its holders.
//!
//! A block is in one of two places: the record of its parent (the block before it in its group),
//! in its own slot, or a record of its own tag starting with it (where it left the parent's
//! record, whose slot was taken by a sibling). A new block goes into the first of these it can,
//! and never moves while its record lives; so both the writer (from the parent's [`ChainPos`])
//! and a lookup (from the request's keys) find it again.

use super::holder::{self, ALL_TIERS, GPU_ONLY};
use super::position::{ChainPos, Slot, tag_of};
use super::record;
use super::table::Table;
use crate::keys::BlockKey;

/// What a removal did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Removed {
    /// The endpoint did not hold the block (in any of the tiers).
    NotHeld,
    /// Some tiers went, others remain.
    Reduced,
    /// The endpoint holds the block no more.
    Entry,
}

impl Table {
    /// Adds `tiers` to `endpoint`'s holding of `key`, the block of `slot`; returns the tag of its
    /// record and whether the holding is new, or `None` when the block needs a record of its
    /// own and none could be claimed (see [`Table::claim`]): nothing changed.
    pub(crate) fn add(
        &mut self,
        key: BlockKey,
        slot: &Slot,
        endpoint: u16,
        tiers: u8,
    ) -> Option<(u32, bool)> {
        let (r, k, own) = (slot.rank(), key.get(), tag_of(&self.secret, key));
        // Under the parent's tag: the parent's record, and the record already holding the block
        // there. The same record, except after a restored dump placed the block under another
        // parent: then it stays where it is, so that a tag, a rank and a key name one record.
        let (parent, placed) = slot.parent.map_or((None, None), |(tag, pkey)| {
            let (p, q) = r
                .checked_sub(1)
                .map_or((None, None), |rp| self.find_pair(tag, rp, pkey.get(), k));
            (p.map(|p| (tag, p)), q.map(|q| (tag, q)))
        });
        let (tag, i) = match placed {
            Some(at) => at,
            None => match self.find(own, r, k) {
                Some(i) => (own, i),
                None => match parent {
                    Some((tag, p)) if self.record(p)[r] == 0 => {
                        self.record_mut(p)[r] = k;
                        (tag, p)
                    }
                    _ => {
                        let i = self.claim(own)?;
                        self.record_mut(i)[r] = k;
                        (own, i)
                    }
                },
            },
        };
        let (old, new) = self.edit(i, r, endpoint, |t| t | tiers);
        Some((tag, old == 0 && new != 0))
    }

    /// Clears `tiers` from `endpoint`'s holding of `key`, at `pos`.
    pub(crate) fn remove(
        &mut self,
        key: BlockKey,
        pos: ChainPos,
        endpoint: u16,
        tiers: u8,
    ) -> Removed {
        let Some(i) = self.find(pos.tag(), pos.rank(), key.get()) else {
            return Removed::NotHeld;
        };
        match self.edit(i, pos.rank(), endpoint, |t| t & !tiers) {
            (0, _) => Removed::NotHeld,
            (_, 0) => Removed::Entry,
            _ => Removed::Reduced,
        }
    }

    /// The tiers `endpoint` holds `key` in (0 if none).
    pub(crate) fn tiers(&self, key: BlockKey, pos: ChainPos, endpoint: u16) -> u8 {
        self.find(pos.tag(), pos.rank(), key.get()).map_or(0, |i| {
            record::tiers(self.record(i), pos.rank(), endpoint, &self.sets)
        })
    }

    /// Applies `f` to the tiers `endpoint` holds slot `r` of record `i` in; returns them before
    /// and after. Frees the record if no holder is left in it.
    fn edit(&mut self, i: usize, r: usize, endpoint: u16, f: impl Fn(u8) -> u8) -> (u8, u8) {
        if usize::from(endpoint) < 256 && record::nested(self.record(i)) {
            // A one-holder run growing or shrinking at its end: edited in place.
            let old = record::tiers(self.record(i), r, endpoint, &self.sets);
            let new = f(old) & ALL_TIERS;
            if new == old {
                return (old, new);
            }
            let done = match (old, new) {
                (0, GPU_ONLY) => record::solo_extend(self.record_mut(i), r, endpoint),
                (GPU_ONLY, 0) => record::solo_truncate(self.record_mut(i), r, endpoint),
                _ => false,
            };
            if done {
                // The slot had no other holder, before or after.
                let (before, after) = (usize::from(old != 0), usize::from(new != 0));
                self.count(old, new, before, after);
                if after == 0 && record::is_empty(self.record(i)) {
                    self.free(i);
                }
                return (old, new);
            }
        }
        let small = if usize::from(endpoint) < 256 {
            record::decode(self.record(i), &self.sets)
        } else {
            None
        };
        let (old, new, before, after) = match small {
            Some(mut small) => {
                let old = small.tiers(r, endpoint);
                let new = f(old) & ALL_TIERS;
                if new == old {
                    return (old, new);
                }
                let before = small.count(r) as usize;
                small.set(r, endpoint, new);
                let mut rec = *self.record(i);
                record::release_sets(&rec, &mut self.sets);
                record::encode(&mut rec, &small, &mut self.sets, true);
                *self.record_mut(i) = rec;
                (old, new, before, small.count(r) as usize)
            }
            None => {
                self.per_slot(i);
                let kind = holder::kind(record::slot_word(self.record(i), r));
                let old = self.sets.tiers(kind, endpoint);
                let new = f(old) & ALL_TIERS;
                if new == old {
                    return (old, new);
                }
                let before = self.sets.count(kind);
                let kind = if new & !old != 0 {
                    self.sets.add(kind, endpoint, new).0
                } else {
                    self.sets.remove(kind, endpoint, old & !new).0
                };
                self.record_mut(i)[super::position::GROUP + r] = holder::word(kind);
                (old, new, before, self.sets.count(kind))
            }
        };
        self.count(old, new, before, after);
        if after == 0 && record::is_empty(self.record(i)) {
            self.free(i);
        }
        (old, new)
    }

    /// Counts an edit: `old`/`new` the endpoint's tiers, `before`/`after` the slot's holders.
    fn count(&mut self, old: u8, new: u8, before: usize, after: usize) {
        self.entries += usize::from(old == 0);
        self.entries -= usize::from(new == 0);
        self.keys += usize::from(before == 0 && after > 0);
        self.keys -= usize::from(before > 0 && after == 0);
    }

    /// Turns a nested record into per-slot form (to hold an endpoint id of 256 or more).
    fn per_slot(&mut self, i: usize) {
        if !record::nested(self.record(i)) {
            return;
        }
        if let Some(small) = record::decode(self.record(i), &self.sets) {
            let mut rec = *self.record(i);
            record::encode(&mut rec, &small, &mut self.sets, false);
            *self.record_mut(i) = rec;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::holder::GPU_ONLY;
    use crate::index::position::{GROUP, WINDOW};
    use crate::index::secret::IndexSecret;

    fn key(i: u64) -> BlockKey {
        BlockKey::from_raw(i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) | 1)
    }

    /// Stores chain `keys` for `endpoint`; returns each block's position.
    fn store(t: &mut Table, keys: &[BlockKey], endpoint: u16, tiers: u8) -> Vec<(ChainPos, bool)> {
        let mut parent: Option<(BlockKey, ChainPos)> = None;
        keys.iter()
            .map(|&k| {
                let slot = Slot::after(&IndexSecret::FIXED, parent, k);
                let (tag, added) = t.add(k, &slot, endpoint, tiers).unwrap();
                let pos = slot.at(tag);
                parent = Some((k, pos));
                (pos, added)
            })
            .collect()
    }

    #[test]
    fn chains_branch_share_and_empty_out_through_growth() {
        let mut t = Table::new(IndexSecret::FIXED);
        // 300 chains of 20 blocks; chain c shares its first c % 17 blocks with chain 0.
        let chain = |c: u64| -> Vec<BlockKey> {
            (0..20u64)
                .map(|d| {
                    if d < c % 17 {
                        key(d)
                    } else {
                        key(c * 1000 + d)
                    }
                })
                .collect()
        };
        let mut held = Vec::new();
        for c in 0..300u64 {
            let e = (c % 300) as u16;
            let keys = chain(c);
            let pos = store(&mut t, &keys, e, GPU_ONLY);
            assert!(pos.iter().all(|&(_, added)| added));
            held.push((e, keys, pos));
        }
        let shared: usize = (0..300u64).map(|c| (c % 17) as usize).max().unwrap_or(0);
        assert!(t.keys() <= 300 * 20 && t.keys() >= 300 * 20 - 300 * shared);
        assert_eq!(t.entries(), 300 * 20);
        for (e, keys, pos) in &held {
            for (d, (k, (p, _))) in keys.iter().zip(pos).enumerate() {
                assert_eq!(t.tiers(*k, *p, *e), GPU_ONLY);
                if d >= 16 {
                    assert_eq!(t.tiers(*k, *p, *e + 1), 0, "blocks past 16 are unique");
                }
            }
            // Storing again finds every block where it is.
            let again = store(&mut t, keys, *e, 0b10);
            assert!(
                again
                    .iter()
                    .zip(pos)
                    .all(|((a, added), (p, _))| a == p && !added)
            );
        }
        for (e, keys, pos) in &held {
            for (k, (p, _)) in keys.iter().zip(pos).rev() {
                assert_eq!(t.remove(*k, *p, *e, GPU_ONLY), Removed::Reduced);
                assert_eq!(t.remove(*k, *p, *e, ALL_TIERS), Removed::Entry);
                assert_eq!(t.remove(*k, *p, *e, ALL_TIERS), Removed::NotHeld);
            }
        }
        assert_eq!((t.keys(), t.entries(), t.load().0), (0, 0, 0));
        assert_eq!(t.sets.live(), 0);
    }

    #[test]
    fn large_ids_holes_and_many_holders_keep_exact_tiers() {
        let mut t = Table::new(IndexSecret::FIXED);
        let keys: Vec<BlockKey> = (0..WINDOW as u64 + GROUP as u64).map(key).collect();
        let mut all = Vec::new();
        for e in [0u16, 1, 2, 3, 255, 256, 1000, 65535] {
            let n = keys.len() - usize::from(e % 7) * 3;
            all.push((
                e,
                store(&mut t, &keys[..n], e, if e == 2 { 0b100 } else { GPU_ONLY }),
            ));
        }
        // A hole in endpoint 3's run, then its end.
        let (_, pos3) = &all[3];
        assert_eq!(t.remove(keys[5], pos3[5].0, 3, ALL_TIERS), Removed::Entry);
        for (e, pos) in &all {
            for (d, (p, _)) in pos.iter().enumerate() {
                let want = match (*e, d) {
                    (3, 5) => 0,
                    (2, _) => 0b100,
                    _ => GPU_ONLY,
                };
                assert_eq!(t.tiers(keys[d], *p, *e), want, "endpoint {e} depth {d}");
            }
        }
        for (e, pos) in &all {
            for (d, (p, _)) in pos.iter().enumerate() {
                t.remove(keys[d], *p, *e, ALL_TIERS);
            }
        }
        assert_eq!((t.keys(), t.entries(), t.load().0), (0, 0, 0));
        assert_eq!(t.sets.live(), 0);
    }
}
