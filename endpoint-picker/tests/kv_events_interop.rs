//! Interop with libzmq as vLLM uses it: the publisher is Python (pyzmq + msgspec,
//! `kv_events_vllm_publisher.py`), with vLLM's structs and vLLM's publisher behaviour, in
//! connect mode (it binds, kvpick connects) and bind mode (kvpick binds, it connects), in each
//! of vLLM's layouts, with int and byte hashes and both replay reply shapes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod kv_events_common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use kv_events_common::*;
use kvpick_epp::kv_events::{KvEventsConfig, parse_tcp_address};
use kvpick_scheduler::events::{BlockRemoved, KvEvent, Medium};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

struct Python {
    child: Child,
    stdin: ChildStdin,
    publisher: Option<SocketAddr>,
    replay: SocketAddr,
}

impl Python {
    async fn start(args: &[&str]) -> Self {
        let deps = std::process::Command::new("python3")
            .args(["-c", "import zmq, msgspec"])
            .status();
        assert!(
            deps.is_ok_and(|s| s.success()),
            "python3 with pyzmq and msgspec is required for the interop tests: run .ci/setup"
        );
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/kv_events_vllm_publisher.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 starts");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("publisher ready in time")
            .unwrap()
            .expect("publisher printed READY");
        let parts: Vec<&str> = ready.split_whitespace().collect();
        let ["READY", publisher, replay] = parts[..] else {
            panic!("unexpected line {ready:?}")
        };
        Self {
            child,
            stdin,
            publisher: (publisher != "-").then(|| parse_tcp_address(publisher, None).unwrap()),
            replay: parse_tcp_address(replay, None).unwrap(),
        }
    }

    async fn publish(&mut self, batches: &[Vec<KvEvent>]) {
        let batches: Vec<Vec<Value>> = batches
            .iter()
            .map(|b| b.iter().map(to_json).collect())
            .collect();
        let line = format!("{}\n", json!({ "publish": batches }));
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Publishes empty batches until `done` holds: later batches reveal lost earlier ones.
    async fn until(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            self.publish(&[vec![]]).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"{\"quit\": true}\n").await;
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        assert!(
            status.is_ok_and(|s| s.is_ok_and(|s| s.success())),
            "publisher exits cleanly"
        );
    }
}

fn removed_from(medium: Medium, event: KvEvent) -> KvEvent {
    match event {
        KvEvent::BlockRemoved(r) => KvEvent::BlockRemoved(BlockRemoved {
            medium: Some(medium),
            ..r
        }),
        other => other,
    }
}

fn to_json(event: &KvEvent) -> Value {
    let hashes =
        |h: &[kvpick_scheduler::events::EngineHash]| h.iter().map(|h| h.0).collect::<Vec<_>>();
    match event {
        KvEvent::BlockStored(s) => json!({
            "type": "BlockStored",
            "block_hashes": hashes(&s.block_hashes),
            "parent_block_hash": s.parent_block_hash.map(|h| h.0),
            "token_ids": s.token_ids,
            "block_size": s.block_size,
            "medium": s.medium.map(Medium::as_str),
        }),
        KvEvent::BlockRemoved(r) => json!({
            "type": "BlockRemoved",
            "block_hashes": hashes(&r.block_hashes),
            "medium": r.medium.map(Medium::as_str),
        }),
        KvEvent::AllBlocksCleared => json!({ "type": "AllBlocksCleared" }),
    }
}

/// History before kvpick knows the pod (replayed), then live stores, a CPU tier, a removal and
/// a clear, all checked in the index.
async fn scenario(h: &Harness, py: &mut Python) {
    wait_for(
        "warm start from the pod's buffer",
        Duration::from_secs(2),
        || h.blocks(0, &tokens(1, 4)) == 4,
    )
    .await;
    py.publish(&[
        vec![stored(1, 4, 6, Some(Medium::Cpu))],
        vec![removed_from(Medium::Cpu, removed(1, 5, 6))],
        vec![stored(2, 0, 3, None)],
    ])
    .await;
    py.until("live batches", || {
        let (blocks, weighted) = h.held(0, &tokens(1, 6));
        blocks == 5 && (weighted - 4.8).abs() < 1e-4 && h.blocks(0, &tokens(2, 3)) == 3
    })
    .await;
    py.publish(&[vec![KvEvent::AllBlocksCleared]]).await;
    py.until("clear", || {
        h.blocks(0, &tokens(1, 6)) == 0 && h.blocks(0, &tokens(2, 3)) == 0
    })
    .await;
    let s = h.stats(0);
    assert_eq!((s.decode_errors, s.resets), (0, 0), "{s:?}");
}

async fn connect_mode(layout: &str, hashes: &str, replay_topic: bool) {
    let mut args = vec!["--mode", "connect", "--layout", layout, "--hashes", hashes];
    if replay_topic {
        args.push("--replay-topic");
    }
    let mut py = Python::start(&args).await;
    py.publish(&[vec![stored(1, 0, 4, None)]]).await;
    let src = source(0, "10.0.0.1:8000", py.publisher, Some(py.replay));
    let h = Harness::start(config(), vec![src]).await;
    scenario(&h, &mut py).await;
    h.stop().await;
    py.quit().await;
}

async fn bind_mode(layout: &str, hashes: &str, replay_topic: bool) {
    let cfg = KvEventsConfig {
        bind: Some("127.0.0.1:0".parse().unwrap()),
        ..config()
    };
    let h = Harness::start(cfg, Vec::new()).await;
    let endpoint = format!("tcp://{}", h.bound[0]);
    let topic = topic_for("127.0.0.1:8000");
    let mut args = vec!["--mode", "bind", "--endpoint", &endpoint, "--topic", &topic];
    args.extend(["--layout", layout, "--hashes", hashes]);
    if replay_topic {
        args.push("--replay-topic");
    }
    let mut py = Python::start(&args).await;
    // Published before kvpick knows the pod: dropped live, but kept in the pod's buffer.
    py.publish(&[vec![stored(1, 0, 4, None)]]).await;
    h.sources
        .send_replace(vec![source(0, "127.0.0.1:8000", None, Some(py.replay))]);
    scenario(&h, &mut py).await;
    h.stop().await;
    py.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_mode_array_layout_int_hashes() {
    connect_mode("array", "int", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_mode_map_layout_byte_hashes_topic_in_replay() {
    connect_mode("map", "bytes", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_mode_mixed_layout_byte_hashes() {
    bind_mode("mixed", "bytes", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_mode_map_layout_int_hashes_topic_in_replay() {
    bind_mode("map", "int", true).await;
}
