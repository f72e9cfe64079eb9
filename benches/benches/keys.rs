//! Block-key hashing throughput: keys for an 8,192-token prompt.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kvpick_scheduler::keys::{BlockSize, Partition, block_keys};

fn keys(c: &mut Criterion) {
    let tokens: Vec<u32> = (0..8192u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % 151_936)
        .collect();
    let root = Partition::model("bench").root();
    let mut group = c.benchmark_group("keys");
    for bs in [16u32, 64] {
        let Some(block_size) = BlockSize::new(bs) else {
            continue;
        };
        group.throughput(Throughput::Elements(
            block_size.full_blocks(tokens.len()) as u64
        ));
        group.bench_function(format!("8192_tokens_block_{bs}"), |b| {
            b.iter(|| block_keys(root, std::hint::black_box(&tokens), block_size).last())
        });
    }
    group.finish();
}

criterion_group!(benches, keys);
criterion_main!(benches);
