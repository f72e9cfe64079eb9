use std::time::Duration;

use proptest::prelude::*;

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
        let f = InFlight::new(InFlightConfig { ttl: Duration::from_secs(5), max_reservations: 32 });
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
