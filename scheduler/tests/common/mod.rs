//! Arbitrary KV-event batches for the codec's property and cross-language tests.

use kvpick_scheduler::events::{
    BlockRemoved, BlockStored, EngineHash, EventBatch, ExtraKey, KvEvent, Medium,
};
use proptest::collection::{hash_set, vec};
use proptest::option;
use proptest::prelude::*;

fn finite() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |v| v.is_finite())
}

fn text() -> impl Strategy<Value = String> {
    // Past 31 bytes msgpack leaves fixstr for str8; non-ASCII checks UTF-8 handling.
    prop_oneof!["[a-z_@/.-]{0,12}", "[a-zA-Zé日 ]{28,40}"]
}

fn hashes(max: usize) -> impl Strategy<Value = Vec<EngineHash>> {
    vec(any::<u64>().prop_map(EngineHash), 0..=max)
}

fn medium() -> impl Strategy<Value = Option<Medium>> {
    option::of(prop_oneof![
        Just(Medium::Gpu),
        Just(Medium::Cpu),
        Just(Medium::Storage)
    ])
}

/// Extra-key values as the decoder produces them: `UInt` only above `i64::MAX`, finite floats,
/// maps with distinct string or int keys (a Python dict must be able to hold them).
pub fn extra_key() -> impl Strategy<Value = ExtraKey> {
    let leaf = prop_oneof![
        Just(ExtraKey::Nil),
        any::<bool>().prop_map(ExtraKey::Bool),
        any::<i64>().prop_map(ExtraKey::Int),
        ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(ExtraKey::UInt),
        finite().prop_map(ExtraKey::Float),
        text().prop_map(ExtraKey::Str),
        vec(any::<u8>(), 0..40).prop_map(ExtraKey::Bytes),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(ExtraKey::Array),
            (hash_set("[a-z]{1,6}", 0..3), vec(inner, 3)).prop_map(|(keys, values)| {
                let keys = keys.into_iter().map(ExtraKey::Str);
                ExtraKey::Map(keys.zip(values).collect())
            }),
        ]
    })
}

fn extra_keys(blocks: usize) -> impl Strategy<Value = Option<Vec<Option<Vec<ExtraKey>>>>> {
    option::of(vec(option::of(vec(extra_key(), 0..3)), blocks))
}

/// `BlockStored` in the shapes vLLM sends: full blocks, or a hash-only offloading placeholder.
pub fn block_stored() -> impl Strategy<Value = BlockStored> {
    let full = (1u32..=4, 0usize..=4).prop_flat_map(|(block_size, blocks)| {
        (
            Just(block_size),
            vec(any::<u64>().prop_map(EngineHash), blocks),
            vec(any::<u32>(), blocks * block_size as usize),
            extra_keys(blocks),
        )
    });
    let placeholder = (hashes(3), Just(0u32)).prop_map(|(h, bs)| (bs, h, Vec::new(), None));
    let shape = prop_oneof![4 => full, 1 => placeholder];
    let tail = (
        option::of(any::<i64>()),
        medium(),
        option::of(text()),
        option::of(any::<u32>()),
        option::of(prop_oneof![Just("full_attention".to_owned()), text()]),
        option::of(any::<u32>()),
    );
    (shape, option::of(any::<u64>()), tail).prop_map(
        |((block_size, block_hashes, token_ids, extra_keys), parent, tail)| {
            let (lora_id, medium, lora_name, group_idx, kind, window) = tail;
            BlockStored {
                block_hashes,
                parent_block_hash: parent.map(EngineHash),
                token_ids,
                block_size,
                lora_id,
                medium,
                lora_name,
                extra_keys,
                group_idx,
                kv_cache_spec_kind: kind,
                kv_cache_spec_sliding_window: window,
            }
        },
    )
}

pub fn event() -> impl Strategy<Value = KvEvent> {
    prop_oneof![
        4 => block_stored().prop_map(KvEvent::BlockStored),
        2 => (hashes(6), medium(), option::of(any::<u32>())).prop_map(|(h, m, g)| {
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: h,
                medium: m,
                group_idx: g,
            })
        }),
        1 => Just(KvEvent::AllBlocksCleared),
    ]
}

pub fn batch() -> impl Strategy<Value = EventBatch> {
    (finite(), vec(event(), 0..8), option::of(any::<u32>())).prop_map(|(ts, events, dp)| {
        EventBatch {
            ts,
            events,
            data_parallel_rank: dp,
        }
    })
}
