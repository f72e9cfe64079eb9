//! The engine map under badly mixed and colliding hashes.

use super::*;
use crate::index::position::POS_BITS;

fn pos(k: u64) -> ChainPos {
    // Positions using all their bits.
    ChainPos::from_raw(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - POS_BITS))
}

#[test]
fn insert_get_remove_evict_with_badly_mixed_hashes() {
    let mut m = EngineMap::new(IndexSecret::FIXED);
    // Sequential hashes: vLLM's int hashes need not be uniform.
    for h in 0..5000u64 {
        assert_eq!(
            m.insert(EngineRef(h), BlockKey::from_raw(h + 1), pos(h)),
            None
        );
    }
    assert_eq!(m.len(), 5000);
    for h in 0..5000u64 {
        assert_eq!(
            m.get(EngineRef(h)),
            Some((BlockKey::from_raw(h + 1), pos(h)))
        );
    }
    for h in (0..5000u64).step_by(3) {
        assert!(m.remove(EngineRef(h)).is_some());
        assert!(m.remove(EngineRef(h)).is_none());
    }
    for h in 0..5000u64 {
        assert_eq!(m.get(EngineRef(h)).is_some(), h % 3 != 0, "hash {h}");
    }
    let old = m.insert(EngineRef(7), BlockKey::from_raw(1 << 40), pos(7));
    assert_eq!(old, Some((BlockKey::from_raw(8), pos(7))));
    assert!(
        m.insert(EngineRef(1), BlockKey::from_raw(1 << 40), pos(1))
            .is_some()
    );
    let keys = HashSet::from([BlockKey::from_raw(1 << 40)]);
    assert_eq!(m.remove_keys(&keys), 2);
    assert!(m.get(EngineRef(7)).is_none());
    let before = m.len();
    let evicted: Vec<_> = (0..10).filter_map(|_| m.evict_next()).collect();
    assert_eq!(evicted.len(), 10);
    assert_eq!(m.len(), before - 10);
    for (r, _, _) in &evicted {
        assert!(m.get(*r).is_none());
    }
    assert_eq!(m.iter().count(), m.len());
    assert_eq!(m.drain().len(), before - 10);
    assert_eq!(m.len(), 0);
    assert!((0..m.n_lines()).all(|l| EngineMap::overflow(m.line(l)) == 0));
}

#[test]
fn hashes_sharing_a_home_under_one_secret_spread_under_another() {
    // What a pod knowing the secret could send: 600 hashes all homed on line 0 of any map of
    // up to 256 lines.
    let chosen = IndexSecret::new(1, 2);
    let probe = EngineMap::with_lines(256, chosen);
    let hashes: Vec<u64> = (0u64..).filter(|&h| probe.home(h) == 0).take(600).collect();
    let longest = |secret: IndexSecret| {
        let mut m = EngineMap::new(secret);
        for &h in &hashes {
            m.insert(EngineRef(h), BlockKey::from_raw(h | 1), pos(h));
        }
        assert!(m.n_lines() <= 256);
        assert!(hashes.iter().all(|&h| m.get(EngineRef(h)).is_some()));
        (0..m.n_lines())
            .map(|l| EngineMap::overflow(m.line(l)))
            .max()
            .unwrap_or(0)
    };
    assert!(longest(chosen) >= 150, "one run under the chosen secret");
    assert!(longest(IndexSecret::FIXED) < 16, "spread under another");
}

#[test]
fn parts_of_a_hash_are_distinct() {
    let a = EngineRef::new(42, 0);
    assert_eq!(a, EngineRef(42));
    assert_ne!(EngineRef::new(42, 1), a);
    assert_ne!(EngineRef::new(42, 1), EngineRef::new(42, 2));
}
