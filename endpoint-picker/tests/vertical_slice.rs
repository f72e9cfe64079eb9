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

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::envoy::{self, Envoy};
use common::free_port;
use http_body_util::{BodyExt, Full};
use kvpick_fleet::Profile;
use kvpick_fleet::servers::tokenizer::Tokenizer;
use kvpick_fleet::{Fleet, FleetConfig};
use serde_json::{Value, json};

const MODEL: &str = "chatml-sim";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tokenize/tests/fixtures/chatml")
}

/// The kvpick-epp binary in its own process group, killed with it when dropped.
struct Epp {
    child: Child,
    grpc: SocketAddr,
    metrics: String,
    log: PathBuf,
}

impl Epp {
    fn start(endpoints: &std::path::Path, dir: &std::path::Path) -> Self {
        let (grpc, health, metrics) = (free_port(), free_port(), free_port());
        let log = dir.join("kvpick-epp.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kvpick-epp"))
            .args(["--listen-address", "127.0.0.1", "--endpoints-file"])
            .arg(endpoints)
            .args(["--refresh-metrics-interval", "50ms"])
            .env("KVPICK_GRPC_PORT", grpc.to_string())
            .env("KVPICK_HEALTH_PORT", health.to_string())
            .env("KVPICK_METRICS_PORT", metrics.to_string())
            .env("KVPICK_QUERY_PORT", "0")
            // A bare directory: the default tokenizer of every model.
            .env("KVPICK_TOKENIZER", fixture())
            // Generous: a debug build on a shared machine.
            .env("KVPICK_TOKENIZE_TIMEOUT", "10s")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap();
        Self {
            child,
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            metrics: format!("http://127.0.0.1:{metrics}/metrics"),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus page, once the exporter answers.
    async fn page(&mut self) -> String {
        for _ in 0..600 {
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("kvpick-epp exited ({s}):\n{}", self.log_text());
            }
            if let Ok(resp) = envoy::client().get(self.metrics.parse().unwrap()).await
                && resp.status() == 200
            {
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                return String::from_utf8_lossy(&body).into_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("kvpick-epp's metrics never answered:\n{}", self.log_text());
    }

    /// A series' value on the page (0 when absent).
    async fn value(&mut self, series: &str) -> f64 {
        let page = self.page().await;
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Waits until `series` reaches `at_least`.
    async fn wait_for(&mut self, series: &str, at_least: f64) {
        for _ in 0..300 {
            if self.value(series).await >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{series} never reached {at_least}:\n{}\n{}",
            self.page().await,
            self.log_text()
        );
    }
}

impl Drop for Epp {
    fn drop(&mut self) {
        envoy::kill_group(&mut self.child);
    }
}

async fn post_direct(addr: SocketAddr, path: &str, body: &Value) -> Value {
    let req = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), envoy::client().request(req))
        .await
        .expect("pod did not answer within 30 s")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

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
    cfg.tokenizer = Tokenizer::load(&fixture()).unwrap();
    let fleet = Fleet::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoints = dir.path().join("endpoints.yaml");
    fleet.write_endpoints_file(&endpoints, true).unwrap();
    let mut epp = Epp::start(&endpoints, dir.path());
    // Every pod scraped and its KV-event stream connected (state 2 = live) before traffic.
    epp.wait_for("kvpick_pool_ready_endpoints", 3.0).await;
    for s in fleet.servers() {
        let series = format!(
            "kvpick_kv_events_connects_total{{endpoint=\"{}\"}}",
            s.address
        );
        epp.wait_for(&series, 1.0).await;
    }
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
