//! vLLM's KV-cache events, as values: what a pod says it stored, removed or cleared.
//!
//! The model mirrors vLLM's `vllm.distributed.kv_events` (`KVEventBatch`, `BlockStored`,
//! `BlockRemoved`, `AllBlocksCleared`); the wire codec (`decode`, `encode`) reads both encodings
//! vLLM has used (array-tagged and map-tagged msgpack) and writes either.

use std::fmt;

/// A block hash as the engine computed it: opaque to kvpick, used only to name blocks in later
/// events (`BlockRemoved`, `parent_block_hash`). Int hashes are kept as their 64 bits; byte hashes
/// are folded to 64 bits by the decoder.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EngineHash(pub u64);

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
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (e.g. a multimodal hash or a `cache_salt`).
    Str(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A nested array (vLLM tuples nest, e.g. `(mm_hash, offset)`).
    Array(Vec<ExtraKey>),
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
