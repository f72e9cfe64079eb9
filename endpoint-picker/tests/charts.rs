//! Drop-in into the endpoint picker charts: the real kvpick-epp binary, started with the exact
//! argument list each chart's EPP template renders (`tests/charts/*.args`, origins in
//! `tests/charts/NOTICE.md`) and the chart's default picker config, discovers its pod through a
//! scripted API server (KUBECONFIG), answers gRPC health for the service names the chart's probes
//! and Envoy health checks ask, and routes a request through a real Envoy that reaches it the way
//! the chart's gateway does (TLS unless the chart passes `--secure-serving=false`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

#[path = "kubernetes/apiserver.rs"]
mod apiserver;
mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use apiserver::{ApiServer, PODS, POOLS, REWRITES};
use common::envoy::{self, Envoy};
use common::vllm::Pod;
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const EXT_PROC: &str = "envoy.service.ext_proc.v3.ExternalProcessor";
const WAIT: Duration = Duration::from_secs(60);

/// The chart's arguments with the machine-specific values moved (see NOTICE.md).
fn chart_args(name: &str, health_port: u16, target_port: u16) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/charts");
    let text = std::fs::read_to_string(dir.join(format!("{name}.args"))).unwrap();
    let config = if name.starts_with("gie-") {
        "gie-inferencepool-v1.5.0-default-plugins.yaml"
    } else {
        "llm-d-router-default-plugins.yaml"
    };
    let mut args: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut previous = String::new();
    for a in &mut args {
        match (previous.as_str(), a.as_str()) {
            ("--config-file", "/config/default-plugins.yaml") => {
                *a = dir.join(config).display().to_string();
            }
            ("--grpc-health-port", "9003") => *a = health_port.to_string(),
            ("--endpoint-target-ports", "8000") => *a = target_port.to_string(),
            _ => {}
        }
        previous = a.clone();
    }
    args
}

struct Epp {
    child: Child,
    log: PathBuf,
}

impl Drop for Epp {
    fn drop(&mut self) {
        envoy::kill_group(&mut self.child);
    }
}

impl Epp {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn status(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

/// Waits until `service` on `addr` is SERVING.
async fn serving(epp: &mut Epp, addr: SocketAddr, service: &str) {
    let ok = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Some(s)) = epp.child.try_wait() {
                panic!("kvpick-epp exited ({s}):\n{}", epp.log_text());
            }
            if status(addr, service).await == Some(ServingStatus::Serving) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "{service} on {addr} never SERVING:\n{}",
        epp.log_text()
    );
}

/// Envoy's ext_proc cluster as the charts' gateways reach the picker: over TLS without
/// verifying it (the llm-d standalone chart's Envoy, Istio's DestinationRule, agentgateway),
/// health-checked with the ext_proc service name.
fn tls_epp_cluster(template: &str, tls: bool) -> String {
    let anchor = "    load_assignment:\n      cluster_name: epp\n";
    assert!(
        template.contains(anchor),
        "the template's epp cluster changed"
    );
    let mut extra = String::from(
        "    health_checks:\n    - timeout: 2s\n      interval: 1s\n      unhealthy_threshold: 3\n      \
         healthy_threshold: 1\n      grpc_health_check:\n        service_name: \
         \"envoy.service.ext_proc.v3.ExternalProcessor\"\n",
    );
    if tls {
        extra.push_str(
            "      tls_options:\n        alpn_protocols: [\"h2\"]\n    transport_socket:\n      \
             name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": \
             type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        \
             common_tls_context:\n          alpn_protocols: [\"h2\"]\n",
        );
    }
    template.replace(anchor, &format!("{extra}{anchor}"))
}

/// Runs kvpick-epp with chart `name`'s arguments against one stand-in pod and checks it serves
/// the `probes` names on the health port and routes through Envoy (over TLS when `tls`).
async fn drop_in(name: &str, probes: &[&str], tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let pod = Pod::start().await;
    let api = ApiServer::start().await;
    api.apply(
        PODS,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "vllm-qwen3-0", "labels": {"app": "vllm-qwen3"}},
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}]},
        }),
    );
    api.apply(
        POOLS,
        json!({
            "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "vllm-qwen3"},
            "spec": {
                "selector": {"matchLabels": {"app": "vllm-qwen3"}},
                "targetPorts": [{"number": pod.addr.port()}],
                "endpointPickerRef": {"name": "vllm-qwen3-epp", "port": {"number": 9002}},
            },
        }),
    );
    api.apply(
        REWRITES,
        json!({
            "apiVersion": "llm-d.ai/v1alpha2", "kind": "InferenceModelRewrite",
            "metadata": {"name": "alias", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"poolRef": {"name": "vllm-qwen3"}, "rules": [{
                "matches": [{"model": {"value": "qwen-alias"}}],
                "targets": [{"modelRewrite": "m"}],
            }]},
        }),
    );
    let (grpc, health, metrics) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let args = chart_args(name, health, pod.addr.port());
    let log = dir.path().join("kvpick-epp.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kvpick-epp"))
        .args(&args)
        .env("KUBECONFIG", common::kubeconfig(dir.path(), api.addr))
        .env("KVPICK_LISTEN_ADDRESS", "127.0.0.1")
        .env("KVPICK_GRPC_PORT", grpc.to_string())
        // Only where the chart passes no --grpc-health-port (the Inference Extension's).
        .env("KVPICK_HEALTH_PORT", health.to_string())
        .env("KVPICK_METRICS_PORT", metrics.to_string())
        .env("KVPICK_QUERY_PORT", "0")
        // What the chart's `router.epp.env` (or `inferenceExtension.env`) sets: the pods'
        // model, which their labels cannot carry.
        .env("KVPICK_MODEL", "m")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .unwrap();
    let mut epp = Epp { child, log };
    let health = SocketAddr::from(([127, 0, 0, 1], health));
    let grpc = SocketAddr::from(([127, 0, 0, 1], grpc));
    for probe in probes {
        serving(&mut epp, health, probe).await;
    }
    // The Envoy health check's name, on the ext_proc port itself.
    serving(&mut epp, grpc, EXT_PROC).await;
    assert!(
        epp.log_text().contains("\"level\":\"INFO\""),
        "--zap-encoder json logs JSON:\n{}",
        epp.log_text()
    );

    let envoy = Envoy::start_edited(&[grpc], |t| tls_epp_cluster(t, tls)).await;
    let body = br#"{"model": "qwen-alias", "prompt": "Kubernetes is", "max_tokens": 4}"#;
    let (code, _, answer) = envoy::post(&envoy, "/v1/completions", body, &[]).await;
    assert_eq!(
        code,
        200,
        "{}\nkvpick-epp:\n{}\nenvoy:\n{}",
        String::from_utf8_lossy(&answer),
        epp.log_text(),
        envoy.log_text()
    );
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["served_by"], pod.addr.to_string());
    // With an InferencePool, the pool's InferenceModelRewrite renamed the model on its way to
    // the pod, and only it; a standalone chart (an endpoint selector, no pool) has no rewrites.
    let pooled = args.iter().any(|a| a.starts_with("--pool-name"));
    let model = if pooled { "m" } else { "qwen-alias" };
    assert_eq!(answer["model"], model);
    assert_eq!(
        answer["body_bytes"],
        body.len() - "qwen-alias".len() + model.len()
    );
    // Envoy's own health check of the ext_proc cluster (over TLS where the chart expects it).
    let clusters = envoy.admin("/clusters").await;
    let healthy = format!("epp::{grpc}::health_flags::healthy");
    assert!(clusters.contains(&healthy), "{healthy} not in:\n{clusters}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_d_router_gateway_chart() {
    drop_in("llm-d-router-gateway", &["inference-extension"], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_d_router_gateway_chart_with_replicas() {
    drop_in(
        "llm-d-router-gateway-replicas",
        &["liveness", "readiness"],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_d_router_standalone_chart_with_envoy() {
    drop_in("llm-d-router-standalone", &["inference-extension"], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_d_router_standalone_chart_with_agentgateway_plaintext() {
    drop_in(
        "llm-d-router-standalone-agentgateway",
        &["inference-extension"],
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_extension_inferencepool_chart_v1_5() {
    drop_in("gie-inferencepool-v1.5.0", &["inference-extension"], true).await;
}
