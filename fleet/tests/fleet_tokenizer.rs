//! The fleet with a model's tokenizer (`--tokenizer DIR`): `/tokenize` and the prompts it serves
//! give exactly the ids transformers computes (kvpick-tokenize's reference fixtures, generated
//! with transformers and tokenizers), for completions prompts and chat requests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed unwrap is a failed test

mod fleet_util;

use std::path::PathBuf;

use fleet_util::{post, post_raw};
use kvpick_fleet::Fleet;
use kvpick_fleet::servers::tokenizer::Tokenizer;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tokenize/tests/fixtures")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_and_prompts_match_transformers() {
    let reference: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("reference.json")).unwrap()).unwrap();
    let mut cfg = fleet_util::config(1);
    cfg.tokenizer = Tokenizer::load(&fixtures().join("chatml")).unwrap();
    // Room for the fixtures' longest prompts.
    (cfg.profile.max_model_len, cfg.profile.kv_blocks) = (32_768, 4096);
    let fleet = Fleet::start(cfg).await.unwrap();
    let addr = fleet.servers()[0].address;
    let model = &reference["models"]["chatml"];

    let completions = model["completions"].as_array().unwrap();
    assert!(completions.len() >= 5);
    for case in completions {
        let (s, t) = post(addr, "/tokenize", &json!({"prompt": case["prompt"]})).await;
        assert_eq!(s, 200);
        assert_eq!(t["tokens"], case["ids"], "{}", case["prompt"]);
        if case["ids"].as_array().unwrap().is_empty() {
            continue; // vLLM refuses an empty prompt too
        }
        let (s, v) = post(
            addr,
            "/v1/completions",
            &json!({"prompt": case["prompt"], "max_tokens": 2}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["usage"]["prompt_tokens"].as_u64(),
            Some(case["ids"].as_array().unwrap().len() as u64)
        );
    }
    let chats = model["chats"].as_array().unwrap();
    assert!(!chats.is_empty());
    for case in chats {
        let (s, t) = post(addr, "/tokenize", &case["request"]).await;
        assert_eq!(s, 200, "{t}");
        assert_eq!(t["tokens"], case["ids"], "{}", case["request"]);
        let mut body = case["request"].clone();
        body["max_tokens"] = 2.into();
        let (s, v) = post(addr, "/v1/chat/completions", &body).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["usage"]["prompt_tokens"].as_u64(),
            Some(case["ids"].as_array().unwrap().len() as u64)
        );
        assert!(v["choices"][0]["message"]["content"].is_string());
    }
    // The response says which tokenizer made the ids.
    let req = hyper::Request::post(format!("http://{addr}/tokenize"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"prompt":"hi"}"#,
        )))
        .unwrap();
    let resp = fleet_util::http().request(req).await.unwrap();
    assert_eq!(resp.headers()["x-kvpick-sim-tokenizer"], "tokenizer.json");
    let (s, _) = post_raw(addr, "/tokenize", r#"{"messages": 3}"#).await;
    assert_eq!(s, 400);
    fleet.shutdown().await;
}
