//! `Scheduler::pick` end to end over a real index fed with vLLM-shaped KV events.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use kvpick_scheduler::events::{BlockStored, EngineHash};
use kvpick_scheduler::filters::SUBSET_HINT;
use kvpick_scheduler::pods::LoraState;
use kvpick_scheduler::{
    Candidate, Decision, Endpoint, EndpointId, EndpointPickerConfig, EndpointSet, Error,
    EventBatch, EventsState, KvEvent, KvIndex, PodSignals, Prompt, Request, Scheduler, Timestamp,
};

const MODEL: &str = "qwen";
const BLOCK: usize = 16;

struct Pool {
    endpoints: Vec<Endpoint>,
    signals: Vec<PodSignals>,
    events: Vec<EventsState>,
    index: Arc<KvIndex>,
}

impl Pool {
    fn new(n: u32, config: &EndpointPickerConfig) -> Self {
        Self {
            endpoints: (0..n)
                .map(|i| Endpoint {
                    id: EndpointId::new(i).unwrap(),
                    address: SocketAddr::from((Ipv4Addr::new(10, 0, 0, i as u8 + 1), 8000)),
                    model: MODEL.into(),
                    labels: Default::default(),
                    rank: 0,
                })
                .collect(),
            signals: vec![PodSignals::idle(Timestamp::ZERO); n as usize],
            events: vec![EventsState::Live; n as usize],
            index: Arc::new(KvIndex::new(config.index.clone())),
        }
    }

    /// Endpoint `ep` reports, through a `BlockStored` event, that it holds the full blocks of
    /// `tokens` from block 0.
    fn store(&self, ep: u32, tokens: &[u32]) {
        let blocks = tokens.len() / BLOCK;
        let batch = EventBatch {
            ts: 0.0,
            events: vec![KvEvent::BlockStored(BlockStored {
                block_hashes: (0..blocks as u64)
                    .map(|b| EngineHash((u64::from(ep) << 32) | b))
                    .collect(),
                parent_block_hash: None,
                token_ids: tokens[..blocks * BLOCK].to_vec(),
                block_size: BLOCK as u32,
                ..BlockStored::default()
            })],
            data_parallel_rank: None,
        };
        let report = self
            .index
            .apply(self.endpoints[ep as usize].id, MODEL, &batch);
        assert_eq!(report.stored, blocks as u64);
    }

    fn candidates(&self) -> Vec<Candidate<'_>> {
        self.endpoints
            .iter()
            .zip(&self.signals)
            .zip(&self.events)
            .map(|((endpoint, signals), &events)| Candidate {
                endpoint,
                signals,
                events,
            })
            .collect()
    }

    fn scheduler(&self, config: EndpointPickerConfig) -> Scheduler {
        Scheduler::with_config(config, self.index.clone()).unwrap()
    }
}

fn config(body: &str) -> EndpointPickerConfig {
    EndpointPickerConfig::parse(&format!(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n{body}"
    ))
    .unwrap()
}

fn prompt(seed: u32, tokens: usize) -> Vec<u32> {
    (0..tokens as u32)
        .map(|i| i.wrapping_mul(2_654_435_761).wrapping_add(seed) % 151_936)
        .collect()
}

fn order(d: &Decision) -> Vec<u32> {
    d.ranked.iter().map(|r| r.endpoint.get()).collect()
}

#[test]
fn the_endpoint_holding_the_prefix_wins_and_the_next_longest_is_the_first_fallback() {
    let c = EndpointPickerConfig::precise_prefix();
    let pool = Pool::new(4, &c);
    let tokens = prompt(1, 8 * BLOCK);
    pool.store(2, &tokens);
    pool.store(1, &tokens[..4 * BLOCK]);
    pool.store(3, &prompt(2, 8 * BLOCK));
    let s = pool.scheduler(c);
    let d = s
        .pick(
            &Request::new(MODEL, Prompt::Tokens(&tokens)),
            &pool.candidates(),
            Timestamp::ZERO,
        )
        .unwrap();
    assert_eq!(&order(&d)[..2], [2, 1]);
    assert_eq!((d.matched_blocks, d.total_blocks), (8, 8));
    assert_eq!(d.ranked[0].scores, [1.0, 1.0, 1.0]);
    assert_eq!(d.ranked[1].scores, [0.5, 1.0, 1.0]);
    assert_eq!(d.ranked[0].score, 1.0);
}

#[test]
fn a_loaded_holder_loses_to_an_idle_endpoint_when_the_weights_say_so() {
    let c = EndpointPickerConfig::precise_prefix();
    let mut pool = Pool::new(3, &c);
    let tokens = prompt(3, 32 * BLOCK);
    pool.store(0, &tokens);
    pool.signals[0].waiting = 20;
    pool.signals[0].kv_usage = 0.9;
    pool.signals[2].waiting = 10;
    pool.signals[2].kv_usage = 0.5;
    let req = Request::new(MODEL, Prompt::Tokens(&tokens));

    // Default weights (prefix 2, KV 1, queue 1): the whole prefix outweighs the load.
    let d = pool
        .scheduler(c)
        .pick(&req, &pool.candidates(), Timestamp::ZERO)
        .unwrap();
    assert_eq!(order(&d), [0, 1, 2]);
    assert!((d.ranked[0].score - (2.0 + 0.1 + 0.0) / 4.0).abs() < 1e-12);

    // Queue-heavy weights: the idle endpoint wins, the holder comes last.
    let queue_heavy = config(
        "plugins:
- type: precise-prefix-cache-scorer
- type: kv-cache-utilization-scorer
- type: queue-scorer
schedulingProfiles:
- name: load-first
  plugins:
  - pluginRef: precise-prefix-cache-scorer
    weight: 1
  - pluginRef: kv-cache-utilization-scorer
    weight: 1
  - pluginRef: queue-scorer
    weight: 3
",
    );
    let d = pool
        .scheduler(queue_heavy)
        .pick(&req, &pool.candidates(), Timestamp::ZERO)
        .unwrap();
    assert_eq!(order(&d), [1, 2, 0]);
    assert_eq!(d.matched_blocks, 0, "the primary holds nothing");
}

#[test]
fn the_subset_hint_is_respected_and_an_empty_one_is_an_error() {
    let c = EndpointPickerConfig::precise_prefix();
    let pool = Pool::new(4, &c);
    let tokens = prompt(4, 8 * BLOCK);
    pool.store(0, &tokens);
    pool.store(3, &tokens[..2 * BLOCK]);
    let s = pool.scheduler(c);
    let subset: EndpointSet = [1, 3].map(|i| pool.endpoints[i].id).into_iter().collect();
    let mut req = Request::new(MODEL, Prompt::Tokens(&tokens));
    req.subset = Some(&subset);
    let d = s.pick(&req, &pool.candidates(), Timestamp::ZERO).unwrap();
    assert_eq!(
        order(&d),
        [3, 1],
        "the holder of the whole prefix is outside the subset"
    );
    assert_eq!(d.matched_blocks, 2);

    let empty = EndpointSet::new();
    req.subset = Some(&empty);
    let err = s
        .pick(&req, &pool.candidates(), Timestamp::ZERO)
        .unwrap_err();
    assert_eq!(err, Error::NoEndpoint(SUBSET_HINT));
    assert_eq!(
        (err.label(), err.to_string().as_str()),
        ("no_endpoint", "no eligible endpoint: subset_hint")
    );
}

#[test]
fn approximate_prefix_routes_a_repeated_text_prompt_back_to_the_same_endpoint() {
    let c = config(
        "plugins:
- type: prefix-cache-scorer
  parameters: {textChunkChars: 64}
- type: queue-scorer
schedulingProfiles:
- name: approximate
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: queue-scorer
    weight: 1
",
    );
    let mut pool = Pool::new(8, &c);
    pool.events = vec![EventsState::Absent; 8];
    let s = pool.scheduler(c);
    let system = "You are a meticulous assistant. Réponds en français si on te parle français. ";
    let text = format!(
        "{}Question: {}",
        system.repeat(20),
        "what is a KV cache? ".repeat(10)
    );
    let req = Request::new(MODEL, Prompt::Text(&text));
    let first = s.pick(&req, &pool.candidates(), Timestamp::ZERO).unwrap();
    assert!(first.ranked[0].scores[0] == 0.0, "nothing routed yet");
    let home = first.primary().unwrap();
    for _ in 0..20 {
        let d = s.pick(&req, &pool.candidates(), Timestamp::ZERO).unwrap();
        assert_eq!(d.primary(), Some(home));
        assert_eq!(d.ranked[0].scores[0], 1.0);
    }
    // Same system prompt, another question: the shared prefix still draws it home.
    let other = format!(
        "{}Question: {}",
        system.repeat(20),
        "how does paging work? 東京".repeat(10)
    );
    let d = s
        .pick(
            &Request::new(MODEL, Prompt::Text(&other)),
            &pool.candidates(),
            Timestamp::ZERO,
        )
        .unwrap();
    assert_eq!(d.primary(), Some(home));
    let shared = (20 * system.chars().count() + "Question: ".len()) / 64;
    let chunks = other.chars().count() / 64;
    assert_eq!(d.ranked[0].scores[0], shared as f64 / chunks as f64);
    assert!(shared < chunks);
    // Load still counts, but a full match at weight 2 outweighs the longest queue at weight 1.
    pool.signals[home.index()].waiting = 50;
    let d = s.pick(&req, &pool.candidates(), Timestamp::ZERO).unwrap();
    assert_eq!(d.primary(), Some(home));
    assert_eq!(d.ranked[0].scores, [1.0, 0.0]);
}

#[test]
fn stale_events_or_stale_signals_take_the_holder_out_of_the_running() {
    let c = EndpointPickerConfig::precise_prefix();
    let mut pool = Pool::new(2, &c);
    let tokens = prompt(5, 16 * BLOCK);
    pool.store(0, &tokens);
    pool.signals[0].waiting = 1;
    let req = Request::new(MODEL, Prompt::Tokens(&tokens));
    let s = pool.scheduler(c);
    let d = s.pick(&req, &pool.candidates(), Timestamp::ZERO).unwrap();
    assert_eq!(d.primary(), Some(pool.endpoints[0].id));

    // Its events are stale: the index cannot vouch for it, so the prefix scores 0.
    pool.events[0] = EventsState::Stale;
    let d = s.pick(&req, &pool.candidates(), Timestamp::ZERO).unwrap();
    assert_eq!(order(&d), [1, 0], "no prefix anywhere: the idle one wins");
    assert_eq!((d.ranked[1].scores[0], d.matched_blocks), (0.0, 0));

    // Its metrics stopped: not picked while the other is fresh, even holding the prefix.
    pool.events[0] = EventsState::Live;
    pool.signals[1].scraped_at = Timestamp::from_millis(9_500);
    let d = s
        .pick(&req, &pool.candidates(), Timestamp::from_millis(10_000))
        .unwrap();
    assert_eq!(order(&d), [1]);
}

#[test]
fn adapters_are_filtered_and_scored_by_residency() {
    let c = config(
        "plugins:
- type: model-filter
  parameters: {adapters: {qwen: [sql-lora]}}
- type: lora-affinity-scorer
- type: max-score-picker
",
    );
    let mut pool = Pool::new(3, &c);
    pool.endpoints[2].model = "llama".into();
    for s in &mut pool.signals {
        s.lora = LoraState {
            max_loras: 1,
            running: vec![],
            waiting: vec![],
        };
    }
    pool.signals[1].lora.running = vec!["sql-lora".into()];
    let s = pool.scheduler(c);
    let d = s
        .pick(
            &Request::new("sql-lora", Prompt::Empty),
            &pool.candidates(),
            Timestamp::ZERO,
        )
        .unwrap();
    assert_eq!(
        order(&d),
        [1, 0],
        "llama cannot serve it; running beats a free slot"
    );
    assert_eq!(d.ranked[1].scores, [0.8]);
    let err = s
        .pick(
            &Request::new("unknown", Prompt::Empty),
            &pool.candidates(),
            Timestamp::ZERO,
        )
        .unwrap_err();
    assert_eq!(err, Error::NoEndpoint("model_filter"));
}

#[test]
fn a_seed_fixes_every_tie_break() {
    let c = config(
        "plugins:\n- type: queue-scorer\n- type: max-score-picker\n  parameters: {seed: 9}\n",
    );
    let pool = Pool::new(16, &c);
    let run = |config: EndpointPickerConfig| {
        let s = pool.scheduler(config);
        (0..64)
            .map(|_| {
                let d = s
                    .pick(
                        &Request::new(MODEL, Prompt::Empty),
                        &pool.candidates(),
                        Timestamp::ZERO,
                    )
                    .unwrap();
                order(&d)
            })
            .collect::<Vec<_>>()
    };
    let a = run(c.clone());
    assert_eq!(a, run(c.clone()));
    let firsts: std::collections::HashSet<u32> = a.iter().map(|o| o[0]).collect();
    assert!(firsts.len() > 8, "ties spread over endpoints: {firsts:?}");
    let other = config(
        "plugins:\n- type: queue-scorer\n- type: max-score-picker\n  parameters: {seed: 10}\n",
    );
    assert_ne!(a, run(other));
}
