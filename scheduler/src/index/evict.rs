//! Staying within capacity: evict from the endpoint holding the most entries.
//!
//! The policy cannot be gamed by one pod: a pod that floods events becomes the largest and evicts
//! its own blocks; the others keep theirs until they are the largest. Within the victim, entries go
//! at its engine-hash map's clock hand (in effect random blocks). A block evicted mid-chain only
//! ends that endpoint's runs early: a false negative, never a false hit.

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
            let total = self.entries.load(Ordering::Relaxed);
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
            let mut got = 0usize;
            while got < want {
                let mut batch = Vec::with_capacity(want - got);
                while batch.len() < want - got {
                    let state = writer.state();
                    match state.map.evict_next() {
                        Some((_, key, pos)) => {
                            // A block several engine blocks contain goes with all its references.
                            if state.extra.remove(&key).is_some() {
                                state.map.remove_key(key);
                            }
                            batch.push((key, pos));
                        }
                        None => break,
                    }
                }
                if batch.is_empty() {
                    break;
                }
                got += writer.release(&mut batch) as usize;
            }
            drop(writer);
            slot.entries.fetch_sub(got, Ordering::Relaxed);
            self.entries.fetch_sub(got, Ordering::Relaxed);
            report.evicted += got as u64;
            if got == 0 {
                return;
            }
        }
    }

    /// The endpoint with the most entries, its count, and the runner-up's count.
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
            let n = slot.entries.load(Ordering::Relaxed);
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
