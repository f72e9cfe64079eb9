//! The record layout's tests: every form round-trips and reads as written.

use super::small::Small;
use super::*;
use crate::index::holder::Kind;

fn rec_with_keys(used: std::ops::Range<usize>) -> Record {
    let mut rec = [0u64; CELLS];
    for r in used {
        rec[r] = 100 + r as u64;
    }
    rec
}

#[test]
fn nested_holders_round_trip_with_ends() {
    let mut sets = Sets::default();
    let mut rec = rec_with_keys(2..8);
    let mut small = Small::default();
    // Endpoint e holds slots 2..=(2 + e % 6); endpoint 200 holds all.
    for e in [0u16, 1, 2, 3, 4, 5, 70, 200] {
        for r in 2..=(2 + usize::from(e) % 6).max(if e == 200 { 7 } else { 0 }) {
            small.set(r, e, GPU_ONLY);
        }
    }
    encode(&mut rec, &small, &mut sets, true);
    assert!(nested(&rec));
    assert_eq!(decode(&rec, &sets), Some(small.clone()));
    let at7: Vec<u16> = (0..256)
        .filter(|&e| tiers(&rec, 7, e, &sets) != 0)
        .collect();
    assert_eq!(at7, [5, 200]);
    assert_eq!(tiers(&rec, 3, 1, &sets), GPU_ONLY);
    assert_eq!(tiers(&rec, 4, 1, &sets), 0);
    assert_eq!(sets.live(), 0);
    // A hole makes it per slot; filling it makes it nested again.
    small.set(4, 200, 0);
    release_sets(&rec, &mut sets);
    encode(&mut rec, &small, &mut sets, true);
    assert!(!nested(&rec));
    assert_eq!(decode(&rec, &sets), Some(small.clone()));
    assert!(sets.live() >= 1);
    small.set(4, 200, GPU_ONLY);
    release_sets(&rec, &mut sets);
    encode(&mut rec, &small, &mut sets, true);
    assert!(nested(&rec));
    assert_eq!(sets.live(), 0);
}

#[test]
fn other_tiers_and_large_ids_go_per_slot_with_shared_sets() {
    let mut sets = Sets::default();
    let mut rec = rec_with_keys(0..8);
    let mut small = Small::default();
    for r in 0..8 {
        for e in 0..5u16 {
            small.set(r, e, if e == 4 { 0b011 } else { GPU_ONLY });
        }
    }
    encode(&mut rec, &small, &mut sets, true);
    assert!(!nested(&rec));
    assert_eq!(sets.live(), 1, "eight equal slots, one set");
    assert_eq!(decode(&rec, &sets), Some(small.clone()));
    assert_eq!(
        matches(&rec, &[100, 101, 0, 103, 1, 105, 106, 107]),
        0b1110_1011
    );
    assert_eq!(
        matches(&rec_with_keys(0..2), &[100, 101, 0, 0, 0, 0, 0, 0]),
        0xff
    );
    let mut big = rec;
    big[GROUP] = holder::word(Kind::One(holder::holder(300, 1)));
    assert_eq!(decode(&big, &sets), None);
    release_sets(&rec, &mut sets);
    assert_eq!(sets.live(), 0);
}

#[test]
fn solo_runs_grow_and_shrink_in_place_as_decoded() {
    let mut sets = Sets::default();
    // Endpoint 9 holds slots 1 and 2; then slots 4 and 5 get keys (no holder yet).
    let mut rec = rec_with_keys(1..3);
    let mut small = Small::default();
    small.set(1, 9, GPU_ONLY);
    small.set(2, 9, GPU_ONLY);
    encode(&mut rec, &small, &mut sets, true);
    assert!(nested(&rec));
    rec[4] = 104;
    rec[5] = 105;
    assert_eq!(decode(&rec, &sets), Some(small.clone()));
    // Not the next used slot, or not the only holder: refused, unchanged.
    let before = rec;
    assert!(!solo_extend(&mut rec, 5, 9));
    assert!(!solo_extend(&mut rec, 4, 8));
    assert!(!solo_truncate(&mut rec, 1, 9));
    assert_eq!(rec, before);
    assert!(solo_extend(&mut rec, 4, 9));
    small.set(4, 9, GPU_ONLY);
    assert_eq!(decode(&rec, &sets), Some(small.clone()));
    for r in [4, 2, 1] {
        assert!(solo_truncate(&mut rec, r, 9));
        small.set(r, 9, 0);
        assert_eq!(decode(&rec, &sets), Some(small.clone()), "slot {r}");
    }
    assert!(is_empty(&rec));
    // Another member: not solo.
    let mut two = Small::default();
    two.set(1, 9, GPU_ONLY);
    two.set(1, 10, GPU_ONLY);
    let mut rec = rec_with_keys(1..3);
    encode(&mut rec, &two, &mut sets, true);
    assert!(!solo_extend(&mut rec, 2, 9));
}

#[test]
fn too_many_ends_go_per_slot() {
    let mut sets = Sets::default();
    let mut rec = rec_with_keys(0..2);
    let mut small = Small::default();
    for e in 0..(MAX_ENDS as u16 + 1) {
        small.set(0, e, GPU_ONLY);
    }
    small.set(1, 250, GPU_ONLY);
    small.set(0, 250, GPU_ONLY);
    encode(&mut rec, &small, &mut sets, true);
    assert!(!nested(&rec));
    small.set(0, 0, 0);
    release_sets(&rec, &mut sets);
    encode(&mut rec, &small, &mut sets, true);
    assert!(nested(&rec));
    assert_eq!(ends(&rec).count(), MAX_ENDS);
    assert!(ends(&rec).all(|(_, last)| last == 0));
}
