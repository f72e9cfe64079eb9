//! The KV block index: which endpoint holds which block, built from the endpoints' own KV events.
//!
//! Layout:
//!
//! - `table`: 16 shards of key → holders. A group of 8 consecutive blocks of a chain lives in one
//!   128-byte `record` (a line of keys, a line of holders), found through a directory of 1-byte
//!   tag fingerprints (`table`); the holders line is either nested runs (the usual prefix-cache
//!   shape) or one `holder` word per slot; three or more holders per block go to a shared set in
//!   the shard's slab (`sets`). Large arrays are on huge pages (`pages`).
//! - `engine_map`: per endpoint, engine hash → (key, chain position), three per 64-byte line,
//!   which is also the endpoint's key set: removing it or `AllBlocksCleared` costs O(its
//!   entries).
//! - `position`: blocks are placed by chain position, not by their own key, so that the 8 blocks
//!   of a group share a record and the 128 blocks of a window share a shard: a 128-block lookup
//!   reads 16 records under one read lock (`lookup`, `walk`).
//!
//! Measured (BENCHMARKS.md): 43.8 bytes per entry when every block is unique to one endpoint,
//! 25.9 with heavy sharing (heap plus mapped tables).
//!
//! Writers: one per endpoint at a time (the endpoint's mutex), taking one shard write lock at a
//! time. Readers: one shard read lock at a time, one per 128 blocks; never an endpoint lock.

mod apply;
mod dump;
mod edit;
mod engine_map;
mod evict;
mod holder;
mod lookup;
mod pages;
pub mod partition;
mod position;
mod record;
mod secret;
mod sets;
mod table;
mod values;
mod walk;

pub use dump::{DumpChunk, DumpCursor, DumpEntry, EndpointFacts, Placement, RestoreReport};
pub use secret::IndexSecret;
pub use values::{ApplyReport, IndexStats, PrefixMatch, PrefixMatches, Tiers};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::events::{EventBatch, KvEvent, Medium};
use crate::keys::{BlockKey, BlockSize};
use crate::pods::EndpointId;

use apply::Writer;
use engine_map::EngineMap;
use position::SHARDS;
use table::Table;

/// How much a hit is worth per medium, and how big the index may grow.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexConfig {
    /// Tokens per block; requests and events are keyed at this granularity.
    pub block_size: BlockSize,
    /// Most (endpoint, block) entries held at once, counting every engine hash an endpoint
    /// maps (a block stored again under another hash costs another entry); past it, entries
    /// are evicted from the endpoint holding the most (see [`KvIndex::apply`]).
    pub capacity: usize,
    /// Weight of a hit per medium, indexed by [`Medium::tier`].
    pub tier_weights: [f32; 3],
    /// Keys where blocks and engine hashes are placed. A binary draws it from OS randomness;
    /// the default is [`IndexSecret::FIXED`], for tests and the simulator.
    pub secret: IndexSecret,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            block_size: BlockSize::DEFAULT,
            capacity: 64 << 20,
            tier_weights: [1.0, 0.8, 0.5],
            secret: IndexSecret::FIXED,
        }
    }
}

/// One endpoint's writer-side state.
#[derive(Debug)]
struct EndpointState {
    map: EngineMap,
    /// Blocks that several of the endpoint's engine blocks contain (larger engine blocks that
    /// diverge after them): references beyond the first. Rare.
    extra: HashMap<BlockKey, u32>,
    /// KV-cache groups that announced a non-full-attention kind: their removes are ignored.
    non_prefix_groups: Vec<u32>,
    /// Index blocks per event block, last seen (for `BlockRemoved`, which carries no size).
    split: u32,
    /// A stored event's keys, computed before any is placed (kept to reuse its allocation).
    keys: Vec<BlockKey>,
}

#[derive(Debug)]
struct EndpointSlot {
    state: Mutex<EndpointState>,
    /// Entries, readable without the state lock.
    entries: AtomicUsize,
    /// Engine hashes mapped (what counts toward capacity; eviction picks the largest).
    refs: AtomicUsize,
}

impl EndpointSlot {
    fn new(secret: IndexSecret) -> Self {
        Self {
            state: Mutex::new(EndpointState {
                map: EngineMap::new(secret),
                extra: HashMap::new(),
                non_prefix_groups: Vec::new(),
                split: 0,
                keys: Vec::new(),
            }),
            entries: AtomicUsize::new(0),
            refs: AtomicUsize::new(0),
        }
    }
}

/// The index. `Send + Sync`: one writer per endpoint, any number of concurrent readers.
pub struct KvIndex {
    config: IndexConfig,
    /// Weight of a hit per tier mask (best medium in the mask).
    weights: [f32; 8],
    /// Tier masks whose weight differs from GPU-only's (bit per mask).
    off_base: u8,
    shards: Box<[RwLock<Table>]>,
    endpoints: RwLock<Vec<Option<Arc<EndpointSlot>>>>,
    /// Engine hashes mapped over all endpoints: what [`IndexConfig::capacity`] bounds.
    refs: AtomicUsize,
    evicting: Mutex<()>,
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
        let mut weights = [0.0f32; 8];
        for (mask, w) in weights.iter_mut().enumerate() {
            *w = Medium::ALL
                .iter()
                .filter(|m| mask & (1 << m.tier()) != 0)
                .map(|m| config.tier_weights[m.tier()])
                .fold(0.0f32, f32::max);
        }
        let gpu = weights[1];
        let off_base = (0..8).fold(0u8, |m, t| m | (u8::from(weights[t] != gpu) << t));
        let secret = config.secret;
        Self {
            config,
            weights,
            off_base,
            shards: (0..SHARDS)
                .map(|_| RwLock::new(Table::new(secret)))
                .collect(),
            endpoints: RwLock::new(Vec::new()),
            refs: AtomicUsize::new(0),
            evicting: Mutex::new(()),
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
    ///
    /// Past [`IndexConfig::capacity`], entries are evicted from whichever endpoint holds the most
    /// (so a pod flooding events evicts its own blocks first), at its engine-hash map's clock hand.
    /// Evicting a block in the middle of a chain only shortens matches: never a false hit.
    pub fn apply(&self, endpoint: EndpointId, model: &str, batch: &EventBatch) -> ApplyReport {
        let mut report = ApplyReport::default();
        let slot = self.slot(endpoint);
        {
            let mut state = slot.state.lock();
            let mut writer = Writer::new(self, endpoint, &mut state, &mut report);
            for event in &batch.events {
                match event {
                    KvEvent::BlockStored(stored) => writer.stored(model, stored),
                    KvEvent::BlockRemoved(removed) => writer.removed(removed),
                    KvEvent::AllBlocksCleared => writer.cleared(),
                }
            }
            drop(writer);
            self.account(&slot, &state, &report);
        }
        if self.refs.load(Ordering::Relaxed) > self.config.capacity {
            self.evict(&mut report);
        }
        report
    }

    /// Forgets everything `endpoint` holds (`AllBlocksCleared`, endpoint removal, resync),
    /// including what it said about its KV-cache groups. Returns how many entries went.
    pub fn clear_endpoint(&self, endpoint: EndpointId) -> usize {
        let Some(slot) = self.existing(endpoint) else {
            return 0;
        };
        let mut report = ApplyReport::default();
        let mut state = slot.state.lock();
        Writer::new(self, endpoint, &mut state, &mut report).cleared();
        state.non_prefix_groups.clear();
        state.split = 0;
        state.extra.clear();
        self.account(&slot, &state, &report);
        report.cleared as usize
    }

    /// Sizes, for gauges.
    pub fn stats(&self) -> IndexStats {
        let (keys, entries) = self.shards.iter().fold((0, 0), |(k, e), s| {
            let t = s.read();
            (k + t.keys(), e + t.entries())
        });
        let endpoints = self
            .endpoints
            .read()
            .iter()
            .flatten()
            .filter(|s| s.entries.load(Ordering::Relaxed) > 0)
            .count();
        IndexStats {
            keys,
            entries,
            endpoints,
        }
    }

    /// Entries `endpoint` holds.
    pub fn endpoint_entries(&self, endpoint: EndpointId) -> usize {
        self.existing(endpoint)
            .map_or(0, |s| s.entries.load(Ordering::Relaxed))
    }

    /// The blocks `endpoint` holds and in which media, in no particular order (for debugging,
    /// index queries and tests). O(its entries).
    pub fn endpoint_holdings(&self, endpoint: EndpointId) -> Vec<(BlockKey, Tiers)> {
        let Some(slot) = self.existing(endpoint) else {
            return Vec::new();
        };
        let state = slot.state.lock();
        let id = endpoint.get() as u16;
        let mut out: Vec<(BlockKey, Tiers)> = state
            .map
            .iter()
            .filter_map(|(_, key, pos)| {
                let tiers = self.shards[pos.shard()].read().tiers(key, pos, id);
                (tiers != 0).then_some((key, Tiers(tiers)))
            })
            .collect();
        out.sort_unstable_by_key(|(k, _)| *k);
        out.dedup_by_key(|(k, _)| *k);
        out
    }

    /// Bytes of the index's own tables (records, directories, holder-set slabs and engine maps),
    /// for a memory gauge. The benchmark measures real allocations instead.
    pub fn table_bytes(&self) -> usize {
        let shards: usize = self
            .shards
            .iter()
            .map(|s| {
                let t = s.read();
                t.bucket_bytes() + t.sets().bytes()
            })
            .sum();
        let maps: usize = self
            .endpoints
            .read()
            .iter()
            .flatten()
            .map(|s| s.state.lock().map.bytes())
            .sum();
        shards + maps
    }

    /// Bytes of tables mapped outside the global allocator (the holder tables' huge-page
    /// arrays; included in [`KvIndex::table_bytes`]), for memory accounting.
    pub fn mapped_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.read().mapped_bytes()).sum()
    }

    fn slot(&self, endpoint: EndpointId) -> Arc<EndpointSlot> {
        if let Some(slot) = self.existing(endpoint) {
            return slot;
        }
        let mut all = self.endpoints.write();
        if all.len() <= endpoint.index() {
            all.resize(endpoint.index() + 1, None);
        }
        all[endpoint.index()]
            .get_or_insert_with(|| Arc::new(EndpointSlot::new(self.config.secret)))
            .clone()
    }

    fn existing(&self, endpoint: EndpointId) -> Option<Arc<EndpointSlot>> {
        self.endpoints.read().get(endpoint.index())?.clone()
    }

    /// Moves the batch's net entry change and the endpoint's engine-hash count into the
    /// counters (caller holds the state lock).
    fn account(&self, slot: &EndpointSlot, state: &EndpointState, report: &ApplyReport) {
        let added = report.stored as usize;
        let gone = (report.removed + report.cleared) as usize;
        slot.entries.fetch_add(added, Ordering::Relaxed);
        slot.entries.fetch_sub(gone, Ordering::Relaxed);
        let (now, before) = (
            state.map.len(),
            slot.refs.swap(state.map.len(), Ordering::Relaxed),
        );
        self.refs.fetch_add(now, Ordering::Relaxed);
        self.refs.fetch_sub(before, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod hostile;
#[cfg(test)]
mod tests;
