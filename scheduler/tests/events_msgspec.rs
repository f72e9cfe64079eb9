//! The codec against the real thing: Python's msgspec with vLLM's own struct declarations.
//!
//! For each batch (random, plus edge cases) and each layout, Python builds the batch from a JSON
//! description with vLLM's structs and encodes it with msgspec; the test asserts that
//! - kvpick's encoder wrote exactly msgspec's bytes,
//! - msgspec's typed decoder reads kvpick's bytes back into an equal object,
//! - kvpick's decoder reads msgspec's bytes back into the same batch,
//!
//! and does the last for the older schemas vLLM published (first release; `medium` and
//! `data_parallel_rank` added). Needs `python3` with `msgspec` (`.ci/setup` installs it); fails
//! loudly without.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use kvpick_scheduler::events::{
    EncodeOptions, Encoding, EngineHash, EventBatch, ExtraKey, HashEncoding, KvEvent, Medium,
    decode_batch, encode_batch,
};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

/// Builds and checks batches with vLLM's declarations (`tests/vllm_kv_events.py`, shared with the
/// endpoint picker's and the fleet's Python peers).
const PYTHON: &str = r#"
import json, sys
try:
    import msgspec
except ImportError:
    sys.exit("msgspec is not installed: run .ci/setup (pip install msgspec)")

from vllm_kv_events import structs

def extra(v):
    (kind, x), = v.items()
    if kind == "n": return None
    if kind in ("b", "i", "s"): return x
    if kind == "f": return float(x)
    if kind == "y": return bytes.fromhex(x)
    if kind == "a": return [extra(e) for e in x]
    if kind == "d": return {extra(k): extra(e) for k, e in x}
    raise ValueError(kind)

def build(desc, schema, types, as_bytes):
    KVEventBatch, BlockStored, BlockRemoved, AllBlocksCleared = types
    h = (lambda x: x.to_bytes(8, "big")) if as_bytes else (lambda x: x)
    events = []
    for e in desc["events"]:
        if e["t"] == "C":
            events.append(AllBlocksCleared())
            continue
        kw = dict(block_hashes=[h(x) for x in e["h"]])
        if schema != "v0":
            kw["medium"] = e["m"]
        if e["t"] == "R":
            if schema == "current":
                kw["group_idx"] = e["g"]
            events.append(BlockRemoved(**kw))
            continue
        kw.update(parent_block_hash=None if e["p"] is None else h(e["p"]),
                  token_ids=e["tok"], block_size=e["bs"], lora_id=e["lid"])
        if schema == "current":
            xk = e["xk"]
            kw.update(lora_name=e["ln"], group_idx=e["g"], kv_cache_spec_kind=e["k"],
                      kv_cache_spec_sliding_window=e["w"],
                      extra_keys=None if xk is None else
                          [None if b is None else tuple(extra(v) for v in b) for b in xk])
        events.append(BlockStored(**kw))
    kw = dict(ts=float(desc["ts"]), events=events)
    if schema != "v0":
        kw["data_parallel_rank"] = desc["dp"]
    return KVEventBatch(**kw)

enc = msgspec.msgpack.Encoder()
cache = {}
out = []
for line in sys.stdin.read().splitlines():
    case = json.loads(line)
    key = (case["schema"], case["batch"] == "array", case["events"] == "array")
    if key not in cache:
        schema, batch_array, event_array = key
        cache[key] = structs(batch_array, event_array, schema)
    types = cache[key]
    obj = build(case["desc"], case["schema"], types, case["hashes"] == "bytes")
    reply = {"ref": enc.encode(obj).hex()}
    if case["ours"] is not None:
        try:
            back = msgspec.msgpack.decode(bytes.fromhex(case["ours"]), type=types[0])
            reply["equal"] = back == obj
        except Exception as err:
            reply["error"] = repr(err)
    out.append(json.dumps(reply))
print("\n".join(out))
"#;

fn medium(m: Option<Medium>) -> Value {
    m.map_or(Value::Null, |m| m.as_str().into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn extra_key(k: &ExtraKey) -> Value {
    match k {
        ExtraKey::Nil => json!({"n": null}),
        ExtraKey::Bool(b) => json!({"b": b}),
        ExtraKey::Int(v) => json!({"i": v}),
        ExtraKey::UInt(v) => json!({"i": v}),
        ExtraKey::Float(v) => json!({"f": v}),
        ExtraKey::Str(s) => json!({"s": s}),
        ExtraKey::Bytes(b) => json!({"y": hex(b)}),
        ExtraKey::Array(items) => json!({"a": items.iter().map(extra_key).collect::<Vec<_>>()}),
        ExtraKey::Map(pairs) => {
            json!({"d": pairs.iter().map(|(k, v)| [extra_key(k), extra_key(v)]).collect::<Vec<_>>()})
        }
    }
}

/// The batch as JSON for the Python side.
fn describe(batch: &EventBatch) -> Value {
    let hashes = |h: &[EngineHash]| h.iter().map(|h| h.0).collect::<Vec<_>>();
    let events: Vec<Value> = (batch.events.iter())
        .map(|e| match e {
            KvEvent::BlockStored(s) => json!({
                "t": "S", "h": hashes(&s.block_hashes), "p": s.parent_block_hash.map(|h| h.0),
                "tok": s.token_ids, "bs": s.block_size, "lid": s.lora_id, "m": medium(s.medium),
                "ln": s.lora_name, "g": s.group_idx, "k": s.kv_cache_spec_kind,
                "w": s.kv_cache_spec_sliding_window,
                "xk": s.extra_keys.as_ref().map(|blocks| blocks.iter().map(|b| {
                    b.as_ref().map(|keys| keys.iter().map(extra_key).collect::<Vec<_>>())
                }).collect::<Vec<_>>()),
            }),
            KvEvent::BlockRemoved(r) => json!({
                "t": "R", "h": hashes(&r.block_hashes), "m": medium(r.medium), "g": r.group_idx,
            }),
            KvEvent::AllBlocksCleared => json!({"t": "C"}),
        })
        .collect();
    json!({"ts": batch.ts, "events": events, "dp": batch.data_parallel_rank})
}

/// `batch` with only what the older schema `schema` could carry.
fn restrict(batch: &EventBatch, schema: &str) -> EventBatch {
    let mut batch = batch.clone();
    if schema == "current" {
        return batch;
    }
    if schema == "v0" {
        batch.data_parallel_rank = None;
    }
    for event in &mut batch.events {
        match event {
            KvEvent::BlockStored(s) => {
                *s = kvpick_scheduler::events::BlockStored {
                    block_hashes: std::mem::take(&mut s.block_hashes),
                    parent_block_hash: s.parent_block_hash,
                    token_ids: std::mem::take(&mut s.token_ids),
                    block_size: s.block_size,
                    lora_id: s.lora_id,
                    medium: if schema == "v0" { None } else { s.medium },
                    ..Default::default()
                }
            }
            KvEvent::BlockRemoved(r) => {
                r.group_idx = None;
                if schema == "v0" {
                    r.medium = None;
                }
            }
            KvEvent::AllBlocksCleared => {}
        }
    }
    batch
}

/// Batches that reach the msgpack forms random small ones do not: 16- and 32-bit lengths,
/// extreme ints, long strings.
fn edge_cases() -> Vec<EventBatch> {
    use kvpick_scheduler::events::{BlockRemoved, BlockStored};
    let long = |n: usize| "é".repeat(n / 2);
    vec![
        EventBatch::default(),
        EventBatch {
            ts: -0.0,
            events: vec![
                KvEvent::BlockStored(BlockStored {
                    block_hashes: (0..10).map(|i| EngineHash(u64::MAX - i)).collect(),
                    parent_block_hash: Some(EngineHash(0)),
                    token_ids: (0..70_000u32)
                        .map(|t| t.wrapping_mul(2_654_435_761))
                        .collect(),
                    block_size: 7_000,
                    lora_id: Some(i64::MIN),
                    medium: Some(Medium::Storage),
                    lora_name: Some(long(300)),
                    extra_keys: Some(vec![None; 10]),
                    group_idx: Some(u32::MAX),
                    kv_cache_spec_kind: Some(long(70_000)),
                    kv_cache_spec_sliding_window: Some(0),
                }),
                KvEvent::BlockRemoved(BlockRemoved {
                    block_hashes: (0..300).map(EngineHash).collect(),
                    medium: None,
                    group_idx: Some(0),
                }),
            ],
            data_parallel_rank: Some(u32::MAX),
        },
    ]
}

fn encoding(e: Encoding) -> &'static str {
    match e {
        Encoding::Array => "array",
        Encoding::Map => "map",
    }
}

#[test]
fn msgspec_agrees_byte_for_byte() {
    let mut runner = TestRunner::deterministic();
    let strategy = common::batch();
    let mut batches = edge_cases();
    batches.extend((0..300).map(|_| strategy.new_tree(&mut runner).expect("tree").current()));

    // (schema, options, batch index, the bytes kvpick wrote when the schema is current)
    let mut cases = Vec::new();
    let mut input = String::new();
    for (i, batch) in batches.iter().enumerate() {
        for opts in EncodeOptions::ALL {
            cases.push((
                "current",
                opts,
                i,
                Some(encode_batch(batch, opts).expect("encodes")),
            ));
        }
        for schema in ["v0", "v1"] {
            cases.push((schema, EncodeOptions::ARRAY, i, None));
        }
    }
    for (schema, opts, i, ours) in &cases {
        let batch = restrict(&batches[*i], schema);
        let case = json!({
            "schema": schema, "batch": encoding(opts.batch), "events": encoding(opts.events),
            "hashes": if opts.hashes == HashEncoding::Bytes { "bytes" } else { "int" },
            "desc": describe(&batch), "ours": ours.as_deref().map(hex),
        });
        input.push_str(&case.to_string());
        input.push('\n');
    }

    let mut child = Command::new("python3")
        .args(["-c", PYTHON])
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/tests"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be on PATH (with msgspec: run .ci/setup)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("feed python");
    let output = child.wait_with_output().expect("python runs");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let replies: Vec<Value> = String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json reply"))
        .collect();
    assert_eq!(replies.len(), cases.len());

    for ((schema, opts, i, ours), reply) in cases.iter().zip(&replies) {
        let ctx = format!("batch {i}, schema {schema}, {opts:?}");
        let reference = reply["ref"]
            .as_str()
            .and_then(unhex)
            .expect("hex reference");
        if let Some(ours) = ours {
            assert_eq!(
                hex(ours),
                hex(&reference),
                "encoding differs from msgspec's: {ctx}"
            );
            assert_eq!(
                reply["error"],
                Value::Null,
                "msgspec cannot read ours: {ctx}"
            );
            assert_eq!(
                reply["equal"],
                Value::Bool(true),
                "msgspec reads another batch: {ctx}"
            );
        }
        let decoded = decode_batch(&reference).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(decoded, restrict(&batches[*i], schema), "{ctx}");
    }
    eprintln!("{} cases agreed with msgspec", cases.len());
}
