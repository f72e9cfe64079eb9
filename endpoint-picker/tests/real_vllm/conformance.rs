//! The simulated fleet (`kvpick-fleet`) against real vLLM, field by field: the same requests go
//! to a fleet pod and to a vLLM server, and what each sends back is compared in shape — KV-event
//! batches and each event type's fields in order (`group_idx`, `kv_cache_spec_kind`,
//! `extra_keys`, `medium`, `lora_name`...), replay framing and its end marker, the `usage`
//! objects, when a prefix-cache reset is published, and the `/metrics` names and labels both ways
//! (vLLM's series the fleet omits are listed, each with its reason, in [`OMITTED`]). Values that
//! depend on the engine (hashes, timings) are not compared; their kinds are.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kvpick_fleet::servers::tokenizer::Tokenizer;
use kvpick_fleet::{Fleet, FleetConfig, Profile};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use crate::common::envoy::{self, post_direct};
use crate::common::vllm_cpu::{BLOCK, MODEL, Vllm, tiny_model};

/// Every message a KV-event publisher sent since the tap connected.
pub struct Tap {
    messages: Arc<Mutex<Vec<Vec<Bytes>>>>,
    stop: CancellationToken,
}

impl Tap {
    /// Subscribes to `endpoint` (`tcp://ip:port`) and keeps everything it publishes.
    pub async fn connect(endpoint: &str) -> Self {
        let mut sub = SubSocket::new();
        sub.subscribe("").await.unwrap();
        sub.connect(endpoint).await.unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (keep, token) = (messages.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    m = sub.recv() => match m {
                        Ok(m) => keep.lock().push(m.into_vec()),
                        Err(_) => break,
                    },
                }
            }
        });
        // The subscription reaches the publisher asynchronously (ZMQ's slow joiner).
        tokio::time::sleep(Duration::from_millis(500)).await;
        Self { messages, stop }
    }

    fn payloads(&self) -> Vec<rmpv::Value> {
        self.messages
            .lock()
            .iter()
            .map(|frames| {
                assert_eq!(frames.len(), 3, "[topic, seq, payload]");
                rmpv::decode::read_value(&mut &frames[2][..]).unwrap()
            })
            .collect()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A value's shape: maps as their keys in order with each value's shape, arrays as their
/// elements' shapes (one, marked `…`, when all agree), strings with their text, numbers by kind.
fn shape(v: &rmpv::Value) -> String {
    use rmpv::Value as V;
    match v {
        V::Nil => "nil".into(),
        V::Boolean(_) => "bool".into(),
        V::Integer(_) => "int".into(),
        V::F32(_) | V::F64(_) => "float".into(),
        V::String(s) => format!("{:?}", s.as_str().unwrap_or("?")),
        V::Binary(_) => "bin".into(),
        V::Array(items) => {
            let shapes: Vec<String> = items.iter().map(shape).collect();
            match shapes.first() {
                None => "[]".into(),
                Some(first) if shapes.iter().all(|s| s == first) => format!("[{first}…]"),
                Some(_) => format!("[{}]", shapes.join(",")),
            }
        }
        V::Map(entries) => {
            let fields: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}:{}", shape(k), shape(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        V::Ext(..) => "ext".into(),
    }
}

/// The shape of a batch (its events replaced by a marker) and, per event type, the shape of its
/// first event of that type, taking a `BlockStored` with no parent (a prompt's first block), so
/// that both sides show the same case.
fn event_shapes(payloads: &[rmpv::Value]) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut batches = BTreeSet::new();
    let mut events = BTreeMap::new();
    for p in payloads {
        let rmpv::Value::Array(fields) = p else {
            panic!("a batch is an array: {p}")
        };
        let mut outer = fields.clone();
        if let Some(list) = outer.get_mut(1) {
            *list = rmpv::Value::from("events");
        }
        batches.insert(shape(&rmpv::Value::Array(outer)));
        for e in fields[1].as_array().unwrap() {
            let kind = e["type"].as_str().unwrap().to_owned();
            if kind == "BlockStored" && !e["parent_block_hash"].is_nil() {
                continue;
            }
            events.entry(kind).or_insert_with(|| shape(e));
        }
    }
    (batches, events)
}

/// Asks a replay endpoint for everything from sequence 0; returns the first batch's frames and
/// the end marker's frames as `topic|seq|payload` descriptions.
async fn replay_framing(endpoint: &str, topic: &str) -> (String, String) {
    let mut dealer = DealerSocket::new();
    dealer.connect(endpoint).await.unwrap();
    let ask = ZmqMessage::try_from(vec![
        Bytes::new(),
        Bytes::copy_from_slice(&0u64.to_be_bytes()),
    ])
    .unwrap();
    dealer.send(ask).await.unwrap();
    let describe = |frames: &[Bytes]| -> String {
        frames
            .iter()
            .map(|f| match f.len() {
                0 => "empty".to_owned(),
                _ if f[..] == *topic.as_bytes() => "topic".to_owned(),
                8 if f[..] == [0xff; 8] => "seq(-1)".to_owned(),
                8 => "seq".to_owned(),
                _ => "payload".to_owned(),
            })
            .collect::<Vec<_>>()
            .join("|")
    };
    let mut first = None;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), dealer.recv())
            .await
            .expect("replay answered within 30 s")
            .unwrap()
            .into_vec();
        let d = describe(&m);
        if d.contains("seq(-1)") {
            return (first.expect("the replay sent a batch"), d);
        }
        first.get_or_insert(d);
    }
}

/// A JSON value's shape: object keys in order, numbers and nulls by kind.
fn json_shape(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(_) => "num".into(),
        Value::String(_) => "str".into(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(json_shape).collect::<Vec<_>>().join(",")
        ),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{k}:{}", json_shape(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// The `usage` shapes of a whole completion, a whole chat and a streamed completion's usage chunk.
async fn usage_shapes(addr: std::net::SocketAddr) -> Vec<String> {
    let completion = json!({"model": MODEL, "prompt": "usage check", "max_tokens": 2});
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "usage check"}], "max_tokens": 2});
    let mut shapes = vec![
        json_shape(&post_direct(addr, "/v1/completions", &completion).await["usage"]),
        json_shape(&post_direct(addr, "/v1/chat/completions", &chat).await["usage"]),
    ];
    let mut streamed = completion.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let req = hyper::Request::post(format!("http://{addr}/v1/completions"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(streamed.to_string())))
        .unwrap();
    let resp = envoy::client().request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    let usage = text
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .find(|c| !c["usage"].is_null())
        .expect("a usage chunk");
    shapes.push(json_shape(&usage["usage"]));
    shapes
}

/// vLLM 0.32's metric families (sample names without `_bucket`/`_sum`/`_count`, then without
/// `_total`) that the fleet does not expose, and why. Nothing kvpick or calibrate reads may be
/// here (checked). vLLM also exposes `_created` samples (prometheus_client's creation time of
/// each counter and histogram), which nothing reads and the fleet omits.
const OMITTED: &[(&str, &str)] = &[
    (
        "vllm:admission_rejections",
        "vLLM's admission control; the fleet refuses with its own queue bound",
    ),
    ("vllm:engine_sleep_state", "sleep mode is not simulated"),
    (
        "vllm:estimated_flops_per_gpu",
        "GPU utilisation estimates; the fleet has no hardware model",
    ),
    (
        "vllm:estimated_read_bytes_per_gpu",
        "GPU utilisation estimates; the fleet has no hardware model",
    ),
    (
        "vllm:estimated_write_bytes_per_gpu",
        "GPU utilisation estimates; the fleet has no hardware model",
    ),
    (
        "vllm:external_prefix_cache_hits",
        "no KV connector (offloaded or remote cache) in the fleet",
    ),
    (
        "vllm:external_prefix_cache_queries",
        "no KV connector (offloaded or remote cache) in the fleet",
    ),
    ("vllm:mm_cache_hits", "multimodal inputs are not simulated"),
    (
        "vllm:mm_cache_queries",
        "multimodal inputs are not simulated",
    ),
    (
        "vllm:num_requests_waiting_by_reason",
        "kvpick reads the total, vllm:num_requests_waiting",
    ),
    (
        "vllm:prompt_tokens_cached",
        "the same counts are in vllm:prefix_cache_hits",
    ),
    (
        "vllm:prompt_tokens_cached_by_source",
        "the same counts are in vllm:prefix_cache_hits",
    ),
    (
        "vllm:request_decode_time_seconds",
        "calibrate reads the queue, prefill, TTFT and inter-token histograms",
    ),
    (
        "vllm:request_inference_time_seconds",
        "calibrate reads the queue, prefill, TTFT and inter-token histograms",
    ),
    (
        "vllm:request_time_per_output_token_seconds",
        "calibrate reads the inter-token histogram",
    ),
    (
        "vllm:request_max_num_generation_tokens",
        "request parameters; calibrate reads the lengths served",
    ),
    (
        "vllm:request_params_max_tokens",
        "request parameters; calibrate reads the lengths served",
    ),
    (
        "vllm:request_params_n",
        "request parameters; the load asks n = 1",
    ),
    (
        "vllm:request_num_preemptions",
        "the fleet counts preemptions in vllm:num_preemptions",
    ),
    (
        "vllm:request_prefill_kv_computed_tokens",
        "calibrate derives it from vllm:iteration_tokens_total",
    ),
];

/// A sample name's family, as [`OMITTED`] names them.
fn family(sample: &str) -> &str {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| sample.strip_suffix(s))
        .unwrap_or(sample);
    base.strip_suffix("_total").unwrap_or(base)
}

/// The fleet's `vllm:` series against vLLM's, both ways: each the fleet exposes exists in vLLM
/// with the same label names; each vLLM exposes exists in the fleet likewise, or its family is
/// in [`OMITTED`]; nothing kvpick or calibrate reads is omitted.
fn metrics_match(
    fleet: &BTreeMap<String, BTreeSet<String>>,
    vllm: &BTreeMap<String, BTreeSet<String>>,
) {
    let omitted: BTreeSet<&str> = OMITTED.iter().map(|(n, _)| *n).collect();
    let read: BTreeSet<&str> = kvpick_epp::scrape::prometheus::scraped_names()
        .chain(kvpick_fleet::prometheus::calibrate_reads())
        .collect();
    for name in &read {
        assert!(
            !omitted.contains(family(name)),
            "{name} is read (by kvpick or calibrate) but listed as omitted"
        );
    }
    let same = |name: &str, ours: &BTreeSet<String>, theirs: &BTreeSet<String>| {
        if name == "vllm:cache_config_info" {
            // The fleet's cache config is a subset of vLLM's (those it has a value for).
            assert!(
                ours.is_subset(theirs),
                "{name}: {ours:?} vs vLLM's {theirs:?}"
            );
        } else {
            assert_eq!(
                ours, theirs,
                "{name}'s labels: the fleet's (left), vLLM's (right)"
            );
        }
    };
    for (name, labels) in fleet.iter().filter(|(n, _)| n.starts_with("vllm:")) {
        let theirs = vllm
            .get(name)
            .unwrap_or_else(|| panic!("the fleet exposes {name}, vLLM does not"));
        same(name, labels, theirs);
    }
    let mut seen_omitted = BTreeSet::new();
    for (name, theirs) in vllm
        .iter()
        .filter(|(n, _)| n.starts_with("vllm:") && !n.ends_with("_created"))
    {
        match fleet.get(name) {
            Some(ours) => same(name, ours, theirs),
            None => {
                assert!(
                    omitted.contains(family(name)),
                    "vLLM exposes {name} {theirs:?}, the fleet does not: add it to the fleet \
                     (fleet/src/servers/stats.rs), or to OMITTED with the reason"
                );
                seen_omitted.insert(family(name));
            }
        }
    }
    let stale: Vec<&&str> = omitted.difference(&seen_omitted).collect();
    assert!(
        stale.is_empty(),
        "OMITTED lists families vLLM did not expose: {stale:?}"
    );
}

/// Metric name → label names, from a Prometheus text page.
fn metric_labels(page: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for line in page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.split_once('{') {
            Some((n, rest)) => (n, rest.rsplit_once('}').map_or("", |(l, _)| l)),
            None => (line.split_whitespace().next().unwrap_or(""), ""),
        };
        let keys = labels
            .split("\",")
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, _)| k.trim_start_matches(',').to_owned())
            })
            .collect();
        out.entry(name.to_owned()).or_insert(keys);
    }
    out
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let uri: hyper::Uri = format!("http://{addr}{path}").parse().unwrap();
    let resp = envoy::client().get(uri).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

async fn reset_prefix_cache(addr: std::net::SocketAddr) {
    let req = hyper::Request::post(format!("http://{addr}/reset_prefix_cache"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = envoy::client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "/reset_prefix_cache on {addr}");
}

/// The events of each batch `tap` received, by type.
fn event_types(tap: &Tap) -> Vec<Vec<String>> {
    tap.payloads()
        .iter()
        .map(|p| {
            p[1].as_array()
                .unwrap()
                .iter()
                .map(|e| e["type"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

/// `/reset_prefix_cache` on an idle server publishes nothing at once: `AllBlocksCleared` comes
/// with the engine's next step, at the head of the first batch after the reset.
async fn cleared_at_next_step(addr: std::net::SocketAddr, tap: &Tap, who: &str) {
    let before = event_types(tap).len();
    reset_prefix_cache(addr).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle = event_types(tap);
    assert_eq!(
        idle.len(),
        before,
        "{who} published {:?} on an idle reset, before any step",
        &idle[before..]
    );
    let body = json!({"model": MODEL, "prompt": "after the reset, the next step", "max_tokens": 2});
    post_direct(addr, "/v1/completions", &body).await;
    for _ in 0..300 {
        let now = event_types(tap);
        if now.len() > before {
            assert_eq!(
                now[before].first().map(String::as_str),
                Some("AllBlocksCleared"),
                "{who}: the first batch after the reset: {:?}",
                now[before]
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{who} published no batch after the reset and a request");
}

/// Runs the same history on a fleet pod as `vllm` went through (stores, evictions, a cache
/// reset), then compares the two field by field. `tap` has been subscribed to `vllm` since it
/// started.
pub async fn fleet_matches_vllm(vllm: &Vllm, tap: &Tap) {
    let mut profile = Profile::named("tiny").unwrap();
    profile.block_size = BLOCK as u32;
    profile.kv_blocks = 64;
    let mut cfg = FleetConfig::new(profile, MODEL);
    cfg.speed = 20.0;
    cfg.tokenizer = Tokenizer::load(tiny_model()).unwrap();
    let fleet = Fleet::start(cfg).await.unwrap();
    let server = &fleet.servers()[0];
    let fleet_tap = Tap::connect(&server.kv_events).await;

    // Stores, then evictions (64 blocks of 32 tokens: three prompts of 1,000 tokens overflow
    // them), then a reset and a request after it.
    for seed in 0..4u32 {
        let ids: Vec<u32> = (0..1000).map(|i| 3 + (i * 7 + seed * 131) % 1000).collect();
        let body = json!({"model": MODEL, "prompt": ids, "max_tokens": 2});
        post_direct(server.address, "/v1/completions", &body).await;
    }
    // The reset's timing, on both: vLLM (idle at this point of the suite) and the fleet.
    cleared_at_next_step(vllm.addr, tap, "vLLM").await;
    cleared_at_next_step(server.address, &fleet_tap, "the fleet").await;
    let usage_fleet = usage_shapes(server.address).await;
    let usage_vllm = usage_shapes(vllm.addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (batches_fleet, events_fleet) = event_shapes(&fleet_tap.payloads());
    let (batches_vllm, events_vllm) = event_shapes(&tap.payloads());
    assert_eq!(batches_fleet, batches_vllm, "KV-event batch layout");
    for kind in ["BlockStored", "BlockRemoved", "AllBlocksCleared"] {
        let (f, v) = (events_fleet.get(kind), events_vllm.get(kind));
        assert!(v.is_some(), "vLLM sent no {kind} during the suite");
        assert_eq!(
            f, v,
            "{kind}: the fleet's fields (left) differ from vLLM's (right)"
        );
    }

    let topic_fleet = format!("kv@{}@{MODEL}", server.address);
    let replay_fleet = replay_framing(server.kv_replay.as_deref().unwrap(), &topic_fleet).await;
    let replay_vllm = replay_framing(
        &format!("tcp://127.0.0.1:{}", vllm.replay),
        &format!("kv@{}@{MODEL}", vllm.addr),
    )
    .await;
    assert_eq!(
        replay_fleet, replay_vllm,
        "replay framing (batch, end marker)"
    );

    assert_eq!(
        usage_fleet, usage_vllm,
        "usage (completion, chat, streamed)"
    );

    let metrics_fleet = metric_labels(&get(server.address, "/metrics").await);
    let metrics_vllm = metric_labels(&get(vllm.addr, "/metrics").await);
    metrics_match(&metrics_fleet, &metrics_vllm);
    drop(fleet_tap);
    fleet.shutdown().await;
}
