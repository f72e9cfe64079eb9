//! The fleet's KV-event stream on real ZMQ sockets: what a SUB receives decodes with kvpick's
//! decoder and with a Python reference (pyzmq subscriber + msgspec with vLLM's struct
//! declarations) to the same events, in every layout; topics, sequence numbers, data-parallel
//! ranks and the stored tokens are right; replay returns exactly the missed batches, and a
//! restart starts the sequence over. Needs python3 with pyzmq and msgspec (`.ci/setup`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed unwrap is a failed test

mod fleet_util;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use fleet_util::{MODEL, get, post, prompt};
use kvpick_fleet::servers::driver::Command as EngineCommand;
use kvpick_fleet::{Fleet, KvLayout};
use kvpick_scheduler::events::{
    EventBatch, KvEvent, ReplayReply, Topic, decode_batch, parse_message, parse_replay_reply,
    replay_request,
};
use serde_json::{Value, json};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

/// A pyzmq subscriber decoding with vLLM's declarations (`scheduler/tests/vllm_kv_events.py`),
/// layout as a parameter.
const PYTHON: &str = r#"
import json, sys, time
try:
    import msgspec, zmq
except ImportError as e:
    sys.exit(f"{e}: run .ci/setup (pip install pyzmq msgspec)")

batch_array, event_array = sys.argv[1] == "array", sys.argv[2] == "array"
from vllm_kv_events import structs
KVEventBatch, BlockStored, BlockRemoved, AllBlocksCleared = structs(batch_array, event_array)

dec = msgspec.msgpack.Decoder(KVEventBatch)
h = lambda x: None if x is None else (int.from_bytes(x, "big") if isinstance(x, bytes) else x)
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
for ep in sys.argv[3:]:
    sub.connect(ep)
sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
time.sleep(0.5)
print("ready", flush=True)
sys.stdin.readline()  # the test says when every batch has been published
while sub.poll(1000):
    topic, seq, payload = sub.recv_multipart()
    b = dec.decode(payload)
    evs = []
    for e in b.events:
        d = {"type": type(e).__name__}
        if not isinstance(e, AllBlocksCleared):
            d["hashes"] = [h(x) for x in e.block_hashes]
            d["medium"] = e.medium
        if isinstance(e, BlockStored):
            d.update(parent=h(e.parent_block_hash), tokens=e.token_ids, block_size=e.block_size,
                     lora_name=e.lora_name)
        evs.append(d)
    print(json.dumps({"topic": topic.decode(), "seq": int.from_bytes(seq, "big"),
                      "dp": b.data_parallel_rank, "events": evs}), flush=True)
"#;

/// A batch described as the Python side describes it.
fn describe(topic: &[u8], seq: u64, b: &EventBatch) -> Value {
    let events: Vec<Value> = (b.events.iter())
        .map(|e| match e {
            KvEvent::BlockStored(s) => json!({"type": "BlockStored",
                "hashes": s.block_hashes.iter().map(|h| h.0).collect::<Vec<_>>(),
                "medium": s.medium.map(|m| m.as_str()), "parent": s.parent_block_hash.map(|h| h.0),
                "tokens": s.token_ids, "block_size": s.block_size, "lora_name": s.lora_name}),
            KvEvent::BlockRemoved(r) => json!({"type": "BlockRemoved",
                "hashes": r.block_hashes.iter().map(|h| h.0).collect::<Vec<_>>(),
                "medium": r.medium.map(|m| m.as_str())}),
            KvEvent::AllBlocksCleared => json!({"type": "AllBlocksCleared"}),
        })
        .collect();
    json!({"topic": String::from_utf8_lossy(topic), "seq": seq, "dp": b.data_parallel_rank,
           "events": events})
}

async fn subscriber(fleet: &Fleet) -> SubSocket {
    let mut sub = SubSocket::new();
    for s in fleet.servers() {
        sub.connect(&s.kv_events).await.unwrap();
    }
    sub.subscribe(Topic::PREFIX).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sub
}

/// Every message that arrives until none has for `quiet`.
async fn drain(sub: &mut SubSocket, quiet: Duration) -> Vec<Vec<Bytes>> {
    let mut out = Vec::new();
    while let Ok(Ok(m)) = tokio::time::timeout(quiet, sub.recv()).await {
        out.push(m.into_vec());
    }
    out
}

/// Sends a few requests to every server: a prompt, another, and the first again (a cache hit).
async fn traffic(fleet: &Fleet) -> Vec<Vec<u32>> {
    let mut prompts = Vec::new();
    for (i, s) in fleet.servers().iter().enumerate() {
        let (a, b) = (prompt(100 + i as u64, 70), prompt(200 + i as u64, 40));
        for p in [&a, &b, &a] {
            let (status, v) = post(
                s.address,
                "/v1/completions",
                &json!({"prompt": p, "max_tokens": 3}),
            )
            .await;
            assert_eq!(status, 200, "{v}");
        }
        prompts.extend([a, b]);
    }
    prompts
}

async fn conformance(layout: KvLayout, bytes_hashes: bool, dp: u32, py: (&str, &str)) {
    let mut cfg = fleet_util::config(2 / dp as usize);
    cfg.dp = dp;
    cfg.kv_encoding = layout.options(bytes_hashes);
    let fleet = Fleet::start(cfg).await.unwrap();
    let mut child = Command::new("python3")
        .args(["-c", PYTHON, py.0, py.1])
        .env(
            "PYTHONPATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../scheduler/tests"),
        )
        .args(fleet.servers().iter().map(|s| s.kv_events.clone()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is required (with pyzmq and msgspec: run .ci/setup)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().and_then(Result::ok);
    assert_eq!(
        ready.as_deref(),
        Some("ready"),
        "python subscriber failed to start"
    );
    let mut sub = subscriber(&fleet).await;
    let prompts = traffic(&fleet).await;
    let ours = drain(&mut sub, Duration::from_millis(500)).await;
    writeln!(child.stdin.take().unwrap()).unwrap();
    let theirs: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(child.wait().unwrap().success(), "python decoder failed");

    let mut decoded: Vec<Value> = Vec::new();
    let mut stored_tokens: Vec<Vec<u32>> = Vec::new();
    for frames in &ours {
        let m = parse_message(frames).unwrap();
        let topic = Topic::parse(m.topic).unwrap();
        assert_eq!(topic.model, MODEL);
        let server = fleet
            .servers()
            .iter()
            .find(|s| Some(s.address) == topic.socket_addr());
        let server = server.expect("the topic names a server's HTTP address");
        let batch = decode_batch(m.payload).unwrap();
        // vLLM stamps its rank on every batch, 0 without data parallelism.
        assert_eq!(batch.data_parallel_rank, Some(server.rank));
        for e in &batch.events {
            if let KvEvent::BlockStored(s) = e {
                assert_eq!(s.block_size, 16);
                stored_tokens.push(s.token_ids.clone());
            }
        }
        decoded.push(describe(m.topic, m.seq, &batch));
    }
    let key = |v: &Value| {
        (
            v["topic"].as_str().unwrap().to_owned(),
            v["seq"].as_u64().unwrap(),
        )
    };
    decoded.sort_by_key(key);
    let mut theirs = theirs;
    theirs.sort_by_key(key);
    assert!(!decoded.is_empty());
    assert_eq!(decoded, theirs, "msgspec decodes the same events");
    // Per server, sequence numbers run 0, 1, 2, ... without a gap.
    for s in fleet.servers() {
        let topic = Topic::format(&s.address.to_string(), MODEL);
        let seqs: Vec<u64> = (decoded.iter())
            .filter(|v| v["topic"] == topic.as_str())
            .map(|v| v["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "{topic}");
    }
    // Each prompt's full blocks were stored, once, with its tokens.
    for p in &prompts {
        let full = &p[..p.len() / 16 * 16];
        let n = stored_tokens
            .iter()
            .filter(|t| t.as_slice() == full)
            .count();
        assert_eq!(n, 1, "the {}-token prompt's blocks stored once", p.len());
    }
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_decode_like_msgspec_in_every_layout() {
    conformance(KvLayout::ArrayMap, false, 1, ("array", "map")).await;
    conformance(KvLayout::Array, true, 1, ("array", "array")).await;
    conformance(KvLayout::Map, false, 2, ("map", "map")).await;
}

async fn replay(endpoint: &str, from: u64) -> Vec<(u64, Bytes)> {
    let mut dealer = DealerSocket::new();
    dealer.connect(endpoint).await.unwrap();
    let req: Vec<Bytes> = replay_request(from).into_iter().map(Bytes::from).collect();
    dealer
        .send(ZmqMessage::try_from(req).unwrap())
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), dealer.recv())
            .await
            .expect("replay answers")
            .unwrap()
            .into_vec();
        assert_eq!(
            m.len(),
            4,
            "[\"\", topic, seq, payload] as vLLM 0.32's ZmqEventPublisher (the end marker too)"
        );
        match parse_replay_reply(&m).unwrap() {
            ReplayReply::End => return out,
            ReplayReply::Batch(b) => out.push((b.seq, b.payload.clone())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_returns_exactly_the_missed_batches_and_restart_resets() {
    let fleet = fleet_util::start(1, KvLayout::ArrayMap, false).await;
    let server = &fleet.servers()[0];
    let replay_ep = server.kv_replay.clone().unwrap();
    let mut sub = subscriber(&fleet).await;
    for i in 0..4 {
        let body = json!({"prompt": prompt(300 + i, 50), "max_tokens": 2});
        assert_eq!(post(server.address, "/v1/completions", &body).await.0, 200);
    }
    let live: Vec<(u64, Bytes)> = drain(&mut sub, Duration::from_millis(500))
        .await
        .into_iter()
        .map(|f| {
            let m = parse_message(&f).unwrap();
            (m.seq, m.payload.clone())
        })
        .collect();
    let n = live.len() as u64;
    assert_eq!(n, 4, "one batch per prompt");
    assert_eq!(
        replay(&replay_ep, 2).await,
        live[2..],
        "batches 2.. byte for byte"
    );
    assert_eq!(replay(&replay_ep, 0).await, live);
    assert!(
        replay(&replay_ep, n).await.is_empty(),
        "nothing missed: just the end marker"
    );

    server.command(EngineCommand::Restart).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        get(server.address, "/health").await.0,
        503,
        "down while restarting"
    );
    for _ in 0..100 {
        if get(server.address, "/health").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = post(
        server.address,
        "/v1/completions",
        &json!({"prompt": prompt(1, 40), "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 200);
    let after = drain(&mut sub, Duration::from_millis(500)).await;
    let seqs: Vec<u64> = after
        .iter()
        .map(|f| parse_message(f).unwrap().seq)
        .collect();
    assert_eq!(
        seqs.first(),
        Some(&0),
        "a restarted publisher numbers from 0"
    );
    assert_eq!(
        replay(&replay_ep, 0).await.len(),
        after.len(),
        "the old buffer is gone"
    );
    let (_, page) = get(server.address, "/metrics").await;
    assert!(page.contains("vllm:prompt_tokens_total{model_name=\"sim-model\",engine=\"0\"} 40.0"));
    fleet.shutdown().await;
}
