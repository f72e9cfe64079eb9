//! Hostile chat templates (issue 14, item 1) against the real `kvpick-epp` binary over ext_proc, as a
//! client behind the gateway would send them: the process stays up with its peak RSS under
//! [`PEAK_RSS_MIB`], later requests are still routed (with exact tokens: the slot was freed), every
//! hostile request is counted, and SIGTERM completes even with a render running.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;
mod faults_util;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use faults_util::*;
use serde_json::json;
use tokio::time::Instant;

/// The bound on kvpick-epp's peak resident memory (debug build, one tokenizer: ~30 MiB at rest; one
/// render may allocate up to its fuel, 96 MiB by default) through every attack
/// below. Before the fix, the memory attack alone grew it to 3.2 GB and aborted it.
const PEAK_RSS_MIB: u64 = 192;

/// The memory attack: 100,000 × a 100 MB string.
const MEMORY_BOMB: &str = "{% for i in range(100000) %}{{ 'x'*100000000 }}{% endfor %}";
/// The CPU-only variant: 10^10 loop steps, no output.
const CPU_BOMB: &str =
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";

async fn start(dir: &Path, name: &'static str, extra: &[&str]) -> Epp {
    // Nothing listens at the endpoint: picks still work (never-scraped endpoints stay eligible).
    let file = dir.join(format!("{name}.yaml"));
    write_endpoints(
        &file,
        &[serde_saphyr::from_str("address: 127.0.0.1:9").unwrap()],
    );
    let tokenizer = format!("{MODEL}={}", common::fixtures::chatml().display());
    let mut args = vec!["--tokenizer", tokenizer.as_str(), "--drain-timeout", "1s"];
    args.extend_from_slice(extra);
    Epp::start(dir, name, &file, &args).await
}

fn chat(template: Option<&str>) -> serde_json::Value {
    let mut body = json!({"model": MODEL, "max_tokens": 1,
        "messages": [{"role": "user", "content": "why is the sky blue?"}]});
    if let Some(t) = template {
        body["chat_template"] = json!(t);
    }
    body
}

/// Sends `body` over ext_proc as Envoy would; returns where the picker routed it.
async fn route(grpc: SocketAddr, body: serde_json::Value) -> String {
    let client = ExternalProcessorClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut s = Stream::open(client).await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    s.send(request_body(body.to_string().as_bytes(), true))
        .await;
    let answer = s.recv().await;
    set_header(mutation(&answer), "x-gateway-destination-endpoint")
        .expect("routed")
        .to_owned()
}

/// `kvpick_tokenize_total{source, outcome}` on the metrics page (0 when absent).
fn tokenize_count(page: &str, source: &str, outcome: &str) -> u64 {
    page.lines()
        .filter(|l| l.starts_with("kvpick_tokenize_total{"))
        .filter(|l| l.contains(&format!("source=\"{source}\"")))
        .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Sends `n` of each bomb at once, then one ordinary chat; every one must be routed.
async fn attack(epp: &Epp, n: usize) {
    let mut sent = tokio::task::JoinSet::new();
    for _ in 0..n {
        for bomb in [MEMORY_BOMB, CPU_BOMB] {
            let grpc = epp.grpc;
            sent.spawn(async move { route(grpc, chat(Some(bomb))).await });
        }
    }
    while let Some(routed) = sent.join_next().await {
        assert_eq!(routed.unwrap(), "127.0.0.1:9");
    }
    assert_eq!(route(epp.grpc, chat(None)).await, "127.0.0.1:9");
}

fn assert_bounded(epp: &Epp) {
    let peak = epp.proc.peak_rss_kib() / 1024;
    eprintln!("{}: peak RSS {peak} MiB", epp.proc.name);
    assert!(
        peak < PEAK_RSS_MIB,
        "peak RSS {peak} MiB ≥ {PEAK_RSS_MIB} MiB\n{}",
        epp.proc.log()
    );
}

async fn sigterm_exits(epp: &mut Epp) {
    epp.proc.term();
    // Generous for a loaded machine: before the fix it never exited.
    let status = wait_exit(epp, Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}\n{}", epp.proc.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_templates_are_refused_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut epp = start(dir.path(), "untrusted", &[]).await;
    attacked(&mut epp, &["untrusted_chat_template"]).await;
}

/// Sends [`attack`] with 4 of each bomb; each must be counted under one of `outcomes`, the
/// ordinary chat tokenized locally; then the RSS bound and a prompt exit on SIGTERM.
async fn attacked(epp: &mut Epp, outcomes: &[&str]) {
    attack(epp, 4).await;
    let page = epp.metrics_page().await;
    let dropped: u64 = outcomes
        .iter()
        .map(|o| tokenize_count(&page, "unavailable", o))
        .sum();
    assert_eq!(dropped, 8, "{page}");
    assert_eq!(tokenize_count(&page, "local", "ok"), 1, "{page}");
    assert_bounded(epp);
    sigterm_exits(epp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_templates_are_held_by_fuel_and_caps() {
    let dir = tempfile::tempdir().unwrap();
    let mut epp = start(dir.path(), "trusted", &["--trust-request-chat-template"]).await;
    attacked(&mut epp, &["template_limit", "timeout"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_past_its_deadline_stops_and_frees_its_slot() {
    // Fuel for ~forever: only the deadline can stop the CPU bomb. One slot, so the ordinary chat
    // after the bombs gets exact tokens only if every bomb's render stopped.
    let dir = tempfile::tempdir().unwrap();
    let trust = ["--trust-request-chat-template", "--template-fuel"];
    let mut args = trust.to_vec();
    args.extend(["100000000000000", "--tokenize-timeout", "300ms"]);
    let epp = start(dir.path(), "deadline", &args).await;
    let mut sent = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let grpc = epp.grpc;
        sent.spawn(async move { route(grpc, chat(Some(CPU_BOMB))).await });
    }
    while let Some(routed) = sent.join_next().await {
        assert_eq!(routed.unwrap(), "127.0.0.1:9");
    }
    // The next one waits for a slot at most its own deadline: the bombs' renders must have ended.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        route(epp.grpc, chat(None)).await;
        let page = epp.metrics_page().await;
        if tokenize_count(&page, "local", "ok") + tokenize_count(&page, "cache", "ok") >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed\n{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_bounded(&epp);

    // A render running at SIGTERM does not hold the shutdown: a deadline of a minute, ~infinite fuel.
    let mut args = trust.to_vec();
    args.extend(["100000000000000", "--tokenize-timeout", "60s"]);
    let mut epp = start(dir.path(), "shutdown", &args).await;
    let grpc = epp.grpc;
    let _stuck = tokio::spawn(async move {
        let client = ExternalProcessorClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let mut s = Stream::open(client).await;
        s.send(request_headers(duplex(), "POST", &[], false, None))
            .await;
        s.send(request_body(
            chat(Some(CPU_BOMB)).to_string().as_bytes(),
            true,
        ))
        .await;
        s.recv_within(Duration::from_secs(60)).await
    });
    // Time for the render to start (if it has not, SIGTERM must still exit: it is refused).
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigterm_exits(&mut epp).await;
}
