//! vLLM's event schema as data: tags, field names and their declaration order, shared by the
//! decoder and the encoder so the two cannot drift apart.
//!
//! Source: `vllm/distributed/kv_events.py` (`KVCacheEvent` subclasses, `tag=True`, so the tag is
//! the class name; fields in declaration order, which is also the array layout).

use super::KvEvent;

/// The event classes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Stored,
    Removed,
    Cleared,
}

impl Kind {
    /// The tag msgspec writes: the class name.
    pub(super) const fn tag(self) -> &'static str {
        match self {
            Kind::Stored => "BlockStored",
            Kind::Removed => "BlockRemoved",
            Kind::Cleared => "AllBlocksCleared",
        }
    }

    pub(super) fn from_tag(tag: &str) -> Option<Kind> {
        [Kind::Stored, Kind::Removed, Kind::Cleared]
            .into_iter()
            .find(|k| k.tag() == tag)
    }

    /// The class's fields in declaration order: the positions of the array layout.
    pub(super) const fn fields(self) -> &'static [Field] {
        match self {
            Kind::Stored => &STORED,
            Kind::Removed => &REMOVED,
            Kind::Cleared => &[],
        }
    }

    /// The class of `event`.
    pub(super) const fn of(event: &KvEvent) -> Kind {
        match event {
            KvEvent::BlockStored(_) => Kind::Stored,
            KvEvent::BlockRemoved(_) => Kind::Removed,
            KvEvent::AllBlocksCleared => Kind::Cleared,
        }
    }

    /// Index in [`Kind::fields`] of the first field declared with a default (`None`); the ones
    /// before it have none, so msgspec writes them even when they are `None`.
    pub(super) const fn first_defaulted(self) -> usize {
        match self {
            Kind::Stored => 7,
            Kind::Removed => 2,
            Kind::Cleared => 0,
        }
    }

    /// Fields every vLLM version has sent: a missing one makes the event meaningless. The later
    /// additions (`lora_id` onwards, `medium`, `group_idx`) read as `None` when absent.
    pub(super) fn required(self) -> &'static [Field] {
        match self {
            Kind::Stored => &STORED[..4],
            Kind::Removed => &REMOVED[..1],
            Kind::Cleared => &[],
        }
    }
}

/// Every field name of every event class.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Field {
    BlockHashes,
    ParentBlockHash,
    TokenIds,
    BlockSize,
    LoraId,
    Medium,
    LoraName,
    ExtraKeys,
    GroupIdx,
    KvCacheSpecKind,
    KvCacheSpecSlidingWindow,
}

/// `BlockStored`, in declaration order. The last four have a `None` default, so msgspec's
/// `omit_defaults` drops them from the map layout when unset (never from the array layout:
/// msgspec ignores `omit_defaults` for `array_like` structs).
const STORED: [Field; 11] = [
    Field::BlockHashes,
    Field::ParentBlockHash,
    Field::TokenIds,
    Field::BlockSize,
    Field::LoraId,
    Field::Medium,
    Field::LoraName,
    Field::ExtraKeys,
    Field::GroupIdx,
    Field::KvCacheSpecKind,
    Field::KvCacheSpecSlidingWindow,
];

/// `BlockRemoved`, in declaration order; `group_idx` defaults to `None`.
const REMOVED: [Field; 3] = [Field::BlockHashes, Field::Medium, Field::GroupIdx];

impl Field {
    /// The key of the map layout.
    pub(super) const fn name(self) -> &'static str {
        match self {
            Field::BlockHashes => "block_hashes",
            Field::ParentBlockHash => "parent_block_hash",
            Field::TokenIds => "token_ids",
            Field::BlockSize => "block_size",
            Field::LoraId => "lora_id",
            Field::Medium => "medium",
            Field::LoraName => "lora_name",
            Field::ExtraKeys => "extra_keys",
            Field::GroupIdx => "group_idx",
            Field::KvCacheSpecKind => "kv_cache_spec_kind",
            Field::KvCacheSpecSlidingWindow => "kv_cache_spec_sliding_window",
        }
    }

    pub(super) fn from_name(name: &str) -> Option<Field> {
        STORED.into_iter().find(|f| f.name() == name)
    }

    /// A bit for "seen" masks.
    pub(super) const fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// The key msgspec writes the tag under in the map layout (`tag_field` default).
pub(super) const TAG_KEY: &str = "type";

/// `EventBatch`'s fields, in declaration order; `data_parallel_rank` defaults to `None`.
pub(super) const BATCH_TS: &str = "ts";
pub(super) const BATCH_EVENTS: &str = "events";
pub(super) const BATCH_DP_RANK: &str = "data_parallel_rank";
