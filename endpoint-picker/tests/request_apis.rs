//! The request APIs over ext_proc: OpenAI Responses, Anthropic Messages and embeddings bodies are
//! routed on their exact token ids (the fixture chatml model's tokenizer and template), other
//! paths by load without refusing their bodies; and the conformance test hooks, off by default.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;

use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use kvpick_epp::Settings;
use kvpick_tokenize::{
    ChatApi, ChatRequest, ModelSource, ModelTokenizer, TokenCache, TokenizeInput,
};
use pb::processing_request::Request as In;
use pb::processing_response::Response as Out;
use serde_json::{Value, json};

const A: &str = "127.0.0.1:41001";
const B: &str = "127.0.0.1:41002";
const C: &str = "127.0.0.1:41003";

fn settings() -> Settings {
    let mut settings = Settings::loopback();
    settings
        .tokenize
        .registry
        .models
        .push(("m".into(), ModelSource::Dir(common::fixtures::chatml())));
    // Generous: a debug build on a busy machine.
    settings.tokenize.timeout = Duration::from_secs(20);
    settings
}

/// The ids the fixture model gives `input`.
fn ids(input: TokenizeInput) -> Vec<u32> {
    let model = ModelTokenizer::load(&common::fixtures::chatml()).unwrap();
    let ids = model.tokenize(&input, &TokenCache::new(0)).unwrap().ids;
    assert!(ids.len() >= 64, "{} ids", ids.len());
    ids
}

fn chat_ids(api: ChatApi, body: &Value) -> Vec<u32> {
    ids(TokenizeInput::Chat(
        ChatRequest::from_api_body(api, body.as_object().unwrap()).unwrap(),
    ))
}

/// Request headers for `path`.
fn headers_at(path: &str, extra: &[(&str, &str)]) -> pb::ProcessingRequest {
    let mut pairs = vec![
        (":method", "POST"),
        (":path", path),
        (":authority", "gw"),
        ("content-type", "application/json"),
    ];
    pairs.extend_from_slice(extra);
    pb::ProcessingRequest {
        protocol_config: duplex(),
        request: Some(In::RequestHeaders(pb::HttpHeaders {
            headers: Some(header_map(&pairs)),
            end_of_stream: false,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Sends `body` to `path`; the first answer.
async fn send(
    p: &Picker,
    path: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> pb::ProcessingResponse {
    let mut s = p.stream().await;
    s.send(headers_at(path, extra)).await;
    s.send(request_body(body, true)).await;
    s.recv().await
}

fn destination(answer: &pb::ProcessingResponse) -> &str {
    set_header(mutation(answer), "x-gateway-destination-endpoint").unwrap()
}

fn prose(seed: usize, words: usize) -> String {
    const WORDS: [&str; 12] = [
        "token", "cache", "prefix", "router", "engine", "block", "memory", "stream", "batch",
        "queue", "window", "layer",
    ];
    (0..words)
        .map(|i| WORDS[(i * 7 + seed * 5 + i / 3) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Two conversations of `api`, one held by B and one by C: each is routed to its holder.
async fn routes_to_the_holder(path: &str, api: Option<ChatApi>, bodies: [Value; 2]) {
    let p = Picker::start(settings(), &[A, B, C]).await;
    for (body, holder) in bodies.iter().zip([B, C]) {
        let tokens = match api {
            Some(api) => chat_ids(api, body),
            None => ids(TokenizeInput::Prompt {
                text: body["input"].as_str().unwrap().to_owned(),
                add_special_tokens: true,
            }),
        };
        p.store(holder, &tokens);
        let answer = send(&p, path, body.to_string().as_bytes(), &[]).await;
        assert_eq!(destination(&answer), holder, "{path}: {body}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_route_on_their_rendered_conversation() {
    let body = |seed| {
        json!({"model": "m", "instructions": "Be brief.", "max_output_tokens": 8, "input": [
            {"role": "user", "content": [{"type": "input_text", "text": prose(seed, 60)}]},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{\"q\": 1}"},
            {"type": "function_call_output", "call_id": "c1", "output": prose(seed + 1, 20)}],
            "tools": [{"type": "function", "name": "get", "parameters": {"type": "object"}}]})
    };
    routes_to_the_holder(
        "/v1/responses",
        Some(ChatApi::Responses),
        [body(1), body(2)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_route_on_their_rendered_conversation() {
    let body = |seed| {
        json!({"model": "m", "max_tokens": 8,
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cch=9"},
                       {"type": "text", "text": prose(seed, 30)}],
            "messages": [{"role": "user", "content": prose(seed + 3, 40)},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "get", "input": {"q": seed}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]}],
            "tools": [{"name": "get", "input_schema": {"properties": {}}}]})
    };
    routes_to_the_holder("/v1/messages", Some(ChatApi::Messages), [body(1), body(2)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_route_on_their_text() {
    let body = |seed| json!({"model": "m", "input": prose(seed, 80)});
    routes_to_the_holder("/llm/v1/embeddings", None, [body(1), body(2)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_route_by_load_and_bad_known_bodies_are_refused() {
    let p = Picker::start(settings(), &[A, B, C]).await;
    for path in ["/v1/audio/transcriptions", "/v1/messages/count_tokens"] {
        let answer = send(&p, path, b"\x00not json", &[]).await;
        assert!(
            [A, B, C].contains(&destination(&answer)),
            "{path}: {answer:?}"
        );
    }
    for (path, body) in [
        ("/v1/responses", r#"{"model":"m","input":42}"#),
        (
            "/v1/messages",
            r#"{"model":"m","messages":"hi","max_tokens":1}"#,
        ),
        ("/v1/messages", r#"{"messages":[],"max_tokens":1}"#),
        ("/v1/chat/completions", "{"),
    ] {
        let answer = send(&p, path, body.as_bytes(), &[]).await;
        assert_eq!(immediate(&answer).0, 400, "{path} {body}");
    }
    // Responses and embeddings may leave `model` out (vLLM's default model): routed by load.
    let answer = send(&p, "/v1/responses", br#"{"input":"hi"}"#, &[]).await;
    assert!([A, B, C].contains(&destination(&answer)));
    p.stop().await;
}

/// The token prompt B holds ([`held_by_b`]).
fn b_prompt() -> Vec<u32> {
    prompt(128, 5)
}

/// Tells `p`'s index that B holds [`b_prompt`] (once per picker: storing twice stores nothing).
fn held_by_b(p: &Picker) {
    p.store(B, &b_prompt());
}

/// Sends [`b_prompt`], selecting `selection`; answers the response headers with served metadata
/// naming A. Returns (destination, echo header on the response-headers answer).
async fn steer(p: &Picker, selection: &str) -> (Result<String, i32>, Option<String>) {
    let tokens = b_prompt();
    let mut s = p.stream().await;
    s.send(headers_at(
        "/v1/completions",
        &[("test-epp-endpoint-selection", selection)],
    ))
    .await;
    s.send(request_body(&token_body(&tokens), true)).await;
    let first = s.recv().await;
    if let Some(Out::ImmediateResponse(_)) = &first.response {
        return (Err(immediate(&first).0), None);
    }
    let routed = destination(&first).to_owned();
    while !streamed(&s.recv().await).1 {}
    let served = lb_served(A);
    s.send(response_headers(&[(":status", "200")], Some(served)))
        .await;
    let answer = s.recv().await;
    let Some(Out::ResponseHeaders(h)) = &answer.response else {
        panic!("{answer:?}")
    };
    let echo = h
        .response
        .as_ref()
        .and_then(|c| c.header_mutation.as_ref())
        .and_then(|m| m.set_headers.iter().find_map(|o| o.header.as_ref()))
        .filter(|h| h.key == "x-conformance-test-served-endpoint")
        .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned());
    (Ok(routed), echo)
}

/// `envoy.lb` metadata saying `address` served the request.
fn lb_served(address: &str) -> envoy_types::pb::envoy::config::core::v3::Metadata {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let served = Value {
        kind: Some(Kind::StringValue(address.into())),
    };
    envoy_types::pb::envoy::config::core::v3::Metadata {
        filter_metadata: [(
            "envoy.lb".to_owned(),
            Struct {
                fields: [("x-gateway-destination-endpoint-served".to_owned(), served)].into(),
            },
        )]
        .into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_test_hooks_are_off_by_default() {
    let p = Picker::start(settings(), &[A, B, C]).await;
    held_by_b(&p);
    assert_eq!(steer(&p, C).await, (Ok(B.to_owned()), None));
    assert_eq!(steer(&p, "256.256.256.256").await.0, Ok(B.to_owned()));
    p.stop().await;

    let mut hooked = settings();
    hooked.route.conformance_test_hooks = true;
    let p = Picker::start(hooked, &[A, B, C]).await;
    held_by_b(&p);
    assert_eq!(steer(&p, C).await, (Ok(C.to_owned()), Some(A.to_owned())));
    assert_eq!(steer(&p, "256.256.256.256").await.0, Err(429));
    p.stop().await;
}
