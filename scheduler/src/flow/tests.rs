use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::PoolSaturation;

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn queue(max_requests: usize, max_bytes: u64) -> FlowQueue<&'static str> {
    FlowQueue::new(FlowConfig {
        enabled: true,
        max_requests,
        max_bytes,
        ttl: Duration::from_secs(1),
    })
}

fn flow(id: &str) -> FlowId {
    FlowId::new(Some(id))
}

fn drain(q: &mut FlowQueue<&'static str>) -> Vec<&'static str> {
    std::iter::from_fn(|| q.pop(at(0)).map(|d| d.value)).collect()
}

#[test]
fn higher_bands_leave_first_and_flows_take_turns() {
    let mut q = queue(100, 1 << 20);
    for (p, f, v) in [
        (0, "a", "a1"),
        (0, "a", "a2"),
        (0, "a", "a3"),
        (0, "b", "b1"),
        (5, "c", "c1"),
        (-1, "a", "low"),
        (0, "b", "b2"),
    ] {
        q.push(p, flow(f), 10, v, at(0)).unwrap();
    }
    assert_eq!((q.len(), q.bytes()), (7, 70));
    // Band 5 first; then a and b alternate, a's burst does not starve b; band -1 last.
    assert_eq!(drain(&mut q), ["c1", "a1", "b1", "a2", "b2", "a3", "low"]);
    assert!(q.is_empty());
    assert_eq!(q.bytes(), 0);
}

#[test]
fn a_full_queue_displaces_lower_bands_newest_of_the_longest_flow_first() {
    let mut q = queue(3, 1 << 20);
    q.push(-1, flow("x"), 1, "x1", at(0)).unwrap();
    q.push(-1, flow("x"), 1, "x2", at(1)).unwrap();
    q.push(-1, flow("y"), 1, "y1", at(2)).unwrap();
    // Same band: nothing lower to displace.
    assert_eq!(
        q.push(-1, flow("z"), 1, "z1", at(3)).unwrap_err(),
        Refusal::Full
    );
    let queued = q.push(0, flow("z"), 1, "z1", at(3)).unwrap();
    assert_eq!(queued.displaced.refused, ["x2"]);
    assert_eq!(drain(&mut q), ["z1", "x1", "y1"]);
}

#[test]
fn byte_limits_refuse_or_displace() {
    let mut q = queue(100, 100);
    assert_eq!(
        q.push(0, flow(""), 101, "huge", at(0)).unwrap_err(),
        Refusal::TooLarge
    );
    q.push(0, flow(""), 60, "a", at(0)).unwrap();
    q.push(-3, flow(""), 30, "b", at(0)).unwrap();
    q.push(-3, flow(""), 10, "c", at(0)).unwrap();
    // 50 more bytes fit only by displacing both lower requests of band -3; band 0 cannot go.
    assert_eq!(
        q.push(-3, flow(""), 50, "d", at(0)).unwrap_err(),
        Refusal::Full
    );
    let queued = q.push(0, flow(""), 40, "e", at(0)).unwrap();
    assert_eq!(queued.displaced.refused, ["c", "b"]);
    assert_eq!(q.bytes(), 100);
    assert_eq!(drain(&mut q), ["a", "e"]);
}

#[test]
fn cancelled_and_expired_requests_leave_and_free_their_room() {
    let mut q = queue(2, 1 << 20);
    let a = q.push(0, flow("a"), 5, "a", at(0)).unwrap().ticket;
    q.push(0, flow("b"), 5, "b", at(600)).unwrap();
    assert_eq!(q.cancel(a), Some("a"));
    assert_eq!(q.cancel(a), None);
    q.push(0, flow("a"), 5, "c", at(700)).unwrap();
    assert!(q.expire(at(1599)).is_empty());
    assert_eq!(q.expire(at(1600)).refused, ["b"]);
    assert_eq!((q.len(), q.bytes()), (1, 5));
    let d = q.pop(at(1650)).unwrap();
    assert_eq!((d.value, d.waited), ("c", Duration::from_millis(950)));
}

#[test]
fn fairness_ids_are_cut_at_a_character_boundary() {
    let long = "é".repeat(100);
    let id = FlowId::new(Some(&long));
    assert_eq!(id.0.len(), FlowId::MAX_LEN);
    assert_eq!(FlowId::new(None), FlowId::new(Some("")));
}

#[test]
fn the_pacer_spends_the_room_scrapes_show_once() {
    let mut pacer = Pacer::default();
    let pool = |slots, as_of| PoolSaturation {
        saturated: 0,
        total: 2,
        slots,
        slots_as_of: at(as_of),
    };
    assert_eq!(pacer.budget(&pool(3, 100)), 3);
    pacer.dispatched(at(110));
    pacer.dispatched(at(120));
    // Same scrapes: two of three slots are spent.
    assert_eq!(pacer.budget(&pool(3, 100)), 1);
    // A scrape at 115 saw the first dispatch (its effect is in the new slot count).
    assert_eq!(pacer.budget(&pool(2, 115)), 1);
    assert_eq!(pacer.budget(&pool(0, 200)), 0);
    assert_eq!(pacer.budget(&pool(4, 200)), 4);
}

#[test]
fn the_gate_lets_out_what_is_taken_within_the_budget() {
    let mut gate = FlowGate::new(FlowConfig {
        enabled: true,
        ..FlowConfig::default()
    });
    let pool = |saturated, total, slots| PoolSaturation {
        saturated,
        total,
        slots,
        slots_as_of: at(0),
    };
    // Nothing waits and the pool has room: at once; saturated: it waits.
    assert!(matches!(
        gate.arrive(&pool(0, 1, 1), 0, flow(""), 1, "a", at(1)),
        Arrival::Go("a")
    ));
    for v in ["b", "c", "d"] {
        assert!(matches!(
            gate.arrive(&pool(1, 1, 0), 0, flow(""), 1, v, at(1)),
            Arrival::Queued(_)
        ));
    }
    // One slot: "b" is not taken (its client left), so "c" gets the slot and "d" waits.
    let mut sent = Vec::new();
    let expired = gate.release(&pool(0, 1, 1), at(2), |d| {
        sent.push(d.value);
        d.value != "b"
    });
    assert!(expired.is_empty());
    assert_eq!(sent, ["b", "c"]);
    assert_eq!(gate.queue().len(), 1);
    // An empty pool has nothing to wait for: everything goes on.
    let mut sent = Vec::new();
    gate.release(&pool(0, 0, 0), at(3), |d| {
        sent.push(d.value);
        true
    });
    assert_eq!(sent, ["d"]);
}

#[test]
fn objective_waiters_are_looked_at_requeued_and_go_best_effort_past_the_ttl() {
    let config = FlowConfig {
        enabled: true,
        max_requests: 3,
        ttl: Duration::from_secs(1),
        ..FlowConfig::default()
    };
    assert!(config.may_wait_for_objective(None, at(5)));
    assert!(config.may_wait_for_objective(Some(at(0)), at(999)));
    assert!(!config.may_wait_for_objective(Some(at(0)), at(1000)));
    let off = FlowConfig {
        enabled: false,
        ..config.clone()
    };
    assert!(!off.may_wait_for_objective(None, at(0)));

    let mut gate = FlowGate::new(config);
    let room = |slots| PoolSaturation {
        saturated: 0,
        total: 1,
        slots,
        slots_as_of: at(0),
    };
    assert!(matches!(
        gate.wait_for_objective(0, flow(""), 1, "slo", at(0)),
        Arrival::Queued(_)
    ));
    // It does not wait for room, so it is not in the way of a newcomer while the pool has room.
    assert!(matches!(
        gate.arrive(&room(1), 0, flow(""), 1, "now", at(1)),
        Arrival::Go("now")
    ));
    // A round with room lets it out for a look; still missing, it queues again with its first
    // time, behind a request that queued for room meanwhile.
    let saturated = PoolSaturation {
        saturated: 1,
        ..room(0)
    };
    assert!(matches!(
        gate.arrive(&saturated, 0, flow(""), 1, "room", at(2)),
        Arrival::Queued(_)
    ));
    let mut looked = Vec::new();
    gate.release(&room(1), at(3), |d| {
        looked.push((d.value, d.wait, d.waited));
        true
    });
    assert_eq!(looked, [("slo", Wait::Objective, Duration::from_millis(3))]);
    assert!(matches!(
        gate.wait_for_objective(0, flow(""), 1, "slo", at(0)),
        Arrival::Queued(_)
    ));
    assert_eq!(gate.queue().waiting_for_room(), 1);
    // Past its TTL (from its first queueing) it goes best-effort; the room waiter, queued
    // later, is still within its own.
    let left = gate.release(&saturated, at(1000), |_| true);
    assert_eq!(
        left,
        Leaving {
            refused: vec![],
            best_effort: vec!["slo"]
        }
    );
    assert_eq!(gate.queue().len(), 1);
    // Displaced by a higher band, an objective waiter goes best-effort too.
    let mut q = queue(1, 100);
    q.push_for(Wait::Objective, 0, flow(""), 1, "slo", at(0))
        .unwrap();
    let queued = q.push(5, flow(""), 1, "vip", at(1)).unwrap();
    assert_eq!(queued.displaced.best_effort, ["slo"]);
    assert!(queued.displaced.refused.is_empty());
}

#[derive(Clone, Debug)]
enum Op {
    Push { priority: i32, flow: u8, bytes: u64 },
    Pop,
    Cancel(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (-2..3i32, 0..4u8, 0..40u64).prop_map(|(priority, flow, bytes)| Op::Push { priority, flow, bytes }),
        3 => Just(Op::Pop),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (0..700u64).prop_map(Op::Advance),
    ]
}

proptest! {
    /// Against a list of what waits: limits hold, nothing is lost or invented, a pop takes the
    /// highest band's oldest request of its flow, and nothing outlives the TTL past `expire`.
    #[test]
    fn the_queue_agrees_with_a_list_of_what_waits(ops in prop::collection::vec(op(), 1..200)) {
        let mut q: FlowQueue<u64> = FlowQueue::new(FlowConfig {
            enabled: true,
            max_requests: 8,
            max_bytes: 120,
            ttl: Duration::from_secs(1),
        });
        // id → (priority, flow, bytes, since); ids grow with arrival.
        let mut model: HashMap<u64, (i32, u8, u64, u64)> = HashMap::new();
        let mut tickets = Vec::new();
        let (mut now, mut next) = (0u64, 0u64);
        for op in ops {
            match op {
                Op::Push { priority, flow, bytes } => {
                    let id = next;
                    next += 1;
                    match q.push(priority, FlowId::new(Some(&flow.to_string())), bytes, id, at(now)) {
                        Ok(queued) => {
                            for d in &queued.displaced.refused {
                                let (p, ..) = model.remove(d).expect("displaced a waiting request");
                                prop_assert!(p < priority);
                            }
                            model.insert(id, (priority, flow, bytes, now));
                            tickets.push((queued.ticket, id));
                        }
                        Err(_) => {
                            let fits = model.len() < 8 && model.values().map(|w| w.2).sum::<u64>() + bytes <= 120;
                            prop_assert!(!fits, "refused a request that fits");
                        }
                    }
                }
                Op::Pop => match q.pop(at(now)) {
                    None => prop_assert!(model.is_empty()),
                    Some(d) => {
                        let (p, f, _, since) = model.remove(&d.value).expect("popped a waiting request");
                        prop_assert_eq!(d.waited, Duration::from_millis(now - since));
                        prop_assert!(model.values().all(|w| w.0 <= p));
                        prop_assert!(!model.iter().any(|(id, w)| w.0 == p && w.1 == f && *id < d.value));
                    }
                },
                Op::Cancel(i) if !tickets.is_empty() => {
                    let (ticket, id) = tickets[i % tickets.len()];
                    prop_assert_eq!(q.cancel(ticket), model.remove(&id).map(|_| id));
                }
                Op::Cancel(_) => {}
                Op::Advance(ms) => {
                    now += ms;
                    let mut expired = q.expire(at(now)).refused;
                    expired.sort_unstable();
                    let mut want: Vec<u64> = model.iter().filter(|(_, w)| now - w.3 >= 1000).map(|(id, _)| *id).collect();
                    want.sort_unstable();
                    prop_assert_eq!(&expired, &want);
                    model.retain(|_, w| now - w.3 < 1000);
                }
            }
            prop_assert_eq!(q.len(), model.len());
            prop_assert_eq!(q.bytes(), model.values().map(|w| w.2).sum::<u64>());
            prop_assert!(q.len() <= 8 && q.bytes() <= 120);
        }
    }
}
