//! The single global prefix cache analysis of a trace: the best any router could do with one cache
//! shared by the whole pool, the reference figure the Mooncake paper publishes.
//!
//! Requests are replayed in arrival order through one cache of `block_tokens`-token blocks. A
//! request hits the longest run of its leading blocks already cached; its hit is
//! `min(matched_blocks · block_tokens, input_length)` tokens (a trailing partial block counts if its
//! id matches). Then all its blocks are inserted (touched in prompt order). Unbounded, or an LRU of
//! `capacity_tokens / block_tokens` blocks. For traces of chained prefix blocks of that size
//! (Mooncake), blocks are the trace's own hash ids; otherwise they are chained keys over the tokens.

use kvpick_scheduler::Partition;
use serde::Serialize;

use crate::lru::LruSet;
use crate::trace::{PromptSpec, Trace};
use kvpick_scheduler::prehashed::PrehashedMap;

/// The analysis' result.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CacheHit {
    /// Requests replayed.
    pub requests: usize,
    /// Σ input tokens.
    pub input_tokens: u64,
    /// Σ hit tokens.
    pub hit_tokens: u64,
    /// hit / input.
    pub hit_rate: f64,
    /// Tokens per block.
    pub block_tokens: u32,
    /// LRU capacity in tokens, `None` for unbounded.
    pub capacity_tokens: Option<u64>,
    /// Whether blocks were the trace's own ids (else chained token keys).
    pub trace_block_ids: bool,
}

enum Cache {
    Unbounded(PrehashedMap<u64, ()>),
    Lru(LruSet<u64>, usize),
}

/// Runs the analysis.
pub fn analyze(trace: &Trace, block_tokens: u32, capacity_tokens: Option<u64>) -> CacheHit {
    let block_tokens = block_tokens.max(1);
    let by_ids = trace.prefix_block_tokens == Some(block_tokens);
    let mut cache = match capacity_tokens {
        None => Cache::Unbounded(PrehashedMap::default()),
        Some(c) => Cache::Lru(LruSet::default(), (c / block_tokens as u64) as usize),
    };
    let (mut input, mut hit) = (0u64, 0u64);
    let mut blocks = Vec::new();
    let mut tokens = Vec::new();
    for r in &trace.requests {
        blocks.clear();
        match (&r.prompt, by_ids) {
            (PromptSpec::Segments(s), true) => blocks.extend(s.iter().map(|s| s.id)),
            (prompt, _) => {
                prompt.materialize(&mut tokens);
                let root = Partition::model(r.lora.as_deref().unwrap_or("")).root();
                let mut parent = root;
                for chunk in tokens.chunks(block_tokens as usize) {
                    parent = parent.chain(chunk);
                    blocks.push(parent.get());
                }
            }
        }
        let n = r.input_tokens() as u64;
        let matched = match &cache {
            Cache::Unbounded(set) => blocks.iter().take_while(|b| set.contains_key(b)).count(),
            Cache::Lru(lru, _) => blocks.iter().take_while(|b| lru.contains(b)).count(),
        } as u64;
        input += n;
        hit += (matched * block_tokens as u64).min(n);
        match &mut cache {
            Cache::Unbounded(set) => set.extend(blocks.iter().map(|&b| (b, ()))),
            Cache::Lru(lru, cap) => {
                for &b in &blocks {
                    lru.touch(b);
                }
                while lru.len() > *cap {
                    lru.evict();
                }
            }
        }
    }
    CacheHit {
        requests: trace.requests.len(),
        input_tokens: input,
        hit_tokens: hit,
        hit_rate: if input == 0 {
            0.0
        } else {
            hit as f64 / input as f64
        },
        block_tokens,
        capacity_tokens,
        trace_block_ids: by_ids,
    }
}
