//! The naive model the index is checked against: the obvious maps, no placement, no sharding.

use std::collections::{BTreeMap, HashMap};

use kvpick_scheduler::events::{BlockRemoved, BlockStored, EventBatch, KvEvent};
use kvpick_scheduler::index::ApplyReport;
use kvpick_scheduler::index::partition::{block_extras, fold_key};
use kvpick_scheduler::keys::{BlockKey, Partition};
use kvpick_scheduler::pods::EndpointSet;

use crate::{INDEX_BS, MODEL};

#[derive(Default, Clone)]
pub struct EpModel {
    /// (engine hash, part) → (key, ends an index block).
    pub refs: HashMap<(u64, u32), (BlockKey, bool)>,
    /// Blocks several engine blocks contain (a larger engine block cut into index blocks, two of
    /// which diverge after it): references beyond the first. The block stays held until the last
    /// goes.
    pub extra: HashMap<BlockKey, u32>,
    non_prefix: Vec<u32>,
    split: u32,
}

/// A naive index: the obvious maps, no placement, no sharding.
#[derive(Default)]
pub struct Model {
    pub holders: HashMap<BlockKey, BTreeMap<u32, u8>>,
    pub eps: HashMap<u32, EpModel>,
    pub weights: [f32; 3],
}

impl Model {
    /// Adds a holding; returns whether it is new.
    fn hold(&mut self, ep: u32, key: BlockKey, tiers: u8, r: &mut ApplyReport) -> bool {
        let t = self.holders.entry(key).or_default().entry(ep).or_insert(0);
        let new = *t == 0;
        r.stored += u64::from(new);
        *t |= tiers;
        new
    }

    /// Drops one reference to a held block: the holding goes (in `tiers`) only with the last.
    fn unref(&mut self, ep: u32, key: BlockKey, tiers: u8) -> Option<bool> {
        let st = self.eps.entry(ep).or_default();
        if let Some(n) = st.extra.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                st.extra.remove(&key);
            }
            return None;
        }
        self.unhold(ep, key, tiers)
    }

    /// Clears tiers; returns Some(true) if the entry went, Some(false) if reduced, None if absent.
    pub fn unhold(&mut self, ep: u32, key: BlockKey, tiers: u8) -> Option<bool> {
        let set = self.holders.get_mut(&key)?;
        let t = set.get_mut(&ep)?;
        *t &= !tiers;
        let gone = *t == 0;
        if gone {
            set.remove(&ep);
            if set.is_empty() {
                self.holders.remove(&key);
            }
        }
        Some(gone)
    }

    /// Maps a ref to a held block (`counted`: whether a new ref to an already-held block is another
    /// reference to it).
    fn put(
        &mut self,
        ep: u32,
        r: (u64, u32),
        key: BlockKey,
        boundary: bool,
        counted: bool,
        rep: &mut ApplyReport,
    ) {
        let old = self
            .eps
            .entry(ep)
            .or_default()
            .refs
            .insert(r, (key, boundary));
        if let Some((old, _)) = old {
            if old == key {
                return;
            }
            rep.removed += u64::from(self.unref(ep, old, 7) == Some(true));
        }
        if counted {
            *self
                .eps
                .entry(ep)
                .or_default()
                .extra
                .entry(key)
                .or_default() += 1;
        }
    }

    pub fn apply(&mut self, ep: u32, batch: &EventBatch) -> ApplyReport {
        let mut r = ApplyReport::default();
        for ev in &batch.events {
            match ev {
                KvEvent::BlockStored(s) => self.stored(ep, s, &mut r),
                KvEvent::BlockRemoved(rm) => self.removed(ep, rm, &mut r),
                KvEvent::AllBlocksCleared => r.cleared += self.clear(ep) as u64,
            }
        }
        r
    }

    fn stored(&mut self, ep: u32, s: &BlockStored, r: &mut ApplyReport) {
        let n = s.block_hashes.len();
        let st = self.eps.entry(ep).or_default();
        let kind = s.kv_cache_spec_kind.as_deref();
        let prefix = match (kind, s.group_idx) {
            (Some(k), g) if k != "full_attention" => {
                if let Some(g) = g
                    && !st.non_prefix.contains(&g)
                {
                    st.non_prefix.push(g);
                }
                false
            }
            (Some(_), Some(g)) => {
                st.non_prefix.retain(|&x| x != g);
                true
            }
            (_, g) => !g.is_some_and(|g| st.non_prefix.contains(&g)),
        };
        if !prefix {
            r.non_prefix_group += n as u64;
            return;
        }
        let e = s.block_size;
        let (split, merge) = if e == INDEX_BS {
            (1, 1)
        } else if e > INDEX_BS && e.is_multiple_of(INDEX_BS) {
            (e / INDEX_BS, 1)
        } else if e > 0 && e < INDEX_BS && INDEX_BS.is_multiple_of(e) {
            (1, INDEX_BS / e)
        } else {
            r.block_size_mismatch += n as u64;
            return;
        };
        let lora = match (&s.lora_name, s.lora_id) {
            (Some(l), _) => Some(l.as_str()),
            (None, Some(_)) => {
                r.unknown_lora += n as u64;
                return;
            }
            _ => None,
        };
        let complete = n.min(s.token_ids.len() / e as usize);
        r.malformed += (n - complete) as u64;
        let mut parent: Option<BlockKey> = match s.parent_block_hash {
            None => None,
            Some(p) => match st.refs.get(&(p.0, split - 1)) {
                Some(&(k, true)) => Some(k),
                Some(_) => {
                    r.block_size_mismatch += complete as u64;
                    return;
                }
                None => {
                    r.unknown_parent += complete as u64;
                    return;
                }
            },
        };
        if merge == 1 {
            st.split = split;
        }
        let tiers = 1u8 << s.medium.unwrap_or_default().tier();
        let model = lora.unwrap_or(MODEL);
        let extras = |j: usize, start: bool| {
            let x = s
                .extra_keys
                .as_ref()
                .and_then(|a| a.get(j))
                .and_then(|k| k.as_deref());
            block_extras(s.lora_name.as_deref(), s.lora_id, x, start)
        };
        let root = |salt: Option<&str>| {
            Partition {
                model,
                cache_salt: salt,
            }
            .root()
        };
        let e = e as usize;
        if merge == 1 {
            for j in 0..complete {
                let x = extras(j, parent.is_none());
                let mut p = parent.unwrap_or_else(|| root(x.salt));
                for (part, chunk) in s.token_ids[j * e..(j + 1) * e]
                    .chunks_exact(INDEX_BS as usize)
                    .enumerate()
                {
                    let mut key = p.chain(chunk);
                    if part == 0
                        && let Some(f) = x.fold
                    {
                        key = fold_key(key, f);
                    }
                    let new = self.hold(ep, key, tiers, r);
                    self.put(ep, (s.block_hashes[j].0, part as u32), key, true, !new, r);
                    p = key;
                }
                parent = Some(p);
            }
        } else {
            let k = merge as usize;
            r.block_size_mismatch += (complete % k) as u64;
            for g in 0..complete / k {
                let first = g * k;
                let start = parent.is_none();
                let p = parent.unwrap_or_else(|| root(extras(first, true).salt));
                let mut key = p.chain(&s.token_ids[first * e..(first + k) * e]);
                for j in first..first + k {
                    if let Some(f) = extras(j, start && j == first).fold {
                        key = fold_key(key, f);
                    }
                }
                self.hold(ep, key, tiers, r);
                for j in first..first + k {
                    self.put(
                        ep,
                        (s.block_hashes[j].0, 0),
                        key,
                        j + 1 == first + k,
                        false,
                        r,
                    );
                }
                parent = Some(key);
            }
        }
    }

    fn removed(&mut self, ep: u32, rm: &BlockRemoved, r: &mut ApplyReport) {
        let st = self.eps.entry(ep).or_default().clone();
        if rm.group_idx.is_some_and(|g| st.non_prefix.contains(&g)) {
            r.non_prefix_group += rm.block_hashes.len() as u64;
            return;
        }
        let tiers = 1u8 << rm.medium.unwrap_or_default().tier();
        for h in &rm.block_hashes {
            let mut known = false;
            for part in 0..st.split.max(1) {
                let Some(&(key, _)) = self.eps[&ep].refs.get(&(h.0, part)) else {
                    continue;
                };
                known = true;
                if self.eps[&ep].extra.contains_key(&key) {
                    self.unref(ep, key, tiers);
                    self.eps.entry(ep).or_default().refs.remove(&(h.0, part));
                    continue;
                }
                match self.unhold(ep, key, tiers) {
                    Some(false) => {}
                    Some(true) => {
                        r.removed += 1;
                        self.eps.entry(ep).or_default().refs.remove(&(h.0, part));
                    }
                    None => {
                        self.eps.entry(ep).or_default().refs.remove(&(h.0, part));
                    }
                }
            }
            if !known {
                r.unknown_removed += 1;
            }
        }
    }

    pub fn clear(&mut self, ep: u32) -> usize {
        let st = self.eps.entry(ep).or_default();
        st.extra.clear();
        let keys: Vec<BlockKey> = st.refs.drain().map(|(_, (k, _))| k).collect();
        keys.into_iter()
            .filter(|&k| self.unhold(ep, k, 7) == Some(true))
            .count()
    }

    pub fn lookup(&self, keys: &[BlockKey], cands: &EndpointSet) -> Vec<(u32, u32, f64)> {
        let w = |t: u8| {
            (0..3)
                .filter(|i| t & (1 << i) != 0)
                .map(|i| self.weights[i])
                .fold(0.0f32, f32::max) as f64
        };
        let mut out = Vec::new();
        for e in cands.iter() {
            let (mut n, mut sum) = (0u32, 0.0);
            for k in keys {
                match self.holders.get(k).and_then(|s| s.get(&e.get())) {
                    Some(&t) => {
                        n += 1;
                        sum += w(t);
                    }
                    None => break,
                }
            }
            if n > 0 {
                out.push((e.get(), n, sum));
            }
        }
        out
    }

    pub fn holdings(&self, ep: u32) -> BTreeMap<BlockKey, u8> {
        self.holders
            .iter()
            .filter_map(|(k, s)| s.get(&ep).map(|&t| (*k, t)))
            .collect()
    }
}
