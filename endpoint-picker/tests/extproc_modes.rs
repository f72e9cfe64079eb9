//! Body modes and budget refusals over real gRPC, message by message: a tonic client plays Envoy
//! in each `processing_mode` against an in-process picker (tests/envoy_body_modes.rs runs the
//! same modes through a real Envoy).

mod common;

use common::*;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use kvpick_epp::Settings;
use kvpick_epp::budget::BudgetConfig;
use pb::processing_response::Response as Out;

const A: &str = "127.0.0.1:40001";
const B: &str = "127.0.0.1:40002";

fn trailers() -> pb::ProcessingRequest {
    pb::ProcessingRequest {
        request: Some(pb::processing_request::Request::RequestTrailers(
            pb::HttpTrailers::default(),
        )),
        ..Default::default()
    }
}

/// A body answer that lets the body through unchanged.
fn passes_body(r: &pb::ProcessingResponse) -> bool {
    match &r.response {
        Some(Out::RequestBody(b)) => b
            .response
            .as_ref()
            .is_none_or(|c| c.body_mutation.is_none() && c.header_mutation.is_none()),
        _ => false,
    }
}

#[tokio::test]
async fn streamed_and_none_are_routed_on_the_headers_at_once() {
    let p = Picker::start(Settings::loopback(), &[A]).await;
    for m in [BodySendMode::Streamed, BodySendMode::None] {
        let mut s = p.stream().await;
        let protocol = Some(mode(m, m));
        s.send(request_headers(protocol, "POST", &[], false, None))
            .await;
        // Envoy routes on this answer: it must come before any body.
        let h = s.recv().await;
        assert!(matches!(h.response, Some(Out::RequestHeaders(_))), "{h:?}");
        assert_eq!(
            set_header(mutation(&h), "x-gateway-destination-endpoint"),
            Some(A)
        );
        assert_eq!(lb_destination(&h).as_deref(), Some(A));
        if m == BodySendMode::Streamed {
            for eos in [false, true] {
                s.send(request_body(b"{\"model\":\"m\"", eos)).await;
                assert!(passes_body(&s.recv().await), "{m:?}: chunks pass unchanged");
            }
        }
        s.send(trailers()).await;
        assert!(matches!(
            s.recv().await.response,
            Some(Out::RequestTrailers(_))
        ));
    }
}

#[tokio::test]
async fn a_buffered_body_followed_by_trailers_is_answered_on_its_own() {
    let p = Picker::start(Settings::loopback(), &[A, B]).await;
    let tokens = prompt(64, 3);
    p.store(B, &tokens);
    for m in [BodySendMode::Buffered, BodySendMode::BufferedPartial] {
        let mut s = p.stream().await;
        s.send(request_headers(Some(mode(m, m)), "POST", &[], false, None))
            .await;
        let h = s.recv().await;
        assert!(matches!(h.response, Some(Out::RequestHeaders(_))));
        // Not the end of the stream: trailers follow. The answer must not wait for them.
        s.send(request_body(&token_body(&tokens), false)).await;
        let b = s.recv().await;
        assert!(matches!(b.response, Some(Out::RequestBody(_))), "{b:?}");
        assert_eq!(
            set_header(mutation(&b), "x-gateway-destination-endpoint"),
            Some(B)
        );
        s.send(trailers()).await;
        assert!(matches!(
            s.recv().await.response,
            Some(Out::RequestTrailers(_))
        ));
    }
}

#[tokio::test]
async fn unknown_modes_and_broken_order_are_refused_with_a_reason() {
    let p = Picker::start(Settings::loopback(), &[A]).await;
    // GRPC (5) and a mode from the future.
    for raw in [5, 42] {
        let mut s = p.stream().await;
        let protocol = pb::ProtocolConfiguration {
            request_body_mode: raw,
            response_body_mode: BodySendMode::FullDuplexStreamed as i32,
            ..Default::default()
        };
        s.send(request_headers(Some(protocol), "POST", &[], false, None))
            .await;
        let r = s.recv().await;
        assert_eq!(immediate(&r).0, 500);
        assert_eq!(drop_reason(&r).as_deref(), Some("unsupported_body_mode"));
    }
    // A body before any headers.
    let mut s = p.stream().await;
    s.send(pb::ProcessingRequest {
        protocol_config: duplex(),
        ..request_body(b"{}", true)
    })
    .await;
    let r = s.recv().await;
    assert_eq!(immediate(&r).0, 500);
    assert_eq!(drop_reason(&r).as_deref(), Some("protocol"));
}

#[tokio::test]
async fn a_body_over_the_budget_gets_503_and_gives_its_bytes_back() {
    // A quarter of 8 MiB for requests, less 8 streams' 64 KiB: 1.5 MiB for bodies (no
    // connections set aside).
    let settings = Settings {
        budget: BudgetConfig {
            total: 8 << 20,
            max_streams: 8,
            max_connections: 0,
        },
        ..Settings::loopback()
    };
    let p = Picker::start(settings, &[A]).await;
    let part = &p.shared.budget.requests;
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    let chunk = vec![b' '; 512 << 10];
    let mut refused = None;
    for _ in 0..8 {
        s.send(request_body(&chunk, false)).await;
        if let Some(r) = s.recv_within(std::time::Duration::from_millis(100)).await {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("4 MiB offered against 1.5 MiB: refused before the end");
    let (status, json) = immediate(&r);
    assert_eq!(status, 503);
    assert_eq!(drop_reason(&r).as_deref(), Some("memory_budget"));
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("memory budget")
    );
    drop(s);
    // Its body's bytes come back.
    for _ in 0..100 {
        if part.used() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(part.used(), 0);
    // The next request fits again.
    let tokens = prompt(32, 1);
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    s.send(request_body(&token_body(&tokens), true)).await;
    let h = s.recv().await;
    assert_eq!(
        set_header(mutation(&h), "x-gateway-destination-endpoint"),
        Some(A)
    );
}
