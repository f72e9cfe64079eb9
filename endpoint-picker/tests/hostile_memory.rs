//! Hostile input against the `kvpick-epp` binary's memory budget, sent over ext_proc the way a
//! gateway (or anyone reaching the port) would: many concurrent streams with large, slow,
//! never-ending bodies. The process stays up and under a stated RSS bound, ordinary requests
//! keep being routed, and what does not fit gets a 503 with its reason at once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;
mod faults_util;

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use faults_util::*;
use pb::external_processor_client::ExternalProcessorClient;
use pb::processing_response::Response as Out;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use common::{duplex, mutation, request_body, request_headers, set_header};

/// Attackers and what each offers: 96 × 8 MiB = 768 MiB, three times the whole budget.
const ATTACKERS: usize = 96;
/// Chunks larger than an ordinary request: every attacker's body counts as large from its first
/// chunk, and large bodies leave the last 1/8 of the body bytes to ordinary ones.
const ATTACK_CHUNK: usize = 256 << 10;
const ATTACK_CHUNKS: usize = 32;

/// How one attacker's stream ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Refused with this status and `x-kvpick-drop-reason`.
    Refused(u32, String),
    /// Cut with this gRPC status: a message that did not fit the budget, refused as it arrived.
    Cut(tonic::Code),
    /// Still open, holding its body, when the test let go.
    Held,
}

fn immediate(r: &pb::ProcessingResponse) -> Option<(u32, String)> {
    let Some(Out::ImmediateResponse(i)) = &r.response else {
        return None;
    };
    let status = i.status.as_ref().map_or(0, |s| s.code as u32);
    let reason = i
        .headers
        .as_ref()
        .and_then(|h| set_header(h, "x-kvpick-drop-reason"))
        .unwrap_or_default()
        .to_owned();
    Some((status, reason))
}

/// One attacker: full-duplex headers, then 256 KiB chunks every 20 ms that never end the body,
/// until refused or `stop` says. Attackers share one connection, as a gateway's streams do.
async fn attack(
    mut client: ExternalProcessorClient<tonic::transport::Channel>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Ended {
    let (tx, rx) = mpsc::channel(4);
    tx.send(request_headers(duplex(), "POST", &[], false, None))
        .await
        .unwrap();
    let mut answers = client
        .process(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let chunk = vec![b' '; ATTACK_CHUNK];
    let mut sent = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => return Ended::Held,
            answer = answers.message() => {
                let answer = match answer {
                    Ok(a) => a.expect("stream closed without an answer"),
                    Err(status) => return Ended::Cut(status.code()),
                };
                let (status, reason) = immediate(&answer)
                    .unwrap_or_else(|| panic!("an unfinished body got {answer:?}"));
                return Ended::Refused(status, reason);
            }
            () = tokio::time::sleep(Duration::from_millis(20)), if sent < ATTACK_CHUNKS => {
                // A full channel means the picker is not reading: that is back-pressure too.
                let _ = tx.try_send(request_body(&chunk, false));
                sent += 1;
            }
        }
    }
}

/// An ordinary request: a small token prompt, full duplex. Its destination, or its refusal.
async fn ordinary(grpc: SocketAddr) -> Result<String, (u32, String)> {
    let mut client = ExternalProcessorClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let body = serde_json::json!({"model": MODEL, "prompt": prompt(1, 64)}).to_string();
    let msgs = vec![
        request_headers(duplex(), "POST", &[], false, None),
        request_body(body.as_bytes(), true),
    ];
    let mut answers = client
        .process(futures::stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(20), answers.message())
        .await
        .expect("an ordinary request got no answer within 20 s")
        .unwrap()
        .unwrap();
    if let Some(refused) = immediate(&first) {
        return Err(refused);
    }
    Ok(
        set_header(mutation(&first), "x-gateway-destination-endpoint")
            .unwrap()
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_large_bodies_are_bounded_and_ordinary_requests_still_route() {
    let (dir, endpoints) = one_endpoint(POD);
    let pod = POD;
    // 10 MiB of the budget's requests part is set aside for the 8 connections: 38 MiB for bodies.
    let mut epp = Epp::start_hostile(dir.path(), &endpoints, 8, &[]).await;
    let baseline = epp.proc.rss_kib();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let shared = ExternalProcessorClient::connect(format!("http://{}", epp.grpc))
        .await
        .unwrap();
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| tokio::spawn(attack(shared.clone(), stop.clone())))
        .collect();
    // While every attacker has had time to send its whole body: RSS, and ordinary requests.
    let mut peak = 0;
    let mut routed = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(epp.proc.rss_kib());
        match ordinary(epp.grpc).await {
            Ok(dest) => {
                assert_eq!(dest, pod);
                routed += 1;
            }
            Err(refused) => panic!("an ordinary request was refused: {refused:?}"),
        }
    }
    peak = peak.max(epp.proc.rss_kib());
    let page = epp.metrics_page().await;
    stop_tx.send(true).unwrap();
    let mut refused = 0;
    let mut held = 0;
    for a in attackers {
        match a.await.unwrap() {
            Ended::Refused(status, reason) => {
                assert_eq!((status, reason.as_str()), (503, "memory_budget"));
                refused += 1;
            }
            Ended::Cut(code) => {
                assert_eq!(code, tonic::Code::ResourceExhausted);
                refused += 1;
            }
            Ended::Held => held += 1,
        }
    }
    eprintln!(
        "baseline {baseline} KiB, peak {peak} KiB, {routed} ordinary routed, \
         {refused} attackers refused, {held} held"
    );
    // Most attackers cannot fit: 33 MiB for large bodies (and the decoder's buffers past their
    // first 16 KiB), 8 MiB offered by each.
    assert!(refused >= ATTACKERS / 2, "{refused} refused, {held} held");
    assert!(held >= 1, "the budget admits some large bodies");
    // The stated bound: the budget on top of the idle process. Unbounded, the attack's 768 MiB
    // would be resident.
    assert!(
        peak < baseline + BUDGET_MIB * 1024,
        "RSS peaked at {peak} KiB (idle {baseline} KiB)"
    );
    assert!(
        sample_sum(
            &page,
            "kvpick_memory_budget_refused_total{part=\"request_body_bytes\"}"
        ) >= refused as f64
    );
    // Everything the attackers held comes back once their streams are gone.
    let mut used = f64::NAN;
    for _ in 0..100 {
        let page = epp.metrics_page().await;
        used = sample_sum(
            &page,
            "kvpick_memory_budget_used{part=\"request_body_bytes\"}",
        );
        if used == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        used, 0.0,
        "request bytes still charged after the streams closed"
    );
    assert_eq!(ordinary(epp.grpc).await, Ok(pod.to_owned()));
    assert!(epp.proc.child.try_wait().is_ok_and(|s| s.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_max_streams_get_503_at_once_and_free_slots_are_reused() {
    let (dir, endpoints) = one_endpoint(POD);
    let pod = POD;
    let epp = Epp::start(dir.path(), "epp", &endpoints, &["--max-streams", "8"]).await;
    // Eight streams that send headers and then nothing: each holds a slot.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut holders = Vec::new();
    for _ in 0..8 {
        holders.push(tokio::spawn(attack_idle(epp.grpc, stop.clone())));
    }
    // Slots are taken when a stream opens; give the eight a moment to open.
    let mut refused = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Err(r) = ordinary(epp.grpc).await {
            refused = Some(r);
            break;
        }
    }
    assert_eq!(
        refused,
        Some((503, "too_many_streams".to_owned())),
        "the ninth stream must be refused"
    );
    stop_tx.send(true).unwrap();
    for h in holders {
        h.await.unwrap();
    }
    // The slots come back with the streams.
    let mut routed = None;
    for _ in 0..50 {
        if let Ok(dest) = ordinary(epp.grpc).await {
            routed = Some(dest);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(routed.as_deref(), Some(pod));
    let page = epp.metrics_page().await;
    assert!(
        sample_sum(
            &page,
            "kvpick_memory_budget_refused_total{part=\"streams\"}"
        ) >= 1.0
    );
    assert!(sample_sum(&page, "kvpick_memory_budget_limit{part=\"streams\"}") == 8.0);
}

/// Sends headers and part of a body, then nothing, until `stop`.
async fn attack_idle(grpc: SocketAddr, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut client = ExternalProcessorClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(request_headers(duplex(), "POST", &[], false, None))
        .await
        .unwrap();
    tx.send(request_body(b"{\"model\":", false)).await.unwrap();
    let _answers = client.process(ReceiverStream::new(rx)).await.unwrap();
    let _ = stop.changed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_leaves_no_metric_series_behind() {
    let dir = tempfile::tempdir().unwrap();
    let endpoints = dir.path().join("endpoints.yaml");
    let round = |r: u16| -> Vec<String> {
        (0..5)
            .map(|i| format!("127.0.0.1:{}", 20_000 + r * 10 + i))
            .collect()
    };
    let write = |addrs: &[String]| {
        let entries: Vec<serde_json::Value> = addrs
            .iter()
            .map(|a| serde_saphyr::from_str(&format!("address: {a}")).unwrap())
            .collect();
        write_endpoints(&endpoints, &entries);
    };
    write(&round(0));
    let epp = Epp::start(dir.path(), "epp", &endpoints, &[]).await;
    let shows = |page: &str, addr: &str| page.contains(&format!("endpoint=\"{addr}\""));
    for r in 0..4 {
        if r > 0 {
            write(&round(r));
        }
        // Each endpoint's scrapes fail (nothing listens): its error counters and gauges appear;
        // those of earlier rounds must be gone from the page.
        let mut page = String::new();
        for _ in 0..100 {
            page = epp.metrics_page().await;
            let current = round(r).iter().all(|a| shows(&page, a));
            let earlier = (0..r).flat_map(round).any(|a| shows(&page, &a));
            if current && !earlier {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for a in round(r) {
            assert!(shows(&page, &a), "round {r}: {a} missing\n{page}");
        }
        for a in (0..r).flat_map(round) {
            assert!(
                !shows(&page, &a),
                "round {r}: {a} of an earlier round remains\n{page}"
            );
        }
        promtool_parses(&page);
    }
}

/// `promtool check metrics` parses the page (lint remarks are fine, parse errors are not).
fn promtool_parses(page: &str) {
    use std::io::Write;
    let promtool = kvpick_fleet::demo::tools::on_path("promtool").unwrap_or_else(|| {
        panic!("`promtool` is not on PATH: install Debian `prometheus` (.ci/setup does)")
    });
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("error"), "promtool: {text}\n{page}");
}
