//! Hostile peers on kvpick-epp's ports, below gRPC: raw HTTP/2 and TCP the way anyone who reaches
//! a port from inside the cluster could speak it. Connection floods, streams pushing messages
//! they never finish, answers never read (no WINDOW_UPDATE), rapid resets, silent sockets and a
//! slow `/metrics` request. The process stays up and under a stated RSS bound, every flood is
//! counted, and ordinary requests through the same port keep being routed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;
mod faults_util;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use faults_util::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use common::{duplex, request_body, request_headers, response_body, response_headers};

const PROCESS: &str = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";
/// HTTP/2's client preface: what a silent connection never sends.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A TCP connection to `to` from loopback address `from` (each test peer has its own IP).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// An HTTP/2 client from `from` that grants kvpick almost no window: answers stay unread.
async fn h2_from(from: [u8; 4], to: SocketAddr) -> Option<h2::client::SendRequest<Bytes>> {
    let tcp = connect_from(from, to).await;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1024)
        .handshake::<_, Bytes>(tcp)
        .await
        .ok()?;
    tokio::spawn(connection);
    client.ready().await.ok()
}

fn grpc_request(to: SocketAddr) -> http::Request<()> {
    http::Request::post(format!("http://{to}{PROCESS}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// One gRPC message: flag, length, bytes.
fn frame(msg: &pb::ProcessingRequest) -> Bytes {
    let body = msg.encode_to_vec();
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(0);
    b.put_u32(body.len() as u32);
    b.put_slice(&body);
    b.freeze()
}

/// Sends `data` as HTTP/2 flow control lets it through; false once the stream is gone.
async fn push(send: &mut h2::SendStream<Bytes>, mut data: Bytes) -> bool {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            _ => return false,
        };
        if send
            .send_data(data.split_to(granted.min(data.len())), false)
            .is_err()
        {
            return false;
        }
    }
    true
}

/// A stream that announces a 16 MiB message and pushes `bytes` of it, never finishing it.
async fn unfinished_message(
    mut client: h2::client::SendRequest<Bytes>,
    to: SocketAddr,
    bytes: usize,
) {
    let Ok((_answer, mut send)) = client.send_request(grpc_request(to), false) else {
        return;
    };
    let mut prefix = BytesMut::new();
    prefix.put_u8(0);
    prefix.put_u32(16 << 20);
    if !push(&mut send, prefix.freeze()).await {
        return;
    }
    let piece = Bytes::from(vec![b' '; 64 << 10]);
    for _ in 0..bytes / piece.len() {
        if !push(&mut send, piece.clone()).await {
            return;
        }
    }
    // Held open, unread, until the test ends.
    std::future::pending::<()>().await
}

/// A routed exchange whose response body (1 MiB chunks) kvpick must echo to a peer that never
/// reads: the echoes stall in kvpick's send path.
async fn unread_echoes(mut client: h2::client::SendRequest<Bytes>, to: SocketAddr) {
    let Ok((_answer, mut send)) = client.send_request(grpc_request(to), false) else {
        return;
    };
    let body = serde_json::json!({"model": MODEL, "prompt": prompt(7, 64)}).to_string();
    let chunk = vec![b'x'; 1 << 20];
    let mut msgs = vec![
        request_headers(duplex(), "POST", &[], false, None),
        request_body(body.as_bytes(), true),
        response_headers(&[(":status", "200")], None),
    ];
    msgs.extend((0..8).map(|_| response_body(&chunk, false)));
    for m in &msgs {
        if !push(&mut send, frame(m)).await {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// A refused connection is closed at once: a read sees the end (or a reset).
async fn closed_within(mut tcp: TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// kvpick's `/metrics` page over a fresh connection, retried while the port is still full.
async fn scrape(metrics: SocketAddr) -> String {
    for _ in 0..100 {
        if let Ok(mut tcp) = TcpStream::connect(metrics).await {
            let _ = tcp
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: kvpick\r\n\r\n")
                .await;
            let mut page = String::new();
            if tcp.read_to_string(&mut page).await.is_ok() && page.contains("kvpick_") {
                return page;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/metrics never answered");
}

/// Waits until at most `n` connections are open on `listener` (closed sockets are noticed a
/// moment later by the server).
async fn wait_open(epp: &Epp, listener: &str, n: usize) {
    let series = format!("kvpick_connections_open{{listener=\"{listener}\"}}");
    for _ in 0..100 {
        if sample_sum(&scrape(epp.metrics).await, &series) <= n as f64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{listener}: connections still open");
}

fn refused(page: &str, listener: &str, reason: &str) -> f64 {
    sample_sum(
        page,
        &format!("kvpick_connections_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_http2_floods_are_bounded_counted_and_ordinary_requests_still_route() {
    let (dir, endpoints) = one_endpoint(POD);
    // 15 MiB of the budget's requests part is set aside for the 12 connections.
    let extra = ["--max-connections-per-peer", "4"];
    let mut epp = Epp::start_hostile(dir.path(), &endpoints, 12, &extra).await;
    let grpc = epp.grpc;
    assert_eq!(epp.pick(&prompt(1, 64)).await, POD);
    let baseline = epp.proc.rss_kib();
    let mut attacks = JoinSet::new();

    // 1. A connection flood from one peer: 4 admitted, the rest closed at accept.
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(connect_from([127, 0, 0, 2], grpc).await);
    }
    let mut closed = 0;
    for tcp in flood.drain(4..) {
        closed += usize::from(closed_within(tcp, Duration::from_secs(10)).await);
    }
    assert_eq!(closed, 36, "connections over the per-peer cap are closed");
    drop(flood);
    wait_open(&epp, "ext_proc", 0).await;

    // 2. Peer .3: 2 connections × 100 streams, each pushing 2 MiB of a message it never ends
    // (400 MiB offered, unread); peer .4: 2 connections × 32 exchanges whose 8 MiB of answers
    // (echoed response bodies) it never reads.
    for _ in 0..2 {
        let client = h2_from([127, 0, 0, 3], grpc).await.expect("admitted");
        for _ in 0..100 {
            attacks.spawn(unfinished_message(client.clone(), grpc, 2 << 20));
        }
        let client = h2_from([127, 0, 0, 4], grpc).await.expect("admitted");
        for _ in 0..32 {
            attacks.spawn(unread_echoes(client.clone(), grpc));
        }
    }
    // 3. Peer .5: rapid reset, streams opened and cancelled at once.
    let rapid = tokio::spawn(async move {
        let mut opened = 0;
        for _ in 0..20 {
            let Some(mut client) = h2_from([127, 0, 0, 5], grpc).await else {
                continue;
            };
            for _ in 0..500 {
                let Ok(ready) = client.ready().await else {
                    break;
                };
                client = ready;
                let Ok((_, mut send)) = client.send_request(grpc_request(grpc), false) else {
                    break;
                };
                send.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
        }
        opened
    });
    // 4. Peer .6: a socket that never speaks.
    let silent = connect_from([127, 0, 0, 6], grpc).await;

    // Meanwhile: RSS, and ordinary requests from the gateway's address.
    let mut peak = 0;
    for i in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(epp.proc.rss_kib());
        assert_eq!(epp.pick(&prompt(100 + i, 64)).await, POD);
    }
    let resets = rapid.await.unwrap();
    assert!(
        closed_within(silent, Duration::from_secs(60)).await,
        "a silent connection is closed"
    );
    peak = peak.max(epp.proc.peak_rss_kib());
    let page = scrape(epp.metrics).await;
    eprintln!(
        "baseline {baseline} KiB, peak {peak} KiB (bound {} KiB), {resets} rapid resets, \
         400 MiB of unfinished messages and 256 MiB of unread echoes offered",
        baseline + BUDGET_MIB * 1024
    );
    // The stated bound: the budget on top of the idle process (the attack offers 656 MiB).
    assert!(
        peak < baseline + BUDGET_MIB * 1024,
        "RSS peaked at {peak} KiB (idle {baseline} KiB)"
    );
    assert!(refused(&page, "ext_proc", "too_many_from_peer") >= 36.0);
    assert!(refused(&page, "ext_proc", "silent") >= 1.0);
    assert!(
        sample_sum(
            &page,
            "kvpick_memory_budget_refused_total{part=\"request_body_bytes\"}"
        ) >= 1.0,
        "unfinished messages past the budget are refused"
    );
    attacks.shutdown().await;
    assert_eq!(epp.pick(&prompt(999, 64)).await, POD);
    assert!(epp.proc.child.try_wait().is_ok_and(|s| s.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_ports_cap_connections_and_close_slow_or_silent_ones() {
    let (dir, endpoints) = one_endpoint(POD);
    let epp = Epp::start(dir.path(), "epp", &endpoints, &[]).await;
    // Metrics: a request head that never ends (slowloris) is closed by the header timeout.
    let mut slow = connect_from([127, 0, 0, 7], epp.metrics).await;
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: kvpick\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(slow, Duration::from_secs(60)).await,
        "a request head that never ends is cut"
    );
    // Every side port: 16 connections from one peer at most, the rest closed at accept.
    for (port, listener) in [
        (epp.metrics, "metrics"),
        (epp.health, "health"),
        (epp.query, "query"),
    ] {
        // Each says enough to pass the first-bytes deadline, then waits.
        let hello: &[u8] = if listener == "metrics" {
            b"GET /metrics HTTP/1.1\r\nHost: kvpick\r\n"
        } else {
            PREFACE
        };
        let mut held = Vec::new();
        for _ in 0..24 {
            let mut tcp = connect_from([127, 0, 0, 8], port).await;
            let _ = tcp.write_all(hello).await;
            held.push(tcp);
        }
        let mut closed = 0;
        for tcp in held.drain(16..) {
            closed += usize::from(closed_within(tcp, Duration::from_secs(10)).await);
        }
        assert_eq!(closed, 8, "{listener}: connections over the cap are closed");
        drop(held);
        let page = scrape(epp.metrics).await;
        assert!(
            refused(&page, listener, "too_many") >= 8.0,
            "{listener}: {}",
            page.lines()
                .filter(|l| l.contains("connections"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // The ports still serve once the flood is gone.
    wait_open(&epp, "query", 0).await;
    assert_eq!(epp.endpoints().await.len(), 1);
}
