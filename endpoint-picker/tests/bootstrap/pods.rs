//! The pods of the bootstrap tests and how replicas find them: an endpoints file, or an
//! InferencePool and its pods on the scripted API server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::apiserver::{ApiServer, PODS, POOLS};
use crate::common;
use crate::faults_util::{Epp, SimFleet, Source, free_port, write_endpoints};

/// How replicas learn the pods.
enum Discovery {
    File(PathBuf),
    /// `--pool-name pool` against the API server (kept running here).
    Kubernetes {
        _api: ApiServer,
        kubeconfig: PathBuf,
    },
}

/// Two simulated pods whose replay buffers hold 4 batches, and how replicas find them.
pub struct Pods {
    _fleets: Vec<SimFleet>,
    pub addrs: Vec<SocketAddr>,
    discovery: Discovery,
}

impl Pods {
    /// One fleet process of two pods, listed in an endpoints file.
    pub async fn file(dir: &Path) -> Self {
        let fleet = SimFleet::start(dir, "pods", 2, &["--replay-buffer", "4"]).await;
        let endpoints = dir.join("endpoints.yaml");
        write_endpoints(&endpoints, &fleet.entries);
        Self {
            addrs: fleet.addrs.clone(),
            _fleets: vec![fleet],
            discovery: Discovery::File(endpoints),
        }
    }

    /// Two pods as a cluster runs them: each its own IP (127.0.1.1 and 127.0.1.2) with the same
    /// HTTP, KV-event and replay ports (the latter two as pod annotations), both selected by the
    /// InferencePool `pool`.
    pub async fn kubernetes(dir: &Path) -> Self {
        let [http, kv, replay] = [free_port(), free_port(), free_port()].map(|p| p.to_string());
        let (http, kv, replay) = (http.as_str(), kv.as_str(), replay.as_str());
        let api = ApiServer::start().await;
        api.apply(
            POOLS,
            json!({
                "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                "metadata": {"name": "pool"},
                "spec": {
                    "selector": {"matchLabels": {"app": "vllm"}},
                    "targetPorts": [{"number": http.parse::<u16>().unwrap()}],
                    "endpointPickerRef": {"name": "kvpick-epp", "port": {"number": 9002}},
                },
            }),
        );
        let mut fleets = Vec::new();
        for (i, ip) in ["127.0.1.1", "127.0.1.2"].into_iter().enumerate() {
            let name = format!("vllm-{i}");
            let flags = ["--replay-buffer", "4", "--host", ip, "--port", http];
            let flags = [&flags[..], &["--kv-port", kv, "--replay-port", replay]].concat();
            fleets.push(SimFleet::start(dir, &name, 1, &flags).await);
            api.apply(
                PODS,
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "labels": {"app": "vllm"}, "annotations": {
                        "kvpick.io/kv-events-port": kv, "kvpick.io/kv-replay-port": replay}},
                    "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
                    "status": {"phase": "Running", "podIP": ip,
                        "conditions": [{"type": "Ready", "status": "True"}]},
                }),
            );
        }
        Self {
            addrs: fleets.iter().map(|f| f.addrs[0]).collect(),
            _fleets: fleets,
            discovery: Discovery::Kubernetes {
                kubeconfig: common::kubeconfig(dir, api.addr),
                _api: api,
            },
        }
    }

    /// Where a replica finds them.
    pub fn source(&self) -> Source<'_> {
        match &self.discovery {
            Discovery::File(path) => Source::File(path),
            Discovery::Kubernetes { kubeconfig, .. } => Source::Pool {
                kubeconfig,
                name: "pool",
            },
        }
    }

    /// A replica of the pool, once ready (as the gateway's health check would wait).
    pub async fn epp(&self, dir: &Path, name: &'static str, extra: &[&str]) -> Epp {
        let epp = Epp::start_from(dir, name, self.source(), extra).await;
        epp.wait_serving("readiness").await;
        epp
    }
}
