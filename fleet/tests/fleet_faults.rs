//! Fault injection through the admin endpoint: error rate, stall, restart mid-stream, a full
//! queue; each seen by a client the way a vLLM failure would be.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed unwrap is a failed test

mod fleet_util;

use std::time::Duration;

use fleet_util::{get, post, post_stream, prompt};
use kvpick_fleet::Fleet;
use serde_json::{Value, json};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_stall_restart_and_full_queue() {
    let fleet = fleet_util::start(1, kvpick_fleet::KvLayout::ArrayMap, false).await;
    let addr = fleet.servers()[0].address;
    let req = json!({"prompt": prompt(1, 20), "max_tokens": 2});

    assert_eq!(
        post(addr, "/admin/fault", &json!({"error_rate": 1.0}))
            .await
            .0,
        200
    );
    let (s, v) = post(addr, "/v1/completions", &req).await;
    assert_eq!((s, v["error"]["code"].as_u64()), (500, Some(500)), "{v}");
    assert_eq!(
        post(addr, "/admin/fault", &json!({"error_rate": 2}))
            .await
            .0,
        400
    );
    assert_eq!(
        post(addr, "/admin/fault", &json!({"error_rate": 0}))
            .await
            .0,
        200
    );
    assert_eq!(post(addr, "/v1/completions", &req).await.0, 200);

    // A stalled engine: requests wait, /metrics and /health still answer.
    assert_eq!(post(addr, "/admin/stall", &json!({"ms": 600})).await.0, 200);
    let t = Instant::now();
    let pending = tokio::spawn(async move { post(addr, "/v1/completions", &req).await.0 });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(addr, "/metrics").await.0, 200);
    assert_eq!(get(addr, "/health").await.0, 200);
    assert!(!pending.is_finished(), "served during the stall");
    assert_eq!(pending.await.unwrap(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    // A restart mid-stream ends the stream with an error event, then [DONE].
    let long = json!({"prompt": prompt(2, 20), "max_tokens": 3000, "stream": true});
    let stream = tokio::spawn(async move { post_stream(addr, "/v1/completions", &long).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post(addr, "/admin/restart", &json!({})).await.0, 200);
    let (status, events) = stream.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["code"], 500, "{error}");
    assert!(events.len() > 3, "some tokens streamed before the restart");
    fleet.shutdown().await;

    // A bounded queue refuses with a 503.
    let mut cfg = fleet_util::config(1);
    cfg.max_waiting = 0;
    let fleet = Fleet::start(cfg).await.unwrap();
    let addr = fleet.servers()[0].address;
    let (s, v) = post(addr, "/v1/completions", &json!({"prompt": [1, 2, 3]})).await;
    assert_eq!((s, v["error"]["code"].as_u64()), (503, Some(503)), "{v}");
    fleet.shutdown().await;
}
