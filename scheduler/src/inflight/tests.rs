use std::time::Duration;

use proptest::prelude::*;

use std::collections::BTreeMap;

use super::*;

fn ep(n: u32) -> EndpointId {
    EndpointId::new(n).unwrap()
}

fn ms(n: u64) -> Timestamp {
    Timestamp::from_millis(n)
}

fn cost(prompt: u32, cached: u32) -> Cost {
    Cost {
        prompt_tokens: prompt,
        cached_tokens: cached,
        output_tokens: 100,
    }
}

#[test]
fn reserve_first_token_release() {
    let f = InFlight::default();
    let a = f.reserve(ep(1), cost(1000, 400), ms(0));
    let b = f.reserve(ep(1), cost(500, 0), ms(10));
    let l = f.load(ep(1), ms(30));
    assert_eq!(
        (l.prefill_requests, l.prefill_tokens, l.head_tokens),
        (2, 1100, 600)
    );
    assert_eq!(l.head_elapsed, Duration::from_millis(30));
    assert_eq!(l.kv_tokens, 600 + 100 + 500 + 100);
    f.first_token(a, ms(40));
    let l = f.load(ep(1), ms(50));
    assert_eq!(
        (l.prefill_requests, l.prefill_tokens, l.head_tokens),
        (1, 500, 500)
    );
    assert_eq!(l.head_elapsed, Duration::from_millis(10));
    assert_eq!((l.decode_requests, l.decode_context), (1, 1050));
    f.first_token(a, ms(45)); // repeated: no double count
    assert_eq!(f.load(ep(1), ms(50)).decode_requests, 1);
    f.release(a, ms(60));
    f.release(b, ms(60));
    f.release(b, ms(61));
    let idle = f.load(ep(1), ms(70));
    assert_eq!(
        idle,
        EndpointLoad {
            head_elapsed: Duration::from_millis(10),
            typical_uncached: idle.typical_uncached,
            typical_context: idle.typical_context,
            pick_rate: idle.pick_rate,
            ..EndpointLoad::default()
        }
    );
    // Two picks in 10 ms, averaged over the 30 s window.
    assert!((idle.pick_rate - 2.0 / 30.0).abs() < 0.01, "{idle:?}");
    assert!(f.is_empty());
    assert_eq!(f.load(ep(2), ms(0)).prefill_requests, 0);
}

#[test]
fn reconcile_counts_only_what_reservations_do_not_explain() {
    let f = InFlight::default();
    f.reserve(ep(0), cost(100, 0), ms(0));
    let late = f.reserve(ep(0), cost(100, 0), ms(20));
    let mut s = PodSignals::idle(ms(10));
    s.waiting = 3;
    s.running = 2;
    // One of ours was picked before the scrape: 2 waiting and 2 running are someone else's.
    f.reconcile(ep(0), &s);
    let l = f.load(ep(0), ms(30));
    assert_eq!((l.external_waiting, l.external_running), (2, 2));
    f.first_token(late, ms(30));
    s.scraped_at = ms(40);
    s.waiting = 1;
    s.running = 1;
    f.reconcile(ep(0), &s);
    let l = f.load(ep(0), ms(40));
    assert_eq!((l.external_waiting, l.external_running), (0, 0));
}

#[test]
fn expires_and_stays_bounded() {
    let f = InFlight::new(InFlightConfig {
        ttl: Duration::from_secs(1),
        max_reservations: 3,
        ..InFlightConfig::default()
    });
    for i in 0..5 {
        f.reserve(ep(i % 2), cost(10, 0), ms(i as u64));
    }
    assert_eq!(f.len(), 3);
    f.expire(ms(2_000));
    assert!(f.is_empty());
    assert_eq!(f.load(ep(0), ms(2_000)).kv_tokens, 0);
    let id = f.reserve(ep(3), cost(10, 0), ms(3_000));
    f.forget(ep(3));
    assert!(f.is_empty());
    f.release(id, ms(3_001));
}

proptest! {
    /// Whatever the order of reserve / first token / release / expiry, the per-endpoint totals
    /// equal the sums over live reservations, and releasing everything leaves them at zero.
    #[test]
    fn totals_match_live_reservations(ops in prop::collection::vec((0u8..4, 0u32..4, 1u32..5000, 0usize..64), 1..200)) {
        let f = InFlight::new(InFlightConfig { ttl: Duration::from_secs(5), max_reservations: 32, ..InFlightConfig::default() });
        let mut ids = Vec::new();
        let mut now = 0u64;
        for (op, e, tokens, pick) in ops {
            now += 100;
            match op {
                0 | 1 => ids.push(f.reserve(ep(e), cost(tokens, tokens / 3), ms(now))),
                2 => if !ids.is_empty() { f.first_token(ids[pick % ids.len()], ms(now)) },
                _ => if !ids.is_empty() { let id = ids.swap_remove(pick % ids.len()); f.release(id, ms(now)) },
            }
            let s = f.state.lock();
            prop_assert!(s.entries.len() <= 32);
            for (i, pe) in s.endpoints.iter().enumerate() {
                let live: Vec<_> = s.entries.values().filter(|x| x.endpoint.index() == i).collect();
                let prefill: u64 = live.iter().filter(|x| !x.decoding).map(|x| u64::from(x.cost.uncached_tokens())).sum();
                let kv: u64 = live.iter().map(|x| x.cost.kv_tokens()).sum();
                prop_assert_eq!(pe.prefill_tokens, prefill);
                prop_assert_eq!(pe.kv_tokens, kv);
                prop_assert_eq!(pe.decode_requests as usize, live.iter().filter(|x| x.decoding).count());
            }
        }
        for id in ids {
            f.release(id, ms(now));
        }
        f.expire(ms(now + 10_000));
        let s = f.state.lock();
        prop_assert!(s.endpoints.iter().all(|e| e.prefill_tokens == 0 && e.kv_tokens == 0 && e.decode_requests == 0 && e.decode_context == 0));
    }
}

fn replica(name: &str) -> ReplicaId {
    ReplicaId::new(name).unwrap()
}

fn totals(prefill: u32, tokens: u64, decode: u32) -> InFlightTotals {
    InFlightTotals {
        prefill_requests: prefill,
        prefill_tokens: tokens,
        decode_requests: decode,
        decode_context: u64::from(decode) * 1000,
        kv_tokens: tokens + u64::from(decode) * 100,
    }
}

#[test]
fn a_peers_report_counts_as_its_reservations_do() {
    let a = InFlight::default();
    let b = InFlight::default();
    let first = a.reserve(ep(1), cost(1000, 400), ms(0));
    a.reserve(ep(1), cost(500, 0), ms(5));
    a.reserve(ep(2), cost(300, 0), ms(5));
    a.first_token(first, ms(8));
    let report = a.report(ms(10));
    assert_eq!(report.endpoints.len(), 2);
    assert_eq!(
        b.fold_peer(&replica("a"), report, ms(10)),
        PeerFold::Counted
    );
    let (mine, seen) = (a.load(ep(1), ms(10)), b.load(ep(1), ms(10)));
    assert_eq!(
        (
            seen.prefill_requests,
            seen.prefill_tokens,
            seen.decode_requests
        ),
        (
            mine.prefill_requests,
            mine.prefill_tokens,
            mine.decode_requests
        )
    );
    assert_eq!(
        (seen.decode_context, seen.kv_tokens),
        (mine.decode_context, mine.kv_tokens)
    );
    // Peers' queued prefill gets no progress credit; their pick rate adds to the pool's.
    assert_eq!((seen.head_tokens, seen.head_pairs), (0, 0));
    assert!((seen.pick_rate - mine.pick_rate).abs() < 1e-9);
    // B's own reservations add to what A reported; A's report never includes B's.
    b.reserve(ep(1), cost(200, 0), ms(11));
    assert_eq!(b.load(ep(1), ms(11)).prefill_requests, 2);
    assert_eq!(
        b.report(ms(11)).endpoints,
        vec![(
            ep(1),
            InFlightTotals {
                prefill_requests: 1,
                prefill_tokens: 200,
                kv_tokens: 300,
                ..InFlightTotals::default()
            }
        )]
    );
    assert_eq!(b.peers(ms(11)), 1);
    b.drop_peer(&replica("a"));
    assert_eq!(b.load(ep(1), ms(11)).prefill_requests, 1);
    assert_eq!(b.peers(ms(11)), 0);
}

#[test]
fn what_a_scrape_shows_of_a_peers_requests_is_not_external() {
    let f = InFlight::default();
    f.reserve(ep(0), cost(100, 0), ms(0));
    let report = PeerReport {
        as_of: ms(5),
        pick_rate: 0.0,
        endpoints: vec![(ep(0), totals(2, 200, 1))],
    };
    f.fold_peer(&replica("a"), report, ms(5));
    let mut s = PodSignals::idle(ms(10));
    s.waiting = 4;
    s.running = 2;
    f.reconcile(ep(0), &s);
    // Waiting 4 = ours 1 + the peer's 2 + 1 external; running 2 = the peer's 1 + 1 external.
    let l = f.load(ep(0), ms(10));
    assert_eq!((l.external_waiting, l.external_running), (1, 1));
    assert_eq!((l.prefill_requests, l.decode_requests), (3, 1));
    // The peer's picks after the scrape count on top of it, not out of it.
    let more = PeerReport {
        as_of: ms(20),
        pick_rate: 0.0,
        endpoints: vec![(ep(0), totals(5, 500, 1))],
    };
    f.fold_peer(&replica("a"), more, ms(20));
    let l = f.load(ep(0), ms(20));
    assert_eq!((l.external_waiting, l.external_running), (1, 1));
    assert_eq!(l.prefill_requests, 6);
    // Its report going stale leaves this replica's own view; the next scrape shows the rest.
    let later = f.load(ep(0), ms(20 + 2_001));
    assert_eq!(later.prefill_requests, 1);
    s.scraped_at = ms(2_030);
    f.reconcile(ep(0), &s);
    let l = f.load(ep(0), ms(2_030));
    assert_eq!((l.external_waiting, l.external_running), (3, 2));
    // A peer claiming more than the scrape shows leaves no external load, never a negative one.
    let big = PeerReport {
        as_of: ms(2_040),
        pick_rate: 0.0,
        endpoints: vec![(ep(0), totals(50, 5_000, 50))],
    };
    f.fold_peer(&replica("a"), big, ms(2_040));
    s.scraped_at = ms(2_050);
    f.reconcile(ep(0), &s);
    let l = f.load(ep(0), ms(2_050));
    assert_eq!((l.external_waiting, l.external_running), (0, 0));
}

#[test]
fn stale_future_out_of_order_and_full_reports() {
    let f = InFlight::new(InFlightConfig {
        peers: PeerLimits {
            staleness: Duration::from_secs(1),
            max_peers: 2,
        },
        ..InFlightConfig::default()
    });
    let at = |t: u64, n: u32| PeerReport {
        as_of: ms(t),
        pick_rate: 1.0,
        endpoints: vec![(ep(0), totals(n, u64::from(n) * 10, 0))],
    };
    assert_eq!(
        f.fold_peer(&replica("a"), at(0, 1), ms(1_500)),
        PeerFold::Stale
    );
    assert_eq!(
        f.fold_peer(&replica("a"), at(1_000, 2), ms(1_500)),
        PeerFold::Counted
    );
    assert_eq!(
        f.fold_peer(&replica("a"), at(900, 3), ms(1_500)),
        PeerFold::Superseded
    );
    assert_eq!(f.load(ep(0), ms(1_500)).prefill_requests, 2);
    // Dated in the future (a skewed clock): counts as of now, so it still goes stale.
    assert_eq!(
        f.fold_peer(&replica("b"), at(60_000, 4), ms(1_500)),
        PeerFold::Counted
    );
    assert_eq!(
        f.fold_peer(&replica("c"), at(1_500, 5), ms(1_500)),
        PeerFold::Full
    );
    assert_eq!(f.load(ep(0), ms(1_500)).prefill_requests, 6);
    assert!((f.load(ep(0), ms(1_500)).pick_rate - 2.0).abs() < 1e-9);
    // "a" goes stale at 2 s, "b" at 2.5 s: room for "c".
    assert_eq!(f.load(ep(0), ms(2_100)).prefill_requests, 4);
    assert_eq!(
        f.fold_peer(&replica("c"), at(2_100, 5), ms(2_100)),
        PeerFold::Counted
    );
    assert_eq!(f.load(ep(0), ms(2_600)).prefill_requests, 5);
    assert_eq!(f.peers(ms(3_200)), 0);
    assert_eq!(
        f.load(ep(0), ms(3_200)),
        InFlight::default().load(ep(0), ms(3_200))
    );
}

#[test]
fn hostile_reports_are_clamped_merged_and_forgotten_with_their_endpoint() {
    let f = InFlight::default();
    let huge = InFlightTotals {
        prefill_requests: u32::MAX,
        prefill_tokens: u64::MAX,
        decode_requests: u32::MAX,
        decode_context: u64::MAX,
        kv_tokens: u64::MAX,
    };
    let report = PeerReport {
        as_of: ms(0),
        pick_rate: f64::NAN,
        endpoints: vec![
            (ep(3), huge),
            (ep(3), huge),
            (
                ep(1),
                InFlightTotals {
                    prefill_tokens: 99,
                    ..InFlightTotals::default()
                },
            ),
        ],
    };
    for name in ["a", "b"] {
        assert_eq!(
            f.fold_peer(&replica(name), report.clone(), ms(0)),
            PeerFold::Counted
        );
    }
    let l = f.load(ep(3), ms(0));
    assert_eq!(l.prefill_requests, 2 * peers::MAX_PEER_REQUESTS);
    assert!(l.prefill_tokens <= u64::from(l.prefill_requests) << 22);
    assert_eq!(l.pick_rate, 0.0);
    // Tokens without requests are no load.
    assert_eq!(f.load(ep(1), ms(0)).prefill_tokens, 0);
    f.forget(ep(3));
    assert_eq!(f.load(ep(3), ms(0)).prefill_requests, 0);
    f.drop_peer(&replica("a"));
    f.drop_peer(&replica("b"));
    assert_eq!(f.load(ep(3), ms(0)).prefill_requests, 0);
    for bad in ["", "a b", "ä", &"x".repeat(65)] {
        assert!(ReplicaId::new(bad).is_none(), "{bad:?}");
    }
    assert_eq!(replica("epp-7f9c:0_a.b").as_str(), "epp-7f9c:0_a.b");
}

proptest! {
    /// Whatever peers report, drop or let go stale, a replica's view is its own load plus the
    /// fresh reports' totals (clamped), and once they are gone it equals the view of a replica
    /// that never heard of them.
    #[test]
    fn peers_add_exactly_their_fresh_totals(
        ops in prop::collection::vec((0u8..6, 0u32..4, 0u32..3, 0u32..70_000, 0u64..1 << 40), 1..150)
    ) {
        let config = InFlightConfig {
            peers: PeerLimits { staleness: Duration::from_millis(500), max_peers: 2 },
            ..InFlightConfig::default()
        };
        let (with, without) = (InFlight::new(config), InFlight::new(config));
        let mut fresh: BTreeMap<u32, (u64, Vec<(EndpointId, InFlightTotals)>)> = BTreeMap::new();
        let mut now = 0u64;
        for (op, e, peer, n, tokens) in ops {
            now += 70;
            let name = replica(&format!("r{peer}"));
            match op {
                0 | 1 => {
                    with.reserve(ep(e), cost(n % 5000 + 1, 0), ms(now));
                    without.reserve(ep(e), cost(n % 5000 + 1, 0), ms(now));
                }
                2 | 3 => {
                    let endpoints = vec![(ep(e), totals(n, tokens, n / 2)), (ep((e + 1) % 4), totals(1, tokens, 0))];
                    fresh.retain(|_, (at, _)| now - *at <= 500);
                    let outcome = with.fold_peer(&name, PeerReport { as_of: ms(now), pick_rate: 0.0, endpoints: endpoints.clone() }, ms(now));
                    prop_assert_eq!(outcome == PeerFold::Counted, fresh.contains_key(&peer) || fresh.len() < 2);
                    if outcome == PeerFold::Counted {
                        fresh.insert(peer, (now, endpoints));
                    }
                }
                4 => {
                    with.drop_peer(&name);
                    fresh.remove(&peer);
                }
                _ => {}
            }
            fresh.retain(|_, (at, _)| now - *at <= 500);
            for i in 0..4 {
                let (a, b) = (with.load(ep(i), ms(now)), without.load(ep(i), ms(now)));
                let expected: u32 = fresh
                    .values()
                    .flat_map(|(_, endpoints)| endpoints.iter().filter(|(x, _)| *x == ep(i)))
                    .map(|(_, t)| t.prefill_requests.min(peers::MAX_PEER_REQUESTS))
                    .sum();
                prop_assert_eq!(a.prefill_requests - b.prefill_requests, expected);
                prop_assert!(a.prefill_tokens >= b.prefill_tokens && a.kv_tokens >= b.kv_tokens);
            }
        }
        for peer in 0..3 {
            with.drop_peer(&replica(&format!("r{peer}")));
        }
        for i in 0..4 {
            prop_assert_eq!(with.load(ep(i), ms(now)), without.load(ep(i), ms(now)));
        }
    }

    /// The external load is what the scrape shows beyond this replica's and the peers' requests:
    /// each request the pod reports is counted once, whoever sent it.
    #[test]
    fn scraped_requests_are_counted_once(waiting in 0u32..50, running in 0u32..50, ours in 0u32..20, peer_prefill in 0u32..20, peer_decode in 0u32..20) {
        let f = InFlight::default();
        for _ in 0..ours {
            f.reserve(ep(0), cost(10, 0), ms(0));
        }
        f.fold_peer(&replica("p"), PeerReport { as_of: ms(1), pick_rate: 0.0, endpoints: vec![(ep(0), totals(peer_prefill, 10, peer_decode))] }, ms(1));
        let mut s = PodSignals::idle(ms(2));
        s.waiting = waiting;
        s.running = running;
        f.reconcile(ep(0), &s);
        let l = f.load(ep(0), ms(2));
        let counted = l.prefill_requests + l.decode_requests;
        prop_assert_eq!(counted, ours + peer_prefill + peer_decode);
        prop_assert_eq!(counted + l.external_waiting + l.external_running, counted.max(waiting + running));
        prop_assert!(l.external_waiting <= waiting.saturating_sub(ours + peer_prefill));
    }
}
