//! Everything around the request path, over real sockets: file discovery reloads, gRPC health,
//! the Prometheus export, the kvpick.v1.Index query API, and the binary's flags and `query`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::vllm::Pod;
use kvpick_epp::query::pb;
use kvpick_epp::{Server, Settings};
use kvpick_scheduler::EventsState;
use kvpick_scheduler::events::{BlockStored, EngineHash, EventBatch, KvEvent};
use tokio::sync::oneshot;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

struct Running {
    server_grpc: SocketAddr,
    query: SocketAddr,
    health: SocketAddr,
    metrics: Option<SocketAddr>,
    shared: std::sync::Arc<kvpick_epp::Shared>,
    pool: std::sync::Arc<kvpick_epp::pool::Pool>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), kvpick_epp::Error>>,
}

async fn start(settings: Settings) -> Running {
    let server = Server::bind(settings).await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let r = (
        server.grpc_addr().unwrap(),
        server.health_addr().unwrap(),
        server.metrics_addr(),
        server.query_addr().unwrap(),
    );
    let (shared, pool) = (server.shared().clone(), server.pool().clone());
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running {
        server_grpc: r.0,
        query: r.3,
        health: r.1,
        metrics: r.2,
        shared,
        pool,
        stop: Some(tx),
        task,
    }
}

/// A KV-event "publisher" that accepts TCP connections and never says a word: ingestion connects
/// to it and waits, so nothing it does can touch the blocks these tests store by hand (a real
/// port like 5557 could be some other process's publisher on a shared machine).
fn silent_publisher() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

fn endpoints_yaml(addrs: &[SocketAddr], kv: &std::net::TcpListener) -> String {
    let kv = kv.local_addr().unwrap();
    let mut y = String::from("model: m\nblockSize: 16\nendpoints:\n");
    for a in addrs {
        y.push_str(&format!(
            "  - address: {a}\n    labels: {{role: decode}}\n    kvEvents: tcp://{kv}\n"
        ));
    }
    y
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not reached within 5 s");
}

fn store(r: &Running, addr: SocketAddr, tokens: &[u32]) {
    let view = r.pool.view();
    let member = view.by_address(&addr).unwrap();
    member.live.set_events(EventsState::Live);
    let id = member.endpoint.id;
    let batch = EventBatch {
        events: vec![KvEvent::BlockStored(BlockStored {
            block_hashes: (1..=(tokens.len() / 16) as u64).map(EngineHash).collect(),
            token_ids: tokens.to_vec(),
            block_size: 16,
            ..Default::default()
        })],
        ..Default::default()
    };
    r.shared.router.scheduler().index().apply(id, "m", &batch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_discovery_reloads_and_clears_leaving_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    let (a, b, c): (SocketAddr, SocketAddr, SocketAddr) = (
        "127.0.0.1:41001".parse().unwrap(),
        "127.0.0.1:41002".parse().unwrap(),
        "127.0.0.1:41003".parse().unwrap(),
    );
    let kv = silent_publisher();
    std::fs::write(&file, endpoints_yaml(&[a, b], &kv)).unwrap();
    let mut settings = Settings::loopback();
    settings.endpoints_file = Some(file.clone());
    settings.endpoints_poll = Duration::from_millis(50);
    let r = start(settings).await;
    let mut views = r.pool.subscribe();
    let first = views.borrow_and_update().clone();
    assert_eq!(first.members.len(), 2);
    let m = first.by_address(&a).unwrap();
    let kv_url = format!("tcp://{}", kv.local_addr().unwrap());
    assert_eq!(m.spec.kv_events.as_deref(), Some(kv_url.as_str()));
    assert_eq!(m.endpoint.labels["role"], "decode");
    let id_b = first.by_address(&b).unwrap().endpoint.id;
    store(&r, b, &(0..64).collect::<Vec<u32>>());
    let index = r.shared.router.scheduler().index().clone();
    assert_eq!(index.endpoint_entries(id_b), 4);

    // b leaves, c joins: the KV-event manager's watch sees it, and b's entries are gone.
    std::fs::write(&file, endpoints_yaml(&[a, c], &kv)).unwrap();
    tokio::time::timeout(Duration::from_secs(5), views.changed())
        .await
        .unwrap()
        .unwrap();
    let next = views.borrow_and_update().clone();
    assert!(next.by_address(&b).is_none() && next.by_address(&c).is_some());
    assert_ne!(
        next.by_address(&c).unwrap().endpoint.id,
        id_b,
        "b's id is still draining"
    );
    assert_eq!(index.endpoint_entries(id_b), 0);

    // A broken file is ignored: the last good set stays.
    std::fs::write(&file, "endpoints:\n  - address: nonsense\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.pool.view().generation, next.generation);
    let _ = r.stop.unwrap().send(());
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_export_and_query_api() {
    let pods = [Pod::start().await, Pod::start().await];
    pods[1].state.waiting.store(9, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    let kv = silent_publisher();
    std::fs::write(&file, endpoints_yaml(&[pods[0].addr, pods[1].addr], &kv)).unwrap();
    let mut settings = Settings::loopback();
    settings.endpoints_file = Some(file);
    settings.metrics = Some("127.0.0.1:0".parse().unwrap());
    let r = start(settings).await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", r.health))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in [
        "liveness",
        "readiness",
        "envoy.service.ext_proc.v3.ExternalProcessor",
    ] {
        let s = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.status, ServingStatus::Serving as i32, "{service}");
    }
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    let view = r.pool.view();
    let live = view.by_address(&pods[1].addr).unwrap().live.clone();
    eventually("pod 1 scraped", || {
        live.signals().is_some_and(|s| s.waiting == 9)
    })
    .await;
    let tokens: Vec<u32> = (1000..1160).collect();
    store(&r, pods[0].addr, &tokens[..128]);

    let mut api = pb::index_client::IndexClient::connect(format!("http://{}", r.query))
        .await
        .unwrap();
    let score = api
        .score(pb::ScoreRequest {
            model: "m".into(),
            prompt: Some(pb::score_request::Prompt::Tokens(pb::TokenIds {
                ids: tokens.clone(),
            })),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((score.total_blocks, score.block_size), (10, 16));
    let best = &score.endpoints[0];
    assert_eq!(
        (best.address.as_str(), best.matched_blocks, best.rank),
        (pods[0].addr.to_string().as_str(), 8, 0)
    );
    assert_eq!(best.scorer_scores.len(), score.scorers.len());
    assert_eq!(score.endpoints[1].matched_blocks, 0);
    let only = api
        .score(pb::ScoreRequest {
            model: "m".into(),
            prompt: Some(pb::score_request::Prompt::Tokens(pb::TokenIds {
                ids: tokens,
            })),
            candidates: vec![pods[1].addr.to_string()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only.endpoints.len(), 1);

    let list = api
        .list_endpoints(pb::ListEndpointsRequest {})
        .await
        .unwrap()
        .into_inner();
    let e1 = list
        .endpoints
        .iter()
        .find(|e| e.address == pods[1].addr.to_string())
        .unwrap();
    assert_eq!(
        (e1.freshness.as_str(), e1.signals.as_ref().unwrap().waiting),
        ("fresh", 9)
    );
    assert_eq!(e1.signals.as_ref().unwrap().block_size, Some(16));
    let e0 = list
        .endpoints
        .iter()
        .find(|e| e.address == pods[0].addr.to_string())
        .unwrap();
    assert_eq!(e0.blocks_held, 8);
    // Whoever reaches the ext_proc port cannot use the query API there.
    let mut on_extproc =
        pb::index_client::IndexClient::connect(format!("http://{}", r.server_grpc))
            .await
            .unwrap();
    let refused = on_extproc
        .list_endpoints(pb::ListEndpointsRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);

    // The binary's `query` subcommand against the same server.
    let out = Command::new(env!("CARGO_BIN_EXE_kvpick-epp"))
        .args(["query", "endpoints"])
        .env("KVPICK_QUERY_SERVER", format!("http://{}", r.query))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&pods[1].addr.to_string()) && text.contains("fresh"),
        "{text}"
    );

    let metrics_url = format!("http://{}/metrics", r.metrics.unwrap());
    let mut page = String::new();
    for _ in 0..40 {
        page = common::envoy::get_text(&metrics_url).await;
        if page.contains("kvpick_index_entries 8") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(page.contains("kvpick_endpoints 2"), "{page}");
    assert!(page.contains("kvpick_index_entries 8"), "{page}");
    assert!(
        page.contains(&format!(
            "kvpick_endpoint_waiting_requests{{endpoint=\"{}\"}} 9",
            pods[1].addr
        )),
        "{page}"
    );

    // Shutdown: readiness goes NOT_SERVING before the port closes.
    let _ = r.stop.unwrap().send(());
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap();
    if let Ok(Some(m)) = next {
        assert_eq!(m.status, ServingStatus::NotServing as i32);
    }
    r.task.await.unwrap().unwrap();
}

#[test]
fn the_binary_explains_its_flags_and_refuses_what_is_not_built() {
    let help = Command::new(env!("CARGO_BIN_EXE_kvpick-epp"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--grpc-port",
        "KVPICK_GRPC_PORT",
        "--refresh-metrics-interval",
        "[default: 50ms]",
        "--kv-events-bind",
        "--kv-events-port",
        "--kv-events-queue",
        "--tokenizer",
        "KVPICK_TOKENIZER",
        "--tokenizers-dir",
        "--tokenize-timeout",
        "--tokenize-cache-bytes",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from --help:\n{text}"
        );
    }
    // Without a cluster configuration, Kubernetes discovery fails at startup, not later.
    let k8s = Command::new(env!("CARGO_BIN_EXE_kvpick-epp"))
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .args([
            "--pool-name",
            "p",
            "--grpc-port",
            "0",
            "--health-port",
            "0",
            "--metrics-port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!k8s.status.success());
    assert!(String::from_utf8_lossy(&k8s.stderr).contains("Kubernetes discovery"));
    let bad = Command::new(env!("CARGO_BIN_EXE_kvpick-epp"))
        .env("KVPICK_ENDPOINTS_FILE", "/nonexistent/endpoints.yaml")
        .args([
            "--grpc-port",
            "0",
            "--health-port",
            "0",
            "--metrics-port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent/endpoints.yaml"));
}
