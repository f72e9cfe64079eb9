//! Shared in-flight state between replicas, against a real `valkey-server` started here: two
//! replicas see each other's picks and together spread a burst as one replica does (without
//! sharing they stack it on the pod that looked emptiest at the last scrape); killing the store
//! mid-run keeps both routing on their own views and says so; restarting it brings the peers
//! back; hostile values in the store are refused and counted, never crash or steer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::valkey::Valkey;
use common::*;
use kvpick_epp::Settings;
use kvpick_epp::shared_inflight::SharedInflightConfig;
use kvpick_scheduler::inflight::ReplicaId;

const PODS: [&str; 4] = [
    "127.0.0.1:40021",
    "127.0.0.1:40022",
    "127.0.0.1:40023",
    "127.0.0.1:40024",
];

/// The latency-predicting profile; the test sets the pods' signals once, so they must not go
/// stale while it runs on a loaded machine.
const PREDICTED: &str = "apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
staleness: {maxSignalAge: 10m}
plugins:
- type: predicted-latency-scorer
  parameters: {profile: h100-tp2-qwen3-32b, expectedOutputTokens: 64}
";

fn settings(shared: Option<(&Valkey, &str)>) -> Settings {
    let shared_inflight = shared.map(|(valkey, replica)| {
        let mut c =
            SharedInflightConfig::new(&valkey.url(), "test", ReplicaId::new(replica).unwrap());
        c.interval = Duration::from_millis(10);
        c.staleness = Duration::from_secs(3);
        c.store.timeout = Duration::from_millis(300);
        c.backoff_min = Duration::from_millis(50);
        c.backoff_max = Duration::from_millis(200);
        c
    });
    Settings {
        scheduler: Some(kvpick_scheduler::EndpointPickerConfig::parse(PREDICTED).unwrap()),
        shared_inflight,
        ..Settings::loopback()
    }
}

/// Pod 0 idle at the last scrape, the others with 4 requests waiting each (traffic from before).
fn scrape(p: &Picker) {
    for (i, pod) in PODS.iter().enumerate() {
        scraped(p, pod, if i == 0 { 0 } else { 4 }, 0.1);
    }
}

/// `n` requests of 512 uncached tokens each through `p`, each on its own stream and left open
/// (nothing ends within the burst); their picks are added to `picks`.
async fn burst(p: &Picker, n: u32, seed: u32, picks: &mut HashMap<String, usize>) -> Vec<Stream> {
    let mut streams = Vec::new();
    for i in 0..n {
        let (s, to) = decision::routed_and_held(p, &prompt(512, seed + i)).await;
        *picks.entry(to).or_default() += 1;
        streams.push(s);
    }
    streams
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..500 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} never happened");
}

fn status(p: &Picker) -> Arc<kvpick_epp::shared_inflight::Status> {
    p.shared_inflight.clone().unwrap()
}

/// Requests `p` counts on `pod`: its own and its peers' reservations.
fn counted(p: &Picker, pod: &str) -> u32 {
    let l = p
        .shared
        .router
        .scheduler()
        .inflight()
        .load(p.id(pod), p.shared.clock.now());
    l.prefill_requests + l.decode_requests
}

fn on_idle_pod(picks: &HashMap<String, usize>) -> usize {
    picks.get(PODS[0]).copied().unwrap_or(0)
}

#[tokio::test]
async fn two_sharing_replicas_spread_a_burst_as_one_replica_does() {
    let valkey = Valkey::start().await;

    // One replica, 16 requests.
    let one = Picker::start(settings(None), &PODS).await;
    scrape(&one);
    let mut single = HashMap::new();
    let _held = burst(&one, 16, 0, &mut single).await;

    // Two replicas that do not share, 8 each: each fills the idle pod as if alone.
    let (a, b) = (
        Picker::start(settings(None), &PODS).await,
        Picker::start(settings(None), &PODS).await,
    );
    scrape(&a);
    scrape(&b);
    let mut apart = HashMap::new();
    let _held_a = burst(&a, 8, 100, &mut apart).await;
    let _held_b = burst(&b, 8, 200, &mut apart).await;

    // Two replicas sharing through Valkey, 8 each, the second once it has seen the first's.
    let (a, b) = (
        Picker::start(settings(Some((&valkey, "a"))), &PODS).await,
        Picker::start(settings(Some((&valkey, "b"))), &PODS).await,
    );
    scrape(&a);
    scrape(&b);
    until("both replicas see each other", || {
        status(&a).peers() == 1 && status(&b).peers() == 1
    })
    .await;
    let mut shared = HashMap::new();
    let _held_a = burst(&a, 8, 300, &mut shared).await;
    until("b counts a's picks", || {
        PODS.iter().map(|pod| counted(&b, pod)).sum::<u32>() == 8
    })
    .await;
    // What b counts on each pod is exactly what a reserved there.
    for pod in PODS {
        assert_eq!(counted(&b, pod), counted(&a, pod), "{pod}");
    }
    let _held_b = burst(&b, 8, 400, &mut shared).await;

    println!("idle pod's picks: one replica {single:?}; apart {apart:?}; shared {shared:?}");
    let (s, u, h) = (
        on_idle_pod(&single),
        on_idle_pod(&apart),
        on_idle_pod(&shared),
    );
    assert!(h <= s + 1, "sharing: {h} on the idle pod, one replica {s}");
    assert!(u >= h + 2, "apart: {u} on the idle pod, sharing {h}");
}

#[tokio::test]
async fn a_store_killed_mid_run_leaves_each_replica_its_own_view_until_it_returns() {
    let mut valkey = Valkey::start().await;
    let a = Picker::start(settings(Some((&valkey, "a"))), &PODS).await;
    let b = Picker::start(settings(Some((&valkey, "b"))), &PODS).await;
    scrape(&a);
    scrape(&b);
    until("connected", || {
        status(&a).peers() == 1 && status(&b).peers() == 1
    })
    .await;
    let mut picks = HashMap::new();
    let _held = burst(&a, 6, 0, &mut picks).await;
    until("b counts a's picks", || {
        PODS.iter().map(|pod| counted(&b, pod)).sum::<u32>() == 6
    })
    .await;

    valkey.kill();
    until("both notice", || {
        !status(&a).connected() && !status(&b).connected()
    })
    .await;
    // b dropped a's report at once: it routes on its own view, and keeps routing.
    assert_eq!(status(&b).peers(), 0);
    assert_eq!(PODS.iter().map(|pod| counted(&b, pod)).sum::<u32>(), 0);
    let mut during = HashMap::new();
    let held_b = burst(&b, 4, 100, &mut during).await;
    assert_eq!(during.values().sum::<usize>(), 4);

    valkey.restart().await;
    until("both reconnect and see each other again", || {
        status(&a).connected()
            && status(&b).connected()
            && status(&a).peers() == 1
            && status(&b).peers() == 1
    })
    .await;
    until("a counts b's picks made while the store was down", || {
        PODS.iter().map(|pod| counted(&a, pod)).sum::<u32>() == 10
    })
    .await;
    drop(held_b);
    until("b's releases reach a", || {
        PODS.iter().map(|pod| counted(&a, pod)).sum::<u32>() == 6
    })
    .await;
}

#[tokio::test]
async fn hostile_values_in_the_store_are_refused_and_the_rest_still_count() {
    let valkey = Valkey::start().await;
    let a = Picker::start(settings(Some((&valkey, "a"))), &PODS).await;
    let b = Picker::start(settings(Some((&valkey, "b"))), &PODS).await;
    scrape(&b);
    until("connected", || status(&b).peers() == 1).await;
    let mut c = valkey.connection().await;
    let key = "kvpick:inflight:test";
    let huge = "1".repeat(4 << 20);
    let far_future = format!("99999999999999 kvpick1 0 {}=9,9,9,9,9", PODS[0]);
    let hostile: Vec<(&str, &[u8])> = vec![
        ("garbage", b"not a value at all"),
        ("binary", b"\xff\xfe\x00\x01"),
        ("future", far_future.as_bytes()),
        ("wrong-format", b"1 kvpick9 0"),
        ("bad-address", b"1 kvpick1 0 pod-0:80=1,1,1,1,1"),
        ("huge", huge.as_bytes()),
        ("bad name with spaces", b"1 kvpick1 0"),
    ];
    for (field, value) in &hostile {
        redis::cmd("HSET")
            .arg(key)
            .arg(*field)
            .arg(*value)
            .query_async::<i64>(&mut c)
            .await
            .unwrap();
    }
    // Many fields: only max_fields are returned, whatever the hash holds.
    for i in 0..500 {
        redis::cmd("HSET")
            .arg(key)
            .arg(format!("junk-{i}"))
            .arg("x")
            .query_async::<i64>(&mut c)
            .await
            .unwrap();
    }
    let mut picks = HashMap::new();
    let _held = burst(&a, 5, 0, &mut picks).await;
    // b still counts a (it is read among the junk, or once the junk is past the first page)
    // and nothing of the hostile values: the only load it counts is a's.
    until("b counts a's picks and nothing else", || {
        PODS.iter().map(|pod| counted(&b, pod)).sum::<u32>() == 5
    })
    .await;
    for pod in PODS {
        assert_eq!(counted(&b, pod), counted(&a, pod), "{pod}");
    }
    assert!(status(&b).connected());
    let mut more = HashMap::new();
    let _held_b = burst(&b, 3, 100, &mut more).await;
    assert_eq!(more.values().sum::<usize>(), 3);
}
