//! The ext_proc protocol over real gRPC: a tonic client plays Envoy against an in-process picker.

mod common;

use common::*;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use kvpick_epp::Settings;
use pb::processing_response::Response as Out;

const A: &str = "127.0.0.1:40001";
const B: &str = "127.0.0.1:40002";
const C: &str = "127.0.0.1:40003";

/// Reads the duplex answer to a whole request: headers, then body chunks to end of stream.
async fn duplex_answer(s: &mut Stream) -> (pb::ProcessingResponse, Vec<u8>, usize) {
    let headers = s.recv().await;
    assert!(
        matches!(headers.response, Some(Out::RequestHeaders(_))),
        "{headers:?}"
    );
    let (mut body, mut chunks) = (Vec::new(), 0);
    loop {
        let (chunk, eos) = streamed(&s.recv().await);
        assert!(chunk.len() <= 62_000);
        body.extend_from_slice(&chunk);
        chunks += 1;
        if eos {
            return (headers, body, chunks);
        }
    }
}

#[tokio::test]
async fn duplex_token_prompt_goes_to_the_prefix_holder() {
    let p = Picker::start(Settings::loopback(), &[A, B, C]).await;
    let tokens = prompt(256, 7);
    p.store(B, &tokens[..128]);
    let body = token_body(&tokens);
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    // The headers answer is held until the body is complete.
    s.silent(100).await;
    let (first, rest) = body.split_at(body.len() / 3);
    s.send(request_body(first, false)).await;
    s.silent(50).await;
    s.send(request_body(rest, true)).await;
    let (headers, echoed, _) = duplex_answer(&mut s).await;
    let m = mutation(&headers);
    assert_eq!(set_header(m, "x-gateway-destination-endpoint"), Some(B));
    assert_eq!(
        set_header(m, "content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(lb_destination(&headers).as_deref(), Some(B));
    assert_eq!(echoed, body);
    // Shutdown completes even with the stream still open (cut after the grace period).
    let started = tokio::time::Instant::now();
    p.stop().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    drop(s);
}

#[tokio::test]
async fn large_bodies_are_resent_in_bounded_chunks() {
    let p = Picker::start(Settings::loopback(), &[A, B]).await;
    let tokens = prompt(40_000, 3);
    p.store(A, &tokens[..4096]);
    let body = token_body(&tokens);
    assert!(body.len() > 3 * 62_000);
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    for chunk in body.chunks(16_384) {
        s.send(request_body(chunk, false)).await;
    }
    s.send(request_body(b"", true)).await;
    let (headers, echoed, chunks) = duplex_answer(&mut s).await;
    assert_eq!(
        set_header(mutation(&headers), "x-gateway-destination-endpoint"),
        Some(A)
    );
    assert_eq!(echoed, body);
    assert_eq!(chunks, body.len().div_ceil(62_000));
    drop(s);
    p.stop().await;
}

#[tokio::test]
async fn buffered_mode_answers_headers_empty_and_routes_on_the_body() {
    let p = Picker::start(Settings::loopback(), &[A, B]).await;
    let tokens = prompt(64, 11);
    p.store(A, &tokens);
    let mut s = p.stream().await;
    s.send(request_headers(
        buffered(),
        "POST",
        &[("x-gateway-destination-endpoint", "6.6.6.6:1")],
        false,
        None,
    ))
    .await;
    let h = s.recv().await;
    let Some(Out::RequestHeaders(headers)) = &h.response else {
        panic!("{h:?}")
    };
    let common = headers.response.clone().unwrap_or_default();
    assert_eq!(
        common.header_mutation, None,
        "an empty answer to the headers"
    );
    assert!(h.dynamic_metadata.is_none());
    s.send(request_body(&token_body(&tokens), true)).await;
    let b = s.recv().await;
    assert!(matches!(b.response, Some(Out::RequestBody(_))));
    assert_eq!(
        set_header(mutation(&b), "x-gateway-destination-endpoint"),
        Some(A)
    );
    assert_eq!(
        set_header(mutation(&b), "content-length"),
        None,
        "the body is not re-sent"
    );
    assert_eq!(lb_destination(&b).as_deref(), Some(A));
}

#[tokio::test]
async fn a_forged_destination_never_survives() {
    let p = Picker::start(Settings::loopback(), &[A]).await;
    let mut s = p.stream().await;
    s.send(request_headers(
        duplex(),
        "POST",
        &[("x-gateway-destination-endpoint", "6.6.6.6:1")],
        false,
        None,
    ))
    .await;
    s.send(request_body(br#"{"model":"m","prompt":"hi"}"#, true))
        .await;
    let (h, _, _) = duplex_answer(&mut s).await;
    let m = mutation(&h);
    assert!(
        m.remove_headers
            .iter()
            .any(|r| r == "x-gateway-destination-endpoint")
    );
    assert_eq!(set_header(m, "x-gateway-destination-endpoint"), Some(A));
}

#[tokio::test]
async fn text_and_chat_prompts_route() {
    let p = Picker::start(Settings::loopback(), &[A, B]).await;
    for body in [
        r#"{"model":"m","prompt":"Once upon a time","stream":true}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"hello"}],"cache_salt":"s"}"#,
        r#"{"model":"m","prompt":[[1,2,3],[4,5]]}"#,
    ] {
        let mut s = p.stream().await;
        s.send(request_headers(
            duplex(),
            "POST",
            &[("x-session-id", "abc")],
            false,
            None,
        ))
        .await;
        s.send(request_body(body.as_bytes(), true)).await;
        let (h, echoed, _) = duplex_answer(&mut s).await;
        let dest = set_header(mutation(&h), "x-gateway-destination-endpoint")
            .unwrap()
            .to_owned();
        assert!(dest == A || dest == B, "{dest}");
        assert_eq!(echoed, body.as_bytes());
    }
}

#[tokio::test]
async fn bad_requests_get_400_with_an_openai_error() {
    let p = Picker::start(
        Settings {
            limits: kvpick_epp::Limits {
                max_body_bytes: 1000,
                ..Settings::loopback().limits
            },
            ..Settings::loopback()
        },
        &[A],
    )
    .await;
    for (body, needle) in [
        (&br#"{"model":"m","prompt":"#[..], "truncated"),
        (b"not json", "malformed JSON"),
        (br#"{"prompt":"x"}"#, "model"),
        (br#"{"model":"m","prompt":[1,-1]}"#, "negative"),
    ] {
        let mut s = p.stream().await;
        s.send(request_headers(duplex(), "POST", &[], false, None))
            .await;
        s.send(request_body(body, true)).await;
        let (status, json) = immediate(&s.recv().await);
        assert_eq!(status, 400);
        let msg = json["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg}");
        assert_eq!(json["error"]["type"], "invalid_request_error");
    }
    // Oversize: refused as soon as the count passes the limit, before the body ends.
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    s.send(request_body(&[b' '; 600], false)).await;
    s.silent(50).await;
    s.send(request_body(&[b' '; 600], false)).await;
    let (status, json) = immediate(&s.recv().await);
    assert_eq!(status, 400);
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds 1000 bytes")
    );
}

#[tokio::test]
async fn subset_hints_restrict_and_empty_ones_refuse() {
    let p = Picker::start(Settings::loopback(), &[A, B, C]).await;
    let tokens = prompt(64, 5);
    p.store(A, &tokens);
    let body = token_body(&tokens);
    let cases: [(&[&str], Option<&str>); 4] = [
        (&[C], Some(C)),
        (&[B, C, "10.9.9.9:1"], None),
        (&[], None),
        (&["10.9.9.9:1"], None),
    ];
    for (hint, want) in cases {
        let mut s = p.stream().await;
        s.send(request_headers(
            duplex(),
            "POST",
            &[],
            false,
            Some(subset_hint(hint)),
        ))
        .await;
        s.send(request_body(&body, true)).await;
        let r = s.recv().await;
        if hint.len() == 3 {
            let dest = set_header(mutation(&r), "x-gateway-destination-endpoint")
                .unwrap()
                .to_owned();
            assert!(
                dest == B || dest == C,
                "never A, which is outside the hint: {dest}"
            );
            continue;
        }
        match want {
            Some(w) => assert_eq!(
                set_header(mutation(&r), "x-gateway-destination-endpoint"),
                Some(w)
            ),
            None => assert_eq!(immediate(&r).0, 503, "{hint:?}"),
        }
    }
}

#[tokio::test]
async fn headers_only_requests_are_answered_at_once() {
    let p = Picker::start(Settings::loopback(), &[A, B]).await;
    let mut s = p.stream().await;
    s.send(request_headers(
        duplex(),
        "GET",
        &[("x-gateway-destination-endpoint", "6.6.6.6:1")],
        true,
        None,
    ))
    .await;
    let h = s.recv().await;
    let dest = set_header(mutation(&h), "x-gateway-destination-endpoint")
        .unwrap()
        .to_owned();
    assert!(dest == A || dest == B);
    assert_eq!(lb_destination(&h).as_deref(), Some(dest.as_str()));
}

#[tokio::test]
async fn no_endpoint_is_503() {
    let p = Picker::start(Settings::loopback(), &[]).await;
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    s.send(request_body(br#"{"model":"m","prompt":"x"}"#, true))
        .await;
    let (status, json) = immediate(&s.recv().await);
    assert_eq!(status, 503);
    assert_eq!(json["error"]["type"], "service_unavailable");
}

#[tokio::test]
async fn fallbacks_are_listed_in_order() {
    let settings = Settings {
        route: kvpick_epp::router::RouteConfig {
            fallbacks: 2,
            emit_scores: true,
            ..Default::default()
        },
        ..Settings::loopback()
    };
    let p = Picker::start(settings, &[A, B, C]).await;
    let tokens = prompt(64, 9);
    p.store(C, &tokens);
    p.store(B, &tokens[..32]);
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    s.send(request_body(&token_body(&tokens), true)).await;
    let (h, _, _) = duplex_answer(&mut s).await;
    let want = format!("{C},{B},{A}");
    assert_eq!(
        set_header(mutation(&h), "x-gateway-destination-endpoint"),
        Some(want.as_str())
    );
    assert_eq!(lb_destination(&h), Some(want));
    assert!(
        h.dynamic_metadata
            .as_ref()
            .unwrap()
            .fields
            .contains_key("kvpick.scores")
    );
}

#[tokio::test]
async fn request_trailers_end_the_body_in_duplex() {
    let p = Picker::start(Settings::loopback(), &[A]).await;
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    let body = br#"{"model":"m","prompt":"x"}"#;
    s.send(request_body(body, false)).await;
    s.send(pb::ProcessingRequest {
        request: Some(pb::processing_request::Request::RequestTrailers(
            pb::HttpTrailers::default(),
        )),
        ..Default::default()
    })
    .await;
    assert!(matches!(
        s.recv().await.response,
        Some(Out::RequestHeaders(_))
    ));
    assert_eq!(streamed(&s.recv().await), (body.to_vec(), false));
    assert!(matches!(
        s.recv().await.response,
        Some(Out::RequestTrailers(_))
    ));
}

#[tokio::test]
async fn response_bodies_stream_back_in_order_and_usage_is_read() {
    let handle = kvpick_epp::telemetry::install();
    let p = Picker::start(Settings::loopback(), &[A]).await;
    // The index says A holds 64 tokens (4 blocks of 16) of the prompt; A will report 48 cached.
    let tokens = prompt(100, 9);
    p.store(A, &tokens[..64]);
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    s.send(request_body(&token_body(&tokens), true)).await;
    duplex_answer(&mut s).await;
    s.send(response_headers(
        &[(":status", "200"), ("content-type", "text/event-stream")],
        None,
    ))
    .await;
    assert!(matches!(
        s.recv().await.response,
        Some(Out::ResponseHeaders(_))
    ));
    let events = [
        "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\n".to_owned(),
        "data: {\"choices\":[{\"text\":\"b\"}],\"usage\":null}\n\n".to_owned(),
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7771,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":48}}}\n\ndata: [DONE]\n\n".to_owned(),
    ];
    for (i, e) in events.iter().enumerate() {
        let last = i + 1 == events.len();
        s.send(response_body(e.as_bytes(), last)).await;
        // Each chunk comes back before the next is sent: nothing is held.
        assert_eq!(streamed(&s.recv().await), (e.as_bytes().to_vec(), last));
    }
    drop(s);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let text = handle.render();
    assert!(
        text.contains("kvpick_tokens_total{kind=\"input\"} 7771"),
        "{text}"
    );
    assert!(text.contains("kvpick_tokens_total{kind=\"cached\"} 48"));
    // Predicted 64 − reported 48: the index promised one block more than the pod had.
    assert!(
        text.contains("kvpick_prefix_prediction_error_tokens_sum 16"),
        "{text}"
    );
    assert!(text.contains("kvpick_prefix_prediction_error_tokens_bucket{le=\"15\"} 0"));
    assert!(text.contains("kvpick_prefix_prediction_error_tokens_bucket{le=\"16\"} 1"));
    assert!(text.contains("kvpick_time_to_first_byte_seconds_count"));
}

#[tokio::test]
async fn sheddable_requests_get_429_only_while_the_pool_is_saturated() {
    // Signals turn stale after 300 ms here (the process clock starts near 0, so the default 2 s
    // could not be aged past without a long sleep).
    let config = kvpick_scheduler::EndpointPickerConfig::parse(
        &kvpick_scheduler::EndpointPickerConfig::DEFAULT_YAML
            .replace("maxSignalAge: 2s", "maxSignalAge: 300ms"),
    )
    .unwrap();
    let settings = Settings {
        scheduler: Some(config),
        route: kvpick_epp::router::RouteConfig {
            trusted_headers: kvpick_epp::shedding::TrustedHeaders::ALL,
            ..Default::default()
        },
        ..Settings::loopback()
    };
    let untrusting = Picker::start(
        Settings {
            route: Default::default(),
            ..settings.clone()
        },
        &[A, B],
    )
    .await;
    let p = Picker::start(settings, &[A, B]).await;
    let sheddable = [("x-kvpick-priority", "-1")];
    // A over the queue threshold, B over the KV-usage threshold: no endpoint has room.
    for picker in [&p, &untrusting] {
        scraped(picker, A, 6, 0.1);
        scraped(picker, B, 0, 0.95);
    }
    // By default the header is the client's word, and ignored: priority 0, routed.
    let r = first_answer(&untrusting, &sheddable).await;
    assert!(matches!(r.response, Some(Out::RequestHeaders(_))), "{r:?}");
    let r = first_answer(&p, &sheddable).await;
    let (status, json) = immediate(&r);
    assert_eq!(status, 429);
    assert_eq!(json["error"]["type"], "rate_limit_exceeded");
    assert_eq!(drop_reason(&r).as_deref(), Some("pool-saturated"));
    // Priority 0 (no header) and positive priorities are still routed.
    for headers in [&[][..], &[("x-kvpick-priority", "3")][..]] {
        let r = first_answer(&p, headers).await;
        assert!(matches!(r.response, Some(Out::RequestHeaders(_))), "{r:?}");
    }
    // Room on B: the sheddable request is routed, to B.
    scraped(&p, B, 0, 0.5);
    let r = first_answer(&p, &sheddable).await;
    assert_eq!(
        set_header(mutation(&r), "x-gateway-destination-endpoint"),
        Some(B)
    );
    // Stale signals are no evidence of room: B's last scrape ages past maxSignalAge.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let r = first_answer(&p, &sheddable).await;
    assert_eq!(immediate(&r).0, 429);
}

#[tokio::test]
async fn objectives_from_the_config_set_the_priority() {
    let config = kvpick_scheduler::EndpointPickerConfig::parse(&format!(
        "{}objectives: {{batch: -5, chat: 0}}\n",
        kvpick_scheduler::EndpointPickerConfig::DEFAULT_YAML.replace("objectives: {}\n", "")
    ))
    .unwrap();
    let settings = Settings {
        scheduler: Some(config),
        route: kvpick_epp::router::RouteConfig {
            trusted_headers: kvpick_epp::shedding::TrustedHeaders::ALL,
            ..Default::default()
        },
        ..Settings::loopback()
    };
    let p = Picker::start(settings, &[A]).await;
    scraped(&p, A, 100, 1.0);
    // The objective wins over the header; an unknown objective falls back to the header.
    let r = first_answer(&p, &[("x-gateway-inference-objective", "batch")]).await;
    assert_eq!(immediate(&r).0, 429);
    let r = first_answer(
        &p,
        &[
            ("x-gateway-inference-objective", "chat"),
            ("x-kvpick-priority", "-1"),
        ],
    )
    .await;
    assert!(matches!(r.response, Some(Out::RequestHeaders(_))), "{r:?}");
    let r = first_answer(
        &p,
        &[
            ("x-gateway-inference-objective", "other"),
            ("x-kvpick-priority", "-1"),
        ],
    )
    .await;
    assert_eq!(immediate(&r).0, 429);
}

/// Sends `tokens` as a duplex request and returns where the picker sent it (the stream stays open
/// for the response phase).
async fn pick_on(p: &Picker, tokens: &[u32]) -> (Stream, String) {
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    s.send(request_body(&token_body(tokens), true)).await;
    let (headers, _, _) = duplex_answer(&mut s).await;
    // Empty when no destination was set: the callers' assertions then fail.
    let to = set_header(mutation(&headers), "x-gateway-destination-endpoint")
        .map(str::to_owned)
        .unwrap_or_default();
    (s, to)
}

#[tokio::test]
async fn an_endpoint_answering_a_server_error_is_avoided_for_its_cool_down() {
    let handle = kvpick_epp::telemetry::install();
    let p = Picker::start(Settings::loopback(), &[A, B]).await;
    let tokens = prompt(128, 11);
    p.store(A, &tokens);
    // A holds the prefix, so it is picked; it answers 503 (e.g. its engine is restarting while
    // its /metrics still looks healthy).
    let (mut s, to) = pick_on(&p, &tokens).await;
    assert_eq!(to, A);
    s.send(response_headers(&[(":status", "503")], None)).await;
    assert!(matches!(
        s.recv().await.response,
        Some(Out::ResponseHeaders(_))
    ));
    drop(s);
    // Within the cool-down (2 s by default) the same prompt goes to B despite A's prefix.
    let (_s, to) = pick_on(&p, &tokens).await;
    assert_eq!(to, B);
    let text = handle.render();
    assert!(
        text.contains(&format!(
            "kvpick_endpoint_failures_total{{endpoint=\"{A}\"}} 1"
        )),
        "{text}"
    );
    // A 4xx is the client's fault, not the endpoint's: B stays eligible after one.
    let (mut s, to) = pick_on(&p, &tokens).await;
    assert_eq!(to, B);
    s.send(response_headers(&[(":status", "400")], None)).await;
    assert!(matches!(
        s.recv().await.response,
        Some(Out::ResponseHeaders(_))
    ));
    drop(s);
    // With every endpoint failing, picking among them beats refusing.
    p.live(B)
        .mark_failing(kvpick_scheduler::Timestamp::from_duration(
            std::time::Duration::from_secs(3600),
        ));
    let (_s, to) = pick_on(&p, &tokens).await;
    assert_eq!(to, A);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let mut settings = Settings::loopback();
    settings.limits.body_timeout = std::time::Duration::from_millis(300);
    let p = Picker::start(settings, &[A]).await;
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    // Part of the body, then nothing: the deadline runs from the headers.
    s.send(request_body(br#"{"model":"m","prompt":"#, false))
        .await;
    s.silent(150).await;
    let r = s.recv().await;
    let (status, json) = immediate(&r);
    assert_eq!(status, 408);
    assert_eq!(drop_reason(&r).as_deref(), Some("body_timeout"));
    assert!(json["error"]["message"].as_str().unwrap().contains("300ms"));
    // A body that arrives in time, after a pause under the deadline, is routed as usual.
    let mut s = p.stream().await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    s.send(request_body(&token_body(&prompt(32, 1)), true))
        .await;
    let (headers, _, _) = duplex_answer(&mut s).await;
    assert_eq!(
        set_header(mutation(&headers), "x-gateway-destination-endpoint"),
        Some(A)
    );
}
