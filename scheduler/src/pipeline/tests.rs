use super::*;
use crate::index::IndexConfig;
use crate::keys::BlockSize;
use crate::pods::{Endpoint, PodSignals};
use crate::request::{EventsState, Prompt};
use crate::scorers::testing::endpoint;

fn scheduler(yaml_body: &str) -> Scheduler {
    let config = EndpointPickerConfig::parse(&format!(
        "apiVersion: llm-d.ai/v1\nkind: EndpointPickerConfig\n{yaml_body}"
    ))
    .unwrap();
    let index = Arc::new(KvIndex::new(config.index.clone()));
    Scheduler::with_config(config, index).unwrap()
}

pub(super) fn candidates<'a>(eps: &'a [Endpoint], signals: &'a [PodSignals]) -> Vec<Candidate<'a>> {
    eps.iter()
        .zip(signals)
        .map(|(endpoint, signals)| Candidate {
            endpoint,
            signals,
            events: EventsState::Live,
        })
        .collect()
}

fn signals(waiting: &[u32], kv: &[f64]) -> Vec<PodSignals> {
    waiting
        .iter()
        .zip(kv)
        .map(|(&w, &k)| PodSignals {
            waiting: w,
            kv_usage: k,
            ..PodSignals::idle(Timestamp::ZERO)
        })
        .collect()
}

#[test]
fn a_scheduler_is_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Scheduler>();
}

#[test]
fn the_default_profile_predicts_latency() {
    let s = Scheduler::new(Arc::new(KvIndex::new(IndexConfig::default())));
    let names: Vec<&str> = s.scorer_names().iter().map(|n| &**n).collect();
    assert_eq!(names, ["predicted-latency-scorer"]);
}

#[test]
fn totals_are_the_weighted_mean_and_per_scorer_scores_are_visible() {
    let s = scheduler(
        "plugins:\n- type: queue-scorer\n- type: kv-cache-utilization-scorer\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: queue-scorer\n    weight: 3\n  - pluginRef: kv-cache-utilization-scorer\n    weight: 1\n",
    );
    let eps: Vec<_> = (0..3).map(endpoint).collect();
    let sig = signals(&[0, 10, 5], &[0.5, 0.0, 0.25]);
    let req = Request::new("m", Prompt::Empty);
    let d = s
        .pick(&req, &candidates(&eps, &sig), Timestamp::ZERO)
        .unwrap();
    let got: Vec<_> = d
        .ranked
        .iter()
        .map(|r| (r.endpoint.get(), r.score, r.scores.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (0, (3.0 * 1.0 + 0.5) / 4.0, vec![1.0, 0.5]),
            (2, (3.0 * 0.5 + 0.75) / 4.0, vec![0.5, 0.75]),
            (1, 1.0 / 4.0, vec![0.0, 1.0]),
        ]
    );
    assert_eq!((d.matched_blocks, d.total_blocks), (0, 0));
}

#[test]
fn zero_weights_give_zero_totals_but_keep_scores() {
    let s = scheduler(
        "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: queue-scorer\n    weight: 0\n",
    );
    let eps: Vec<_> = (0..2).map(endpoint).collect();
    let sig = signals(&[0, 4], &[0.0, 0.0]);
    let d = s
        .pick(
            &Request::new("m", Prompt::Empty),
            &candidates(&eps, &sig),
            Timestamp::ZERO,
        )
        .unwrap();
    assert!(d.ranked.iter().all(|r| r.score == 0.0));
    let mut scores: Vec<_> = d.ranked.iter().map(|r| r.scores[0]).collect();
    scores.sort_by(f64::total_cmp);
    assert_eq!(scores, [0.0, 1.0]);
}

#[test]
fn a_config_for_another_block_size_is_refused() {
    let config = EndpointPickerConfig::default();
    let index = Arc::new(KvIndex::new(IndexConfig {
        block_size: BlockSize::new(64).unwrap(),
        ..IndexConfig::default()
    }));
    assert_eq!(
        Scheduler::with_config(config, index).unwrap_err(),
        Error::InvalidConfig(
            "index.blockSize: 16 does not match the KV index's block size 64".into()
        )
    );
}

#[test]
fn total_blocks_counts_full_blocks_of_a_token_prompt() {
    let s = scheduler("plugins:\n- type: queue-scorer\n");
    let eps = [endpoint(0)];
    let sig = signals(&[0], &[0.0]);
    let tokens: Vec<u32> = (0..100).collect();
    let d = s
        .pick(
            &Request::new("m", Prompt::Tokens(&tokens)),
            &candidates(&eps, &sig),
            Timestamp::ZERO,
        )
        .unwrap();
    assert_eq!((d.matched_blocks, d.total_blocks), (0, 6));
}

#[test]
fn stale_endpoints_are_not_picked_while_a_fresh_one_remains() {
    let s = scheduler("plugins:\n- type: queue-scorer\n");
    let eps: Vec<_> = (0..2).map(endpoint).collect();
    let mut sig = signals(&[0, 50], &[0.0, 0.0]);
    sig[1].scraped_at = Timestamp::from_millis(9_000);
    let now = Timestamp::from_millis(10_000);
    let d = s
        .pick(
            &Request::new("m", Prompt::Empty),
            &candidates(&eps, &sig),
            now,
        )
        .unwrap();
    let order: Vec<_> = d.ranked.iter().map(|r| r.endpoint.get()).collect();
    assert_eq!(order, [1], "the idle endpoint's signals are 10 s old");
}

#[test]
fn forgetting_an_endpoint_drops_its_sessions() {
    let s = scheduler("plugins:\n- type: session-affinity-scorer\n");
    let eps: Vec<_> = (0..4).map(endpoint).collect();
    let sig = signals(&[0; 4], &[0.0; 4]);
    let mut req = Request::new("m", Prompt::Empty);
    req.session = Some("conversation-1");
    let c = candidates(&eps, &sig);
    let first = s
        .pick(&req, &c, Timestamp::ZERO)
        .unwrap()
        .primary()
        .unwrap();
    for _ in 0..20 {
        let d = s.pick(&req, &c, Timestamp::ZERO).unwrap();
        assert_eq!(d.primary(), Some(first));
        assert_eq!(d.ranked[0].scores, [1.0]);
    }
    s.forget_endpoint(first);
    let d = s.pick(&req, &c, Timestamp::ZERO).unwrap();
    assert!(d.ranked.iter().all(|r| r.scores == [0.0]));
}
