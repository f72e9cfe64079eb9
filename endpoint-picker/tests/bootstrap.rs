//! Index bootstrap with real processes on 127.0.0.1: simulated vLLM pods (`kvpick-sim fleet`,
//! real ZMQ KV events with a replay buffer of 4 batches) and `kvpick-epp` replicas, which find
//! the pods through an endpoints file or, as in a cluster, through an InferencePool and its pods
//! served by the scripted API server (each pod its own loopback IP, the same ports). A long
//! prompt cached early is gone from the pod's replay buffer by the time a new replica starts:
//! the one that loads a peer's index (`--bootstrap-from`) routes it to the pod holding it from
//! its first request and follows the pod from the peer's last batch, one that starts alone does
//! not know it, and a bad peer leaves a replica empty but serving.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

#[path = "kubernetes/apiserver.rs"]
mod apiserver;
mod common;
mod faults_util;
#[path = "bootstrap/pods.rs"]
mod pods;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use faults_util::*;
use kvpick_epp::query::pb;
use kvpick_epp::query::pb::index_server::{Index, IndexServer};
use pods::Pods;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// A prompt of 64 blocks of 16 tokens.
const LONG: u32 = 1024;

/// Key material every replica of the test's pool reads.
fn secret(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, [byte; 32]).unwrap();
    path
}

struct Cluster {
    pods: Pods,
    secret: PathBuf,
    /// The replica that saw the long prompt cached.
    a: Epp,
    holder: SocketAddr,
    long: Vec<u32>,
    /// The last prompt cached, which the pod's replay buffer still holds.
    last: Vec<u32>,
}

/// Replica A of `pods`; the holder caches the long prompt, then enough short ones that its
/// replay buffer (4 batches) no longer reaches the long one.
async fn cached_then_rolled(dir: &Path, pods: Pods) -> Cluster {
    let secret = secret(dir, "secret", 7);
    let a = pods.epp(dir, "a", &secret_flag(&secret)).await;
    a.wait_endpoints(Duration::from_secs(10), "all fresh", |eps| {
        eps.len() == 2 && eps.iter().all(|e| e.freshness == "fresh")
    })
    .await;
    let holder = pods.addrs[0];
    let long = prompt(1, LONG);
    complete(holder, &long).await;
    a.wait_matched(&long, holder, LONG / 16).await;
    let mut last = Vec::new();
    for i in 0..12 {
        last = prompt(100 + i, 32);
        complete(holder, &last).await;
    }
    a.wait_matched(&last, holder, 2).await;
    assert_eq!(
        a.matched(&long).await.get(&holder.to_string()),
        Some(&(LONG / 16)),
        "A still holds the long prompt"
    );
    Cluster {
        pods,
        secret,
        a,
        holder,
        long,
        last,
    }
}

fn secret_flag(path: &Path) -> Vec<&str> {
    vec!["--index-secret-file", path.to_str().unwrap()]
}

/// Replica C starts alone and does not know the long prompt; replica B loads A's index and
/// routes it to its holder from its first request, then follows the holder from A's anchor.
async fn a_bootstrapped_replica_knows_what_a_fresh_one_does_not(dir: &Path, pods: Pods) {
    let k = cached_then_rolled(dir, pods).await;
    let holder = k.holder.to_string();

    // C starts alone: the pod's replay gives it the recent batches only.
    let c = k.pods.epp(dir, "c", &secret_flag(&k.secret)).await;
    c.wait_matched(&k.last, k.holder, 2).await;
    assert_eq!(
        c.matched(&k.long).await.get(&holder).copied().unwrap_or(0),
        0,
        "the replay buffer no longer holds the long prompt"
    );

    // B loads A's index first: its first request already goes to the holder.
    let peer = format!("http://{}", k.a.query);
    let mut flags = secret_flag(&k.secret);
    flags.extend(["--bootstrap-from", &peer]);
    let b = k.pods.epp(dir, "b", &flags).await;
    assert_eq!(b.pick(&k.long).await, holder, "{}", b.proc.log());
    assert_eq!(b.matched(&k.long).await.get(&holder), Some(&(LONG / 16)));
    b.wait_serving(kvpick_epp::bootstrap::HEALTH_SERVICE).await;
    let page = b.metrics_page().await;
    assert_eq!(
        sample_sum(&page, "kvpick_bootstrap_total{outcome=\"ok\"}"),
        1.0
    );
    assert!(sample_sum(&page, "kvpick_bootstrap_endpoints") >= 1.0);
    assert!(sample_sum(&page, "kvpick_bootstrap_entries") >= f64::from(LONG / 16));

    // B then follows the pod from A's anchor: a continuation of the long prompt (parented on its
    // last block, which only the loaded index knows) lands on top of what was loaded.
    let mut longer = k.long.clone();
    longer.extend(prompt(2, 32));
    complete(k.holder, &longer).await;
    b.wait_matched(&longer, k.holder, LONG / 16 + 2).await;
    let page = b.metrics_page().await;
    assert_eq!(
        sample_sum(&page, "kvpick_kv_events_resets_total"),
        0.0,
        "the replay from the anchor proved continuity: {}",
        b.proc.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_bootstrapped_from_a_peer_routes_a_long_cached_prefix_from_its_first_request() {
    let dir = tempfile::tempdir().unwrap();
    let pods = Pods::file(dir.path()).await;
    a_bootstrapped_replica_knows_what_a_fresh_one_does_not(dir.path(), pods).await;
}

/// With Kubernetes discovery the pool is empty at start: the bootstrap waits for the first sync,
/// and ingestion for the bootstrap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kubernetes_discovery_the_bootstrap_loads_the_pods_of_the_first_sync() {
    let dir = tempfile::tempdir().unwrap();
    let pods = Pods::kubernetes(dir.path()).await;
    a_bootstrapped_replica_knows_what_a_fresh_one_does_not(dir.path(), pods).await;
}

/// A peer that answers `Dump` with the items it was given, then ends or (`stall`) sends
/// nothing more; it counts the calls.
#[derive(Clone, Default)]
struct Hostile {
    items: Vec<pb::DumpItem>,
    stall: bool,
    calls: Arc<AtomicUsize>,
}

impl Hostile {
    fn answering(items: Vec<pb::DumpItem>) -> Self {
        Self {
            items,
            ..Self::default()
        }
    }
}

#[tonic::async_trait]
impl Index for Hostile {
    type DumpStream = kvpick_epp::query::dump::DumpStream;

    async fn score(
        &self,
        _: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn list_endpoints(
        &self,
        _: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn dump(
        &self,
        _: Request<pb::DumpRequest>,
    ) -> Result<Response<Self::DumpStream>, Status> {
        use tokio_stream::StreamExt;
        self.calls.fetch_add(1, Ordering::SeqCst);
        let items: Vec<Result<pb::DumpItem, Status>> = self.items.iter().cloned().map(Ok).collect();
        let items = tokio_stream::iter(items);
        Ok(Response::new(if self.stall {
            Box::pin(items.chain(tokio_stream::pending()))
        } else {
            Box::pin(items)
        }))
    }
}

async fn serve(peer: Hostile) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(IndexServer::new(peer))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_peer_leaves_the_replica_empty_and_serving() {
    let dir = tempfile::tempdir().unwrap();
    let k = cached_then_rolled(dir.path(), Pods::file(dir.path()).await).await;
    let holder = k.holder.to_string();
    let mut items = Vec::new();
    let mut stream =
        k.a.index()
            .await
            .dump(pb::DumpRequest {})
            .await
            .unwrap()
            .into_inner();
    while let Some(item) = stream.message().await.unwrap() {
        items.push(item);
    }
    // A's real dump, with one block key zeroed in its last chunk of entries: everything before
    // it was restored by the time the bad entry arrives, and must go again.
    let mut bad = items.clone();
    let last = bad
        .iter_mut()
        .rev()
        .find_map(|i| match &mut i.item {
            Some(pb::dump_item::Item::Entries(e)) => Some(e),
            _ => None,
        })
        .unwrap();
    last.entries.last_mut().unwrap().key = 0;
    // And one that never ends its endpoint.
    let cut: Vec<_> = items
        .iter()
        .filter(|i| !matches!(i.item, Some(pb::dump_item::Item::End(_))))
        .cloned()
        .collect();
    for (name, dump, why) in [
        ("bad-key", bad, "block key 0"),
        ("cut", cut, "ends inside an endpoint"),
    ] {
        let (peer, task) = serve(Hostile::answering(dump)).await;
        let url = format!("http://{peer}");
        let mut flags = secret_flag(&k.secret);
        flags.extend(["--bootstrap-from", &url]);
        let b = k.pods.epp(dir.path(), name, &flags).await;
        b.pick(&k.long).await;
        assert_eq!(
            b.matched(&k.long).await.get(&holder).copied().unwrap_or(0),
            0,
            "{name}: nothing of the refused dump stays"
        );
        let page = b.metrics_page().await;
        assert_eq!(
            sample_sum(&page, "kvpick_bootstrap_total{outcome=\"failed\"}"),
            1.0,
            "{name}"
        );
        assert!(b.proc.log().contains(why), "{name}: {}", b.proc.log());
        task.abort();
        let _ = task.await;
    }

    // Another secret: the dump is refused whole, with the reason.
    let other = secret(dir.path(), "other", 9);
    let peer = format!("http://{}", k.a.query);
    let mut flags = secret_flag(&other);
    flags.extend(["--bootstrap-from", &peer]);
    let b = k.pods.epp(dir.path(), "other-secret", &flags).await;
    b.pick(&k.long).await;
    assert!(
        b.proc.log().contains("index secret differs"),
        "{}",
        b.proc.log()
    );
    assert_eq!(
        sample_sum(
            &b.metrics_page().await,
            "kvpick_bootstrap_total{outcome=\"failed\"}"
        ),
        1.0
    );
}

/// While it bootstraps a replica is not ready, so a Service of ready replicas (the manifests'
/// `kvpick-epp-peers`) never offers it as its own peer; a peer that stalls holds it back no
/// longer than `--bootstrap-timeout`, after which it is ready and follows the pods, empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_not_ready_while_it_bootstraps() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = tempfile::tempdir().unwrap();
    let pods = Pods::kubernetes(dir.path()).await;
    let peer = Hostile {
        stall: true,
        ..Hostile::default()
    };
    let calls = peer.calls.clone();
    let (addr, task) = serve(peer).await;
    let secret = secret(dir.path(), "secret", 7);
    let url = format!("http://{addr}");
    let mut flags = secret_flag(&secret);
    flags.extend(["--bootstrap-from", &url, "--bootstrap-timeout", "10s"]);
    let b = Epp::start_from(dir.path(), "b", pods.source(), &flags).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while calls.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the peer was never asked: {}",
            b.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The pool has synced and the peer stalls: alive, not ready.
    assert_eq!(
        b.health_status("readiness").await,
        Some(ServingStatus::NotServing)
    );
    assert_eq!(
        b.health_status("liveness").await,
        Some(ServingStatus::Serving)
    );
    b.wait_serving("readiness").await;
    assert_eq!(
        b.health_status(kvpick_epp::bootstrap::HEALTH_SERVICE).await,
        Some(ServingStatus::NotServing)
    );
    let page = b.metrics_page().await;
    assert_eq!(
        sample_sum(&page, "kvpick_bootstrap_total{outcome=\"failed\"}"),
        1.0
    );
    assert!(b.proc.log().contains("not done within"), "{}", b.proc.log());
    b.wait_endpoints(Duration::from_secs(10), "both pods, fresh", |eps| {
        eps.len() == 2 && eps.iter().all(|e| e.freshness == "fresh")
    })
    .await;
    task.abort();
    let _ = task.await;
}
