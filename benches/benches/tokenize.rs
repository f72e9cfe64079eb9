//! CPU cost of tokenizing chat requests: 8k-, 32k- and 100k-token conversations, cold (nothing
//! cached) and warm (the next turn of the same conversation, its history cached), through the same
//! `ModelTokenizer::tokenize` the endpoint picker calls (render the chat template, cut at added
//! tokens, splice cached segments, encode the rest).
//!
//! Tokenizers: the byte-level BPE + ChatML fixture of kvpick-tokenize (3,000-token vocabulary, NFC,
//! a Llama-3/Qwen2 split regex) at three sizes, and the Metaspace/byte-fallback + Mistral-template
//! fixture at 100k. Text: generated pseudo-English with code and Unicode, Zipf-distributed
//! words. Measured in CPU time of the process (all threads), not wall time: the machine is shared.
#![allow(clippy::expect_used)] // a benchmark without its fixture has nothing to measure

use std::hint::black_box;
use std::path::Path;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use kvpick_benches::prose::Prose;
use kvpick_tokenize::{ChatRequest, ModelTokenizer, TokenCache, TokenizeInput};
use rand::Rng;
use serde_json::{Value, json};

fn model(name: &str) -> ModelTokenizer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tokenize/tests/fixtures")
        .join(name);
    ModelTokenizer::load(&dir).expect("the fixture loads")
}

fn chat(messages: &[Value]) -> TokenizeInput {
    TokenizeInput::Chat(ChatRequest::new(messages.to_vec()))
}

/// A conversation whose rendered prompt has about `target` tokens, ending with a user turn.
fn conversation(model: &ModelTokenizer, target: usize, prose: &mut Prose) -> Vec<Value> {
    let mut messages = vec![json!({"role": "system", "content": prose.text(60)})];
    // Our own cache keeps this loop linear: each check encodes only the new messages.
    let cache = TokenCache::new(256 << 20);
    loop {
        let words = 150 + prose.rng.random_range(0..300);
        messages.push(json!({"role": "user", "content": prose.text(words)}));
        let n = model
            .tokenize(&chat(&messages), &cache)
            .map(|e| e.ids.len())
            .unwrap_or(0);
        if n >= target {
            return messages;
        }
        let words = 200 + prose.rng.random_range(0..500);
        messages.push(json!({"role": "assistant", "content": prose.text(words)}));
    }
}

fn tokenize(c: &mut Criterion<cpu_time::CpuTime>) {
    // The byte-level family at three sizes; the sentencepiece-style (Metaspace) one at 100k.
    let runs = [
        ("chatml", "8k", 8_000),
        ("chatml", "32k", 32_000),
        ("chatml", "100k", 100_000),
        ("mistral", "100k", 100_000),
    ];
    let mut group = c.benchmark_group("tokenize_chat");
    group.sample_size(10);
    for (name, size, target) in runs {
        let model = model(name);
        let mut prose = Prose::new(7);
        let label = if name == "chatml" {
            size.to_string()
        } else {
            format!("{name}_{size}")
        };
        let messages = conversation(&model, target, &mut prose);
        let label = label.as_str();
        let request = chat(&messages);
        let n = model
            .tokenize(&request, &TokenCache::new(0))
            .map(|e| e.ids.len())
            .unwrap_or(0);
        let bytes = match &request {
            TokenizeInput::Chat(req) => model.render_chat(req).map(|t| t.len()).unwrap_or(0),
            TokenizeInput::Prompt { text, .. } => text.len(),
        };
        eprintln!(
            "{label}: {} messages, {n} tokens, {bytes} bytes rendered",
            messages.len()
        );

        group.bench_function(format!("{label}/render_only"), |b| {
            let TokenizeInput::Chat(req) = &request else {
                return;
            };
            b.iter(|| model.render_chat(black_box(req)).map(|t| t.len()))
        });
        // The straightforward way, as a baseline in the same process: render, then HF `encode`.
        group.bench_function(format!("{label}/baseline_hf_encode"), |b| {
            let TokenizeInput::Chat(req) = &request else {
                return;
            };
            b.iter(|| {
                let text = model.render_chat(black_box(req)).expect("renders");
                model
                    .tokenizer()
                    .encode(text.as_str(), false)
                    .map(|e| e.len())
            })
        });
        group.bench_function(format!("{label}/uncached"), |b| {
            let off = TokenCache::new(0);
            b.iter(|| {
                model
                    .tokenize(black_box(&request), &off)
                    .map(|e| e.ids.len())
            })
        });
        group.bench_function(format!("{label}/cold"), |b| {
            b.iter_batched(
                || TokenCache::new(256 << 20),
                |cache| {
                    model
                        .tokenize(black_box(&request), &cache)
                        .map(|e| e.ids.len())
                },
                BatchSize::PerIteration,
            )
        });
        // The next turn: the assistant answered, the user asked again; the history is cached.
        let cache = TokenCache::new(256 << 20);
        let _ = model.tokenize(&request, &cache);
        let mut next = messages.clone();
        next.push(json!({"role": "assistant", "content": prose.text(300)}));
        let question = prose.text(100);
        let mut turn = 0u64;
        group.bench_function(format!("{label}/warm_next_turn"), |b| {
            b.iter(|| {
                // A different new question each time, so only the history hits.
                turn += 1;
                let mut m = next.clone();
                m.push(json!({"role": "user", "content": format!("{question} ({turn})")}));
                model
                    .tokenize(black_box(&chat(&m)), &cache)
                    .map(|e| e.ids.len())
            })
        });
    }
    group.finish();
}

mod cpu_time {
    //! A criterion measurement of CPU time: the run time of every thread of the process, from
    //! `/proc/self/task/*/schedstat` (nanoseconds). On a shared, loaded machine wall time mostly
    //! measures the neighbours; CPU time is the cost the benchmark asks about ("core·s per request").

    use criterion::Throughput;
    use criterion::measurement::{Measurement, ValueFormatter};

    /// CPU time of the whole process, in nanoseconds.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct CpuTime;

    /// Total CPU nanoseconds used so far by all live threads of this process.
    pub fn process_cpu_ns() -> u64 {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    impl Measurement for CpuTime {
        type Intermediate = u64;
        type Value = u64;

        fn start(&self) -> u64 {
            process_cpu_ns()
        }
        fn end(&self, start: u64) -> u64 {
            process_cpu_ns().saturating_sub(start)
        }
        fn add(&self, a: &u64, b: &u64) -> u64 {
            a + b
        }
        fn zero(&self) -> u64 {
            0
        }
        fn to_f64(&self, v: &u64) -> f64 {
            *v as f64
        }
        fn formatter(&self) -> &dyn ValueFormatter {
            &CpuFormatter
        }
    }

    struct CpuFormatter;

    impl ValueFormatter for CpuFormatter {
        fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
            let (div, unit) = if typical < 1e3 {
                (1.0, "ns cpu")
            } else if typical < 1e6 {
                (1e3, "µs cpu")
            } else if typical < 1e9 {
                (1e6, "ms cpu")
            } else {
                (1e9, "s cpu")
            };
            for v in values {
                *v /= div;
            }
            unit
        }
        fn scale_throughputs(
            &self,
            typical: f64,
            throughput: &Throughput,
            values: &mut [f64],
        ) -> &'static str {
            let per = match throughput {
                Throughput::Elements(n)
                | Throughput::Bytes(n)
                | Throughput::BytesDecimal(n)
                | Throughput::Bits(n) => *n as f64,
                Throughput::ElementsAndBytes { elements, .. } => *elements as f64,
            };
            let _ = typical;
            for v in values {
                *v = per * 1e9 / *v;
            }
            "elem/cpu·s"
        }
        fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
            "ns cpu"
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(cpu_time::CpuTime);
    targets = tokenize
}
criterion_main!(benches);
