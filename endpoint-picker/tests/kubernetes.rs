//! Kubernetes discovery against a scripted API server (real HTTP, real Kubernetes JSON): the
//! pool's endpoints follow pods and the InferencePool through list, watch, bookmarks, 410 Gone,
//! dropped connections and API errors; readiness waits for the first full sync.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

#[path = "kubernetes/apiserver.rs"]
mod apiserver;

use std::sync::Arc;
use std::time::Duration;

use apiserver::{ApiServer, NAMESPACE, PODS, POOLS};
use kvpick_epp::clock::Clock;
use kvpick_epp::discovery::kubernetes::{
    Discovery, EndpointDefaults, KubeSettings, Retry, Scope, Selector, Target,
};
use kvpick_epp::pool::{Pool, PoolView};
use kvpick_scheduler::{IndexConfig, KvIndex};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn pod(name: &str, ip: &str, ready: bool, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        },
    })
}

fn vllm(name: &str, ip: &str, ready: bool) -> Value {
    pod(
        name,
        ip,
        ready,
        json!({"app": "vllm", "llm-d.ai/role": "decode"}),
    )
}

fn pool(selector: Value, ports: &[u16]) -> Value {
    let ports: Vec<Value> = ports.iter().map(|p| json!({"number": p})).collect();
    json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "pool"},
        "spec": {
            "selector": {"matchLabels": selector},
            "targetPorts": ports,
            "endpointPickerRef": {"name": "kvpick-epp", "port": {"number": 9002}},
        },
    })
}

struct Harness {
    api: ApiServer,
    pool: Arc<Pool>,
    views: watch::Receiver<Arc<PoolView>>,
    synced: watch::Receiver<bool>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Harness {
    async fn start(target: Target) -> Self {
        let api = ApiServer::start().await;
        let settings = KubeSettings {
            namespace: Some(NAMESPACE.into()),
            target,
            defaults: EndpointDefaults {
                model: Some("qwen".into()),
                ..EndpointDefaults::default()
            },
            retry: Retry {
                min: Duration::from_millis(20),
                max: Duration::from_millis(200),
            },
        };
        let pool = Arc::new(Pool::new(
            Arc::new(KvIndex::new(IndexConfig::default())),
            Clock::new(),
        ));
        let (tx, synced) = watch::channel(false);
        let stop = CancellationToken::new();
        let discovery = Discovery::new(api.client(), settings);
        assert_eq!(discovery.namespace(), NAMESPACE);
        let task = tokio::spawn(discovery.run(pool.clone(), tx, stop.clone()));
        Self {
            views: pool.subscribe(),
            api,
            pool,
            synced,
            stop,
            task,
        }
    }

    fn addresses(&self) -> Vec<String> {
        let mut a: Vec<String> = self
            .pool
            .view()
            .members
            .iter()
            .map(|m| m.endpoint.address.to_string())
            .collect();
        a.sort();
        a
    }

    /// Waits until the pool's addresses are exactly `want`.
    async fn expect(&mut self, want: &[&str]) {
        let ok = tokio::time::timeout(WAIT, async {
            loop {
                if self.addresses() == want {
                    return;
                }
                self.views.changed().await.unwrap();
            }
        })
        .await;
        assert!(ok.is_ok(), "want {want:?}, have {:?}", self.addresses());
    }

    async fn until(&self, what: &str, cond: impl Fn(&ApiServer) -> bool) {
        let ok = tokio::time::timeout(WAIT, async {
            while !cond(&self.api) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(ok.is_ok(), "timed out waiting for {what}");
    }

    async fn synced(&mut self, want: bool) {
        let ok = tokio::time::timeout(WAIT, self.synced.wait_for(|s| *s == want)).await;
        assert!(ok.is_ok(), "synced never became {want}");
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn endpoints_follow_pod_readiness_ips_labels_and_deletion() {
    let mut h = Harness::start(Target::Pool("pool".into())).await;
    h.api.apply(PODS, vllm("a", "127.0.1.1", true));
    h.api.apply(PODS, vllm("b", "127.0.1.2", false));
    h.api
        .apply(PODS, pod("c", "127.0.1.3", true, json!({"app": "other"})));
    h.until("the pool watch to list", |a| a.requests(POOLS, "list") > 0)
        .await;
    assert!(!*h.synced.borrow(), "no pool yet: not synced");
    assert!(h.addresses().is_empty());

    h.api.apply(POOLS, pool(json!({"app": "vllm"}), &[8000]));
    h.synced(true).await;
    h.expect(&["127.0.1.1:8000"]).await;
    let m = h.pool.view().members[0].clone();
    assert_eq!(m.endpoint.labels["llm-d.ai/role"], "decode");
    assert_eq!(&*m.endpoint.model, "qwen");
    assert_eq!(m.spec.kv_events.as_deref(), Some("tcp://127.0.1.1:5557"));
    assert_eq!(m.spec.metrics, "http://127.0.1.1:8000/metrics");

    h.api.apply(PODS, vllm("b", "127.0.1.2", true));
    h.expect(&["127.0.1.1:8000", "127.0.1.2:8000"]).await;
    h.api.apply(PODS, vllm("a", "127.0.1.1", false));
    h.expect(&["127.0.1.2:8000"]).await;
    h.api.apply(PODS, vllm("a", "127.0.1.9", true));
    h.expect(&["127.0.1.2:8000", "127.0.1.9:8000"]).await;
    // Labels: c moves into the selector (ADDED), b out of it (DELETED), a changes role.
    h.api
        .apply(PODS, pod("c", "127.0.1.3", true, json!({"app": "vllm"})));
    h.expect(&["127.0.1.2:8000", "127.0.1.3:8000", "127.0.1.9:8000"])
        .await;
    h.api
        .apply(PODS, pod("b", "127.0.1.2", true, json!({"app": "gone"})));
    h.expect(&["127.0.1.3:8000", "127.0.1.9:8000"]).await;
    h.api.apply(
        PODS,
        pod(
            "a",
            "127.0.1.9",
            true,
            json!({"app": "vllm", "llm-d.ai/role": "prefill"}),
        ),
    );
    let ok = tokio::time::timeout(WAIT, async {
        loop {
            let v = h.pool.view();
            if v.members.iter().any(|m| {
                m.endpoint
                    .labels
                    .get("llm-d.ai/role")
                    .is_some_and(|r| r == "prefill")
            }) {
                return;
            }
            h.views.changed().await.unwrap();
        }
    })
    .await;
    assert!(ok.is_ok(), "label change not seen");
    h.api.delete(PODS, "a");
    h.expect(&["127.0.1.3:8000"]).await;
    h.stop().await;
}

#[tokio::test]
async fn pool_selector_and_target_port_changes_take_effect_without_restart() {
    let mut h = Harness::start(Target::Pool("pool".into())).await;
    h.api.apply(PODS, vllm("a", "127.0.2.1", true));
    h.api
        .apply(PODS, pod("n", "127.0.2.2", true, json!({"app": "next"})));
    h.api.apply(POOLS, pool(json!({"app": "vllm"}), &[8000]));
    h.synced(true).await;
    h.expect(&["127.0.2.1:8000"]).await;

    h.api
        .apply(POOLS, pool(json!({"app": "vllm"}), &[8000, 8001]));
    h.expect(&["127.0.2.1:8000", "127.0.2.1:8001"]).await;
    let view = h.pool.view();
    let rank1 = view.by_address(&"127.0.2.1:8001".parse().unwrap()).unwrap();
    assert_eq!(
        rank1.spec.kv_events.as_deref(),
        Some("tcp://127.0.2.1:5558")
    );

    let pod_watches = h.api.requests(PODS, "list");
    h.api.apply(POOLS, pool(json!({"app": "next"}), &[9000]));
    h.expect(&["127.0.2.2:9000"]).await;
    assert!(
        h.api.requests(PODS, "list") > pod_watches,
        "a new pod watch"
    );
    // The old selector's pods no longer count.
    h.api.apply(PODS, vllm("a2", "127.0.2.3", true));
    h.api
        .apply(PODS, pod("n2", "127.0.2.4", true, json!({"app": "next"})));
    h.expect(&["127.0.2.2:9000", "127.0.2.4:9000"]).await;

    h.api.delete(POOLS, "pool");
    h.expect(&[]).await;
    h.synced(false).await;
    h.api.apply(POOLS, pool(json!({"app": "vllm"}), &[8000]));
    h.synced(true).await;
    h.expect(&["127.0.2.1:8000", "127.0.2.3:8000"]).await;
    h.stop().await;
}

#[tokio::test]
async fn watches_resume_after_bookmarks_and_dropped_connections_and_relist_after_410() {
    let mut h = Harness::start(Target::Pool("pool".into())).await;
    h.api.apply(POOLS, pool(json!({"app": "vllm"}), &[8000]));
    h.api.apply(PODS, vllm("a", "127.0.3.1", true));
    h.synced(true).await;
    h.expect(&["127.0.3.1:8000"]).await;
    h.until("the pod watch", |a| a.requests(PODS, "watch") > 0)
        .await;

    h.api.bookmark();
    h.api.apply(PODS, vllm("b", "127.0.3.2", true));
    h.expect(&["127.0.3.1:8000", "127.0.3.2:8000"]).await;

    let (lists, watches) = (h.api.requests(PODS, "list"), h.api.requests(PODS, "watch"));
    h.api.drop_watches();
    h.until("a new pod watch", |a| a.requests(PODS, "watch") > watches)
        .await;
    h.api.apply(PODS, vllm("c", "127.0.3.3", true));
    h.expect(&["127.0.3.1:8000", "127.0.3.2:8000", "127.0.3.3:8000"])
        .await;
    assert_eq!(h.api.requests(PODS, "list"), lists, "resumed, not relisted");

    // History compacted while disconnected: the resumed watch gets 410 and the pod relists.
    h.api.compact_after(|a| {
        a.delete(PODS, "b");
        a.apply(PODS, vllm("d", "127.0.3.4", true));
    });
    h.expect(&["127.0.3.1:8000", "127.0.3.3:8000", "127.0.3.4:8000"])
        .await;
    assert!(h.api.requests(PODS, "list") > lists, "relisted after 410");
    // Every watch asks the server to end it after a minute, which bounds a silent stall.
    let timeouts = h.api.watch_timeouts();
    assert!(!timeouts.is_empty());
    assert!(
        timeouts.iter().all(|t| t.as_deref() == Some("60")),
        "{timeouts:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn api_errors_keep_the_last_known_set_and_readiness_waits_for_the_first_sync() {
    let mut h = Harness::start(Target::Pool("pool".into())).await;
    h.api.set_failing(true);
    h.api.apply(POOLS, pool(json!({"app": "vllm"}), &[8000]));
    h.api.apply(PODS, vllm("a", "127.0.4.1", true));
    h.until("retries", |a| a.requests(POOLS, "failed") >= 3)
        .await;
    assert!(!*h.synced.borrow(), "not ready before a successful sync");
    assert!(h.addresses().is_empty());
    h.api.set_failing(false);
    h.synced(true).await;
    h.expect(&["127.0.4.1:8000"]).await;

    h.api.set_failing(true);
    h.api.apply(PODS, vllm("b", "127.0.4.2", true));
    let failed = h.api.requests(PODS, "failed");
    h.until("pod retries", |a| a.requests(PODS, "failed") >= failed + 3)
        .await;
    assert_eq!(h.addresses(), ["127.0.4.1:8000"], "kept during the outage");
    assert!(*h.synced.borrow(), "still ready");
    h.api.set_failing(false);
    h.expect(&["127.0.4.1:8000", "127.0.4.2:8000"]).await;
    h.stop().await;
}

#[tokio::test]
async fn without_a_pool_a_selector_and_target_ports_define_the_endpoints() {
    let scope = Scope::new(Selector::parse("app=vllm").unwrap(), vec![8000, 8001]).unwrap();
    let mut h = Harness::start(Target::Pods(scope)).await;
    h.api.apply(PODS, vllm("a", "127.0.5.1", true));
    h.api
        .apply(PODS, pod("x", "127.0.5.9", true, json!({"app": "x"})));
    h.synced(true).await;
    h.expect(&["127.0.5.1:8000", "127.0.5.1:8001"]).await;
    h.api.delete(PODS, "a");
    h.expect(&[]).await;
    assert_eq!(h.api.requests(POOLS, "list"), 0, "no pool is watched");
    h.stop().await;
}
