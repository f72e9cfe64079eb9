//! Latency objectives through the ext_proc protocol: when no pod is predicted to meet a request's
//! objectives, a sheddable request is answered 429 with the miss as `x-kvpick-drop-reason`
//! (nothing reserved), a critical one is routed to the fastest pod, and both are counted by
//! reason and action; with flow control on, a critical one waits a dispatch round and is picked
//! again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;

use common::*;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use kvpick_epp::Settings;

const PODS: [&str; 2] = ["127.0.0.1:40021", "127.0.0.1:40022"];

const PREDICTED: &str = "apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-scorer
  parameters: {profile: h100-tp2-qwen3-32b, expectedOutputTokens: 64}
objectives: {batch: -1, chat: 10}
";

async fn picker(flow_control: bool) -> Picker {
    let gate = if flow_control {
        "featureGates: [flowControl]\n"
    } else {
        ""
    };
    let settings = Settings {
        scheduler: Some(
            kvpick_scheduler::EndpointPickerConfig::parse(&format!("{PREDICTED}{gate}")).unwrap(),
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
/// 5 s is easy.
async fn ask(p: &Picker, objective: &str, ttft_ms: &str) -> pb::ProcessingResponse {
    let mut s = p.stream().await;
    let headers = [
        ("x-gateway-inference-objective", objective),
        ("x-slo-ttft-ms", ttft_ms),
    ];
    s.send(request_headers(duplex(), "POST", &headers, false, None))
        .await;
    s.send(request_body(&token_body(&prompt(4096, 7)), true))
        .await;
    s.recv().await
}

fn routed_to(r: &pb::ProcessingResponse) -> Option<String> {
    let Some(pb::processing_response::Response::RequestHeaders(_)) = &r.response else {
        return None;
    };
    set_header(mutation(r), "x-gateway-destination-endpoint").map(str::to_owned)
}

/// The sum of `metric`'s series whose labels include every one of `labels`.
fn count(metric: &str, labels: &[(&str, &str)]) -> f64 {
    let page = kvpick_epp::telemetry::install().render();
    page.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn unattainable(action: &str) -> f64 {
    count(
        "kvpick_slo_unattainable_total",
        &[("reason", "slo-ttft-unattainable"), ("action", action)],
    )
}

// One test: the counters are process-wide.
#[tokio::test]
async fn an_impossible_slo_sheds_the_sheddable_and_routes_the_critical() {
    kvpick_epp::telemetry::install();
    let p = picker(false).await;
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

    // With flow control on, the critical request waits for a dispatch round, is picked again,
    // and (still unattainable) goes to the fastest pod; the sheddable one is still shed.
    let p = picker(true).await;
    let dispatched = || count("kvpick_flow_queue_total", &[("outcome", "dispatched")]);
    let before = dispatched();
    let critical = ask(&p, "chat", "50").await;
    assert!(routed_to(&critical).is_some(), "{critical:?}");
    assert_eq!(dispatched(), before + 1.0);
    let shed = ask(&p, "batch", "50").await;
    assert_eq!(immediate(&shed).0, 429);
    assert_eq!(drop_reason(&shed).as_deref(), Some("slo-ttft-unattainable"));
    assert_eq!(
        (
            unattainable("queued"),
            unattainable("routed"),
            unattainable("shed")
        ),
        (1.0, 2.0, 2.0)
    );
}
