//! Prefill/decode disaggregation over the ext_proc protocol: with llm-d's P/D config the
//! destination is a decode pod, the prefill pod rides in `x-prefiller-host-port` (and
//! `x-prefiller-url`), fallbacks are decode pods, and a short, cached or prefill-less request is
//! routed aggregated. Whatever P/D header a client sends is removed.
#![allow(clippy::unwrap_used)] // a test crate: a failed unwrap is a failed test

mod common;

use common::*;
use kvpick_epp::Settings;
use kvpick_scheduler::EndpointPickerConfig;

const P1: &str = "127.0.0.1:41001";
const P2: &str = "127.0.0.1:41002";
const D1: &str = "127.0.0.1:41003";
const D2: &str = "127.0.0.1:41004";

/// The sidecar headers a client must never set.
const SIDECAR: [&str; 4] = [
    "x-prefiller-host-port",
    "x-prefiller-url",
    "x-encoder-hosts-ports",
    "x-data-parallel-host-port",
];

fn settings(fallbacks: usize) -> Settings {
    let mut s = Settings::loopback();
    let yaml = "apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefill-filter
- type: decode-filter
- type: precise-prefix-cache-scorer
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-based-pd-decider
  parameters: {nonCachedTokens: 256}
- type: disagg-profile-handler
  parameters: {deciders: {prefill: prefix-based-pd-decider}}
schedulingProfiles:
- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: precise-prefix-cache-scorer
  - pluginRef: kv-cache-utilization-scorer
- name: prefill
  plugins:
  - pluginRef: prefill-filter
  - pluginRef: precise-prefix-cache-scorer
  - pluginRef: queue-scorer
";
    s.scheduler = Some(EndpointPickerConfig::parse(yaml).unwrap());
    s.route.fallbacks = fallbacks;
    s
}

/// The routing answer to a duplex request with `tokens` and the client's `headers`.
async fn route(
    p: &Picker,
    tokens: &[u32],
    headers: &[(&str, &str)],
) -> envoy_types::pb::envoy::service::ext_proc::v3::HeaderMutation {
    decision::decide(p, tokens, headers).await.1
}

fn removes_sidecar_headers(m: &envoy_types::pb::envoy::service::ext_proc::v3::HeaderMutation) {
    for h in SIDECAR {
        assert!(
            m.remove_headers.iter().any(|r| r == h),
            "{h} removed: {m:?}"
        );
    }
}

#[tokio::test]
async fn a_long_prompt_goes_to_a_decode_pod_with_the_prefill_pod_in_the_header() {
    let roles = [
        (P1, Some("prefill")),
        (P2, Some("prefill")),
        (D1, Some("decode")),
        (D2, None),
    ];
    let p = Picker::start_with_roles(settings(3), &roles).await;
    let tokens = prompt(2048, 21);
    // P2 holds the prompt's start: the prefill profile's prefix scorer sends the prefill there.
    p.store(P2, &tokens[..1024]);
    let forged = [
        ("x-prefiller-host-port", "6.6.6.6:1"),
        ("x-prefiller-url", "http://6.6.6.6:1"),
        ("x-encoder-hosts-ports", "6.6.6.6:2"),
    ];
    let m = route(&p, &tokens, &forged).await;
    let destination = set_header(&m, "x-gateway-destination-endpoint").unwrap();
    let decode: Vec<&str> = destination.split(',').collect();
    // Primary and fallbacks: both decode pods and nothing else (4 pods, fallbacks 3).
    assert_eq!(decode.len(), 2, "{destination}");
    assert!(
        decode.contains(&D1) && decode.contains(&D2),
        "{destination}"
    );
    assert_eq!(set_header(&m, "x-prefiller-host-port"), Some(P2));
    assert_eq!(
        set_header(&m, "x-prefiller-url"),
        Some(format!("http://{P2}").as_str())
    );
    assert_eq!(set_header(&m, "x-encoder-hosts-ports"), None);
    removes_sidecar_headers(&m);
    p.stop().await;
}

#[tokio::test]
async fn short_and_cached_prompts_and_a_pool_without_prefill_pods_route_aggregated() {
    let roles = [(P1, Some("prefill")), (D1, Some("decode"))];
    let p = Picker::start_with_roles(settings(0), &roles).await;
    let forged = [("x-prefiller-host-port", "6.6.6.6:1")];
    // Short: under nonCachedTokens.
    let m = route(&p, &prompt(200, 22), &forged).await;
    assert_eq!(set_header(&m, "x-gateway-destination-endpoint"), Some(D1));
    assert_eq!(set_header(&m, "x-prefiller-host-port"), None);
    removes_sidecar_headers(&m);
    // Long, but all but 128 tokens cached on the decode pod.
    let tokens = prompt(2048, 23);
    p.store(D1, &tokens[..1920]);
    let m = route(&p, &tokens, &forged).await;
    assert_eq!(set_header(&m, "x-gateway-destination-endpoint"), Some(D1));
    assert_eq!(set_header(&m, "x-prefiller-host-port"), None);
    // Long and uncached: disaggregated.
    let m = route(&p, &prompt(2048, 24), &[]).await;
    assert_eq!(set_header(&m, "x-prefiller-host-port"), Some(P1));
    p.stop().await;

    // A pool with no prefill pod: the decode pod prefills, and no header names one.
    let roles = [(D1, Some("decode")), (D2, Some("prefill-decode"))];
    let p = Picker::start_with_roles(settings(1), &roles).await;
    // Both pods decode; `prefill-decode` may also prefill, but never its own request.
    let m = route(&p, &prompt(2048, 25), &forged).await;
    let destination = set_header(&m, "x-gateway-destination-endpoint").unwrap();
    let prefill = set_header(&m, "x-prefiller-host-port");
    match destination.split(',').next() {
        Some(D1) => assert_eq!(prefill, Some(D2)),
        Some(D2) => assert_eq!(prefill, None),
        other => panic!("{other:?}"),
    }
    p.stop().await;
    let roles = [(D1, Some("decode")), (D2, None)];
    let p = Picker::start_with_roles(settings(1), &roles).await;
    let m = route(&p, &prompt(2048, 26), &forged).await;
    assert!(set_header(&m, "x-gateway-destination-endpoint").is_some());
    assert_eq!(set_header(&m, "x-prefiller-host-port"), None);
    removes_sidecar_headers(&m);
    p.stop().await;
}

#[tokio::test]
async fn an_aggregated_config_strips_client_sidecar_headers_too() {
    let p = Picker::start(Settings::loopback(), &[D1, D2]).await;
    let m = route(
        &p,
        &prompt(2048, 27),
        &[("x-prefiller-host-port", "6.6.6.6:1")],
    )
    .await;
    assert_eq!(set_header(&m, "x-prefiller-host-port"), None);
    removes_sidecar_headers(&m);
    p.stop().await;
}
