//! The vertical slice, end to end with nothing stubbed: simulated vLLM pods (kvpick-sim's live
//! fleet: real HTTP, `/metrics`, and real ZMQ KV events in vLLM's msgpack format, tokenizing with
//! a real tokenizer), the real `kvpick-epp` binary (tokenizer from `KVPICK_TOKENIZER`, KV events
//! in connect mode from the endpoints file), and a real Envoy in front (`envoy` on PATH).
//!
//! Each pod in turn serves a long prompt sent to it directly, past Envoy and kvpick, so only its
//! KV events can tell kvpick where that prefix lives. A follow-up sharing the prefix, sent
//! through Envoy, must then land on that pod (checked on the pods' own counters and by the pod
//! reporting a prefix-cache hit), for a text completion and for a chat conversation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed unwrap is a failed test

mod common;

use common::envoy::{self, Envoy, post_direct};
use common::epp::Epp;
use kvpick_fleet::Profile;
use kvpick_fleet::servers::tokenizer::Tokenizer;
use kvpick_fleet::{Fleet, FleetConfig};
use serde_json::{Value, json};

const MODEL: &str = "chatml-sim";

/// A long text, different for each `seed`: many full KV blocks.
fn passage(seed: usize) -> String {
    let words = [
        "amber", "basalt", "cedar", "delta", "ember", "fjord", "granite", "harbor", "iris",
        "juniper", "kelp", "lagoon", "meadow", "nickel", "orchid", "pumice",
    ];
    (0..160)
        .map(|i| words[(i * 7 + seed * 5 + i / 16) % words.len()].to_string() + &i.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which pods' prompt-token counters moved between two snapshots.
fn served(fleet: &Fleet, before: &[u64]) -> Vec<usize> {
    fleet
        .servers()
        .iter()
        .enumerate()
        .filter(|(i, s)| s.stats().prompt_tokens != before[*i])
        .map(|(i, _)| i)
        .collect()
}

fn prompt_tokens(fleet: &Fleet) -> Vec<u64> {
    fleet
        .servers()
        .iter()
        .map(|s| s.stats().prompt_tokens)
        .collect()
}

fn cached(response: &Value) -> u64 {
    response["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_served_by_a_pod_routes_its_follow_up_there() {
    let mut cfg = FleetConfig::new(Profile::named("tiny").unwrap(), MODEL);
    cfg.pods = 3;
    cfg.speed = 4.0;
    cfg.tokenizer = Tokenizer::load(&common::fixtures::chatml()).unwrap();
    let fleet = Fleet::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoints = dir.path().join("endpoints.yaml");
    fleet.write_endpoints_file(&endpoints, true).unwrap();
    let mut epp = Epp::start(&endpoints, dir.path(), &common::fixtures::chatml());
    // Every pod scraped and its KV-event stream connected before traffic.
    let pods: Vec<_> = fleet.servers().iter().map(|s| s.address).collect();
    epp.wait_live(&pods).await;
    let gateway = Envoy::start(epp.grpc).await;

    for (pod, chat) in [(1, false), (0, true), (2, false)] {
        let server = &fleet.servers()[pod];
        let stored = format!(
            "kvpick_kv_events_blocks_total{{endpoint=\"{}\",op=\"stored\"}}",
            server.address
        );
        let held = epp.value(&stored).await;
        let text = passage(pod);
        let (first, path, follow_up) = if chat {
            let turn = json!([{"role": "system", "content": "Answer briefly."},
                              {"role": "user", "content": text}]);
            let mut next = turn.as_array().unwrap().clone();
            next.push(json!({"role": "assistant", "content": "Noted."}));
            next.push(json!({"role": "user", "content": "And the next word?"}));
            (
                json!({"model": MODEL, "messages": turn, "max_tokens": 2}),
                "/v1/chat/completions",
                json!({"model": MODEL, "messages": next, "max_tokens": 2}),
            )
        } else {
            (
                json!({"model": MODEL, "prompt": text, "max_tokens": 2}),
                "/v1/completions",
                json!({"model": MODEL, "prompt": format!("{text} and then"), "max_tokens": 2}),
            )
        };
        // Served by this pod directly: kvpick learns of it only through the pod's KV events.
        let before = prompt_tokens(&fleet);
        post_direct(server.address, path, &first).await;
        assert_eq!(served(&fleet, &before), vec![pod]);
        epp.wait_for(&stored, held + 10.0).await;

        let before = prompt_tokens(&fleet);
        let (status, _, body) =
            envoy::post(&gateway, path, follow_up.to_string().as_bytes(), &[]).await;
        let response: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "{response}");
        assert_eq!(
            served(&fleet, &before),
            vec![pod],
            "the follow-up ({path}) went elsewhere; kvpick-epp's log:\n{}",
            epp.log_text()
        );
        assert!(
            cached(&response) >= 160,
            "the pod found the prefix in its cache: {response}"
        );
    }
    // The requests through Envoy were tokenized locally, not routed by text.
    epp.wait_for(
        "kvpick_tokenize_total{source=\"local\",outcome=\"ok\"}",
        3.0,
    )
    .await;
    drop(gateway);
    drop(epp);
    fleet.shutdown().await;
}
