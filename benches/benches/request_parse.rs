//! Parsing an OpenAI completions body whose prompt is 8,192 token ids: kvpick-epp's parser (its
//! token-array fast path) against its reference (serde_json alone, the parser before the fast
//! path) and against serde_json deserializing the same `prompt` into `Vec<u32>`, the baseline, in
//! the same process.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn body(tokens: usize) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(1);
    let prompt: Vec<u32> = (0..tokens).map(|_| rng.random_range(0..150_000)).collect();
    serde_json::to_vec(&serde_json::json!({"model": "m", "prompt": prompt, "max_tokens": 16}))
        .unwrap_or_default()
}

#[derive(serde::Deserialize)]
struct Baseline {
    #[allow(dead_code)]
    model: String,
    prompt: Vec<u32>,
}

fn parse(c: &mut Criterion) {
    let b = body(8192);
    let mut g = c.benchmark_group("request_parse_8192_tokens");
    g.throughput(Throughput::Bytes(b.len() as u64));
    g.bench_function("kvpick_epp", |bench| {
        bench.iter(|| kvpick_epp::request::parse(std::hint::black_box(&b)).map(|r| r.model.len()))
    });
    g.bench_function("kvpick_epp_reference", |bench| {
        bench.iter(|| {
            kvpick_epp::request::parse_reference(std::hint::black_box(&b)).map(|r| r.model.len())
        })
    });
    g.bench_function("serde_vec_u32_baseline", |bench| {
        bench.iter(|| {
            serde_json::from_slice::<Baseline>(std::hint::black_box(&b)).map(|r| r.prompt.len())
        })
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
