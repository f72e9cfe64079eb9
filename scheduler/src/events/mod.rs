//! vLLM's KV-cache events, as values: what a pod says it stored, removed or cleared.
//!
//! The model mirrors vLLM's `vllm.distributed.kv_events` (`KVEventBatch`, `BlockStored`,
//! `BlockRemoved`, `AllBlocksCleared`). The wire codec reads every encoding vLLM has used and
//! writes any of them ([`decode_batch`], [`encode_batch`]); [`message`](parse_message) handles the
//! ZMQ framing around it (PUB frames, replay replies, topics).
//!
//! vLLM's layouts, oldest first (all msgpack, events tagged by class name):
//!
//! | vLLM | batch | events |
//! |---|---|---|
//! | up to PR #42892 (`array_like=True` everywhere) | `[ts, events, dp_rank]` | `["BlockStored", block_hashes, ...]` |
//! | after PR #42892 (e.g. 0.26) | `[ts, events, dp_rank]` | `{"type": "BlockStored", "block_hashes": ..., ...}` |
//! | `kv_events.py` without `array_like` on the batch | `{"ts": .., "events": .., "data_parallel_rank": ..}` | maps |
//!
//! The decoder accepts any mix of these, per batch and per event.

mod decode;
mod encode;
mod extra_keys;
mod message;
mod msgpack;
mod schema;

pub use decode::{MAX_BLOCKS_PER_EVENT, MAX_EVENTS_PER_BATCH, MAX_TOKENS_PER_EVENT, decode_batch};
pub use encode::{EncodeOptions, Encoding, HashEncoding, encode_batch, encode_batch_into};
pub use extra_keys::{MAX_EXTRA_KEY_DEPTH, MAX_EXTRA_KEY_VALUES};
pub use message::{
    Message, REPLAY_END_SEQ, ReplayReply, Topic, parse_message, parse_replay_reply,
    parse_replay_request, replay_request, seq_frame,
};

use std::fmt;
use std::slice::ChunksExact;

/// A block hash as the engine computed it: opaque to kvpick, used only to name blocks in later
/// events (`BlockRemoved`, `parent_block_hash`). Int hashes are kept as their 64 bits; byte hashes
/// are folded to 64 bits by the decoder.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EngineHash(pub u64);

impl EngineHash {
    /// Folds a byte hash (vLLM's default: the raw digest, e.g. 32 bytes of SHA-256) to 64 bits
    /// the way vLLM itself does when `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES` is set:
    /// `int.from_bytes(digest, "big") & (2**64 - 1)`, i.e. the last 8 bytes big-endian, shorter
    /// values zero-extended. A pod that switches between byte and int hashes therefore names
    /// every block identically, and the rule is the one llm-d uses too.
    pub fn from_bytes(digest: &[u8]) -> Self {
        let tail = &digest[digest.len().saturating_sub(8)..];
        let mut be = [0u8; 8];
        be[8 - tail.len()..].copy_from_slice(tail);
        Self(u64::from_be_bytes(be))
    }
}

impl fmt::Debug for EngineHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EngineHash({:016x})", self.0)
    }
}

/// Where a block lives on the pod (vLLM's `medium`); decides how much a hit is worth.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Medium {
    /// GPU memory: a hit skips prefill outright. vLLM's default when `medium` is nil.
    #[default]
    Gpu,
    /// CPU memory (offloaded): a hit costs a copy back to the GPU.
    Cpu,
    /// Local disk or remote storage: a hit costs a load.
    Storage,
}

impl Medium {
    /// All mediums, in the order of their tier index.
    pub const ALL: [Medium; 3] = [Medium::Gpu, Medium::Cpu, Medium::Storage];

    /// A small dense index (0 GPU, 1 CPU, 2 storage) for per-tier tables and bitmasks.
    pub const fn tier(self) -> usize {
        self as usize
    }

    /// Reads vLLM's `medium` string: `GPU`, `CPU` and `STORAGE`, in any ASCII case. Anything
    /// else (connectors name their own tiers, e.g. `Certus`) is memory that is neither the GPU
    /// nor the host's, so it counts as [`Medium::Storage`]: a hit there is real but costs a load.
    /// Never fails: an unknown tier must not cost the rest of the batch.
    pub fn from_wire(s: &str) -> Medium {
        if s.eq_ignore_ascii_case("GPU") {
            Medium::Gpu
        } else if s.eq_ignore_ascii_case("CPU") {
            Medium::Cpu
        } else {
            Medium::Storage
        }
    }

    /// The string vLLM puts on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Medium::Gpu => "GPU",
            Medium::Cpu => "CPU",
            Medium::Storage => "STORAGE",
        }
    }
}

/// One element of a block's `extra_keys` tuple (multimodal hashes, LoRA name, `cache_salt`, ...).
#[derive(Clone, Debug, PartialEq)]
pub enum ExtraKey {
    /// msgpack nil.
    Nil,
    /// A boolean.
    Bool(bool),
    /// An integer that fits `i64` (the decoder's choice whenever it does).
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    /// A float.
    Float(f64),
    /// A string (e.g. a multimodal hash or a `cache_salt`).
    Str(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A nested array (vLLM tuples nest, e.g. `(mm_hash, offset)`).
    Array(Vec<ExtraKey>),
    /// A map, in wire order (not sent by vLLM today; kept rather than failing the batch).
    Map(Vec<(ExtraKey, ExtraKey)>),
}

/// `BlockStored`: the pod now holds these full blocks, chained after `parent_block_hash`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct BlockStored {
    /// One engine hash per stored block, in chain order.
    pub block_hashes: Vec<EngineHash>,
    /// The block before the first one stored; `None` when the chain starts at block 0.
    pub parent_block_hash: Option<EngineHash>,
    /// The tokens of all stored blocks, `block_size` per block.
    pub token_ids: Vec<u32>,
    /// Tokens per block on the pod.
    pub block_size: u32,
    /// Deprecated by vLLM in favour of `lora_name`; kept for old publishers.
    pub lora_id: Option<i64>,
    /// `None` on the wire means GPU.
    pub medium: Option<Medium>,
    /// The LoRA adapter whose cache partition these blocks belong to.
    pub lora_name: Option<String>,
    /// Per-block extra hash inputs, one entry per block (or `None`).
    pub extra_keys: Option<Vec<Option<Vec<ExtraKey>>>>,
    /// KV-cache group of hybrid models (e.g. full attention vs sliding window).
    pub group_idx: Option<u32>,
    /// The group's kind, e.g. `full_attention` or `sliding_window`.
    pub kv_cache_spec_kind: Option<String>,
    /// The window of a sliding-window group, in tokens.
    pub kv_cache_spec_sliding_window: Option<u32>,
}

impl BlockStored {
    /// The stored blocks' tokens, one `block_size` chunk per entry of `block_hashes`, when the
    /// event carries them that way: `block_size > 0` and
    /// `token_ids.len() == block_hashes.len() * block_size`.
    ///
    /// `None` for the other shapes vLLM really sends, which the decoder keeps rather than fail
    /// the batch they ride in: hash-only placeholders from KV offloading (`token_ids` empty,
    /// `block_size` 0: only the tier of already-known hashes changes) and sparse events of
    /// hybrid (Mamba "align") groups, whose tokens span blocks without hashes. Whoever keys
    /// blocks by their tokens must go through this.
    pub fn token_blocks(&self) -> Option<ChunksExact<'_, u32>> {
        let size = self.block_size as usize;
        let dense =
            size > 0 && self.block_hashes.len().checked_mul(size) == Some(self.token_ids.len());
        dense.then(|| self.token_ids.chunks_exact(size))
    }
}

/// `BlockRemoved`: the pod evicted these blocks from `medium`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct BlockRemoved {
    /// Engine hashes of the evicted blocks.
    pub block_hashes: Vec<EngineHash>,
    /// `None` on the wire means GPU.
    pub medium: Option<Medium>,
    /// KV-cache group of hybrid models.
    pub group_idx: Option<u32>,
}

/// One KV-cache event.
#[derive(Clone, Debug, PartialEq)]
pub enum KvEvent {
    /// Blocks became resident.
    BlockStored(BlockStored),
    /// Blocks were evicted.
    BlockRemoved(BlockRemoved),
    /// The pod dropped its whole prefix cache (e.g. `reset_prefix_cache`).
    AllBlocksCleared,
}

/// One published batch (vLLM's `KVEventBatch`): the unit the pod numbers with a sequence number.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct EventBatch {
    /// Wall-clock seconds at the pod when the batch was made.
    pub ts: f64,
    /// The events, in the order the pod applied them.
    pub events: Vec<KvEvent>,
    /// The data-parallel rank that produced the batch, when the pod says.
    pub data_parallel_rank: Option<u32>,
}

/// The kind of KV-cache group that proves a prefix is resident; other kinds (sliding window, local
/// chunked attention, mamba state) hold only a suffix and must not create hits.
pub const FULL_ATTENTION: &str = "full_attention";
