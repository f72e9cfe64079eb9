//! Flow control over real gRPC: requests wait in kvpick while the pool is saturated and leave
//! as it shows room (highest priority first, fairness ids taking turns), within the queue's
//! limits and TTL. A tonic client plays Envoy; pod signals are set as a scrape would set them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;

use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use kvpick_epp::Settings;
use pb::processing_response::Response as Out;

const A: &str = "127.0.0.1:40101";

/// A picker over endpoint A with flow control on, `extra` appended to its `flowControl` section.
async fn picker(flow: &str) -> Picker {
    let yaml = format!(
        "{}featureGates: [flowControl]\nflowControl: {{{flow}}}\n",
        kvpick_scheduler::EndpointPickerConfig::DEFAULT_YAML
    );
    // This gateway sets the priority and fairness headers itself.
    let settings = Settings {
        scheduler: Some(kvpick_scheduler::EndpointPickerConfig::parse(&yaml).unwrap()),
        route: kvpick_epp::router::RouteConfig {
            trusted_headers: kvpick_epp::shedding::TrustedHeaders::ALL,
            ..Default::default()
        },
        ..Settings::loopback()
    };
    Picker::start(settings, &[A]).await
}

/// Opens a stream and sends a whole token request with `headers`; answers are left to read.
async fn send(p: &Picker, headers: &[(&str, &str)], seed: u32) -> Stream {
    let mut s = decision::send(p, &prompt(64, seed), headers).await;
    s.silent(30).await;
    s
}

fn routed(r: &pb::ProcessingResponse) -> bool {
    matches!(r.response, Some(Out::RequestHeaders(_)))
}

/// Waits up to a second for the flow-control queue to hold `n` requests.
async fn waiting(p: &Picker, n: usize) {
    let flow = p.shared.flow.as_ref().expect("flow control is on");
    for _ in 0..100 {
        if flow.waiting() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} requests wait, expected {n}", flow.waiting());
}

#[tokio::test]
async fn requests_wait_while_the_pool_is_saturated_and_leave_when_it_has_room() {
    let p = picker("").await;
    scraped(&p, A, 0, 0.1);
    // Room and nothing waiting: straight through.
    assert!(routed(&first_answer(&p, &[]).await));
    scraped(&p, A, 9, 0.1);
    let mut s = send(&p, &[], 1).await;
    s.silent(200).await;
    waiting(&p, 1).await;
    // Sheddable requests are still refused at once while saturated.
    let r = first_answer(&p, &[("x-kvpick-priority", "-1")]).await;
    assert_eq!(drop_reason(&r).as_deref(), Some("pool-saturated"));
    scraped(&p, A, 2, 0.1);
    let r = s.recv().await;
    assert!(routed(&r), "{r:?}");
    assert_eq!(
        set_header(mutation(&r), "x-gateway-destination-endpoint"),
        Some(A)
    );
    waiting(&p, 0).await;
}

#[tokio::test]
async fn higher_priorities_leave_first_and_fairness_ids_take_turns() {
    let p = picker("").await;
    scraped(&p, A, 9, 0.1);
    let flow = |id| [("x-gateway-inference-fairness-id", id)];
    let mut streams = vec![
        ("a1", send(&p, &flow("a"), 1).await),
        ("a2", send(&p, &flow("a"), 2).await),
        ("a3", send(&p, &flow("a"), 3).await),
        ("b1", send(&p, &flow("b"), 4).await),
        (
            "urgent",
            send(
                &p,
                &[
                    ("x-kvpick-priority", "5"),
                    ("x-gateway-inference-fairness-id", "a"),
                ],
                5,
            )
            .await,
        ),
    ];
    waiting(&p, 5).await;
    // Each fresh scrape showing 5 waiting (the threshold) is room for one more request.
    let mut order = Vec::new();
    while !streams.is_empty() {
        scraped(&p, A, 5, 0.1);
        let mut answered = None;
        for (i, (name, s)) in streams.iter_mut().enumerate() {
            if let Some(r) = s.recv_within(Duration::from_millis(100)).await {
                assert!(routed(&r), "{name}: {r:?}");
                assert!(answered.is_none(), "one scrape's room let out two requests");
                answered = Some(i);
            }
        }
        let i = answered.expect("a scrape with room let nothing out");
        order.push(streams.remove(i).0);
    }
    assert_eq!(order, ["urgent", "a1", "b1", "a2", "a3"]);
}

#[tokio::test]
async fn a_full_queue_refuses_lower_priorities_displaces_them_for_higher_ones_and_expires() {
    let p = picker("maxRequests: 2, queueTTL: 600ms").await;
    scraped(&p, A, 9, 0.1);
    let mut first = send(&p, &[], 1).await;
    let mut second = send(&p, &[], 2).await;
    // Full, and nothing of a lower priority to displace.
    let r = first_answer(&p, &[]).await;
    assert_eq!(immediate(&r).0, 429);
    assert_eq!(drop_reason(&r).as_deref(), Some("queue-full"));
    // A higher priority takes the newest place of the lower band.
    let mut high = send(&p, &[("x-kvpick-priority", "2")], 3).await;
    let r = second.recv().await;
    assert_eq!(immediate(&r).0, 429);
    assert_eq!(drop_reason(&r).as_deref(), Some("queue-displaced"));
    // Nobody waits past the TTL: 429, the pool still being there.
    for s in [&mut first, &mut high] {
        let r = s.recv().await;
        assert_eq!(immediate(&r).0, 429);
        assert_eq!(drop_reason(&r).as_deref(), Some("queue-ttl-expired"));
    }
    waiting(&p, 0).await;
}

#[tokio::test]
async fn a_request_whose_client_goes_away_leaves_the_queue() {
    let p = picker("maxRequests: 1").await;
    scraped(&p, A, 9, 0.1);
    let gone = send(&p, &[], 1).await;
    waiting(&p, 1).await;
    drop(gone);
    waiting(&p, 0).await;
    // Its place is free again: the next request waits instead of being refused.
    let mut s = send(&p, &[], 2).await;
    waiting(&p, 1).await;
    scraped(&p, A, 0, 0.1);
    assert!(routed(&s.recv().await));
}

#[tokio::test]
async fn requests_still_waiting_at_shutdown_get_503_at_once() {
    let p = picker("queueTTL: 60s").await;
    scraped(&p, A, 9, 0.1);
    let mut s = send(&p, &[], 1).await;
    waiting(&p, 1).await;
    let stopping = tokio::spawn(p.stop());
    let r = s.recv().await;
    assert_eq!(immediate(&r).0, 503);
    assert_eq!(drop_reason(&r).as_deref(), Some("shutting_down"));
    // The drain did not wait for the queue's TTL (the default grace is far shorter).
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shut down")
        .unwrap();
}

#[tokio::test]
async fn flow_control_is_off_without_its_feature_gate() {
    let p = Picker::start(Settings::loopback(), &[A]).await;
    assert!(p.shared.flow.is_none());
    // Saturated, priority 0: routed at once (the legacy rule).
    scraped(&p, A, 9, 0.1);
    assert!(routed(&first_answer(&p, &[]).await));
}
