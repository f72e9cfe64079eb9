//! End to end: two `kvpick-epp` replicas behind one real Envoy, with a real Valkey between them,
//! spread a burst over simulated vLLM pods as one replica does, measured at the pods: the most
//! requests waiting on any pod. Without sharing, each replica fills the pod that looked idle at
//! the last scrape as if it were alone, and that pod's queue doubles.
//!
//! Set-up, identical for the three runs (one replica; two apart; two sharing), each on a fresh
//! fleet: four pods that run one sequence at a time; pods 1–3 already hold five long requests
//! each (one running, four waiting) when the replicas start and scrape them once (the next
//! scrape is a minute away: the burst lands between two scrapes, where herding happens); then
//! 12 requests of 512 uncached tokens go through Envoy, 50 ms apart, none finishing within the
//! test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;
mod faults_util;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::valkey::Valkey;
use faults_util::{Epp, MODEL, write_endpoints};
use http_body_util::Full;
use kvpick_fleet::servers::{Fleet, FleetConfig};
use kvpick_scheduler::EngineProfile;
use tokio::task::JoinSet;

const PODS: usize = 4;
const BURST: u32 = 12;

/// `tiny`, one sequence at a time, 20× slower than real time (a 512-token prefill takes ~0.3 s,
/// each output token 0.1 s) and with room for every request's KV.
fn profile() -> EngineProfile {
    let mut p = EngineProfile::named("tiny").unwrap();
    p.name = "one-at-a-time".into();
    p.max_num_seqs = 1;
    p.kv_blocks = 4096;
    p
}

const SPEED: f64 = 0.05;

/// A completion of `tokens` sent to `to` (a pod, or Envoy), left running.
fn send(tasks: &mut JoinSet<()>, to: std::net::SocketAddr, tokens: &[u32]) {
    let body = serde_json::json!({"model": MODEL, "prompt": tokens, "max_tokens": 200});
    let req = hyper::Request::post(format!("http://{to}/v1/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    tasks.spawn(async move {
        let _ = common::envoy::client().request(req).await;
    });
}

/// Waits until the fleet holds `n` requests, then returns the most waiting on any pod.
async fn most_waiting(fleet: &Fleet, n: u32) -> (u32, Vec<u32>) {
    for _ in 0..1000 {
        let stats: Vec<_> = fleet.servers().iter().map(|s| s.stats()).collect();
        if stats.iter().map(|s| s.waiting + s.running).sum::<u32>() >= n {
            let waiting: Vec<u32> = stats.iter().map(|s| s.waiting).collect();
            return (waiting.iter().copied().max().unwrap(), waiting);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the fleet never held {n} requests");
}

/// One run: `replicas` kvpick-epp processes (sharing through `valkey` when given) behind one
/// Envoy; returns the most requests waiting on any pod after the burst, and each pod's.
async fn run(
    dir: &Path,
    name: &'static str,
    replicas: usize,
    valkey: Option<&Valkey>,
) -> (u32, Vec<u32>) {
    let mut cfg = FleetConfig::new(profile(), MODEL);
    cfg.pods = PODS;
    cfg.speed = SPEED;
    let fleet = Fleet::start(cfg).await.unwrap();
    let mut held = JoinSet::new();
    for pod in 1..PODS {
        for i in 0..5 {
            send(
                &mut held,
                fleet.servers()[pod].address,
                &common::prompt(64, 9_000 + 10 * pod as u32 + i),
            );
        }
    }
    most_waiting(&fleet, 15).await;

    let endpoints = dir.join(format!("{name}.yaml"));
    let entries: Vec<serde_json::Value> = fleet
        .servers()
        .iter()
        .map(|s| serde_json::json!({"address": s.address.to_string()}))
        .collect();
    write_endpoints(&endpoints, &entries);
    let profile_file = dir.join("profile.yaml");
    std::fs::write(&profile_file, serde_saphyr::to_string(&profile()).unwrap()).unwrap();
    let config = dir.join("picker.yaml");
    std::fs::write(
        &config,
        "apiVersion: llm-d.ai/v1\nkind: EndpointPickerConfig\nstaleness: {maxSignalAge: 10m}\n\
         plugins:\n- type: predicted-latency-scorer\n  parameters: {profile: tiny, expectedOutputTokens: 200}\n",
    )
    .unwrap();
    let names = ["kvpick-epp-a", "kvpick-epp-b"];
    let mut epps = Vec::new();
    for replica in names.into_iter().take(replicas) {
        let mut args: Vec<String> = [
            "--config",
            config.to_str().unwrap(),
            "--engine-profile",
            profile_file.to_str().unwrap(),
            "--online-calibration",
            "false",
            // One scrape at start; the burst lands before the next.
            "--refresh-metrics-interval",
            "60s",
            "--metrics-staleness-threshold",
            "10m",
        ]
        .map(String::from)
        .to_vec();
        if let Some(v) = valkey {
            args.extend(
                [
                    "--shared-inflight-url",
                    &v.url(),
                    "--shared-inflight-pool",
                    name,
                    "--shared-inflight-replica",
                    replica,
                    "--shared-inflight-interval",
                    "10ms",
                ]
                .map(String::from),
            );
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        epps.push(Epp::start(dir, replica, &endpoints, &args).await);
    }
    for epp in &epps {
        epp.wait_endpoints(Duration::from_secs(20), "pre-load scraped", |eps| {
            eps.len() == PODS
                && eps
                    .iter()
                    .filter(|e| e.signals.as_ref().is_some_and(|s| s.waiting == 4))
                    .count()
                    == PODS - 1
        })
        .await;
        if valkey.is_some() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while faults_util::sample_sum(&epp.metrics_page().await, "kvpick_shared_inflight_peers")
                < (replicas - 1) as f64
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "peers never met: {}",
                    epp.proc.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let grpc: Vec<_> = epps.iter().map(|e| e.grpc).collect();
    let envoy = common::envoy::Envoy::start_replicas(&grpc).await;
    let mut burst = JoinSet::new();
    for i in 0..BURST {
        send(&mut burst, envoy.listen, &common::prompt(512, 70_000 + i));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let result = most_waiting(&fleet, 15 + BURST).await;
    burst.shutdown().await;
    held.shutdown().await;
    fleet.shutdown().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_through_valkey_spread_a_burst_as_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let valkey = Valkey::start().await;
    let one = run(dir.path(), "one", 1, None).await;
    let apart = run(dir.path(), "apart", 2, None).await;
    let shared = run(dir.path(), "shared", 2, Some(&valkey)).await;
    println!(
        "most waiting on any pod (per pod): one replica {one:?}; two apart {apart:?}; two sharing {shared:?}"
    );
    assert!(
        shared.0 <= one.0 + 1,
        "sharing {shared:?} vs one replica {one:?}"
    );
    assert!(
        apart.0 >= shared.0 + 3,
        "apart {apart:?} vs sharing {shared:?}"
    );
}
