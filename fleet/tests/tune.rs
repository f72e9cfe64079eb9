//! `kvpick-sim tune` end to end on a small regenerated llm-d workload (shared-prefix preset, 30
//! groups, 6 QPS for 30 s, 4 engines): random search, 2 seeds per point, 2 jobs. The best point is
//! at least as good as the default config on TTFT p90 (paired over the same seeds), and what it
//! writes is deployable unchanged: `picker.yaml` parses with `EndpointPickerConfig::parse` into exactly the
//! winning weights, `configmap.yaml` carries the same text, and the real kvpick-epp starts with
//! `--config picker.yaml` (while it refuses a corrupted copy, so the check can fail).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed unwrap is a failed test

mod fleet_util;

use std::process::Command;
use std::time::Duration;

use kvpick_fleet::demo::procs::{Child, free_port};
use kvpick_scheduler::EndpointPickerConfig;
use serde_json::Value;

/// Starts kvpick-epp with `config`; `Ok` once its metrics answer, `Err(log)` if it exits.
async fn epp_accepts(config: &std::path::Path, dir: &std::path::Path) -> Result<(), String> {
    let endpoints = dir.join("endpoints.yaml");
    std::fs::write(
        &endpoints,
        "model: qwen3-32b\nendpoints:\n- address: 127.0.0.1:9\n",
    )
    .unwrap();
    let metrics = free_port().unwrap();
    let mut args = vec!["--listen-address".to_owned(), "127.0.0.1".into()];
    for (flag, port) in [
        ("--grpc-port", free_port().unwrap()),
        ("--health-port", free_port().unwrap()),
        ("--metrics-port", metrics),
        ("--query-port", 0),
    ] {
        args.extend([flag.to_owned(), port.to_string()]);
    }
    args.extend(["--endpoints-file".into(), endpoints.display().to_string()]);
    args.extend(["--config".into(), config.display().to_string()]);
    let bin = kvpick_fleet::demo::tools::find_epp(None).unwrap();
    let log = dir.join(format!(
        "{}.log",
        config.file_stem().unwrap().to_string_lossy()
    ));
    // No backtrace: the refusal must be the end of the log.
    let quiet = [("RUST_BACKTRACE", "0"), ("RUST_LIB_BACKTRACE", "0")];
    let mut epp = Child::spawn("kvpick-epp", &bin, args, &quiet, &log).unwrap();
    for _ in 0..150 {
        if let Err(e) = epp.check_alive() {
            return Err(e.to_string());
        }
        let req = hyper::Request::get(format!("http://127.0.0.1:{metrics}/metrics"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let status =
            match tokio::time::timeout(Duration::from_secs(2), fleet_util::http().request(req))
                .await
            {
                Ok(Ok(resp)) => resp.status().as_u16(),
                _ => 0, // not listening yet
            };
        if status == 200 {
            epp.stop();
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("kvpick-epp neither served nor exited: {}", epp.log_tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_beats_or_matches_default_and_writes_deployable_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tune");
    let args = [
        "tune",
        "--generate",
        "llm-d",
        "--groups",
        "30",
        "--stages",
        "6:30s",
        "--engines",
        "4",
        "--objective",
        "ttft-p90",
        "--search",
        "random",
        "--points",
        "6",
        "--seeds",
        "2",
        "--jobs",
        "2",
        "--namespace",
        "llm",
        "--out",
    ];
    let result = Command::new(env!("CARGO_BIN_EXE_kvpick-sim"))
        .args(args)
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout).to_string();
    assert!(
        result.status.success(),
        "tune failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    println!("{stdout}");

    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tune.json")).unwrap()).unwrap();
    let base = r["baseline"]["mean"].as_f64().unwrap();
    let points = r["points"].as_array().unwrap();
    assert_eq!(points.len(), 6);
    let means: Vec<f64> = points.iter().map(|p| p["mean"].as_f64().unwrap()).collect();
    assert!(
        means.windows(2).all(|w| w[0] <= w[1]),
        "ranked best first: {means:?}"
    );
    assert!(
        points
            .iter()
            .all(|p| p["scores"].as_array().unwrap().len() == 2)
    );
    assert!(
        means[0] > 0.0 && means[0] <= base,
        "best {} vs default {base}",
        means[0]
    );

    // The written config is the winner, loadable as is.
    let picker = std::fs::read_to_string(out.join("picker.yaml")).unwrap();
    let config = EndpointPickerConfig::parse(&picker).unwrap();
    assert_eq!(config.index.block_size.get(), 16);
    let best: Vec<f64> = serde_json::from_value(points[0]["weights"].clone()).unwrap();
    let names = [
        "precise-prefix-cache-scorer",
        "kv-cache-utilization-scorer",
        "queue-scorer",
    ];
    let want: Vec<(&str, f64)> = (names.iter().zip(&best))
        .filter(|(_, w)| **w > 0.0)
        .map(|(n, w)| (*n, *w))
        .collect();
    let got: Vec<(&str, f64)> = (config.profile.scorers.iter())
        .map(|s| (s.name.as_str(), s.weight))
        .collect();
    assert_eq!(got, want);
    let cm: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(out.join("configmap.yaml")).unwrap())
            .unwrap();
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "kvpick-epp-config");
    assert_eq!(cm["metadata"]["namespace"], "llm");
    assert_eq!(cm["data"]["config.yaml"].as_str().unwrap(), picker);
    assert!(
        std::fs::read_to_string(out.join("landscape.svg"))
            .unwrap()
            .contains("<svg")
    );

    // kvpick-epp takes it unchanged, and refuses a corrupted copy.
    epp_accepts(&out.join("picker.yaml"), dir.path())
        .await
        .unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, picker.replacen("weight: ", "weight: -", 1)).unwrap();
    let refused = epp_accepts(&bad, dir.path()).await.unwrap_err();
    assert!(refused.contains("weight"), "{refused}");
}
