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
    entries.push(serde_yaml::from_str(&format!("address: {h}")).unwrap());
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
        serde_yaml::from_str(&format!(
            "{{address: 127.0.0.1:9, kvEvents: 'tcp://127.0.0.1:{port}'}}"
        ))
        .unwrap(),
    );
    let file = dir.path().join("endpoints.yaml");
    write_endpoints(&file, &entries);
    let config = dir.path().join("picker.yaml");
    std::fs::write(
        &config,
        kvpick_scheduler::PickerConfig::DEFAULT_YAML
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

    // The index never holds more than its capacity; memory stays bounded.
    let held: u64 = epp.endpoints().await.iter().map(|e| e.blocks_held).sum();
    assert!(held <= CAPACITY, "{held} entries held, capacity {CAPACITY}");
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
