//! KV-event ingestion in bind mode: pods' PUB sockets connect to kvpick's bound port; the topic
//! names the pod (which must be the connection's own address) and the rank picks its endpoint.
//! Real sockets on loopback, each pod connecting from its own 127.0.0.x address.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod kv_events_common;

use std::net::SocketAddr;
use std::time::Duration;

use kv_events_common::*;
use kvpick_epp::kv_events::{DropReason, KvEventsConfig, KvSource};
use kvpick_scheduler::EventsState;
use kvpick_scheduler::events::{EncodeOptions, HashEncoding, KvEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bind_config(ranks: u16) -> KvEventsConfig {
    KvEventsConfig {
        bind: Some("127.0.0.1:0".parse().unwrap()),
        bind_ranks: ranks,
        ..config()
    }
}

fn ranked(n: u32, address: &str, rank: u32, replay: Option<SocketAddr>) -> KvSource {
    KvSource {
        rank,
        ..source(n, address, None, replay)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_topic_and_rank_and_drops_strangers() {
    let sources = vec![
        ranked(0, "127.0.0.1:8000", 0, None),
        // A data-parallel pod: two endpoints behind one IP.
        ranked(1, "127.0.0.2:8000", 0, None),
        ranked(2, "127.0.0.2:8001", 1, None),
    ];
    let h = Harness::start(bind_config(2), sources).await;
    assert_eq!(h.bound.len(), 2);
    assert_eq!(h.state(0), EventsState::Absent, "nothing heard yet");
    let (rank0_port, rank1_port) = (h.bound[0], h.bound[1]);

    let mut a =
        Publisher::connect(rank0_port, topic_for("127.0.0.1:8000"), EncodeOptions::MAP).await;
    // Both ranks on rank 0's port: the batch's own data_parallel_rank picks the endpoint.
    let mut b0 = Publisher::connect(
        rank0_port,
        topic_for("127.0.0.2:8000"),
        EncodeOptions::ARRAY,
    )
    .await;
    b0.rank = Some(0);
    let mut b1 = Publisher::connect(
        rank0_port,
        topic_for("127.0.0.2:8000"),
        EncodeOptions::ARRAY,
    )
    .await;
    b1.rank = Some(1);
    a.sync(&h, 0).await;
    b0.sync(&h, 1).await;
    b1.sync(&h, 2).await;
    a.send(batch(vec![stored(1, 0, 3, None)])).await;
    b0.send(batch(vec![stored(2, 0, 2, None)])).await;
    b1.send(batch(vec![stored(3, 0, 4, None)])).await;
    wait_for("each endpoint its own blocks", WAIT, || {
        h.blocks(0, &tokens(1, 3)) == 3
            && h.blocks(1, &tokens(2, 2)) == 2
            && h.blocks(2, &tokens(3, 4)) == 4
    })
    .await;
    assert_eq!(
        (h.blocks(1, &tokens(3, 4)), h.blocks(2, &tokens(2, 2))),
        (0, 0)
    );
    assert_eq!(h.state(2), EventsState::Live);

    // A rank that publishes without saying its rank is known by the port it connected to.
    let mut b1_port = Publisher::connect(
        rank1_port,
        topic_for("127.0.0.2:8000"),
        EncodeOptions::ARRAY,
    )
    .await;
    b1_port.sync(&h, 2).await;
    b1_port.send(batch(vec![stored(4, 0, 2, None)])).await;
    wait_for("rank from the port", WAIT, || {
        h.blocks(2, &tokens(4, 2)) == 2
    })
    .await;

    // Strangers: a topic naming another pod than its sender, a rank it does not have, a bad
    // topic.
    let entries = h.index.stats().entries;
    let mut stranger =
        Publisher::connect(rank0_port, topic_for("10.9.9.9:8000"), EncodeOptions::MAP).await;
    let mut no_rank =
        Publisher::connect(rank0_port, topic_for("127.0.0.1:8000"), EncodeOptions::MAP).await;
    no_rank.rank = Some(5);
    let mut bad_topic =
        Publisher::connect(rank0_port, "kv@no-model".into(), EncodeOptions::MAP).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.handle.dropped(DropReason::UnknownTopic) < 5
        || h.handle.dropped(DropReason::SenderMismatch) < 5
        || h.handle.dropped(DropReason::BadTopic) < 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "strangers not counted"
        );
        stranger.send(batch(vec![stored(9, 0, 4, None)])).await;
        no_rank.send(batch(vec![stored(9, 0, 4, None)])).await;
        bad_topic.send(batch(vec![stored(9, 0, 4, None)])).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.index.stats().entries, entries, "strangers added nothing");
    assert_eq!(h.blocks(0, &tokens(9, 4)), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_start_gaps_and_restarts_with_replay() {
    let mut p =
        Publisher::bind(EncodeOptions::ARRAY_BATCH_MAP_EVENTS.with_hashes(HashEncoding::Bytes))
            .await;
    let replay = p.serve_replay(false).await;
    p.lose(batch(vec![stored(1, 0, 4, None)]));
    let h = Harness::start(
        bind_config(1),
        vec![ranked(0, "127.0.0.1:8000", 0, Some(replay))],
    )
    .await;
    wait_for("warm from replay", Duration::from_secs(1), || {
        h.blocks(0, &tokens(1, 4)) == 4
    })
    .await;

    // The pod's PUB now connects to kvpick and goes on from its history.
    let mut live = Publisher::connect(h.bound[0], topic_for("127.0.0.1:8000"), p.opts).await;
    live.history = p.history.clone();
    live.next_seq = 1; // the same process: numbering goes on after the replayed history
    live.lose(batch(vec![stored(2, 0, 2, None)])); // lost before the connection took
    live.sync(&h, 0).await;
    wait_for("hole filled by replay", WAIT, || {
        h.blocks(0, &tokens(2, 2)) == 2
    })
    .await;
    assert_eq!(h.blocks(0, &tokens(1, 4)), 4);
    assert_eq!(h.stats(0).resets, 0);

    live.restart_sequence();
    live.send(batch(vec![stored(3, 0, 1, None)])).await;
    wait_for("restart", WAIT, || {
        h.blocks(0, &tokens(3, 1)) == 1 && h.blocks(0, &tokens(1, 4)) == 0
    })
    .await;
    h.stop().await;
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_peers_are_cut_off() {
    let h = Harness::start(bind_config(1), vec![ranked(0, "127.0.0.1:8000", 0, None)]).await;
    let mut good =
        Publisher::connect(h.bound[0], topic_for("127.0.0.1:8000"), EncodeOptions::MAP).await;
    good.sync(&h, 0).await;
    good.send(batch(vec![stored(1, 0, 2, None)])).await;
    wait_for("good batch", WAIT, || h.blocks(0, &tokens(1, 2)) == 2).await;

    // A raw peer: handshake, then a frame header announcing 4 EiB. Cut before buffering.
    let mut raw = tokio::net::TcpStream::connect(h.bound[0]).await.unwrap();
    raw.write_all(&zmtp_hello("PUB")).await.unwrap();
    let mut greeting = [0u8; 64];
    raw.read_exact(&mut greeting).await.unwrap();
    raw.write_all(&huge_frame_header(1 << 62)).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "connection cut");
    // Not ZMTP at all.
    let mut http = tokio::net::TcpStream::connect(h.bound[0]).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = tokio::time::timeout(WAIT, http.read_to_end(&mut rest)).await;
    wait_for("cuts counted", WAIT, || {
        h.handle.dropped(DropReason::Oversized) >= 1
            && h.handle.dropped(DropReason::BadFraming) >= 1
    })
    .await;
    // Wrong frame counts from a real PUB.
    good.send_raw(vec![b"kv@127.0.0.1:8000@m".to_vec()]).await;
    good.send_raw(vec![
        b"kv@127.0.0.1:8000@m".to_vec(),
        vec![0; 8],
        vec![],
        vec![],
    ])
    .await;
    wait_for("malformed counted", WAIT, || {
        h.handle.dropped(DropReason::Malformed) >= 2
    })
    .await;
    good.send(batch(vec![stored(2, 0, 2, None)])).await;
    wait_for("good peer unaffected", WAIT, || {
        h.blocks(0, &tokens(2, 2)) == 2
    })
    .await;
    assert_eq!(h.blocks(0, &tokens(1, 2)), 2);
    h.stop().await;
}

/// Issue 14, item 3, as an attacker who reaches the bind port would try it: events forged for
/// another pod (a block it never held, then `AllBlocksCleared` to wipe it), a connection from an
/// address that is no pod, a flood of connections from one pod's address, and a peer that never
/// finishes its handshake. Each is dropped and counted; the real pod's state is untouched and it
/// keeps being heard; the process's peak RSS stays under a stated bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_senders_strangers_and_floods_are_dropped_and_counted() {
    const PEAK_RSS_MIB: u64 = 512;
    let cfg = KvEventsConfig {
        max_bind_connections_per_peer: 2,
        bind_handshake_timeout: Duration::from_millis(300),
        ..bind_config(1)
    };
    let sources = vec![
        ranked(0, "127.0.0.1:8000", 0, None),
        ranked(1, "127.0.0.2:8000", 0, None),
    ];
    let h = Harness::start(cfg, sources).await;
    let port = h.bound[0];
    let mut victim =
        Publisher::connect(port, topic_for("127.0.0.2:8000"), EncodeOptions::MAP).await;
    victim.sync(&h, 1).await;
    victim.send(batch(vec![stored(1, 0, 3, None)])).await;
    wait_for("the victim's blocks", WAIT, || {
        h.blocks(1, &tokens(1, 3)) == 3
    })
    .await;

    // Pod 127.0.0.1 publishes under the victim's topic: a block it never held, then a wipe.
    let mut forger =
        Publisher::connect(port, topic_for("127.0.0.1:8000"), EncodeOptions::MAP).await;
    forger.sync(&h, 0).await;
    forger.topic = topic_for("127.0.0.2:8000");
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.handle.dropped(DropReason::SenderMismatch) < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "forgeries not counted"
        );
        forger.send(batch(vec![stored(7, 0, 4, None)])).await;
        forger.send(batch(vec![KvEvent::AllBlocksCleared])).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.blocks(1, &tokens(7, 4)), 0, "no forged block");
    assert_eq!(h.blocks(1, &tokens(1, 3)), 3, "no forged wipe");

    // A connection from an address that is no endpoint's: refused before its handshake.
    let (stranger_at, _relay) = connect_from("127.0.0.3".parse().unwrap(), port).await;
    let mut stranger = tokio::net::TcpStream::connect(stranger_at).await.unwrap();
    stranger.write_all(&zmtp_hello("PUB")).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, stranger.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a stranger's connection is closed");
    wait_for("stranger counted", WAIT, || {
        h.handle.dropped(DropReason::UnknownPeer) >= 1
    })
    .await;

    // Pod 127.0.0.1 already holds one connection (the forger); its cap is 2. Silent connections:
    // the first fills the cap and is cut at the handshake deadline, the rest are refused at once.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tokio::net::TcpStream::connect(port).await.unwrap());
    }
    wait_for("flood and silence counted", WAIT, || {
        h.handle.dropped(DropReason::TooManyConnections) >= 4
            && h.handle.dropped(DropReason::TimedOut) >= 1
    })
    .await;
    for mut s in silent {
        let closed = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "every silent or surplus connection is closed"
        );
    }

    // The victim is still heard, and its state is its own.
    victim.send(batch(vec![stored(2, 0, 2, None)])).await;
    wait_for("the victim still heard", WAIT, || {
        h.blocks(1, &tokens(2, 2)) == 2
    })
    .await;
    assert_eq!(h.blocks(1, &tokens(1, 3)), 3);
    assert_eq!(h.state(1), EventsState::Live);
    let peak = peak_rss_mib();
    assert!(peak < PEAK_RSS_MIB, "peak RSS {peak} MiB");
    h.stop().await;
}

/// This process's peak resident memory (`VmHWM`), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        / 1024
}
