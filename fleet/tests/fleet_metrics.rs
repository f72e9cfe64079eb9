//! The fleet's `/metrics` against real Prometheus tools: `promtool check metrics` parses every
//! page (its only complaints are the ones vLLM's own names earn), and a real Prometheus server
//! scrapes the fleet and kvpick-epp, which reads the same pages with its own parser: every target
//! up, `vllm:num_requests_running` one series per server with vLLM's labels, counters and
//! histograms agreeing with the traffic sent, both endpoints fresh in kvpick-epp. Needs
//! `promtool` and `prometheus` (Debian `prometheus`; `.ci/setup` installs it); kvpick-epp is
//! built when it is not in the target directory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed unwrap is a failed test

mod fleet_util;

use std::io::Write;
use std::process::{Command, Stdio};

use fleet_util::{MODEL, get, post, prompt, tool};
use kvpick_fleet::KvLayout;
use kvpick_fleet::demo::procs::{Child, free_port};
use serde_json::{Value, json};

/// Lint problems vLLM's own metric names cause (colons; a histogram named `..._total`).
fn inherent(problem: &str) -> bool {
    problem.ends_with("metric names should not contain ':'")
        || problem
            == "vllm:iteration_tokens_total non-counter metrics should not have \"_total\" suffix"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_parses_and_prometheus_scrapes() {
    let fleet = fleet_util::start(2, KvLayout::ArrayMap, false).await;
    let mut sent = 0;
    for s in fleet.servers() {
        for i in 0..3 {
            let body = json!({"prompt": prompt(i, 64), "max_tokens": 4});
            assert_eq!(post(s.address, "/v1/completions", &body).await.0, 200);
            sent += 1;
        }
    }
    for s in fleet.servers() {
        let (status, page) = get(s.address, "/metrics").await;
        assert_eq!(status, 200);
        let mut child = Command::new(tool("promtool"))
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert_ne!(
            out.status.code(),
            Some(1),
            "promtool cannot parse the page: {text}"
        );
        let unexpected: Vec<&str> = text.lines().filter(|l| !inherent(l.trim())).collect();
        assert!(unexpected.is_empty(), "promtool: {unexpected:?}");
        // vLLM's counters after 3 distinct 64-token prompts generating 4 tokens each.
        let labels = format!("{{model_name=\"{MODEL}\",engine=\"0\"}}");
        assert!(
            page.contains(&format!("vllm:prompt_tokens_total{labels} 192.0")),
            "{page}"
        );
        assert!(page.contains(&format!("vllm:generation_tokens_total{labels} 12.0")));
        assert!(page.contains(&format!(
            "vllm:time_to_first_token_seconds_count{labels} 3.0"
        )));
    }

    let dir = tempfile::tempdir().unwrap();
    // kvpick-epp reads the fleet's endpoints file and scrapes the same pages with its own parser.
    let endpoints = dir.path().join("endpoints.yaml");
    fleet.write_endpoints_file(&endpoints, true).unwrap();
    let epp_port = free_port().unwrap();
    let mut args = vec!["--listen-address".to_owned(), "127.0.0.1".into()];
    for (flag, port) in [
        ("--grpc-port", free_port().unwrap()),
        ("--health-port", free_port().unwrap()),
        ("--metrics-port", epp_port),
        ("--query-port", 0),
    ] {
        args.extend([flag.to_owned(), port.to_string()]);
    }
    args.extend([
        "--endpoints-file".to_owned(),
        endpoints.display().to_string(),
    ]);
    let epp_bin = kvpick_fleet::demo::tools::find_epp(None).unwrap();
    let log = dir.path().join("epp.log");
    let mut epp = Child::spawn("kvpick-epp", &epp_bin, args, &[], &log).unwrap();
    let mut targets: Vec<String> = (fleet.servers().iter())
        .map(|s| s.address.to_string())
        .collect();
    targets.push(format!("127.0.0.1:{epp_port}"));
    epp.check_alive().unwrap();
    let (prom, base) = fleet_util::start_prometheus(&targets, dir.path()).await;
    epp.check_alive().unwrap();
    let api = |q: &str| format!("{base}{q}");
    let try_get = async |path: &str| -> Option<Value> {
        let req = hyper::Request::get(api(path))
            .body(Default::default())
            .ok()?;
        let resp = fleet_util::http().request(req).await.ok()?;
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .ok()?;
        serde_json::from_slice(&body.to_bytes()).ok()
    };
    let query = async |q: &str| -> Value {
        try_get(&format!("/api/v1/query?query={q}"))
            .await
            .expect("query answered")
    };
    let running = query("vllm:num_requests_running").await;
    let series = running["data"]["result"].as_array().unwrap();
    assert_eq!(series.len(), fleet.servers().len(), "{running}");
    for s in series {
        assert_eq!(s["metric"]["model_name"], MODEL);
        assert_eq!(s["metric"]["engine"], "0");
        assert_eq!(s["value"][1], "0", "idle after the traffic");
    }
    let ttft = query("sum(vllm:time_to_first_token_seconds_count)").await;
    assert_eq!(ttft["data"]["result"][0]["value"][1], sent.to_string());
    let blocks = query("vllm:cache_config_info").await;
    assert_eq!(
        blocks["data"]["result"][0]["metric"]["num_gpu_blocks"],
        "256"
    );
    // kvpick-epp parsed the fleet's pages: both endpoints known and fresh.
    let known = query("kvpick_endpoints").await;
    assert_eq!(known["data"]["result"][0]["value"][1], "2", "{known}");
    let stale = query("kvpick_endpoint_stale").await;
    let stale = stale["data"]["result"].as_array().unwrap().clone();
    assert_eq!(stale.len(), 2, "{stale:?}");
    assert!(stale.iter().all(|s| s["value"][1] == "0"), "{stale:?}");
    epp.stop();
    prom.stop();
    fleet.shutdown().await;
}
