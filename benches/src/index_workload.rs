//! The index workload of DESIGN.md's published numbers: 256 endpoints, 12.8M (endpoint, block)
//! entries, 128-block requests, in two shapes:
//!
//! - [`Sharing::OneHolder`]: every chain is held, whole, by one endpoint; every block is unique to
//!   one endpoint (the worst case for memory; a lookup walks all 128 blocks for one holder);
//! - [`Sharing::Shared`]: every chain is held by ~67 endpoints, each to its own depth (uniform in
//!   1..=128): heavy sharing, runs ending at mixed depths.
//!
//! Everything is deterministic (splitmix64 over indices), so runs compare.

use kvpick_scheduler::events::{BlockRemoved, BlockStored, EngineHash, EventBatch, KvEvent};
use kvpick_scheduler::index::{ApplyReport, IndexConfig, KvIndex};
use kvpick_scheduler::keys::{BlockKey, BlockSize, Partition, block_keys};
use kvpick_scheduler::pods::{EndpointId, EndpointSet};

/// Endpoints in the published workload.
pub const ENDPOINTS: u32 = 256;
/// (endpoint, block) entries in the published workload.
pub const ENTRIES: usize = 12_800_000;
/// Blocks per request (and per chain).
pub const CHAIN_BLOCKS: usize = 128;
/// Tokens per block.
pub const BLOCK_TOKENS: usize = 16;
/// Holders per chain in the shared shape.
pub const SHARED_HOLDERS: usize = 67;
/// The served model (the cache partition of every chain).
pub const MODEL: &str = "bench-model";

/// How chains are held.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// One endpoint holds each chain, whole.
    OneHolder,
    /// [`SHARED_HOLDERS`] endpoints hold each chain, each to a random depth.
    Shared,
}

/// splitmix64: a cheap, well-mixed deterministic stream.
pub use kvpick_scheduler::splitmix::splitmix64 as mix;

/// The tokens of chain `chain` (all [`CHAIN_BLOCKS`] blocks).
pub fn chain_tokens(chain: u64, out: &mut Vec<u32>) {
    out.clear();
    out.extend(
        (0..(CHAIN_BLOCKS * BLOCK_TOKENS) as u64)
            .map(|i| (mix(chain.wrapping_mul(1 << 20) ^ i) % 151_936) as u32),
    );
}

/// The engine hash a pod reports for block `block` of chain `chain`.
pub fn engine_hash(chain: u64, block: usize) -> EngineHash {
    EngineHash(mix(chain ^ ((block as u64) << 48) ^ 0xE1E1))
}

/// An index configured for the workload.
pub fn index() -> KvIndex {
    KvIndex::new(IndexConfig {
        block_size: block_size(),
        capacity: usize::MAX,
        ..IndexConfig::default()
    })
}

/// The workload's block size.
pub fn block_size() -> BlockSize {
    match BlockSize::new(BLOCK_TOKENS as u32) {
        Some(bs) => bs,
        None => unreachable!("16 is not zero"),
    }
}

/// Endpoint `i`.
pub fn endpoint(i: u32) -> EndpointId {
    match EndpointId::new(i % ENDPOINTS) {
        Some(id) => id,
        None => unreachable!("256 endpoints fit in EndpointId"),
    }
}

/// A `BlockStored` of blocks `from..to` of a chain whose tokens are `tokens`.
pub fn stored(chain: u64, tokens: &[u32], from: usize, to: usize) -> KvEvent {
    KvEvent::BlockStored(BlockStored {
        block_hashes: (from..to).map(|j| engine_hash(chain, j)).collect(),
        parent_block_hash: (from > 0).then(|| engine_hash(chain, from - 1)),
        token_ids: tokens[from * BLOCK_TOKENS..to * BLOCK_TOKENS].to_vec(),
        block_size: BLOCK_TOKENS as u32,
        ..BlockStored::default()
    })
}

/// A `BlockRemoved` of blocks `from..to` of a chain.
pub fn removed(chain: u64, from: usize, to: usize) -> KvEvent {
    KvEvent::BlockRemoved(BlockRemoved {
        block_hashes: (from..to).map(|j| engine_hash(chain, j)).collect(),
        ..BlockRemoved::default()
    })
}

/// The populated workload: what was stored and how to draw requests from it.
#[derive(Debug)]
pub struct Population {
    /// The shape.
    pub sharing: Sharing,
    /// Distinct chains.
    pub chains: u64,
    /// Entries stored.
    pub entries: u64,
    /// Blocks applied (including re-stores of shared blocks).
    pub blocks_applied: u64,
}

/// Fills `index` with about `entries` entries of the given shape; `each` sees every applied batch
/// (e.g. to time it).
pub fn populate(
    index: &KvIndex,
    sharing: Sharing,
    entries: usize,
    mut each: impl FnMut(&ApplyReport),
) -> Population {
    let mut tokens = Vec::new();
    let mut stored_entries = 0u64;
    let mut applied = 0u64;
    let mut chain = 0u64;
    while (stored_entries as usize) < entries {
        chain_tokens(chain, &mut tokens);
        match sharing {
            Sharing::OneHolder => {
                let ep = endpoint((chain % u64::from(ENDPOINTS)) as u32);
                let batch = batch(stored(chain, &tokens, 0, CHAIN_BLOCKS));
                let r = index.apply(ep, MODEL, &batch);
                each(&r);
                stored_entries += r.stored;
                applied += CHAIN_BLOCKS as u64;
            }
            Sharing::Shared => {
                for (ep, depth) in shared_holders(chain) {
                    let batch = batch(stored(chain, &tokens, 0, depth));
                    let r = index.apply(endpoint(ep), MODEL, &batch);
                    each(&r);
                    stored_entries += r.stored;
                    applied += depth as u64;
                }
            }
        }
        chain += 1;
    }
    Population {
        sharing,
        chains: chain,
        entries: stored_entries,
        blocks_applied: applied,
    }
}

/// The holders of a shared chain and the depth each holds it to.
pub fn shared_holders(chain: u64) -> Vec<(u32, usize)> {
    let mut eps: Vec<u32> = Vec::with_capacity(SHARED_HOLDERS);
    let mut i = 0u64;
    while eps.len() < SHARED_HOLDERS {
        let ep = (mix(chain ^ (i << 40) ^ 0xABCD) % u64::from(ENDPOINTS)) as u32;
        if !eps.contains(&ep) {
            eps.push(ep);
        }
        i += 1;
    }
    eps.into_iter()
        .enumerate()
        .map(|(k, ep)| {
            let depth = 1 + (mix(chain ^ ((k as u64) << 32) ^ 0xDE97) % CHAIN_BLOCKS as u64);
            (ep, depth as usize)
        })
        .collect()
}

/// A batch of one event.
pub fn batch(event: KvEvent) -> EventBatch {
    EventBatch {
        ts: 0.0,
        events: vec![event],
        data_parallel_rank: None,
    }
}

/// The chain of request `i` of the random requests drawn with `seed` (see [`requests`]).
pub fn request_chain(pop: &Population, seed: u64, i: u64) -> u64 {
    mix(seed ^ i) % pop.chains.max(1)
}

/// The block keys of a prompt, computed the way `Scheduler::pick` does just before its lookup
/// (`block_keys` of the model's partition root, collected into a fresh `Vec`).
pub fn prompt_keys(tokens: &[u32]) -> Vec<BlockKey> {
    block_keys(Partition::model(MODEL).root(), tokens, block_size()).collect()
}

/// `n` random 128-block requests over the populated chains, as keys.
pub fn requests(pop: &Population, n: usize, seed: u64) -> Vec<Vec<BlockKey>> {
    let mut tokens = Vec::new();
    (0..n as u64)
        .map(|i| {
            chain_tokens(request_chain(pop, seed, i), &mut tokens);
            prompt_keys(&tokens)
        })
        .collect()
}

/// Every endpoint of the workload, as lookup candidates.
pub fn all_endpoints() -> EndpointSet {
    (0..ENDPOINTS).map(endpoint).collect()
}

/// A churn stream for the apply rate: batch `i` stores a 16-block piece of a new chain on one
/// endpoint and removes the piece stored `lag` batches earlier, so the index stays in a steady
/// state. Returns `len` pre-built batches (endpoint, batch).
pub fn churn(len: usize, lag: usize) -> Vec<(EndpointId, EventBatch)> {
    const PIECE: usize = 16;
    let mut tokens = Vec::new();
    let chain_of = |i: usize| 1_000_000_000 + (i / (CHAIN_BLOCKS / PIECE)) as u64;
    let piece_of = |i: usize| i % (CHAIN_BLOCKS / PIECE);
    (0..len)
        .map(|i| {
            let chain = chain_of(i);
            chain_tokens(chain, &mut tokens);
            let p = piece_of(i);
            let mut events = vec![stored(chain, &tokens, p * PIECE, (p + 1) * PIECE)];
            if i >= lag {
                let j = i - lag;
                let (old, q) = (chain_of(j), piece_of(j));
                events.push(removed(old, q * PIECE, (q + 1) * PIECE));
            }
            let ep = endpoint((chain % u64::from(ENDPOINTS)) as u32);
            (
                ep,
                EventBatch {
                    ts: 0.0,
                    events,
                    data_parallel_rank: None,
                },
            )
        })
        .collect()
}
