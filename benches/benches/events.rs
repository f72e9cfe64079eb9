//! KV-event codec throughput, in blocks per second, on batches shaped like a busy vLLM pod's:
//! 64 `BlockStored` events × 16 blocks × 16 tokens (Qwen-sized vocabulary), as vLLM 0.26 fills
//! them. Baseline in the same run: decoding the same bytes into a generic `rmpv::Value` tree.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kvpick_scheduler::events::{
    BlockStored, EncodeOptions, EngineHash, EventBatch, KvEvent, Medium, decode_batch, encode_batch,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const EVENTS: usize = 64;
const BLOCKS: usize = 16;
const BLOCK_SIZE: u32 = 16;

fn batch() -> EventBatch {
    let mut rng = SmallRng::seed_from_u64(7);
    let events = (0..EVENTS)
        .map(|_| {
            KvEvent::BlockStored(BlockStored {
                block_hashes: (0..BLOCKS).map(|_| EngineHash(rng.random())).collect(),
                parent_block_hash: Some(EngineHash(rng.random())),
                token_ids: (0..BLOCKS * BLOCK_SIZE as usize)
                    .map(|_| rng.random_range(0..151_936))
                    .collect(),
                block_size: BLOCK_SIZE,
                medium: Some(Medium::Gpu),
                extra_keys: Some(vec![None; BLOCKS]),
                group_idx: Some(0),
                kv_cache_spec_kind: Some("full_attention".into()),
                ..BlockStored::default()
            })
        })
        .collect();
    EventBatch {
        ts: 1_789_095_808.837_884_7,
        events,
        data_parallel_rank: Some(0),
    }
}

fn events(c: &mut Criterion) {
    let batch = batch();
    let layouts = [
        ("array", EncodeOptions::ARRAY),
        (
            "array_batch_map_events",
            EncodeOptions::ARRAY_BATCH_MAP_EVENTS,
        ),
        ("map", EncodeOptions::MAP),
    ];
    let mut group = c.benchmark_group("events");
    group.throughput(Throughput::Elements((EVENTS * BLOCKS) as u64));
    for (name, opts) in layouts {
        let Ok(payload) = encode_batch(&batch, opts) else {
            continue;
        };
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| decode_batch(black_box(&payload)).map(|b| b.events.len()))
        });
        group.bench_function(format!("rmpv_value_baseline/{name}"), |b| {
            b.iter(|| rmpv::decode::read_value(&mut black_box(payload.as_slice())).is_ok())
        });
        group.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| encode_batch(black_box(&batch), opts).map(|v| v.len()))
        });
    }
    group.finish();
}

criterion_group!(benches, events);
criterion_main!(benches);
