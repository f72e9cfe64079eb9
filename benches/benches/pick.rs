//! `Scheduler::pick` for an 8,192-token prompt over 64 endpoints with a populated index.
//!
//! Workload: every endpoint holds a 2,048-token shared system prompt (so the lookup walks 128
//! blocks with 64 holders each), 8 conversations of its own (8,192 tokens each), and endpoint 17
//! also holds the whole request, the worst case of a long, mostly shared match. Baselines in the
//! same process: hashing the request's 512 block keys, and keys plus the index lookup; `pick`
//! adds filtering, scoring, ranking and the decision on top.
//!
//! After criterion's runs, `latency` prints p50/p99/max over single picks (a distribution criterion
//! does not report), timed with the wall clock as a benchmark must.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use kvpick_scheduler::events::{BlockStored, EngineHash};
use kvpick_scheduler::keys::block_keys;
use kvpick_scheduler::pods::LoraState;
use kvpick_scheduler::{
    Candidate, Endpoint, EndpointId, EndpointPickerConfig, EndpointSet, EventBatch, EventsState,
    IndexConfig, KvEvent, KvIndex, PodSignals, PrefixMatches, Prompt, Request, Scheduler,
    Timestamp,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MODEL: &str = "bench-model";
const ENDPOINTS: u32 = 64;
const PROMPT: usize = 8192;
const SYSTEM: usize = 2048;
const BLOCK: usize = 16;

struct Workload {
    endpoints: Vec<Endpoint>,
    signals: Vec<PodSignals>,
    index: Arc<KvIndex>,
    request: Vec<u32>,
}

fn tokens(rng: &mut SmallRng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..151_936)).collect()
}

fn store(index: &KvIndex, ep: EndpointId, next_hash: &mut u64, tokens: &[u32]) {
    let blocks = tokens.len() / BLOCK;
    let hashes = (0..blocks)
        .map(|_| {
            *next_hash += 1;
            EngineHash(*next_hash)
        })
        .collect();
    let batch = EventBatch {
        ts: 0.0,
        events: vec![KvEvent::BlockStored(BlockStored {
            block_hashes: hashes,
            token_ids: tokens.to_vec(),
            block_size: BLOCK as u32,
            ..BlockStored::default()
        })],
        data_parallel_rank: None,
    };
    index.apply(ep, MODEL, &batch);
}

fn workload() -> Workload {
    let mut rng = SmallRng::seed_from_u64(7);
    let index = Arc::new(KvIndex::new(IndexConfig::default()));
    let system = tokens(&mut rng, SYSTEM);
    let mut request = system.clone();
    request.extend(tokens(&mut rng, PROMPT - SYSTEM));
    let mut next_hash = 0;
    let mut endpoints = Vec::new();
    let mut signals = Vec::new();
    for i in 0..ENDPOINTS {
        let id = EndpointId::new(i).unwrap_or_else(|| unreachable!());
        for _ in 0..8 {
            let mut conversation = system.clone();
            conversation.extend(tokens(&mut rng, PROMPT - SYSTEM));
            store(&index, id, &mut next_hash, &conversation);
        }
        if i == 17 {
            store(&index, id, &mut next_hash, &request);
        }
        endpoints.push(Endpoint {
            id,
            address: SocketAddr::from((Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8), 8000)),
            model: MODEL.into(),
            labels: [("llm-d.ai/role".to_owned(), "decode".to_owned())].into(),
            rank: 0,
        });
        signals.push(PodSignals {
            waiting: rng.random_range(0..8),
            running: rng.random_range(0..64),
            kv_usage: rng.random_range(0.0..0.9),
            lora: LoraState {
                max_loras: 4,
                running: vec!["a".into()],
                waiting: vec![],
            },
            ..PodSignals::idle(Timestamp::ZERO)
        });
    }
    Workload {
        endpoints,
        signals,
        index,
        request,
    }
}

impl Workload {
    fn candidates(&self) -> Vec<Candidate<'_>> {
        self.endpoints
            .iter()
            .zip(&self.signals)
            .map(|(endpoint, signals)| Candidate {
                endpoint,
                signals,
                events: EventsState::Live,
            })
            .collect()
    }
}

/// Every scorer, a label filter and a model filter: the most work one pick can be asked to do.
const ALL: &str = "apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: model-filter
- type: label-selector-filter
  parameters: {selector: 'llm-d.ai/role in (decode, prefill-decode)'}
- type: precise-prefix-cache-scorer
- type: prefix-cache-scorer
- type: kv-cache-utilization-scorer
- type: queue-scorer
- type: running-requests-size-scorer
- type: lora-affinity-scorer
- type: session-affinity-scorer
- type: max-score-picker
schedulingProfiles:
- name: everything
  plugins:
  - pluginRef: model-filter
  - pluginRef: label-selector-filter
  - pluginRef: precise-prefix-cache-scorer
    weight: 3
  - pluginRef: prefix-cache-scorer
  - pluginRef: kv-cache-utilization-scorer
  - pluginRef: queue-scorer
  - pluginRef: running-requests-size-scorer
  - pluginRef: lora-affinity-scorer
  - pluginRef: session-affinity-scorer
  - pluginRef: max-score-picker
";

/// Every scorer but the precise one: the pipeline's own cost, without the index lookup.
const NO_INDEX: &str = "apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- type: kv-cache-utilization-scorer
- type: queue-scorer
- type: running-requests-size-scorer
- type: lora-affinity-scorer
- type: session-affinity-scorer
";

fn profiles(w: &Workload) -> Vec<(&'static str, Scheduler)> {
    let build = |yaml| {
        let config = EndpointPickerConfig::parse(yaml).unwrap_or_else(|e| panic!("{e}"));
        Scheduler::with_config(config, w.index.clone()).unwrap_or_else(|e| panic!("{e}"))
    };
    vec![
        ("default_profile", Scheduler::new(w.index.clone())),
        ("all_scorers", build(ALL)),
        ("all_but_precise", build(NO_INDEX)),
    ]
}

fn pick(c: &mut Criterion) {
    let w = workload();
    let candidates = w.candidates();
    let mut request = Request::new(MODEL, Prompt::Tokens(&w.request));
    request.session = Some("session-1");
    let root = request.partition().root();
    let block_size = w.index.block_size();
    let set: EndpointSet = w.endpoints.iter().map(|e| e.id).collect();

    let mut group = c.benchmark_group("pick_8192_tokens_64_endpoints");
    group.bench_function("baseline_keys", |b| {
        b.iter(|| block_keys(root, black_box(&w.request), block_size).collect::<Vec<_>>())
    });
    group.bench_function("baseline_keys_and_lookup", |b| {
        let mut out = PrefixMatches::default();
        b.iter(|| {
            let keys: Vec<_> = block_keys(root, black_box(&w.request), block_size).collect();
            w.index.lookup(&keys, &set, &mut out);
            out.longest()
        })
    });
    for (name, scheduler) in profiles(&w) {
        let d = scheduler
            .pick(&request, &candidates, Timestamp::ZERO)
            .unwrap_or_else(|e| panic!("{e}"));
        if name != "all_but_precise" {
            assert_eq!(
                d.primary(),
                Some(w.endpoints[17].id),
                "{name}: the holder wins"
            );
            assert_eq!((d.matched_blocks, d.total_blocks), (512, 512));
        }
        group.bench_function(name, |b| {
            b.iter(|| scheduler.pick(black_box(&request), &candidates, Timestamp::ZERO))
        });
    }
    group.finish();
}

/// Per-pick latency distribution, printed (criterion reports means, not tails). Each pick is
/// interleaved with a baseline run of keys + lookup, so both see the same machine load.
#[allow(clippy::disallowed_types, clippy::disallowed_methods)]
fn latency(_: &mut Criterion) {
    use std::time::Instant;
    let measuring = std::env::args().any(|a| a == "--bench");
    let n = if measuring { 20_000 } else { 10 };
    let w = workload();
    let candidates = w.candidates();
    let mut request = Request::new(MODEL, Prompt::Tokens(&w.request));
    request.session = Some("session-1");
    let root = request.partition().root();
    let set: EndpointSet = w.endpoints.iter().map(|e| e.id).collect();
    let mut out = PrefixMatches::default();
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_nanos() as f64 / 1e3
    };
    for (name, scheduler) in profiles(&w) {
        let (mut base, mut picks) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n + n / 10 {
            let b = time(&mut || {
                let keys: Vec<_> =
                    block_keys(root, black_box(&w.request), w.index.block_size()).collect();
                w.index.lookup(&keys, &set, &mut out);
            });
            let p = time(&mut || {
                black_box(scheduler.pick(black_box(&request), &candidates, Timestamp::ZERO)).ok();
            });
            if i >= n / 10 {
                base.push(b);
                picks.push(p);
            }
        }
        for v in [&mut base, &mut picks] {
            v.sort_unstable_by(f64::total_cmp);
        }
        let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
        println!(
            "{name}: pick p50 {:.1} µs p99 {:.1} µs | keys+lookup p50 {:.1} µs p99 {:.1} µs | n={n}",
            at(&picks, 0.5),
            at(&picks, 0.99),
            at(&base, 0.5),
            at(&base, 0.99),
        );
    }
}

criterion_group!(benches, pick, latency);
criterion_main!(benches);
