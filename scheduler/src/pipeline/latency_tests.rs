//! The latency scorer through the whole pipeline: reservations spread a burst, cache hits are
//! priced in time, SLOs pick the best cached endpoint that meets them.

use std::time::Duration;

use super::tests::candidates;
use super::*;
use crate::events::{BlockStored, EngineHash, EventBatch, KvEvent};
use crate::pods::PodSignals;
use crate::request::Prompt;
use crate::request::Slo;
use crate::scorers::testing::endpoint;

const LATENCY: &str = "apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-scorer
  parameters:
    profile: h100-tp2-qwen3-32b
    objectiveSlos: {interactive: {ttftMs: 2500}}
";

fn scheduler() -> Scheduler {
    let config = EndpointPickerConfig::parse(LATENCY).unwrap();
    let index = Arc::new(KvIndex::new(config.index.clone()));
    Scheduler::with_config(config, index).unwrap()
}

/// Endpoint `ep` caches the first `blocks` blocks of `tokens`.
pub(super) fn cache(s: &Scheduler, ep: u32, tokens: &[u32], blocks: usize) {
    let n = blocks * 16;
    s.index().apply(
        EndpointId::new(ep).unwrap(),
        "m",
        &EventBatch {
            events: vec![KvEvent::BlockStored(BlockStored {
                block_hashes: (0..blocks as u64).map(|h| EngineHash(h + 1)).collect(),
                parent_block_hash: None,
                token_ids: tokens[..n].to_vec(),
                block_size: 16,
                ..Default::default()
            })],
            ..Default::default()
        },
    );
}

#[test]
fn a_burst_at_an_idle_pool_spreads_by_predicted_cost() {
    let s = scheduler();
    let eps: Vec<_> = (0..4).map(endpoint).collect();
    let sig = vec![PodSignals::idle(Timestamp::ZERO); 4];
    let c = candidates(&eps, &sig);
    let mut per = [0usize; 4];
    for i in 0..50u32 {
        let tokens: Vec<u32> = (0..4096).map(|t| t * 31 + i * 100_000).collect();
        let req = Request::new("m", Prompt::Tokens(&tokens));
        let d = s
            .pick(&req, &c, Timestamp::from_millis(u64::from(i)))
            .unwrap();
        assert!(d.predicted.is_some_and(|p| p.ttft_us > 0.0));
        s.reserve(&d, Timestamp::from_millis(u64::from(i)));
        per[d.primary().unwrap().index()] += 1;
    }
    // Same-cost requests: the reservations alone keep every endpoint within a request or two.
    assert!(per.iter().all(|&n| (11..=14).contains(&n)), "{per:?}");
    assert_eq!(s.inflight().len(), 50);
}

#[test]
fn a_cache_hit_wins_until_the_queue_behind_it_costs_more() {
    let s = scheduler();
    let eps: Vec<_> = (0..2).map(endpoint).collect();
    let sig = vec![PodSignals::idle(Timestamp::ZERO); 2];
    let c = candidates(&eps, &sig);
    let tokens: Vec<u32> = (0..8192).map(|t| t * 7 + 3).collect();
    cache(&s, 1, &tokens, 448); // 7168 of 8192 tokens
    let req = Request::new("m", Prompt::Tokens(&tokens));
    let mut picks = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..12 {
        let d = s.pick(&req, &c, Timestamp::ZERO).unwrap();
        picks.push(d.primary().unwrap().get());
        ids.extend(s.reserve(&d, Timestamp::ZERO));
    }
    // A hit saves ~0.7 s of prefill, each queued hit costs ~0.1 s: about seven go to the
    // holder, then the cold endpoint becomes faster.
    let first_cold = picks.iter().position(|&p| p == 0);
    assert!(
        first_cold.is_some_and(|i| (5..=10).contains(&i)),
        "{picks:?}"
    );
    // Releasing everything makes the holder the best again.
    for id in ids {
        s.release(id, Timestamp::from_millis(5));
    }
    let d = s.pick(&req, &c, Timestamp::from_millis(5)).unwrap();
    assert_eq!(d.primary().unwrap().get(), 1);
}

#[test]
fn an_slo_picks_the_best_cached_endpoint_that_meets_it() {
    let s = scheduler();
    let eps: Vec<_> = (0..3).map(endpoint).collect();
    let sig = vec![PodSignals::idle(Timestamp::ZERO); 3];
    let c = candidates(&eps, &sig);
    let tokens: Vec<u32> = (0..8192).map(|t| t * 11 + 5).collect();
    cache(&s, 2, &tokens, 256);
    cache(&s, 1, &tokens, 128);
    // Endpoint 2 (most cached) is busy: 30k tokens of prefill queued, ~3 s.
    let other: Vec<u32> = (0..30_000).map(|t| t + 1_000_000).collect();
    let busy = s
        .pick(
            &Request::new("m", Prompt::Tokens(&other)),
            &c[2..],
            Timestamp::ZERO,
        )
        .unwrap();
    s.reserve(&busy, Timestamp::ZERO);
    let mut req = Request::new("m", Prompt::Tokens(&tokens));
    // No objective: the fastest. Endpoint 1 (2048 cached, idle) beats 0 (cold) and 2 (queued).
    let d = s.pick(&req, &c, Timestamp::ZERO).unwrap();
    assert_eq!(d.primary().unwrap().get(), 1);
    assert_eq!(d.slo, SloVerdict::NoObjective);
    // A loose TTFT SLO: every endpoint meets it, the most cached one wins.
    req.slo = Slo {
        ttft: Some(Duration::from_secs(10)),
        tpot: None,
    };
    assert_eq!(
        s.pick(&req, &c, Timestamp::ZERO)
            .unwrap()
            .primary()
            .unwrap()
            .get(),
        2
    );
    // The objective's SLO (2.5 s) rules endpoint 2 out: the best cached of the rest.
    req.slo = Slo::default();
    req.objective = Some("interactive");
    let d = s.pick(&req, &c, Timestamp::ZERO).unwrap();
    assert_eq!(d.primary().unwrap().get(), 1);
    assert!(d.ranked[0].score >= 0.5 && d.ranked[2].score < 0.5, "{d:?}");
    assert_eq!(d.slo, SloVerdict::Met);
    // An SLO nobody meets: the fastest predicted, and the decision says so (the caller sheds
    // a sheddable request, queues or routes the rest: `SloVerdict::action`).
    req.slo.ttft = Some(Duration::from_millis(1));
    let d = s.pick(&req, &c, Timestamp::ZERO).unwrap();
    assert_eq!(d.primary().unwrap().get(), 1);
    assert!(d.ranked.iter().all(|r| r.score < 0.5));
    assert_eq!(d.slo, SloVerdict::Unattainable(crate::slo::SloMiss::Ttft));
    assert_eq!(
        d.slo.action(-1, false),
        crate::SloAction::Shed(crate::slo::SloMiss::Ttft)
    );
    req.objective = None;
    req.slo = Slo {
        ttft: None,
        tpot: Some(Duration::from_micros(100)),
    };
    let d = s.pick(&req, &c, Timestamp::ZERO).unwrap();
    assert_eq!(d.slo, SloVerdict::Unattainable(crate::slo::SloMiss::Tpot));
}

#[test]
fn scrapes_reconcile_and_first_tokens_free_the_prefill_queue() {
    let s = scheduler();
    let eps: Vec<_> = (0..2).map(endpoint).collect();
    let mut sig = vec![PodSignals::idle(Timestamp::ZERO); 2];
    let tokens: Vec<u32> = (0..2048).collect();
    let req = Request::new("m", Prompt::Tokens(&tokens));
    // Endpoint 0's scrape shows 4 waiting requests nobody here sent: it is avoided.
    sig[0].waiting = 4;
    s.reconcile(eps[0].id, &sig[0]);
    let d = s
        .pick(&req, &candidates(&eps, &sig), Timestamp::ZERO)
        .unwrap();
    assert_eq!(d.primary().unwrap().get(), 1);
    let id = s.reserve(&d, Timestamp::ZERO).unwrap();
    assert_eq!(
        s.inflight()
            .load(eps[1].id, Timestamp::ZERO)
            .prefill_requests,
        1
    );
    s.first_token(id, Timestamp::from_millis(300));
    let l = s.inflight().load(eps[1].id, Timestamp::from_millis(300));
    assert_eq!((l.prefill_requests, l.decode_requests), (0, 1));
}

#[test]
fn a_model_priced_with_its_own_profile() {
    let s = scheduler();
    let eps: Vec<_> = (0..2).map(endpoint).collect();
    let sig = vec![PodSignals::idle(Timestamp::ZERO); 2];
    let c = candidates(&eps, &sig);
    let tokens: Vec<u32> = (0..4096).collect();
    let ttft = |model: &str| {
        let req = Request::new(model, Prompt::Tokens(&tokens));
        s.pick(&req, &c, Timestamp::ZERO)
            .unwrap()
            .predicted
            .unwrap()
            .ttft_us
    };
    let before = (ttft("m"), ttft("other"));
    let mut slow = s.engine_profile("m").unwrap();
    slow.step_time.per_prefill_token_us *= 2.0;
    assert!(s.set_engine_profile("m", slow.clone()));
    assert_eq!(s.engine_profile("m"), Some(slow));
    assert!(ttft("m") > before.0 * 1.5, "{} vs {}", ttft("m"), before.0);
    assert_eq!(ttft("other"), before.1);
    let plain = Scheduler::with_config(
        EndpointPickerConfig::precise_prefix(),
        Arc::new(KvIndex::new(EndpointPickerConfig::precise_prefix().index)),
    )
    .unwrap();
    assert!(!plain.set_engine_profile("m", s.engine_profile("other").unwrap()));
    assert_eq!(plain.engine_profile("m"), None);
}
