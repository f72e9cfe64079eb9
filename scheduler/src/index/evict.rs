//! Staying within capacity: evict from the endpoint mapping the most engine hashes (its
//! entries plus any hash it re-stored known content under).
//!
//! The policy cannot be gamed by one pod: a pod that floods events becomes the largest and evicts
//! its own blocks; the others keep theirs until they are the largest. Within the victim, entries go
//! at its engine-hash map's clock hand (in effect random blocks). A block evicted mid-chain only
//! ends that endpoint's runs early: a false negative, never a false hit.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::apply::Writer;
use super::{ApplyReport, KvIndex};
use crate::pods::EndpointId;

/// Least entries taken from a victim per round (amortises choosing the victim).
const MIN_ROUND: usize = 64;

impl KvIndex {
    /// Evicts until the index is within capacity; adds the count to `report`.
    pub(super) fn evict(&self, report: &mut ApplyReport) {
        let _one_evictor = self.evicting.lock();
        loop {
            let total = self.refs.load(Ordering::Relaxed);
            let Some(excess) = total.checked_sub(self.config.capacity).filter(|&e| e > 0) else {
                return;
            };
            let Some((id, slot, most, second)) = self.largest() else {
                return;
            };
            let want = excess.min((most - second + 1).max(MIN_ROUND)).min(most);
            let mut state = slot.state.lock();
            let mut scratch = ApplyReport::default();
            let mut writer = Writer::new(self, id, &mut state, &mut scratch);
            let mut batch = Vec::with_capacity(want);
            // Blocks several engine blocks contain go with all their references, found in one
            // pass over the map; a round that needs the pass takes at least a sixteenth of the
            // map, so that the pass costs O(1) per reference taken.
            let mut shared = HashSet::new();
            let mut take = want;
            while batch.len() < take {
                let state = writer.state();
                let Some((_, key, pos)) = state.map.evict_next() else {
                    break;
                };
                if state.extra.remove(&key).is_some() {
                    shared.insert(key);
                    take = take.max(state.map.len() / 16);
                }
                batch.push((key, pos));
            }
            if !shared.is_empty() {
                writer.state().map.remove_keys(&shared);
            }
            let got = writer.release(&mut batch) as usize;
            drop(writer);
            let (refs, before) = (
                state.map.len(),
                slot.refs.swap(state.map.len(), Ordering::Relaxed),
            );
            drop(state);
            slot.entries.fetch_sub(got, Ordering::Relaxed);
            self.refs.fetch_sub(before - refs, Ordering::Relaxed);
            report.evicted += got as u64;
            if before == refs {
                return;
            }
        }
    }

    /// The endpoint mapping the most engine hashes, its count, and the runner-up's count.
    fn largest(
        &self,
    ) -> Option<(
        EndpointId,
        std::sync::Arc<super::EndpointSlot>,
        usize,
        usize,
    )> {
        let all = self.endpoints.read();
        let mut best: Option<(usize, usize)> = None;
        let mut second = 0;
        for (i, slot) in all.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let n = slot.refs.load(Ordering::Relaxed);
            match best {
                Some((_, m)) if n <= m => second = second.max(n),
                _ => {
                    second = best.map_or(0, |(_, m)| m).max(second);
                    best = Some((i, n));
                }
            }
        }
        let (i, most) = best.filter(|&(_, m)| m > 0)?;
        let id = EndpointId::new(i as u32)?;
        Some((id, all[i].clone()?, most, second))
    }
}
