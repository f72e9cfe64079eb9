//! The KV block index: which endpoint holds which block, built from the endpoints' own KV events.
//!
//! PROVISIONAL: a straightforward, correct implementation that fixes the public API; the compact
//! sharded table replaces it (see the index issue). Keep the API; change the insides.

use std::collections::{HashMap, HashSet};

use parking_lot::{Mutex, RwLock};

use crate::events::{
    BlockRemoved, BlockStored, EngineHash, EventBatch, FULL_ATTENTION, KvEvent, Medium,
};
use crate::keys::{BlockKey, BlockSize, Partition};
use crate::pods::{EndpointId, EndpointSet};

/// How much a hit is worth per medium, and how big the index may grow.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexConfig {
    /// Tokens per block; requests and events are keyed at this granularity.
    pub block_size: BlockSize,
    /// Most (endpoint, block) entries held at once; past it, entries are evicted.
    pub capacity: usize,
    /// Weight of a hit per medium, indexed by [`Medium::tier`].
    pub tier_weights: [f32; 3],
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            block_size: BlockSize::DEFAULT,
            capacity: 64 << 20,
            tier_weights: [1.0, 0.8, 0.5],
        }
    }
}

/// What applying one batch did, for counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// (endpoint, block) entries added.
    pub stored: u64,
    /// (endpoint, block) entries removed by `BlockRemoved`.
    pub removed: u64,
    /// Entries dropped by `AllBlocksCleared`.
    pub cleared: u64,
    /// Blocks dropped because their parent was unknown for the endpoint.
    pub unknown_parent: u64,
    /// Blocks dropped because their block size does not divide or multiply the index's.
    pub block_size_mismatch: u64,
    /// Blocks ignored because they belong to a group that cannot prove a prefix (sliding window).
    pub non_prefix_group: u64,
    /// `BlockRemoved` hashes the endpoint did not hold.
    pub unknown_removed: u64,
    /// Entries evicted to stay within capacity.
    pub evicted: u64,
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

#[derive(Default)]
struct EndpointBlocks {
    by_hash: HashMap<EngineHash, BlockKey>,
}

/// The index. `Send + Sync`: one writer per endpoint, any number of concurrent readers.
pub struct KvIndex {
    config: IndexConfig,
    holders: RwLock<HashMap<BlockKey, Vec<(EndpointId, u8)>>>,
    endpoints: RwLock<HashMap<EndpointId, Mutex<EndpointBlocks>>>,
}

impl std::fmt::Debug for KvIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvIndex")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl KvIndex {
    /// An empty index.
    pub fn new(config: IndexConfig) -> Self {
        Self {
            config,
            holders: RwLock::new(HashMap::new()),
            endpoints: RwLock::new(HashMap::new()),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// Tokens per block.
    pub fn block_size(&self) -> BlockSize {
        self.config.block_size
    }

    /// Applies one batch of `endpoint`'s events. `model` is the endpoint's served model: the cache
    /// partition of blocks stored without a LoRA name.
    pub fn apply(&self, endpoint: EndpointId, model: &str, batch: &EventBatch) -> ApplyReport {
        let mut report = ApplyReport::default();
        for event in &batch.events {
            match event {
                KvEvent::BlockStored(stored) => self.store(endpoint, model, stored, &mut report),
                KvEvent::BlockRemoved(removed) => self.remove(endpoint, removed, &mut report),
                KvEvent::AllBlocksCleared => report.cleared += self.clear_endpoint(endpoint) as u64,
            }
        }
        report
    }

    fn store(&self, endpoint: EndpointId, model: &str, ev: &BlockStored, report: &mut ApplyReport) {
        let n = ev.block_hashes.len() as u64;
        if ev
            .kv_cache_spec_kind
            .as_deref()
            .is_some_and(|k| k != FULL_ATTENTION)
        {
            report.non_prefix_group += n;
            return;
        }
        if ev.block_size != self.config.block_size.get() {
            report.block_size_mismatch += n;
            return;
        }
        let mut endpoints = self.endpoints.write();
        let blocks = endpoints.entry(endpoint).or_default().get_mut();
        let mut parent = match ev.parent_block_hash {
            None => Partition::model(ev.lora_name.as_deref().unwrap_or(model)).root(),
            Some(h) => match blocks.by_hash.get(&h) {
                Some(&k) => k,
                None => {
                    report.unknown_parent += n;
                    return;
                }
            },
        };
        let tier = 1u8 << ev.medium.unwrap_or_default().tier();
        let mut holders = self.holders.write();
        for (hash, tokens) in ev
            .block_hashes
            .iter()
            .zip(ev.token_ids.chunks_exact(ev.block_size as usize))
        {
            parent = parent.chain(tokens);
            blocks.by_hash.insert(*hash, parent);
            let set = holders.entry(parent).or_default();
            match set.iter_mut().find(|(e, _)| *e == endpoint) {
                Some((_, mask)) => *mask |= tier,
                None => {
                    set.push((endpoint, tier));
                    report.stored += 1;
                }
            }
        }
    }

    fn remove(&self, endpoint: EndpointId, ev: &BlockRemoved, report: &mut ApplyReport) {
        let tier = 1u8 << ev.medium.unwrap_or_default().tier();
        let mut endpoints = self.endpoints.write();
        let Some(blocks) = endpoints.get_mut(&endpoint).map(Mutex::get_mut) else {
            report.unknown_removed += ev.block_hashes.len() as u64;
            return;
        };
        let mut holders = self.holders.write();
        for hash in &ev.block_hashes {
            let Some(&key) = blocks.by_hash.get(hash) else {
                report.unknown_removed += 1;
                continue;
            };
            let Some(set) = holders.get_mut(&key) else {
                continue;
            };
            if let Some(pos) = set.iter().position(|(e, _)| *e == endpoint) {
                set[pos].1 &= !tier;
                if set[pos].1 == 0 {
                    set.swap_remove(pos);
                    blocks.by_hash.remove(hash);
                    report.removed += 1;
                }
            }
            if set.is_empty() {
                holders.remove(&key);
            }
        }
    }

    /// Forgets everything `endpoint` holds (`AllBlocksCleared`, endpoint removal, resync).
    /// Returns how many entries went.
    pub fn clear_endpoint(&self, endpoint: EndpointId) -> usize {
        let Some(blocks) = self.endpoints.write().remove(&endpoint) else {
            return 0;
        };
        let keys: HashSet<BlockKey> = blocks.into_inner().by_hash.into_values().collect();
        let mut holders = self.holders.write();
        let mut n = 0;
        for key in keys {
            if let Some(set) = holders.get_mut(&key) {
                let before = set.len();
                set.retain(|(e, _)| *e != endpoint);
                n += before - set.len();
                if set.is_empty() {
                    holders.remove(&key);
                }
            }
        }
        n
    }

    /// For each candidate, the longest run of consecutive blocks from block 0 it holds.
    pub fn lookup(&self, keys: &[BlockKey], candidates: &EndpointSet, out: &mut PrefixMatches) {
        out.total_blocks = keys.len() as u32;
        out.matches.clear();
        let holders = self.holders.read();
        let mut alive: Vec<PrefixMatch> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let Some(set) = holders.get(key) else { break };
            let weight = |mask: u8| {
                Medium::ALL
                    .iter()
                    .filter(|m| mask & (1 << m.tier()) != 0)
                    .map(|m| self.config.tier_weights[m.tier()])
                    .fold(0.0f32, f32::max)
            };
            if i == 0 {
                alive = set
                    .iter()
                    .filter(|(e, _)| candidates.contains(*e))
                    .map(|&(endpoint, mask)| PrefixMatch {
                        endpoint,
                        blocks: 1,
                        weighted: weight(mask),
                    })
                    .collect();
            } else {
                let mut next = Vec::with_capacity(alive.len());
                for m in alive.drain(..) {
                    match set.iter().find(|(e, _)| *e == m.endpoint) {
                        Some(&(_, mask)) => next.push(PrefixMatch {
                            blocks: m.blocks + 1,
                            weighted: m.weighted + weight(mask),
                            ..m
                        }),
                        None => out.matches.push(m),
                    }
                }
                alive = next;
            }
            if alive.is_empty() {
                break;
            }
        }
        out.matches.append(&mut alive);
        out.matches.sort_by_key(|m| m.endpoint);
    }

    /// Sizes, for gauges.
    pub fn stats(&self) -> IndexStats {
        // Same lock order as `store`/`remove` (endpoints, then holders), or the two deadlock.
        let endpoints = self.endpoints.read();
        let holders = self.holders.read();
        IndexStats {
            keys: holders.len(),
            entries: holders.values().map(Vec::len).sum(),
            endpoints: endpoints
                .values()
                .filter(|b| !b.lock().by_hash.is_empty())
                .count(),
        }
    }

    /// Entries `endpoint` holds.
    pub fn endpoint_entries(&self, endpoint: EndpointId) -> usize {
        self.endpoints
            .read()
            .get(&endpoint)
            .map_or(0, |b| b.lock().by_hash.len())
    }
}
