//! The load generator against a live fleet: open-loop arrivals from the shared-prefix generator,
//! streaming measurements at the client, prefix hits read from `usage`, token-id and text
//! prompts, completions and chat; and the `kvpick-sim load` command end to end with JSON output.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed unwrap is a failed test

mod fleet_util;

use std::time::Duration;

use kvpick_fleet::KvLayout;
use kvpick_fleet::load::report::summarize;
use kvpick_fleet::load::{self, ApiKind, LoadConfig};
use kvpick_sim::trace::generate::{Arrivals, RateStage, SharedPrefix};
use tokio_util::sync::CancellationToken;

fn workload() -> kvpick_sim::trace::Trace {
    SharedPrefix {
        groups: 2,
        users_per_group: 2,
        system_len: 160,
        question_len: 20,
        output_len: 5,
        stages: vec![RateStage {
            rate: 20.0,
            duration_s: 1.0,
        }],
        rate_scale: 1.0,
        arrivals: Arrivals::Constant,
        seed: 3,
    }
    .generate()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measures_streams_and_hits_for_ids_and_text() {
    let fleet = fleet_util::start(1, KvLayout::ArrayMap, false).await;
    let addr = fleet.servers()[0].address;
    let trace = workload();
    assert!(trace.requests.len() >= 15);
    for (api, text) in [
        (ApiKind::Completions, false),
        (ApiKind::Completions, true),
        (ApiKind::Chat, true),
    ] {
        let cfg = LoadConfig {
            base_url: format!("http://{addr}"),
            model: fleet_util::MODEL.into(),
            api,
            text,
            stream: true,
            max_concurrency: 4,
            timeout: Duration::from_secs(30),
            max_output_tokens: None,
        };
        let records = load::run(&trace, &cfg, &CancellationToken::new())
            .await
            .unwrap();
        let s = summarize("x", &records);
        assert_eq!(
            (s.ok, s.failed),
            (trace.requests.len(), 0),
            "{api:?} {:?}",
            s.errors
        );
        assert!(
            records
                .iter()
                .all(|r| r.outcome.ttft_s.is_some() && r.outcome.completion_tokens == Some(5))
        );
        // Tokens of one step arrive together; a slow reader may see several steps in one chunk.
        let o = |r: &load::report::Record| (r.outcome.chunks, r.outcome.gaps_s.len() as u32);
        assert!(
            records
                .iter()
                .all(|r| (1..=5).contains(&o(r).0) && o(r).1 == o(r).0 - 1)
        );
        // Token prompts: the usage counts exactly the trace's tokens; text may differ (chat template).
        if !text {
            assert!(
                records
                    .iter()
                    .all(|r| r.outcome.prompt_tokens == Some(r.input_tokens as u64))
            );
        }
        // Two groups: every later request of a group hits its 160-token system prompt at least.
        assert!(
            s.client_hit_rate > 0.5,
            "{api:?} text={text}: {}",
            s.client_hit_rate
        );
        assert!(s.ttft.p50 > 0.0 && s.ttft.p50 <= s.ttft.p90 && s.e2e.p50 >= s.ttft.p50);
    }
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_command_writes_json() {
    let fleet = fleet_util::start(2, KvLayout::ArrayMap, false).await;
    let addr = fleet.servers()[1].address;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("load.json");
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvpick-sim"))
        .args([
            "load",
            "--url",
            &format!("http://{addr}"),
            "--model",
            fleet_util::MODEL,
        ])
        .args([
            "--generate",
            "shared-prefix",
            "--groups",
            "2",
            "--users-per-group",
            "2",
        ])
        .args([
            "--system-len",
            "64",
            "--question-len",
            "16",
            "--output-len",
            "3",
        ])
        .args(["--stages", "10:1s", "--max-concurrency", "2", "--out"])
        .arg(&out)
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let n = v["requests"].as_array().unwrap().len() as u64;
    assert!(n >= 5);
    assert_eq!(v["summary"]["ok"].as_u64(), Some(n), "{v}");
    assert!(v["summary"]["ttft"]["p90"].as_f64().unwrap() > 0.0);
    assert!(v["requests"][0]["ttft_s"].as_f64().is_some());
    fleet.shutdown().await;
}
