//! Faults with real processes on 127.0.0.1: simulated vLLM pods (`kvpick-sim fleet`, real HTTP,
//! `/metrics` and ZMQ KV events) and the `kvpick-epp` binary, asked over ext_proc and its
//! kvpick.v1.Index API. kvpick scrapes every 100 ms and counts signals stale after 300 ms.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;
mod faults_util;

use std::time::Duration;

use faults_util::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// One refresh interval: the scrape period plus the staleness threshold. A dead pod's last good
/// signals turn stale this long after they were taken.
const ONE_REFRESH: Duration = Duration::from_millis(100 + 300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_killed_mid_stream_is_avoided_within_one_refresh_interval() {
    let dir = tempfile::tempdir().unwrap();
    let survivors = SimFleet::start(dir.path(), "a", 2, &[]).await;
    let mut doomed = SimFleet::start(dir.path(), "b", 1, &[]).await;
    let b = doomed.addrs[0];
    let file = dir.path().join("endpoints.yaml");
    write_endpoints(
        &file,
        &[survivors.entries.clone(), doomed.entries.clone()].concat(),
    );
    let epp = Epp::start(dir.path(), "kvpick-epp", &file, &[]).await;
    epp.wait_endpoints(Duration::from_secs(10), "all fresh", |eps| {
        eps.len() == 3 && eps.iter().all(|e| e.freshness == "fresh")
    })
    .await;

    // b caches the prompt; kvpick learns it from b's KV events and sends the prompt there.
    let p = prompt(1, 64);
    complete(b, &p).await;
    epp.wait_matched(&p, b, 4).await;
    assert_eq!(epp.pick(&p).await, b.to_string());

    // A long stream on b, then b dies under it (SIGKILL, as a crash or OOM kill).
    let long = serde_json::json!({"model": MODEL, "prompt": prompt(2, 32), "max_tokens": 3000, "stream": true});
    let stream = tokio::spawn(async move { try_post(b, "/v1/completions", &long).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stream.is_finished(), "the stream ended before the kill");
    let killed = Instant::now();
    doomed.proc.kill();
    // The stream fails cleanly (its body breaks off), it does not hang.
    let ended = tokio::time::timeout(Duration::from_secs(5), stream).await;
    let result = ended.expect("the stream to the killed pod hung").unwrap();
    assert!(
        result.as_ref().is_err() || !result.as_ref().unwrap().1.contains("[DONE]"),
        "the stream completed although its pod was killed: {result:?}"
    );

    // New requests avoid b within one refresh interval (plus scheduling slack on a busy machine).
    loop {
        if epp.pick(&p).await != b.to_string() {
            break;
        }
        assert!(
            killed.elapsed() < ONE_REFRESH * 3,
            "still picked {b} {:?} after the kill",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let avoided_after = killed.elapsed();
    // Until b's signals are stale, only its lost prefix credit (its event stream broke) keeps it
    // behind, and on a busy machine the picks' own reservations on the survivors (each released
    // when its stream closes) can tip one back to b. One refresh interval later b is filtered
    // out, and stays out even when the survivors' scrapes are delayed until they are stale too.
    tokio::time::sleep(ONE_REFRESH).await;
    for _ in 0..20 {
        assert_ne!(epp.pick(&p).await, b.to_string());
    }
    eprintln!("killed pod avoided after {avoided_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_restarted_with_its_sequence_reset_is_reindexed_never_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = SimFleet::start(dir.path(), "a", 2, &[]).await;
    let a = fleet.addrs[0];
    let file = dir.path().join("endpoints.yaml");
    write_endpoints(&file, &fleet.entries);
    let epp = Epp::start(dir.path(), "kvpick-epp", &file, &[]).await;
    epp.wait_endpoints(Duration::from_secs(10), "all fresh", |eps| {
        eps.len() == 2 && eps.iter().all(|e| e.freshness == "fresh")
    })
    .await;
    let before = prompt(3, 64);
    complete(a, &before).await;
    epp.wait_matched(&before, a, 4).await;

    // Restart: the engine loses its cache, its KV-event sequence starts over, and its engine
    // hashes change (a new process's seed).
    let (status, body) = http_post(a, "/admin/restart", &serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");
    // Once a's new history arrives, nothing of the old one is left for a.
    let after = prompt(4, 80);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = http_post(
            a,
            "/v1/completions",
            &serde_json::json!({"model": MODEL, "prompt": after, "max_tokens": 1}),
        )
        .await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the pod did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    epp.wait_matched(&after, a, 5).await;
    let old = epp.matched(&before).await;
    assert_eq!(
        old.get(&a.to_string()),
        Some(&0),
        "pre-restart blocks still indexed for {a}: {old:?}\n{}",
        epp.proc.log()
    );
    // And a prompt sharing nothing with either history matches nothing.
    assert!(epp.matched(&prompt(5, 64)).await.values().all(|&m| m == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_metrics_endpoint_is_bounded_and_marked_stale() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = SimFleet::start(dir.path(), "a", 1, &[]).await;
    let a = fleet.addrs[0];
    // A "pod" whose /metrics accepts connections and never answers. It counts connections open
    // at once: each scrape must give up (200 ms timeout) and close its connection.
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = hang.local_addr().unwrap();
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (o, pk) = (open.clone(), peak.clone());
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = hang.accept().await.unwrap();
            let n = o.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            pk.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // Read the request and never answer; the connection ends when the client gives up.
                while sock.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                o.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    let mut entries = fleet.entries.clone();
    entries.push(serde_saphyr::from_str(&format!("address: {h}")).unwrap());
    let file = dir.path().join("endpoints.yaml");
    write_endpoints(&file, &entries);
    let epp = Epp::start(dir.path(), "kvpick-epp", &file, &[]).await;
    epp.wait_endpoints(Duration::from_secs(10), "a fresh", |eps| fresh(eps, a))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let eps = epp.endpoints().await;
    assert!(fresh(&eps, a), "{eps:#?}");
    assert!(!fresh(&eps, h), "{eps:#?}");
    // Scrapes of h time out and close: never more than two connections open at once.
    assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    let page = epp.metrics_page().await;
    assert!(
        page.lines()
            .any(|l| l.starts_with("kvpick_endpoint_scrape_errors_total")
                && l.contains(&h.to_string())
                && l.contains("timeout")),
        "{page}"
    );
    assert!(
        page.contains(&format!("kvpick_endpoint_stale{{endpoint=\"{h}\"}} 1")),
        "{page}"
    );
    // Requests are unaffected: answered at once, never sent to h.
    for i in 0..20 {
        let t = Instant::now();
        assert_eq!(epp.pick(&prompt(10 + i, 32)).await, a.to_string());
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_make_identical_precise_prefix_picks() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = SimFleet::start(dir.path(), "a", 3, &[]).await;
    let file = dir.path().join("endpoints.yaml");
    write_endpoints(&file, &fleet.entries);
    // Staleness is not what this test is about: a generous threshold keeps a scrape delayed by a
    // loaded machine from filtering a pod out in one replica only.
    let args = ["--metrics-staleness-threshold", "5s"];
    let one = Epp::start(dir.path(), "kvpick-epp-1", &file, &args).await;
    let two = Epp::start(dir.path(), "kvpick-epp-2", &file, &args).await;
    for epp in [&one, &two] {
        epp.wait_endpoints(Duration::from_secs(10), "all fresh", |eps| {
            eps.len() == 3 && eps.iter().all(|e| e.freshness == "fresh")
        })
        .await;
    }
    // Let both replicas' SUBs finish subscribing (a PUB drops what no subscriber takes yet).
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Each pod caches its own prompts, of different lengths; both replicas consume every pod's
    // events (connect mode), so both know the same and pick the same.
    let prompts: Vec<(usize, Vec<u32>)> = (0..9)
        .map(|i| (i % 3, prompt(20 + i as u32, 32 + 16 * i as u32)))
        .collect();
    for (pod, p) in &prompts {
        complete(fleet.addrs[*pod], p).await;
    }
    for (pod, p) in &prompts {
        let blocks = p.len() as u32 / 16;
        one.wait_matched(p, fleet.addrs[*pod], blocks).await;
        two.wait_matched(p, fleet.addrs[*pod], blocks).await;
    }
    for (pod, p) in &prompts {
        let (a, b) = (one.pick(p).await, two.pick(p).await);
        assert_eq!(a, b, "replicas disagree");
        assert_eq!(a, fleet.addrs[*pod].to_string());
        let at = fleet.addrs[*pod].to_string();
        assert_eq!(one.matched(p).await.get(&at), two.matched(p).await.get(&at));
    }
    let routed =
        |page: String| sample_sum(&page, "kvpick_requests_total{outcome=\"routed\"") as u64;
    // Through one Envoy in front of both replicas (round robin over ext_proc streams): every
    // follow-up reaches the pod caching its prefix, whichever replica picked it.
    let envoy = common::envoy::Envoy::start_replicas(&[one.grpc, two.grpc]).await;
    for _round in 0..2 {
        for (pod, p) in &prompts {
            let follow_up = [p.as_slice(), &[7, 8, 9]].concat();
            let body = serde_json::json!({"model": MODEL, "prompt": follow_up, "max_tokens": 1});
            let (status, _, bytes) =
                common::envoy::post(&envoy, "/v1/completions", body.to_string().as_bytes(), &[])
                    .await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(),
                Some(p.len() as u64),
                "the follow-up of pod {pod}'s prompt missed its cache: {v}"
            );
        }
    }
    // Each replica also routed its 9 direct picks above; a stream is counted when it closes.
    let direct = prompts.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (by_one, by_two) = loop {
        let counts = (
            routed(one.metrics_page().await) - direct,
            routed(two.metrics_page().await) - direct,
        );
        if counts.0 + counts.1 == 2 * direct || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(by_one + by_two, 2 * direct);
    assert!(
        by_one > 0 && by_two > 0,
        "one replica took every stream: {by_one} / {by_two}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_flood_from_one_pod_stays_bounded_and_spares_the_others() {
    use kvpick_scheduler::events::{
        BlockStored, EncodeOptions, EngineHash, EventBatch, KvEvent, encode_batch, seq_frame,
    };
    use zeromq::{Socket, SocketSend};

    const CAPACITY: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let fleet = SimFleet::start(dir.path(), "a", 1, &[]).await;
    let a = fleet.addrs[0];
    // The flooding "pod": a real ZMQ PUB kvpick connects to, and an address that is never served.
    let mut publisher = zeromq::PubSocket::new();
    let port = match publisher.bind("tcp://127.0.0.1:0").await.unwrap() {
        zeromq::Endpoint::Tcp(_, port) => port,
        other => panic!("{other}"),
    };
    let mut entries = fleet.entries.clone();
    entries.push(
        serde_saphyr::from_str(&format!(
            "{{address: 127.0.0.1:9, kvEvents: 'tcp://127.0.0.1:{port}'}}"
        ))
        .unwrap(),
    );
    let file = dir.path().join("endpoints.yaml");
    write_endpoints(&file, &entries);
    let config = dir.path().join("picker.yaml");
    std::fs::write(
        &config,
        kvpick_scheduler::EndpointPickerConfig::DEFAULT_YAML
            .replace("capacity: 67108864", &format!("capacity: {CAPACITY}")),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap().to_owned();
    let epp = Epp::start(dir.path(), "kvpick-epp", &file, &["--config", &config_arg]).await;
    epp.wait_endpoints(Duration::from_secs(10), "a fresh", |eps| fresh(eps, a))
        .await;
    // Let the SUB connect before flooding (PUB drops what no subscriber takes).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = epp.proc.rss_kib();

    // 4x the index's capacity in fresh blocks, as fast as the socket takes them.
    let blocks_per_batch = 256u64;
    let batches = 4 * CAPACITY / blocks_per_batch;
    let flood = tokio::spawn(async move {
        for seq in 0..batches {
            let first = seq * blocks_per_batch;
            let event = KvEvent::BlockStored(BlockStored {
                block_hashes: (first..first + blocks_per_batch).map(EngineHash).collect(),
                parent_block_hash: None,
                token_ids: (0..blocks_per_batch as u32 * 16)
                    .map(|i| i.wrapping_mul(2_654_435_761) ^ seq as u32)
                    .collect(),
                block_size: 16,
                ..Default::default()
            });
            let batch = EventBatch {
                ts: 0.0,
                events: vec![event],
                data_parallel_rank: None,
            };
            let payload = encode_batch(&batch, EncodeOptions::default()).unwrap();
            let frames: Vec<bytes::Bytes> = vec![
                bytes::Bytes::from_static(b""),
                bytes::Bytes::copy_from_slice(&seq_frame(seq)),
                bytes::Bytes::from(payload),
            ];
            publisher
                .send(zeromq::ZmqMessage::try_from(frames).unwrap())
                .await
                .unwrap();
        }
        publisher
    });
    // During the flood, requests are answered at once and a stays fresh.
    while !flood.is_finished() {
        let t = Instant::now();
        let _ = epp.pick(&prompt(50, 32)).await;
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert!(fresh(&epp.endpoints().await, a));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _publisher = flood.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The index stays within its capacity; memory stays bounded. Eviction runs right after each
    // applied batch, so while batches are still being applied (the mailbox may hold some on a
    // loaded machine) a reading can be over by at most one batch per ingestion worker (2); once
    // ingestion has caught up, the index is within capacity.
    let transient = CAPACITY + 2 * blocks_per_batch;
    let deadline = Instant::now() + Duration::from_secs(10);
    let held = loop {
        let held: u64 = epp.endpoints().await.iter().map(|e| e.blocks_held).sum();
        assert!(
            held <= transient,
            "{held} entries held, capacity {CAPACITY}"
        );
        if held <= CAPACITY {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "{held} entries held 10 s after the flood, capacity {CAPACITY}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rss_after = epp.proc.rss_kib();
    assert!(
        rss_after < rss_before + 256 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // a's events still flow: what it caches now is indexed and picked.
    let p = prompt(51, 64);
    complete(a, &p).await;
    epp.wait_matched(&p, a, 4).await;
    assert_eq!(epp.pick(&p).await, a.to_string());
    eprintln!("flood: {held} entries held, RSS {rss_before} -> {rss_after} KiB");
}

/// Blocks the index holds for each pod, by address.
async fn held(epp: &Epp) -> std::collections::BTreeMap<String, u64> {
    epp.endpoints()
        .await
        .into_iter()
        .map(|e| (e.address, e.blocks_held))
        .collect()
}

/// Waits until `epp` reports SERVING on its `readiness` health service.
async fn wait_ready(epp: &Epp) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", epp.health))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = client
            .check(HealthCheckRequest {
                service: "readiness".into(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.as_ref().ok() == Some(&(ServingStatus::Serving as i32)) {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {status:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvpick_restarted_under_load_is_warm_from_the_pods_replay_buffers_within_1s() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = SimFleet::start(dir.path(), "a", 3, &[]).await;
    let file = dir.path().join("endpoints.yaml");
    write_endpoints(&file, &fleet.entries);
    // Each pod caches its own prompts, of different lengths (well within its 256 blocks).
    let prompts: Vec<(std::net::SocketAddr, Vec<u32>)> = (0..12)
        .map(|i| {
            (
                fleet.addrs[i % 3],
                prompt(60 + i as u32, 32 + 16 * i as u32),
            )
        })
        .collect();
    for (pod, p) in &prompts {
        complete(*pod, p).await;
    }
    let epp = Epp::start(dir.path(), "kvpick-epp-1", &file, &[]).await;
    for (pod, p) in &prompts {
        epp.wait_matched(p, *pod, p.len() as u32 / 16).await;
    }
    let warm = held(&epp).await;
    assert_eq!(warm.len(), 3);
    assert!(warm.values().all(|&n| n > 0), "{warm:?}");

    // Load that keeps flowing through the restart: the same prompts again on their pods (cache
    // hits, so what the pods hold does not change under the test's feet).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|k| {
            let (prompts, stop) = (prompts.clone(), stop.clone());
            tokio::spawn(async move {
                let mut served = 0u32;
                for (pod, p) in prompts.iter().skip(k).cycle() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    complete(*pod, p).await;
                    served += 1;
                }
                served
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // kvpick crashes (SIGKILL: nothing flushed, nothing handed over) and a new process starts.
    let mut epp = epp;
    epp.proc.kill();
    let spawned = Instant::now();
    let fresh_epp = Epp::start(dir.path(), "kvpick-epp-2", &file, &[]).await;
    wait_ready(&fresh_epp).await;
    let ready = Instant::now();
    // Warm again once it holds every block the old process held, for every pod.
    let warm_after = loop {
        let now = held(&fresh_epp).await;
        if warm.iter().all(|(a, n)| now.get(a).is_some_and(|m| m >= n)) {
            break ready.elapsed();
        }
        assert!(
            ready.elapsed() < Duration::from_secs(1),
            "not warm within 1 s of ready: {now:?}, want {warm:?}\n{}",
            fresh_epp.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // And it picks like the old one: every known prompt goes to the pod that holds it.
    for (pod, p) in &prompts {
        assert_eq!(
            fresh_epp.matched(p).await.get(&pod.to_string()),
            Some(&(p.len() as u32 / 16))
        );
        assert_eq!(fresh_epp.pick(p).await, pod.to_string());
    }
    // The blocks came from the pods' replay buffers (the load only hits cached prompts, so the
    // live stream carries no new blocks): one successful replay per pod.
    let page = fresh_epp.metrics_page().await;
    for pod in &fleet.addrs {
        assert!(
            page.lines()
                .any(|l| l.starts_with("kvpick_kv_events_replays_total")
                    && l.contains(&pod.to_string())
                    && l.contains("outcome=\"ok\"")),
            "no successful replay from {pod}:\n{page}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for l in load {
        served += l.await.unwrap();
    }
    assert!(served > 0);
    eprintln!(
        "restart warm-up: {} blocks over 3 pods; ready {:?} after spawn, warm {warm_after:?} after ready; {served} requests served meanwhile",
        warm.values().sum::<u64>(),
        ready - spawned,
    );
}
