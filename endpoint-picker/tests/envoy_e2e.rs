//! End to end with a real Envoy: client → Envoy (GIE reference config, full-duplex ext_proc,
//! ORIGINAL_DST on the picker's header) → one of three stand-in vLLM pods, with kvpick-epp
//! discovering the pods from an endpoints file and scraping their `/metrics`.
//!
//! KV events: until the ingestion helper's subscriber lands, the tests tell the index what a pod
//! holds with `KvIndex::apply` (the same call the subscriber makes), standing in for the pod's
//! ZMQ events.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::envoy::{self, Envoy};
use common::prompt;
use common::vllm::Pod;
use http_body_util::{BodyExt, Full};
use kvpick_epp::pool::Freshness;
use kvpick_epp::{Server, Settings};
use kvpick_scheduler::EventsState;
use kvpick_scheduler::events::{BlockStored, EngineHash, EventBatch, KvEvent};
use tokio::sync::oneshot;

struct Fleet {
    pods: Vec<Pod>,
    shared: Arc<kvpick_epp::Shared>,
    pool: Arc<kvpick_epp::pool::Pool>,
    envoy: Envoy,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

const STALENESS: Duration = Duration::from_millis(400);

impl Fleet {
    async fn start() -> Self {
        let mut pods = Vec::new();
        for _ in 0..3 {
            pods.push(Pod::start().await);
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("endpoints.yaml");
        let mut yaml = String::from("model: m\nblockSize: 16\nendpoints:\n");
        for p in &pods {
            yaml.push_str(&format!("  - address: {}\n", p.addr));
        }
        std::fs::write(&file, yaml).unwrap();
        let mut settings = Settings::loopback();
        settings.endpoints_file = Some(file);
        settings.endpoints_poll = Duration::from_millis(200);
        settings.metrics = Some("127.0.0.1:0".parse().unwrap());
        settings.route.staleness = STALENESS;
        settings.limits.max_body_bytes = 100_000;
        settings.scrape.staleness = STALENESS;
        settings.scrape.timeout = Duration::from_millis(200);
        let server = Server::bind(settings).await.unwrap();
        let (shared, pool) = (server.shared().clone(), server.pool().clone());
        let grpc = server.grpc_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        let envoy = Envoy::start(grpc).await;
        let fleet = Self {
            pods,
            shared,
            pool,
            envoy,
            stop: Some(tx),
            _dir: dir,
        };
        fleet.wait(|f| f.fresh() == 3).await;
        fleet
    }

    fn fresh(&self) -> usize {
        let now = self.shared.clock.now();
        self.pool
            .view()
            .members
            .iter()
            .filter(|m| m.freshness(now, STALENESS) == Freshness::Fresh)
            .count()
    }

    async fn wait(&self, done: impl Fn(&Self) -> bool) {
        for _ in 0..100 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("condition not reached within 5 s");
    }

    /// Stands in for pod `i`'s KV events: it now holds `tokens`' full blocks.
    fn store(&self, i: usize, tokens: &[u32]) {
        let index = self.shared.router.scheduler().index();
        let view = self.pool.view();
        let member = view.by_address(&self.pods[i].addr).unwrap();
        let id = member.endpoint.id;
        let blocks = tokens.len() / 16;
        let batch = EventBatch {
            events: vec![KvEvent::BlockStored(BlockStored {
                block_hashes: (1..=blocks as u64).map(EngineHash).collect(),
                token_ids: tokens[..blocks * 16].to_vec(),
                block_size: 16,
                ..Default::default()
            })],
            ..Default::default()
        };
        assert_eq!(index.apply(id, "m", &batch).stored, blocks as u64);
        // Like the subscriber: the endpoint's events are flowing, so its index entries count.
        member.live.set_events(EventsState::Live);
    }

    /// Which pod served a completion, from its answer.
    fn served_by(&self, body: &[u8]) -> usize {
        let json: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)));
        let by = json["served_by"].as_str().unwrap().to_owned();
        self.pods
            .iter()
            .position(|p| p.addr.to_string() == by)
            .unwrap()
    }

    async fn complete(&self, tokens: &[u32], headers: &[(&str, &str)]) -> usize {
        let body = serde_json::json!({"model": "m", "prompt": tokens, "max_tokens": 1}).to_string();
        let (status, _, answer) =
            envoy::post(&self.envoy, "/v1/completions", body.as_bytes(), headers).await;
        assert_eq!(
            status,
            200,
            "{}\n{}",
            String::from_utf8_lossy(&answer),
            self.envoy.log_text()
        );
        self.served_by(&answer)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lands_on_the_pod_holding_its_prefix() {
    let f = Fleet::start().await;
    for (pod, seed) in [(1, 1), (2, 2), (0, 3)] {
        let tokens = prompt(512, seed);
        f.store(pod, &tokens[..384]);
        assert_eq!(f.complete(&tokens, &[]).await, pod);
    }
    // A client-sent destination header is replaced, never obeyed.
    let tokens = prompt(256, 4);
    f.store(2, &tokens);
    let forged = f.pods[0].addr.to_string();
    assert_eq!(
        f.complete(&tokens, &[("x-gateway-destination-endpoint", &forged)])
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_pod_loses_to_idle_ones_when_nobody_holds_the_prefix() {
    let f = Fleet::start().await;
    f.pods[0].state.waiting.store(50, Ordering::Relaxed);
    let view = f.pool.view();
    let loaded = view.by_address(&f.pods[0].addr).unwrap().live.clone();
    f.wait(|_| loaded.signals().is_some_and(|s| s.waiting == 50))
        .await;
    for seed in 10..16 {
        assert_ne!(f.complete(&prompt(128, seed), &[]).await, 0);
    }
    assert_eq!(f.pods[0].state.served.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_responses_arrive_incrementally() {
    let f = Fleet::start().await;
    let body = serde_json::json!({"model": "m", "prompt": "tell me", "stream": true}).to_string();
    let req = hyper::Request::post(format!("http://{}/v1/completions", f.envoy.listen))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = envoy::client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The pod holds everything after its first event until released: the client must see that
    // first event now, through Envoy and the picker's echo, or streaming is stalled somewhere.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "first SSE event not delivered while the stream is open\n{}",
                f.envoy.log_text()
            )
        })
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\"first\""));
    for p in &f.pods {
        p.state.release.notify_one();
    }
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("\"second\"") && rest.ends_with("data: [DONE]\n\n"),
        "{rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_through_envoy() {
    let f = Fleet::start().await;
    for (body, needle) in [
        (&b"{not json"[..], "malformed JSON"),
        (br#"{"prompt":"x"}"#, "model"),
    ] {
        let (status, headers, answer) = envoy::post(&f.envoy, "/v1/completions", body, &[]).await;
        assert_eq!(status, 400);
        assert_eq!(headers["content-type"], "application/json");
        let json: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert!(
            json["error"]["message"].as_str().unwrap().contains(needle),
            "{json}"
        );
    }
    // Larger than --max-body-bytes: refused while the body is still streaming in.
    let big = serde_json::json!({"model": "m", "prompt": "x".repeat(300_000)}).to_string();
    let (status, _, answer) = envoy::post(&f.envoy, "/v1/completions", big.as_bytes(), &[]).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&answer));
    assert!(String::from_utf8_lossy(&answer).contains("exceeds 100000 bytes"));
    assert!(
        f.pods
            .iter()
            .all(|p| p.state.served.load(Ordering::Relaxed) == 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_pod_is_avoided() {
    let mut f = Fleet::start().await;
    let tokens = prompt(512, 42);
    f.store(2, &tokens);
    assert_eq!(f.complete(&tokens, &[]).await, 2);
    f.pods[2].stop().await;
    // Its scrapes now fail; once its signals are stale, it is no longer a candidate even though
    // the index still says it holds the prefix.
    f.wait(|f| f.fresh() == 2).await;
    for _ in 0..4 {
        assert_ne!(f.complete(&tokens, &[]).await, 2);
    }
}
