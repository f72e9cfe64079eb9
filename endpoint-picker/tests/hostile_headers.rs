//! Client-set scheduling headers (issue 14, item 7), sent as an attacker would: a sheddable client
//! marks itself `x-kvpick-priority: 10`, another spreads over fairness ids. By default kvpick
//! ignores both headers (and counts them); where a deployment trusts them, the shipped Envoy
//! configuration (`tests/envoy/gie.yaml.tmpl`, as `manifests/examples/envoy`) strips what clients
//! send, checked here with a real Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;

use common::envoy::{self, Envoy};
use common::*;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use kvpick_epp::Settings;
use kvpick_epp::router::RouteConfig;
use kvpick_epp::shedding::TrustedHeaders;

const A: &str = "127.0.0.1:40111";

/// A picker over A whose only endpoint is saturated: priority < 0 is shed with a 429.
async fn saturated(trusted: TrustedHeaders) -> Picker {
    let settings = Settings {
        route: RouteConfig {
            trusted_headers: trusted,
            ..Default::default()
        },
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..Settings::loopback()
    };
    let p = Picker::start(settings, &[A]).await;
    scraped(&p, A, 100, 1.0);
    p
}

fn shed(r: &envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse) -> bool {
    !matches!(r.response, Some(Out::RequestHeaders(_)))
}

fn ignored(header: &str) -> u64 {
    let page = kvpick_epp::telemetry::install().render();
    page.lines()
        .filter(|l| l.starts_with("kvpick_untrusted_headers_ignored_total{"))
        .filter(|l| l.contains(&format!("header=\"{header}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_priority_and_fairness_headers_are_ignored_and_counted() {
    let p = saturated(TrustedHeaders::default()).await;
    let (priority, fairness) = (
        ignored("x-kvpick-priority"),
        ignored("x-gateway-inference-fairness-id"),
    );
    // A client claiming to be sheddable is not believed either: the header is the client's word.
    let r = first_answer(&p, &[("x-kvpick-priority", "-1")]).await;
    assert!(!shed(&r), "{r:?}");
    for i in 0..5 {
        let id = format!("tenant-{i}");
        let r = first_answer(
            &p,
            &[
                ("x-kvpick-priority", "10"),
                ("x-gateway-inference-fairness-id", id.as_str()),
            ],
        )
        .await;
        assert!(!shed(&r), "{r:?}");
    }
    assert_eq!(ignored("x-kvpick-priority"), priority + 6);
    assert_eq!(ignored("x-gateway-inference-fairness-id"), fairness + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_envoy_config_strips_them_from_clients() {
    // A deployment that trusts the headers (its gateway sets them): sent directly over ext_proc,
    // the header decides (shed) ...
    let p = saturated(TrustedHeaders::ALL).await;
    let r = first_answer(&p, &[("x-kvpick-priority", "-1")]).await;
    assert!(shed(&r), "{r:?}");
    // ... but a client of the shipped Envoy cannot set it: stripped before the picker sees it,
    // the request is routed to A (where nothing listens: Envoy's own 503, no drop reason).
    let envoy = Envoy::start(p.grpc).await;
    let body = serde_json::json!({"model": "m", "prompt": prompt(64, 3), "max_tokens": 1});
    let (status, headers, _) = envoy::post(
        &envoy,
        "/v1/completions",
        body.to_string().as_bytes(),
        &[
            ("x-kvpick-priority", "-1"),
            ("x-gateway-destination-endpoint", "127.0.0.1:9"),
        ],
    )
    .await;
    assert_ne!(status, 429);
    assert!(headers.get("x-kvpick-drop-reason").is_none(), "{headers:?}");
    let (status, headers, _) =
        envoy::post(&envoy, "/v1/completions", body.to_string().as_bytes(), &[]).await;
    assert_ne!(status, 429, "{headers:?}");
}
