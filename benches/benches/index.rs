//! The KV block index: apply rate for a churn stream, and lookup latency on the published
//! workload (256 endpoints, 12.8M entries, 128-block requests; one holder per chain, and ~67
//! holders at mixed depths). Criterion reports means; `index_report` prints percentiles and memory.
//!
//! Under `cargo test --benches` (debug builds) the workload shrinks to 200k entries so CI stays
//! fast; `KVPICK_BENCH_ENTRIES` overrides the size.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kvpick_benches::index_workload::{self as w, Sharing};
use kvpick_scheduler::index::PrefixMatches;

fn entries() -> usize {
    let default = if cfg!(debug_assertions) {
        200_000
    } else {
        w::ENTRIES
    };
    std::env::var("KVPICK_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn apply(c: &mut Criterion) {
    let (batches, lag) = if cfg!(debug_assertions) {
        (2_048, 512)
    } else {
        (32_768, 4_096)
    };
    let stream = w::churn(batches, lag);
    let blocks: usize = stream
        .iter()
        .map(|(_, b)| {
            b.events
                .iter()
                .map(|e| match e {
                    kvpick_scheduler::KvEvent::BlockStored(s) => s.block_hashes.len(),
                    kvpick_scheduler::KvEvent::BlockRemoved(r) => r.block_hashes.len(),
                    kvpick_scheduler::KvEvent::AllBlocksCleared => 0,
                })
                .sum::<usize>()
        })
        .sum();
    let mut group = c.benchmark_group("index_apply");
    group.throughput(Throughput::Elements(blocks as u64));
    group.sample_size(10);
    group.bench_function(format!("churn_{batches}_batches_store16_remove16"), |b| {
        b.iter_batched(
            w::index,
            |index| {
                for (ep, batch) in &stream {
                    black_box(index.apply(*ep, w::MODEL, batch));
                }
                index
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let n = entries();
    let mut group = c.benchmark_group("index_lookup");
    for sharing in [Sharing::OneHolder, Sharing::Shared] {
        let index = w::index();
        let pop = w::populate(&index, sharing, n, |_| {});
        let requests = w::requests(&pop, 8192, 7);
        let cands = w::all_endpoints();
        let mut out = PrefixMatches::default();
        let mut i = 0usize;
        let name = match sharing {
            Sharing::OneHolder => "one_holder",
            Sharing::Shared => "67_holders_mixed_depths",
        };
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{name}_{}k_entries_128_blocks", n / 1000), |b| {
            b.iter(|| {
                i = (i + 1) % requests.len();
                index.lookup(black_box(&requests[i]), &cands, &mut out);
                black_box(out.matches.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, apply, lookup);
criterion_main!(benches);
