//! In-flight accounting through the ext_proc protocol: a burst that arrives within one scrape
//! interval spreads by predicted cost instead of landing on the pod that looked best at the last
//! scrape, and every reservation is released at end of stream or when the stream goes away.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use kvpick_epp::Settings;

const PODS: [&str; 4] = [
    "127.0.0.1:40011",
    "127.0.0.1:40012",
    "127.0.0.1:40013",
    "127.0.0.1:40014",
];

const PREDICTED: &str = "apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-scorer
  parameters: {profile: h100-tp2-qwen3-32b, expectedOutputTokens: 64}
";

/// Sends 50 requests sharing a 2,048-token prefix that pod 0 caches, each on its own stream,
/// without answering them (one scrape interval's worth: the pods' signals do not change), and
/// returns the picks per pod and the open streams.
async fn burst(p: &Picker) -> (HashMap<String, usize>, Vec<Stream>) {
    for pod in PODS {
        scraped(p, pod, 0, 0.0);
    }
    let shared = prompt(2048, 5);
    p.store(PODS[0], &shared);
    let mut picks = HashMap::new();
    let mut streams = Vec::new();
    for i in 0..50u32 {
        let mut tokens = shared.clone();
        tokens.extend(prompt(512, 1000 + i));
        let (s, to) = decision::routed_and_held(p, &tokens).await;
        *picks.entry(to).or_default() += 1;
        streams.push(s);
    }
    (picks, streams)
}

#[tokio::test]
async fn a_burst_spreads_by_predicted_cost_and_reservations_are_released() {
    let settings = Settings {
        scheduler: Some(kvpick_scheduler::EndpointPickerConfig::parse(PREDICTED).unwrap()),
        ..Settings::loopback()
    };
    let p = Picker::start(settings, &PODS).await;
    let (picks, mut streams) = burst(&p).await;
    println!("picks per pod: {picks:?}");
    // The holder is worth ~5 cold pods per request (512 vs 2,560 tokens to compute): it takes
    // the most, but the queue it builds sends the rest elsewhere.
    let holder = picks.get(PODS[0]).copied().unwrap_or(0);
    assert!((15..=40).contains(&holder), "{picks:?}");
    for pod in &PODS[1..] {
        assert!(picks.get(*pod).copied().unwrap_or(0) >= 3, "{picks:?}");
    }
    let inflight = p.shared.router.scheduler().inflight();
    assert_eq!(inflight.len(), 50);
    // Half the responses stream to their end: first byte, then end of stream.
    for s in streams.drain(..25) {
        let mut s = s;
        s.send(response_headers(&[(":status", "200")], None)).await;
        s.recv().await;
        s.send(response_body(b"data: {}\n\n", false)).await;
        s.recv().await;
        s.send(response_body(b"data: [DONE]\n\n", true)).await;
        s.recv().await;
    }
    assert_eq!(inflight.len(), 25);
    // The other half's clients go away mid-stream.
    drop(streams);
    let mut waited = Duration::ZERO;
    while !inflight.is_empty() && waited < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    assert!(inflight.is_empty(), "{} reservations left", inflight.len());
}

#[tokio::test]
async fn without_the_latency_scorer_the_same_burst_lands_on_one_pod() {
    // The previous default: weights over scraped gauges, which do not move within a scrape.
    let settings = Settings {
        scheduler: Some(kvpick_scheduler::EndpointPickerConfig::precise_prefix()),
        ..Settings::loopback()
    };
    let p = Picker::start(settings, &PODS).await;
    let (picks, _streams) = burst(&p).await;
    assert_eq!(picks.get(PODS[0]).copied(), Some(50), "{picks:?}");
}
