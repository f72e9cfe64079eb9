//! The manifests and the binary's Kubernetes mode: the committed CRD is the generated one, the
//! manifest checks pass (`manifests/check.py`), and a real `kvpick-epp --pool-name` against a
//! scripted API server, behind a real Envoy, exports every `kvpick_*` series that the Grafana
//! dashboard and the KEDA example query.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "kubernetes/apiserver.rs"]
mod apiserver;
mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use apiserver::{ApiServer, PODS, POOLS};
use common::free_port;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_committed_crd_is_the_generated_one() {
    let path = repo().join("manifests/crds/inferencepool.yaml");
    let committed = std::fs::read_to_string(&path).unwrap();
    let generated = kvpick_epp::discovery::kubernetes::crd::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "{} is stale: regenerate it with `cargo run -p kvpick-epp --bin print-crd > manifests/crds/inferencepool.yaml`",
        path.display()
    );
}

#[test]
fn manifest_checks_pass() {
    let out = Command::new("python3")
        .arg(repo().join("manifests/check.py"))
        .output()
        .expect("python3 runs manifests/check.py (.ci/setup installs its packages)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("manifests: all checks passed"), "{text}");
}

/// Every string under a PromQL-carrying key (`expr`, `query`, `definition`).
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

fn kvpick_names(texts: &[String]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for t in texts {
        let mut rest = t.as_str();
        while let Some(at) = rest.find("kvpick_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

fn queried_names() -> BTreeSet<String> {
    let dir = repo().join("manifests/examples");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("monitoring/kvpick-dashboard.json")).unwrap(),
    )
    .unwrap();
    let keda: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(dir.join("keda/scaledobject.yaml")).unwrap(),
    )
    .unwrap();
    let mut texts = Vec::new();
    queries(&dashboard, &mut texts);
    queries(&keda, &mut texts);
    let names = kvpick_names(&texts);
    assert!(names.len() >= 15, "too few kvpick series found: {names:?}");
    names
}

/// The binary as a child process, killed when dropped.
struct Epp(Child, PathBuf);

impl Drop for Epp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Epp {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

async fn readiness(health: SocketAddr) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health}"))
        .unwrap()
        .connect()
        .await
        .ok()?;
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .ok()?;
    Some(r.into_inner().status)
}

async fn scrape(url: &str) -> String {
    let Ok(resp) = common::envoy::client().get(url.parse().unwrap()).await else {
        return String::new();
    };
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn the_binary_discovers_its_pool_and_exports_every_series_the_dashboard_and_keda_query() {
    let wanted = queried_names();
    let vllm = common::vllm::Pod::start().await;
    let port = vllm.addr.port();
    let api = ApiServer::start().await;
    api.set_failing(true);
    api.apply(
        POOLS,
        json!({"metadata": {"name": "pool"}, "spec": {
            "selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": port}],
            "endpointPickerRef": {"name": "kvpick-epp", "port": {"number": 9002}}}}),
    );
    // A live pod (the stand-in vLLM), and one whose port is closed (its scrapes fail).
    for (name, ip) in [("live", "127.0.0.1"), ("dead", "127.0.0.2")] {
        api.apply(
            PODS,
            json!({"metadata": {"name": name, "labels": {"app": "vllm"},
                    "annotations": {"kvpick.io/kv-events-port": "0"}},
                "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = common::kubeconfig(dir.path(), api.addr);
    let (grpc, health, metrics) = (free_port(), free_port(), free_port());
    let log = dir.path().join("epp.log");
    let child = Command::new(env!("CARGO_BIN_EXE_kvpick-epp"))
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "info")
        .args([
            "--listen-address",
            "127.0.0.1",
            "--pool-name",
            "pool",
            "--model",
            "m",
        ])
        .arg("--config")
        .arg(repo().join("manifests/base/picker-config.yaml"))
        .args([
            "--grpc-port",
            &grpc.to_string(),
            "--health-port",
            &health.to_string(),
            "--query-port",
            "0",
        ])
        .args(["--metrics-port", &metrics.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let epp = Epp(child, log);
    let health: SocketAddr = format!("127.0.0.1:{health}").parse().unwrap();

    // Not ready while the API server fails; ready once the pool and its pods are listed.
    for _ in 0..200 {
        if api.requests(POOLS, "failed") >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(api.requests(POOLS, "failed") >= 2, "{}", epp.log());
    assert_eq!(
        readiness(health).await,
        Some(ServingStatus::NotServing as i32),
        "{}",
        epp.log()
    );
    api.set_failing(false);
    let mut ready = false;
    for _ in 0..200 {
        if readiness(health).await == Some(ServingStatus::Serving as i32) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "never ready: {}", epp.log());

    // The closed port's scrapes fail (and are counted); then that pod goes away.
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    let mut page = String::new();
    for _ in 0..100 {
        page = scrape(&url).await;
        if page.contains("kvpick_endpoint_scrape_errors_total{")
            && page.contains("kvpick_endpoints 2")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        page.contains("kvpick_endpoint_scrape_errors_total{"),
        "{page}"
    );
    // Per-endpoint series leave with their pod: what the dashboard queries is checked on this
    // page too, while the failing pod is still there.
    let mut missing = wanted.clone();
    missing.retain(|n| !exported(&page).contains(n.as_str()));
    api.delete(PODS, "dead");
    for _ in 0..100 {
        page = scrape(&url).await;
        if page.contains("kvpick_endpoints 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        page.contains("kvpick_endpoints 1"),
        "the deleted pod left: {page}"
    );
    for _ in 0..100 {
        if !page.contains("endpoint=\"127.0.0.2:") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        page = scrape(&url).await;
    }
    assert!(
        !page.contains("endpoint=\"127.0.0.2:"),
        "the deleted pod's series remain: {page}"
    );

    let envoy = common::envoy::Envoy::start(format!("127.0.0.1:{grpc}").parse().unwrap()).await;
    let prompt: Vec<u32> = (0..64).collect();
    let (status, _, body) =
        common::envoy::post(&envoy, "/v1/completions", &common::token_body(&prompt), &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains(&vllm.addr.to_string()));

    for _ in 0..100 {
        page = scrape(&url).await;
        let present = exported(&page);
        missing.retain(|n| !present.contains(n.as_str()));
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\n{page}"
    );
}

/// The metric names with samples on a page.
fn exported(page: &str) -> BTreeSet<&str> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect()
}
