//! The fleet's HTTP API over real sockets: OpenAI responses checked field by field against the
//! schema vLLM follows, streaming with usage, prefix caching visible in `cached_tokens`, vLLM's
//! `/tokenize`, `/v1/models`, `/health`, and the errors vLLM returns.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed unwrap is a failed test

mod fleet_util;

use fleet_util::{MODEL, get, post, post_raw, post_stream, prompt, start};
use kvpick_fleet::KvLayout;
use serde_json::{Value, json};

fn is_int(v: &Value) -> bool {
    v.as_u64().is_some()
}

/// `usage` as vLLM writes it; returns (prompt, completion, cached).
fn check_usage(u: &Value) -> (u64, u64, u64) {
    let (p, c, t) = (
        &u["prompt_tokens"],
        &u["completion_tokens"],
        &u["total_tokens"],
    );
    assert!(is_int(p) && is_int(c) && is_int(t), "{u}");
    let (p, c) = (p.as_u64().unwrap(), c.as_u64().unwrap());
    assert_eq!(t.as_u64(), Some(p + c));
    let cached = match u.get("prompt_tokens_details") {
        None => 0,
        Some(d) => d["cached_tokens"]
            .as_u64()
            .expect("cached_tokens is an int"),
    };
    assert!(cached < p, "some prompt token is always computed: {u}");
    (p, c, cached)
}

fn check_head(v: &Value, object: &str, id_prefix: &str) {
    assert_eq!(v["object"], object, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with(id_prefix), "{v}");
    assert!(is_int(&v["created"]));
    assert_eq!(v["model"], MODEL);
    assert!(v["choices"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_chat_and_prefix_caching() {
    let fleet = start(1, KvLayout::ArrayMap, false).await;
    let addr = fleet.servers()[0].address;
    let tokens = prompt(7, 200);
    let body = json!({"model": MODEL, "prompt": tokens, "max_tokens": 5, "temperature": 0.7});
    let (s, v) = post(addr, "/v1/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    check_head(&v, "text_completion", "cmpl-");
    let c = &v["choices"][0];
    assert_eq!(
        (c["index"].as_u64(), c["finish_reason"].as_str()),
        (Some(0), Some("length"))
    );
    assert!(c["logprobs"].is_null() && c["stop_reason"].is_null());
    assert_eq!(c["text"].as_str().unwrap().split_whitespace().count(), 5);
    assert_eq!(check_usage(&v["usage"]), (200, 5, 0), "cold cache");

    // The same prompt again: its 12 full blocks (192 tokens) are cached.
    let (_, v) = post(addr, "/v1/completions", &body).await;
    assert_eq!(check_usage(&v["usage"]), (200, 5, 192));

    // The generated text, sent back as text, tokenizes to the ids the engine generated.
    let text = v["choices"][0]["text"].as_str().unwrap().to_owned();
    let (s, t) = post(addr, "/tokenize", &json!({"model": MODEL, "prompt": text})).await;
    assert_eq!(s, 200);
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words.len(), 5);
    assert_eq!(t["count"].as_u64(), Some(5));
    assert_eq!(t["max_model_len"].as_u64(), Some(4096));
    assert!(t["tokens"].as_array().unwrap().iter().all(is_int) && t["token_strs"].is_null());

    // Chat, non-streaming.
    let chat = json!({"model": MODEL, "max_completion_tokens": 3,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]});
    let (s, v) = post(addr, "/v1/chat/completions", &chat).await;
    assert_eq!(s, 200, "{v}");
    check_head(&v, "chat.completion", "chatcmpl-");
    let m = &v["choices"][0]["message"];
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["content"].as_str().unwrap().split_whitespace().count(), 3);
    let (p, c, _) = check_usage(&v["usage"]);
    let (_, t) = post(addr, "/tokenize", &json!({"messages": chat["messages"]})).await;
    assert_eq!(
        (p, c),
        (t["count"].as_u64().unwrap(), 3),
        "/tokenize agrees with the chat prompt"
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_with_usage() {
    let fleet = start(1, KvLayout::ArrayMap, false).await;
    let addr = fleet.servers()[0].address;
    let body = json!({"prompt": prompt(9, 40), "max_tokens": 6, "stream": true,
                      "stream_options": {"include_usage": true}});
    let (s, events) = post_stream(addr, "/v1/completions", &body).await;
    assert_eq!(s, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let (usage, text) = chunks.split_last().unwrap();
    for c in text {
        check_head(c, "text_completion", "cmpl-");
        assert!(c.get("usage").is_none());
    }
    let words: usize = (text.iter())
        .map(|c| {
            c["choices"][0]["text"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .count()
        })
        .sum();
    assert_eq!(words, 6);
    let finish: Vec<_> = text
        .iter()
        .map(|c| c["choices"][0]["finish_reason"].clone())
        .collect();
    assert!(finish[..finish.len() - 1].iter().all(Value::is_null));
    assert_eq!(finish.last().unwrap(), "length");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(check_usage(&usage["usage"]), (40, 6, 0));

    // Without include_usage: no usage chunk. Chat opens with the role.
    let chat = json!({"messages": [{"role": "user", "content": "x y"}], "max_tokens": 2,
                      "stream": true});
    let (_, events) = post_stream(addr, "/v1/chat/completions", &chat).await;
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    check_head(&first, "chat.completion.chunk", "chatcmpl-");
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert!(events.iter().all(|e| !e.contains("\"usage\"")));
    // Tokens of one engine step share a chunk; the last chunk carries finish_reason.
    let chunks: Vec<Value> = (events[1..events.len() - 1].iter())
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let words: usize = (chunks.iter())
        .map(|c| {
            let text = c["choices"][0]["delta"]["content"].as_str().unwrap();
            text.split_whitespace().count()
        })
        .sum();
    assert_eq!(words, 2, "{events:?}");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_errors() {
    let mut cfg = fleet_util::config(1);
    cfg.loras = vec!["adapter-a".into()];
    cfg.limits.max_body_bytes = 1000;
    let fleet = kvpick_fleet::Fleet::start(cfg).await.unwrap();
    let addr = fleet.servers()[0].address;
    assert_eq!(get(addr, "/health").await.0, 200);
    let (s, models) = get(addr, "/v1/models").await;
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(s, 200);
    assert_eq!(models["object"], "list");
    let ids: Vec<_> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [json!(MODEL), json!("adapter-a")]);
    assert_eq!(models["data"][1]["parent"], MODEL);

    let error = |v: &Value, code: u64| {
        let e = &v["error"];
        assert_eq!(e["code"].as_u64(), Some(code), "{v}");
        assert!(e["message"].is_string() && e["type"].is_string() && e["param"].is_null());
    };
    let (s, v) = post(
        addr,
        "/v1/completions",
        &json!({"model": "nope", "prompt": "a"}),
    )
    .await;
    assert_eq!(s, 404);
    error(&v, 404);
    let (s, v) = post(
        addr,
        "/v1/completions",
        &json!({"prompt": [1, 2], "max_tokens": 4095}),
    )
    .await;
    assert_eq!(s, 400);
    error(&v, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 4096")
    );
    let (s, _) = post_raw(addr, "/v1/completions", "{not json").await;
    assert_eq!(s, 400);
    let (s, _) = post_raw(addr, "/v1/completions", vec![b' '; 2000]).await;
    assert_eq!(s, 413);
    let (s, v) = post(
        addr,
        "/v1/completions",
        &json!({"model": "adapter-a", "prompt": "a b"}),
    )
    .await;
    assert_eq!((s, v["model"].as_str()), (200, Some("adapter-a")));
    let (_, page) = get(addr, "/metrics").await;
    assert!(
        page.contains("vllm:lora_requests_info{max_lora=\"1\""),
        "{page}"
    );
    assert_eq!(get(addr, "/nope").await.0, 404);
    fleet.shutdown().await;
}
