//! Latency objectives through the ext_proc protocol: when no pod is predicted to meet a request's
//! objectives, a sheddable request is answered 429 with the miss as `x-kvpick-drop-reason`
//! (nothing reserved), a critical one is routed to the fastest pod, and both are counted by
//! reason and action; with flow control on, a critical one waits in the queue, picked again in
//! each round with room, until a pod is predicted to meet its objective or its `queueTTL` passes
//! (then it goes best-effort, not refused).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;

use common::*;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use std::time::Duration;

use kvpick_epp::Settings;

const PODS: [&str; 2] = ["127.0.0.1:40021", "127.0.0.1:40022"];

const PREDICTED: &str = "apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-scorer
  parameters: {profile: h100-tp2-qwen3-32b, expectedOutputTokens: 64}
objectives: {batch: -1, chat: 10}
";

/// Flow control on, with `ttl`.
fn flow_control(ttl: &str) -> String {
    format!("featureGates: [flowControl]\nflowControl: {{queueTTL: {ttl}}}\n")
}

/// A picker over the two pods, both scraped idle, with `extra` config.
async fn picker(extra: &str) -> Picker {
    let settings = Settings {
        scheduler: Some(
            kvpick_scheduler::EndpointPickerConfig::parse(&format!("{PREDICTED}{extra}")).unwrap(),
        ),
        ..Settings::loopback()
    };
    let p = Picker::start(settings, &PODS).await;
    for pod in PODS {
        scraped(&p, pod, 0, 0.0);
    }
    p
}

/// A 4,096-token prompt takes ~0.45 s to prefill on an idle H100 pair: 50 ms is impossible,
/// 5 s is easy; 700 ms is met on an idle pod, not on one whose KV cache is full (its prefill
/// would be recomputed: ~0.86 s).
async fn ask(p: &Picker, objective: &str, ttft_ms: &str) -> pb::ProcessingResponse {
    send(p, objective, ttft_ms).await.recv().await
}

/// Sends the request of [`ask`]; its answer comes on the returned stream.
async fn send(p: &Picker, objective: &str, ttft_ms: &str) -> Stream {
    let headers = [
        ("x-gateway-inference-objective", objective),
        ("x-slo-ttft-ms", ttft_ms),
    ];
    decision::send(p, &prompt(4096, 7), &headers).await
}

fn routed_to(r: &pb::ProcessingResponse) -> Option<String> {
    let Some(pb::processing_response::Response::RequestHeaders(_)) = &r.response else {
        return None;
    };
    set_header(mutation(r), "x-gateway-destination-endpoint").map(str::to_owned)
}

fn unattainable(action: &str) -> f64 {
    metric_sum(
        "kvpick_slo_unattainable_total",
        &[("reason", "slo-ttft-unattainable"), ("action", action)],
    )
}

// One test: the counters are process-wide.
#[tokio::test]
async fn an_impossible_slo_sheds_the_sheddable_and_routes_the_critical() {
    kvpick_epp::telemetry::install();
    let p = picker("").await;
    let inflight = p.shared.router.scheduler().inflight();

    let shed = ask(&p, "batch", "50").await;
    let (status, body) = immediate(&shed);
    assert_eq!(status, 429, "{body}");
    assert_eq!(drop_reason(&shed).as_deref(), Some("slo-ttft-unattainable"));
    assert!(inflight.is_empty(), "a shed request reserves nothing");

    let critical = ask(&p, "chat", "50").await;
    assert!(routed_to(&critical).is_some(), "{critical:?}");
    assert_eq!(inflight.len(), 1);

    // A sheddable request whose objective can be met is routed as usual.
    let easy = ask(&p, "batch", "5000").await;
    assert!(routed_to(&easy).is_some(), "{easy:?}");

    assert_eq!((unattainable("shed"), unattainable("routed")), (1.0, 1.0));
    assert_eq!(unattainable("queued"), 0.0);
    p.stop().await;

    // With flow control on, the critical request waits in the queue: picked again in rounds
    // with room, still predicted to miss, until its queueTTL; then it goes to the fastest pod
    // (best-effort), not refused. The sheddable one is still shed at once.
    let p = picker(&flow_control("300ms")).await;
    let flow_queue = |outcome| metric_sum("kvpick_flow_queue_total", &[("outcome", outcome)]);
    let (queued, best_effort) = (unattainable("queued"), flow_queue("best_effort"));
    let asked = tokio::time::Instant::now();
    let critical = ask(&p, "chat", "50").await;
    let waited = asked.elapsed();
    assert!(routed_to(&critical).is_some(), "{critical:?}");
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert_eq!(flow_queue("best_effort"), best_effort + 1.0);
    assert!(
        unattainable("queued") >= queued + 2.0,
        "picked again while it waited"
    );
    assert_eq!(unattainable("routed"), 2.0);
    let shed = ask(&p, "batch", "50").await;
    assert_eq!(immediate(&shed).0, 429);
    assert_eq!(drop_reason(&shed).as_deref(), Some("slo-ttft-unattainable"));
    assert_eq!(unattainable("shed"), 2.0);
    p.stop().await;

    // A critical request whose objective no pod meets now (both KV caches full, which this
    // config still counts as room) waits, picked again as rounds have room; once a scrape shows
    // a pod with an empty cache it is routed there as met, well within its queueTTL.
    let full_is_room = "saturation: {kvCacheUtilThreshold: 1.0}\n";
    let p = picker(&format!("{}{full_is_room}", flow_control("30s"))).await;
    for pod in PODS {
        scraped(&p, pod, 0, 1.0);
    }
    let (queued, best_effort) = (unattainable("queued"), flow_queue("best_effort"));
    let mut waiting = send(&p, "chat", "700").await;
    waiting.silent(300).await;
    assert!(
        unattainable("queued") >= queued + 2.0,
        "picked again while it waited"
    );
    assert_eq!(p.shared.flow.as_ref().unwrap().waiting(), 1);
    scraped(&p, PODS[0], 0, 1.0);
    scraped(&p, PODS[1], 0, 0.0);
    let met = waiting.recv().await;
    assert_eq!(routed_to(&met).as_deref(), Some(PODS[1]));
    assert_eq!(flow_queue("best_effort"), best_effort);
    assert_eq!(unattainable("routed"), 2.0);
    p.stop().await;
}
