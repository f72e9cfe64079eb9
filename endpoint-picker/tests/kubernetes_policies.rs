//! InferenceObjectives and InferenceModelRewrites watched through `kube` against a scripted API
//! server (real HTTP, real Kubernetes JSON): both groups, objects for other pools ignored, groups
//! whose CRD is not installed tolerated, changes and deletions followed, relists after 410.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

#[path = "kubernetes/apiserver.rs"]
mod apiserver;

use std::sync::Arc;
use std::time::Duration;

use apiserver::{ApiServer, OBJECTIVES, OLD_OBJECTIVES, OLD_REWRITES, REWRITES};
use kvpick_epp::cluster_policy::{ClusterPolicy, PolicySet};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn objective(name: &str, created: &str, pool: &str, priority: i32) -> Value {
    json!({
        "apiVersion": "llm-d.ai/v1alpha2", "kind": "InferenceObjective",
        "metadata": {"name": name, "creationTimestamp": created,
            "annotations": {"kvpick.io/slo-ttft-ms": "300", "unrelated": "x".repeat(10_000)}},
        "spec": {"priority": priority, "poolRef": {"group": "inference.networking.k8s.io", "name": pool}},
        "status": {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "Pending",
            "message": "Waiting for controller", "lastTransitionTime": "1970-01-01T00:00:00Z"}]},
    })
}

fn rewrite(name: &str, created: &str, pool: &str, from: &str, targets: Value) -> Value {
    json!({
        "apiVersion": "llm-d.ai/v1alpha2", "kind": "InferenceModelRewrite",
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"poolRef": {"name": pool}, "rules": [
            {"matches": [{"model": {"type": "Exact", "value": from}}], "targets": targets},
        ]},
    })
}

fn old_group(mut v: Value) -> Value {
    v["apiVersion"] = json!("inference.networking.x-k8s.io/v1alpha2");
    v
}

struct Harness {
    api: ApiServer,
    policy: Arc<ClusterPolicy>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Harness {
    async fn start(api: ApiServer) -> Self {
        let policy = Arc::new(ClusterPolicy::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(api.policy_watch(policy.clone()).run(stop.clone()));
        Self {
            api,
            policy,
            stop,
            task,
        }
    }

    async fn until(&self, what: &str, cond: impl Fn(&PolicySet) -> bool) {
        let ok = tokio::time::timeout(WAIT, async {
            while !cond(&self.policy.get()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            ok.is_ok(),
            "timed out waiting for {what}: {:?}",
            self.policy.get()
        );
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn priority(set: &PolicySet, name: &str) -> Option<i32> {
    set.objectives.get(name).map(|o| o.priority)
}

fn target(set: &PolicySet, model: &str) -> Option<String> {
    set.rewrites.rule(model).map(|r| r.pick().to_string())
}

#[tokio::test]
async fn objectives_and_rewrites_of_this_pool_follow_the_api_in_both_groups() {
    let api = ApiServer::start().await;
    api.apply(
        OBJECTIVES,
        objective("chat", "2026-01-01T00:00:00Z", "pool", 10),
    );
    api.apply(
        OBJECTIVES,
        objective("theirs", "2026-01-01T00:00:00Z", "other", 99),
    );
    api.apply(
        OLD_OBJECTIVES,
        old_group(objective("batch", "2026-01-01T00:00:00Z", "pool", -1)),
    );
    api.apply(
        REWRITES,
        rewrite(
            "canary",
            "2026-01-02T00:00:00Z",
            "pool",
            "qwen",
            json!([
                {"modelRewrite": "qwen-v1", "weight": 3}, {"modelRewrite": "qwen-v2", "weight": 1},
            ]),
        ),
    );
    api.apply(
        OLD_REWRITES,
        old_group(rewrite(
            "other-pool",
            "2026-01-01T00:00:00Z",
            "other",
            "qwen",
            json!([
                {"modelRewrite": "stolen"},
            ]),
        )),
    );
    let h = Harness::start(api).await;
    h.until("both groups", |s| {
        priority(s, "chat") == Some(10)
            && priority(s, "batch") == Some(-1)
            && !s.rewrites.is_empty()
    })
    .await;
    let set = h.policy.get();
    assert_eq!(priority(&set, "theirs"), None, "another pool's objective");
    assert_eq!(
        set.objectives["chat"].slo.ttft,
        Some(Duration::from_millis(300))
    );
    let picks: Vec<String> = (0..4).map(|_| target(&set, "qwen").unwrap()).collect();
    assert_eq!(
        picks.iter().filter(|m| *m == "qwen-v1").count(),
        3,
        "{picks:?}"
    );
    assert!(
        picks.iter().all(|m| m != "stolen"),
        "another pool's rewrite"
    );

    // Changes and deletions apply without a restart.
    h.api.apply(
        OBJECTIVES,
        objective("chat", "2026-01-01T00:00:00Z", "pool", 20),
    );
    h.until("the new priority", |s| priority(s, "chat") == Some(20))
        .await;
    h.api.delete(OLD_OBJECTIVES, "batch");
    h.until("the deletion", |s| priority(s, "batch").is_none())
        .await;
    h.api.apply(
        REWRITES,
        rewrite(
            "canary",
            "2026-01-02T00:00:00Z",
            "pool",
            "qwen",
            json!([
                {"modelRewrite": "qwen-v2"},
            ]),
        ),
    );
    h.until("the new targets", |s| {
        target(s, "qwen").as_deref() == Some("qwen-v2")
    })
    .await;

    // Compacted history while disconnected: the watches relist.
    h.api.compact_after(|a| {
        a.delete(REWRITES, "canary");
        a.apply(
            OBJECTIVES,
            objective("late", "2026-01-03T00:00:00Z", "pool", 1),
        );
    });
    h.until("the relist", |s| {
        s.rewrites.is_empty() && priority(s, "late") == Some(1)
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_group_without_its_crd_is_tolerated_and_picked_up_once_installed() {
    let api = ApiServer::start().await;
    api.set_installed(OLD_OBJECTIVES, false);
    api.set_installed(OLD_REWRITES, false);
    api.apply(
        OBJECTIVES,
        objective("chat", "2026-01-01T00:00:00Z", "pool", 5),
    );
    let h = Harness::start(api).await;
    h.until("the llm-d.ai objective", |s| priority(s, "chat") == Some(5))
        .await;
    let ok = tokio::time::timeout(WAIT, async {
        while h.api.requests(OLD_OBJECTIVES, "missing") < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "the missing group is retried");
    h.api.set_installed(OLD_OBJECTIVES, true);
    h.api.apply(
        OLD_OBJECTIVES,
        old_group(objective("batch", "2026-01-01T00:00:00Z", "pool", -2)),
    );
    h.until("the installed group", |s| priority(s, "batch") == Some(-2))
        .await;
    assert_eq!(priority(&h.policy.get(), "chat"), Some(5), "kept meanwhile");
    h.stop().await;
}

#[tokio::test]
async fn a_flood_of_objects_stays_bounded() {
    let api = ApiServer::start().await;
    let n = kvpick_epp::cluster_policy::MAX_OBJECTIVES + 50;
    for i in 0..n {
        api.apply(
            OBJECTIVES,
            objective(&format!("o{i:05}"), "2026-01-01T00:00:00Z", "pool", 1),
        );
    }
    let rules: Vec<Value> = (0..200)
        .map(|i| {
            json!({"matches": [{"model": {"value": format!("m{i}")}}],
            "targets": [{"modelRewrite": "t"}]})
        })
        .collect();
    api.apply(
        REWRITES,
        json!({"apiVersion": "llm-d.ai/v1alpha2", "kind": "InferenceModelRewrite",
            "metadata": {"name": "huge", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"poolRef": {"name": "pool"}, "rules": rules}}),
    );
    let h = Harness::start(api).await;
    h.until("the capped set", |s| {
        s.objectives.len() == kvpick_epp::cluster_policy::MAX_OBJECTIVES && !s.rewrites.is_empty()
    })
    .await;
    let set = h.policy.get();
    assert!(target(&set, "m0").is_some());
    assert!(
        target(&set, &format!("m{}", kvpick_epp::cluster_policy::MAX_RULES)).is_none(),
        "rules past the bound are dropped"
    );
    h.stop().await;
}
