//! KV-event ingestion in connect mode, against real ZMQ publishers on 127.0.0.1 that speak
//! vLLM's wire format (the codec's encoder) and run a vLLM-like replay ROUTER.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod kv_events_common;

use std::time::Duration;

use kv_events_common::*;
use kvpick_epp::kv_events::{DropReason, parse_tier_weights};
use kvpick_scheduler::EventsState;
use kvpick_scheduler::IndexConfig;
use kvpick_scheduler::events::{EncodeOptions, HashEncoding, KvEvent, Medium};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_removes_clears_and_tiers_in_every_encoding() {
    let encodings = [
        EncodeOptions::ARRAY,
        EncodeOptions::ARRAY.with_hashes(HashEncoding::Bytes),
        EncodeOptions::MAP,
        EncodeOptions::ARRAY_BATCH_MAP_EVENTS.with_hashes(HashEncoding::Bytes),
    ];
    let mut pubs = Vec::new();
    let mut sources = Vec::new();
    for (n, opts) in (0u32..).zip(encodings) {
        let p = Publisher::bind(opts).await;
        sources.push(source(n, &format!("10.0.0.{n}:8000"), p.addr, None));
        pubs.push(p);
    }
    // Configured tier weights reach the index.
    let index = IndexConfig {
        tier_weights: parse_tier_weights("1,0.25,0.125").unwrap(),
        ..IndexConfig::default()
    };
    let h = Harness::with_index(config(), index, sources).await;
    for (n, p) in (0u32..).zip(&mut pubs) {
        p.sync(&h, n).await;
        let chain = tokens(n, 6);
        p.send(batch(vec![stored(n, 0, 4, None)])).await;
        p.send(batch(vec![stored(n, 4, 6, Some(Medium::Cpu))]))
            .await;
        wait_for("store", WAIT, || h.blocks(n, &chain) == 6).await;
        let (_, weighted) = h.held(n, &chain);
        assert!(
            (weighted - (4.0 + 2.0 * 0.25)).abs() < 1e-4,
            "weighted {weighted}"
        );
        assert_eq!(h.state(n), EventsState::Live);
        p.send(batch(vec![removed(n, 2, 6)])).await;
        wait_for("remove", WAIT, || h.blocks(n, &chain) == 2).await;
        p.send(batch(vec![KvEvent::AllBlocksCleared])).await;
        wait_for("clear", WAIT, || h.blocks(n, &chain) == 0).await;
        p.send(batch(vec![stored(n, 0, 3, Some(Medium::Storage))]))
            .await;
        wait_for("store again", WAIT, || h.blocks(n, &chain) == 3).await;
        let s = h.stats(n);
        assert_eq!((s.decode_errors, s.gaps, s.resets), (0, 0, 0), "{s:?}");
        assert_eq!(s.blocks_stored, 6 + 3);
    }
    // Other endpoints' blocks are untouched by one endpoint's clear.
    assert_eq!(h.blocks(0, &tokens(0, 3)), 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_filled_by_replay_then_sequence_restart() {
    let mut p = Publisher::bind(EncodeOptions::default()).await;
    let replay = p.serve_replay(false).await;
    let h = Harness::start(
        config(),
        vec![source(0, "10.0.0.1:8000", p.addr, Some(replay))],
    )
    .await;
    p.sync(&h, 0).await;
    p.send(batch(vec![stored(1, 0, 2, None)])).await;
    p.lose(batch(vec![stored(2, 0, 2, None)]));
    p.lose(batch(vec![stored(1, 2, 4, None)]));
    p.send(batch(vec![stored(3, 0, 2, None)])).await;
    wait_for("the lost batches, replayed", WAIT, || {
        h.blocks(0, &tokens(1, 4)) == 4
            && h.blocks(0, &tokens(2, 2)) == 2
            && h.blocks(0, &tokens(3, 2)) == 2
    })
    .await;
    let s = h.stats(0);
    assert!(s.gaps >= 1 && s.replays_ok >= 2, "{s:?}"); // warm start + gap
    assert_eq!(s.resets, 0, "{s:?}");
    assert_eq!(h.state(0), EventsState::Live);

    // The pod restarts: its sequence goes back to 0 and its cache is empty.
    p.restart_sequence();
    p.send(batch(vec![stored(4, 0, 2, None)])).await;
    wait_for("restart handled", WAIT, || {
        h.blocks(0, &tokens(4, 2)) == 2
            && h.blocks(0, &tokens(1, 4)) == 0
            && h.blocks(0, &tokens(3, 2)) == 0
    })
    .await;
    assert!(h.stats(0).restarts >= 1);
    h.stop().await;
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_without_replay_clears_and_starts_fresh() {
    let mut p = Publisher::bind(EncodeOptions::default()).await;
    let h = Harness::start(config(), vec![source(0, "10.0.0.1:8000", p.addr, None)]).await;
    p.sync(&h, 0).await;
    p.send(batch(vec![stored(1, 0, 3, None)])).await;
    wait_for("first chain", WAIT, || h.blocks(0, &tokens(1, 3)) == 3).await;
    p.lose(batch(vec![removed(1, 0, 3)]));
    p.send(batch(vec![stored(2, 0, 2, None)])).await;
    // Whether the lost batch removed chain 1 cannot be known: it must go.
    wait_for("reset", WAIT, || h.blocks(0, &tokens(2, 2)) == 2).await;
    assert_eq!(h.blocks(0, &tokens(1, 3)), 0);
    let s = h.stats(0);
    assert!(s.gaps == 1 && s.resets == 1, "{s:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_within_a_second_from_the_pods_replay_buffer() {
    let mut p = Publisher::bind(EncodeOptions::ARRAY).await;
    let replay = p.serve_replay(true).await;
    // History published before kvpick started (nobody subscribed: only the buffer has it).
    p.lose(batch(vec![stored(1, 0, 8, None)]));
    p.lose(batch(vec![stored(2, 0, 4, None), removed(1, 6, 8)]));
    let started = Instant::now();
    let h = Harness::start(
        config(),
        vec![source(0, "10.0.0.1:8000", p.addr, Some(replay))],
    )
    .await;
    wait_for("warm start", Duration::from_secs(1), || {
        h.blocks(0, &tokens(1, 8)) == 6 && h.blocks(0, &tokens(2, 4)) == 4
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    wait_for("live", WAIT, || h.state(0) == EventsState::Live).await;
    // Live batches continue the replayed history without a gap.
    p.send(batch(vec![stored(3, 0, 1, None)])).await;
    wait_for("live batch", WAIT, || h.blocks(0, &tokens(3, 1)) == 1).await;
    assert_eq!(h.stats(0).resets, 0);
    h.stop().await;
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_to_a_restarted_pod_and_drops_its_old_blocks() {
    let mut p = Publisher::bind(EncodeOptions::default()).await;
    let replay = p.serve_replay(false).await;
    let (pub_addr, replay_addr) = (p.addr.unwrap(), replay);
    let h = Harness::start(
        config(),
        vec![source(
            0,
            "10.0.0.1:8000",
            Some(pub_addr),
            Some(replay_addr),
        )],
    )
    .await;
    p.sync(&h, 0).await;
    for i in 0..5 {
        p.send(batch(vec![stored(1, i, i + 1, None)])).await;
    }
    wait_for("first process's blocks", WAIT, || {
        h.blocks(0, &tokens(1, 5)) == 5
    })
    .await;
    p.close().await;
    wait_for("stale while the pod is away", WAIT, || {
        h.state(0) == EventsState::Stale
    })
    .await;

    // A new process on the same ports, with its own (shorter) history.
    let mut p = Publisher::bind_at(pub_addr, EncodeOptions::default()).await;
    let (_, replay_task) = replay_server(replay_addr, p.history.clone(), None).await;
    p.lose(batch(vec![stored(2, 0, 2, None)]));
    wait_for("new process's history", WAIT, || {
        h.blocks(0, &tokens(2, 2)) == 2 && h.blocks(0, &tokens(1, 5)) == 0
    })
    .await;
    wait_for("live again", WAIT, || h.state(0) == EventsState::Live).await;
    let s = h.stats(0);
    assert!(s.connects >= 2 && s.resets >= 1, "{s:?}");
    h.stop().await;
    replay_task.abort();
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_removal_drops_its_blocks_at_once() {
    let mut a = Publisher::bind(EncodeOptions::default()).await;
    let mut b = Publisher::bind(EncodeOptions::default()).await;
    let sources = vec![
        source(0, "10.0.0.1:8000", a.addr, None),
        source(1, "10.0.0.2:8000", b.addr, None),
    ];
    let h = Harness::start(config(), sources.clone()).await;
    a.sync(&h, 0).await;
    b.sync(&h, 1).await;
    a.send(batch(vec![stored(1, 0, 4, None)])).await;
    b.send(batch(vec![stored(1, 0, 4, None)])).await;
    wait_for("both hold chain 1", WAIT, || {
        h.blocks(0, &tokens(1, 4)) == 4 && h.blocks(1, &tokens(1, 4)) == 4
    })
    .await;
    h.sources.send_replace(sources[1..].to_vec());
    wait_for("removed endpoint's blocks gone", WAIT, || {
        h.blocks(0, &tokens(1, 4)) == 0
    })
    .await;
    assert_eq!(h.state(0), EventsState::Absent);
    assert_eq!(h.blocks(1, &tokens(1, 4)), 4);
    assert_eq!(h.index.endpoint_entries(id(0)), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_counted_and_healthy_endpoints_keep_their_blocks() {
    let mut healthy = Publisher::bind(EncodeOptions::default()).await;
    let mut bad = Publisher::bind(EncodeOptions::default()).await;
    // A "publisher" that completes the ZMTP handshake, then announces a 4 EiB frame.
    let liar = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liar_addr = liar.local_addr().unwrap();
    let liar_task = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = liar.accept().await {
            let _ = s.write_all(&zmtp_hello("PUB")).await;
            let _ = s.write_all(&huge_frame_header(1 << 62)).await;
            let mut sink = [0u8; 256];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    });
    let cfg = kvpick_epp::kv_events::KvEventsConfig {
        max_message_bytes: 64 << 10,
        ..config()
    };
    let sources = vec![
        source(0, "10.0.0.1:8000", healthy.addr, None),
        source(1, "10.0.0.2:8000", bad.addr, None),
        source(2, "10.0.0.3:8000", Some(liar_addr), None),
    ];
    let h = Harness::start(cfg, sources).await;
    healthy.sync(&h, 0).await;
    bad.sync(&h, 1).await;
    healthy.send(batch(vec![stored(1, 0, 4, None)])).await;
    bad.send(batch(vec![stored(1, 0, 4, None)])).await;
    wait_for("both stored", WAIT, || {
        h.blocks(0, &tokens(1, 4)) == 4 && h.blocks(1, &tokens(1, 4)) == 4
    })
    .await;

    let topic = Vec::new();
    let seq = |s: u64| s.to_be_bytes().to_vec();
    bad.send_raw(vec![topic.clone(), seq(90)]).await; // two frames
    bad.send_raw(vec![topic.clone(), seq(90), vec![0x90], vec![1]])
        .await; // four frames
    bad.send_raw(vec![topic.clone(), vec![0, 1, 2], vec![0x90]])
        .await; // short sequence
    let malformed = 3;
    let payloads: Vec<Vec<u8>> = vec![
        (0..200u32).map(|i| (i * 7919 % 251) as u8).collect(), // random bytes
        {
            let mut p = kvpick_scheduler::events::encode_batch(
                &batch(vec![stored(2, 0, 4, None)]),
                EncodeOptions::default(),
            )
            .unwrap();
            p.truncate(p.len() / 2);
            p
        },
        vec![
            0x93, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0xdd, 0xff, 0xff, 0xff, 0xff,
        ], // array32 claiming 4G events
        vec![
            0x93, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0x91, 0x92, 0xab, b'B', b'l', b'o', b'c', b'k',
            b'S', b't', b'o', b'r', b'e', b'd', 0xdd, 0xff, 0xff, 0xff, 0xf0,
        ],
    ];
    let decode_errors = payloads.len() as u64;
    for payload in payloads {
        bad.send(batch(vec![])).await; // keep the sequence contiguous around each bad one
        let s = bad.lose(batch(vec![]));
        bad.send_raw(vec![topic.clone(), seq(s), payload]).await;
    }
    // An oversized message (over the 64 KiB limit) cuts the connection; it is re-established.
    bad.send_raw(vec![topic.clone(), seq(1000), vec![0u8; 100 << 10]])
        .await;
    wait_for("garbage counted", WAIT, || {
        h.handle.dropped(DropReason::Malformed) >= malformed
            && h.stats(1).decode_errors >= decode_errors
            && h.handle.dropped(DropReason::Oversized) >= 2
    })
    .await;
    // The garbage endpoint no longer vouches for its blocks; it recovers on new batches.
    assert_eq!(h.blocks(1, &tokens(1, 4)), 0);
    wait_for("bad publisher reconnected", WAIT, || {
        h.stats(1).connects >= 2
    })
    .await;
    bad.sync(&h, 1).await;
    bad.send(batch(vec![stored(3, 0, 2, None)])).await;
    wait_for("bad endpoint recovers", WAIT, || {
        h.blocks(1, &tokens(3, 2)) == 2
    })
    .await;
    // The healthy endpoint lost nothing and keeps going.
    healthy.send(batch(vec![stored(2, 0, 2, None)])).await;
    wait_for("healthy keeps going", WAIT, || {
        h.blocks(0, &tokens(2, 2)) == 2
    })
    .await;
    assert_eq!(h.blocks(0, &tokens(1, 4)), 4);
    let s = h.stats(0);
    assert_eq!((s.decode_errors, s.resets, s.gaps), (0, 0, 0), "{s:?}");
    assert_eq!(h.state(2), EventsState::Stale);
    h.stop().await;
    liar_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falling_behind_marks_stale_and_resynchronises() {
    let mut p = Publisher::bind(EncodeOptions::default()).await;
    let cfg = kvpick_epp::kv_events::KvEventsConfig {
        queue_capacity: 2,
        ..config()
    };
    let h = Harness::start(cfg, vec![source(0, "10.0.0.1:8000", p.addr, None)]).await;
    p.sync(&h, 0).await;
    let burst = 3000u32;
    for chain in 0..burst {
        p.send(batch(vec![stored(10 + chain, 0, 1, None)])).await;
    }
    // The final batch may itself meet a full queue: repeat it (storing is idempotent).
    let deadline = Instant::now() + WAIT;
    while h.blocks(0, &tokens(1, 4)) != 4 {
        assert!(Instant::now() < deadline, "final batch never applied");
        p.send(batch(vec![stored(1, 0, 4, None)])).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for("live again", WAIT, || h.state(0) == EventsState::Live).await;
    let s = h.stats(0);
    assert!(s.overflows >= 1 && s.resets >= 1, "{s:?}");
    assert!(h.handle.dropped(DropReason::QueueFull) >= 1);
    // Only what came after the last reset is held: fewer entries than were published.
    assert!(h.index.endpoint_entries(id(0)) < burst as usize + 4);
    h.stop().await;
}
